"""Statsig's specs for ``engine="core"`` with a secret, downloaded by flagware.

Core itself opens no connection. With its network on, Core reports its own
errors (specs it cannot parse, an unreachable ``statsig_api``) to a hard-coded
statsigapi.net address, whatever its logging options: traced, a DNS query
right after the failure (``tests/test_core_engine.py``). Only
``disable_network`` stops that, and it also stops Core downloading specs. So
Core runs with the network off, as it does for the local spec, and flagware
downloads the specs: the request Core's own adapter makes (``statsig_api``'s
v2 endpoint, or Statsig's specs CDN when ``statsig_api`` is Statsig's own;
``sinceTime`` the last specs' time, so an unchanged project costs a few
bytes), every ``SYNC_INTERVAL`` seconds, on one daemon thread per process.
Core reads them through a ``DataStore`` (``core._SpecsStore``) that it polls
every ``POLL_MS``.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote

from flagware.engine.specs_log import SpecsLog
from flagware.events import wire
from flagware.events.endpoint import Endpoint, http_problem, tunnel_login_refused
from flagware.settings import DEFAULT_STATSIG_API
from flagware.threads import start_thread

log = logging.getLogger("flagware")

SYNC_INTERVAL = 10.0  # seconds between downloads: Core's own default (specs_sync_interval_ms)
SYNC_TIMEOUT = 10.0  # seconds a background download may take
POLL_MS = 1000  # how often Core reads the store (memory only; Core polls no faster)
REFUSED = "Core did not accept the specs it was given (its log says why)"


# Where Core (and Statsig's other SDKs, in v1) download specs by default: a CDN,
# not the API host that takes events.
STATSIG_SPECS_URL = "https://api.statsigcdn.com/v2/download_config_specs"


def core_specs_url(api: str) -> str:
    """Where Core asks for specs: Statsig's own default for Statsig's API, else the
    v2 endpoint beside a proxy's v1 base URL."""
    api = api.rstrip("/")
    if api == DEFAULT_STATSIG_API:
        return STATSIG_SPECS_URL
    if api.endswith("/v1"):
        api = api[: -len("/v1")] + "/v2"
    return f"{api}/download_config_specs"


class Specs(NamedTuple):
    document: str  # the v2 DCS response, as downloaded
    time: int  # its ``time``: the specs' last change, sent back as ``sinceTime``


class SpecsDownload:
    """The newest specs from ``statsig_api``, downloaded now and then every ``SYNC_INTERVAL``."""

    def __init__(self, api: str, secret: str) -> None:
        self.base = core_specs_url(api)  # what log lines show: never the secret
        self._endpoint = Endpoint(f"{self.base}/{quote(secret, safe='')}.json")
        self._headers = self._endpoint.headers | {
            "Accept-Encoding": "gzip",
            # The specs are Core's, as its own request says.
            "User-Agent": wire.CORE.user_agent,
            "STATSIG-API-KEY": secret,
            "STATSIG-SDK-TYPE": wire.CORE.type,
            "STATSIG-SDK-VERSION": wire.CORE.version,
        }
        self.interval = SYNC_INTERVAL
        self.specs: Specs | None = None  # replaced whole, never changed: read without a lock
        # Whether Core refused these specs (True), serves them (False) or has
        # not been handed them yet (None): the engine's. And the last it served.
        self.refused: Callable[[Specs], bool | None] | None = None
        self._taken: Specs | None = None
        self._pending = False  # Core refused specs, and serves none downloaded since
        self._refused_text: str | None = None  # the last specs Core refused
        self.log = SpecsLog(self.base)
        self._late = False  # the first download outlasted the wait for it
        self._first_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fetch(self, timeout: float) -> bool:
        """One download; True when it worked (new specs or none changed). Never raises."""
        refused = self._check_taken()
        try:
            found = self._download(timeout)
        except Exception as exc:
            self.log.failed(str(exc), have_specs=self.specs is not None, route=self._endpoint.route)
            return False
        if found is None and self._pending and self.specs is self._taken:
            self._pending = False  # nothing newer than what Core serves: all is served
            refused = False
        last = self.specs
        # The same specs again (a proxy that ignores sinceTime) stay the same
        # object, which Core's store hands over once.
        same = last is not None and found is not None and found.time and found.time == last.time
        fresh = found is not None and not same
        if fresh and found is not None and found.document == self._refused_text:
            # Refused already: handed again, Core logged the same error at every
            # download (a trial: ten lines in 50 s from two workers). Counted.
            self.log.failed(REFUSED, have_specs=self._taken is not None)
            return True
        if fresh:
            self.specs = found
            if self.log.failing and self.refused is not None:
                # An outage ends when Core serves what came, not when it came: a
                # download after one brought specs Core then refused, and the log
                # said "works again" first (a trial).
                refused = self._verdict()
        if refused is False:  # else the outage goes on until Core serves what comes
            self.log.worked()
        return True

    def _verdict(self) -> bool | None:
        """``_check_taken`` once Core has read the specs just handed (it reads its
        store every ``POLL_MS``), or None if it has not within three reads."""
        deadline = time.monotonic() + 3 * POLL_MS / 1000
        while (verdict := self._check_taken()) is None and time.monotonic() < deadline:
            if self._stop.wait(0.1):
                break
        return verdict

    def _check_taken(self) -> bool | None:
        """Whether Core refused the last specs it was handed (None: not handed
        yet); if so, downloads start again from the specs it serves.

        ``sinceTime`` was the time of the newest specs downloaded, whether or
        not Core could read them: after specs Core refused (a field missing), a
        corrected document with the same time was answered "no updates" for
        good, and Core served stale flags, or defaults from the start, without
        a word (a new user's trial). Core polls its store every second, and
        this runs every ``SYNC_INTERVAL`` seconds, so the specs handed at the
        last download have been read by now.
        """
        specs, refused = self.specs, self.refused
        if refused is None:
            return False
        if specs is None:  # none yet, or none Core took since a refusal
            return None if self._pending else False
        try:
            verdict = refused(specs)
        except Exception:  # Core stopping: asked again next time
            return None
        if verdict is None:
            return None
        if verdict is False:
            reverted = specs is self._taken
            self._taken = specs
            if self._pending and reverted:
                # What Core served before the refusal says nothing of what came
                # since: an HTTP error in between made the outage look over.
                return None
            self._pending = False
            return False
        self._refused_text = specs.document
        self.specs = self._taken  # handed to Core again (it serves them): harmless
        self._pending = True  # until Core serves specs downloaded after these
        self.log.failed(REFUSED, have_specs=self._taken is not None)
        return True

    @property
    def failures(self) -> int:
        """Downloads that failed, this process."""
        return self.log.failures

    def _download(self, timeout: float) -> Specs | None:
        """The specs if they changed since the last download, else None; raises on failure."""
        path = self._endpoint.path
        if self.specs is not None:
            path += f"{'&' if '?' in path else '?'}sinceTime={self.specs.time}"
        conn = self._endpoint.connect(timeout)
        try:
            conn.request("GET", path, headers=self._headers)
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            if tunnel_login_refused(exc):  # the https proxy's 407 to CONNECT
                raise OSError(http_problem(407)) from None
            raise
        finally:
            conn.close()
        if response.status != 200:
            raise OSError(http_problem(response.status))
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        text = body.decode("utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a specs document")
        if data.get("has_updates") is False:
            return None
        time_ms = data.get("time")
        return Specs(text, time_ms if type(time_ms) is int else 0)

    def start(self, wait: float) -> None:
        """Download now and every ``interval`` after, in the background (this
        process), waiting ``wait`` seconds at most for the first download.

        A socket timeout bounds each read, not a download: a server that trickles
        its answer would hold the caller as long as it likes. So the first download
        too runs on the thread, and the specs it brings late are taken when they come.
        """
        first = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(first,), name="flagware-specs", daemon=True
        )
        try:
            start_thread(thread)
        except RuntimeError:  # Python 3.12 at interpreter exit: one download, here
            self.fetch(wait)
            return
        self._thread = thread
        first.wait(wait)
        with self._first_lock:  # decided once: late, or done in time
            self._late = not first.is_set()
        if self._late:
            log.warning(
                "flagware: the first Statsig specs download from %s%s is taking longer than"
                " init_timeout (%g s); serving defaults until it completes",
                self.base,
                self._endpoint.route,
                wait,
            )

    def _run(self, first: threading.Event) -> None:
        worked = self.fetch(SYNC_TIMEOUT)
        with self._first_lock:
            first.set()
            late = self._late
        if worked and late:  # a failure has said so itself
            log.info(
                "flagware: Statsig specs from %s downloaded; Core reads them within %g s",
                self.base,
                POLL_MS / 1000,
            )
        while not self._stop.wait(self.interval):
            self.fetch(SYNC_TIMEOUT)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)  # a download in flight is a daemon's: left to finish
        self._thread = None
