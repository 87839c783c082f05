"""The legacy SDK's spec downloads, told in flagware's words.

The ``statsig`` SDK polls ``download_config_specs`` every 10 s (and
``get_id_lists`` every 60 s) and, while Statsig is away, logs a warning of
about 400 characters for each failed request, in each worker, on its
``statsig.sdk`` logger; flagware said nothing of what it served meanwhile, or
that it worked again. So each download's outcome is watched (the SDK's spec
updater, wrapped on this server only) and told as on the Core engine
(``specs_log``): one line when downloads start failing, one when one works
again. The SDK's warning for a failed poll is let through once per endpoint and
outage; repeats go to DEBUG, where the ``statsig.sdk`` logger is set to show
them, and nowhere otherwise. Nothing else the SDK logs is touched.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from statsig.evaluation_details import DataSource
from statsig.statsig_server import StatsigServer

from flagware.engine.specs_log import SpecsLog

SDK_LOGGER = "statsig.sdk"  # statsig/statsig_telemetry_logger.py TELEMETRY_PREFIX
_FAILED_REQUEST = re.compile(r"Request to (\S+) failed with error ")
_POLLED = ("download_config_specs", "get_id_lists")  # what the SDK requests again and again
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")

log = logging.getLogger("flagware")


class RepeatedFailures(logging.Filter):
    """The SDK's warning for a failed poll: the first of an outage per endpoint."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        found = _FAILED_REQUEST.match(record.getMessage())
        if found is None:
            return True
        path = urlsplit(found[1]).path  # sinceTime changes; the endpoint does not
        if not any(polled in path for polled in _POLLED):
            return True
        with self._lock:
            first = path not in self._seen
            self._seen.add(path)
        if first:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True

    def rearm(self) -> None:
        """Downloads work again: the next outage's first warnings go through."""
        with self._lock:
            self._seen.clear()


repeats = RepeatedFailures()


def quiet_repeats() -> None:
    """Install the filter on the SDK's logger (once a process; idempotent)."""
    sdk_logger = logging.getLogger(SDK_LOGGER)
    if repeats not in sdk_logger.filters:
        sdk_logger.addFilter(repeats)


class WatchedServer(StatsigServer):
    """A ``StatsigServer`` whose spec downloads, the first one included, are told
    in ``specs`` (``SpecsLog``): watched from before its start downloads them."""

    def __init__(self, specs: SpecsLog, secret: str) -> None:
        super().__init__()
        self._flagware_specs = specs
        self._flagware_secret = secret

    def _initialize_instance(self) -> None:
        try:
            watch(self._spec_store.spec_updater, self._flagware_specs, self._flagware_secret)
        except Exception:  # the SDK's internals moved: its start matters more than the lines
            log.debug("flagware: cannot watch the statsig SDK's spec downloads", exc_info=True)
        super()._initialize_instance()


def watch(updater: Any, specs: SpecsLog, secret: str) -> None:
    """Tell each network download of ``updater`` (the SDK's ``SpecUpdater``) in ``specs``.

    The SDK reports no outcome; it counts failed syncs (``_sync_failure_count``,
    also raised for specs it cannot parse) and keeps the last request's error on
    its init context, which is reset here before each download to read it after.
    """
    if getattr(updater, "_flagware_watched", False):  # a timed-out start runs twice
        return
    updater._flagware_watched = True
    download = updater.get_config_spec

    def get_config_spec(source: Any, for_initialize: bool = False) -> Any:
        if source not in (DataSource.NETWORK, DataSource.STATSIG_NETWORK):
            return download(source, for_initialize)
        failures, context = updater._sync_failure_count, updater.context
        context.error = None
        result = download(source, for_initialize)
        try:  # telling the outcome never costs the SDK its download
            if updater._sync_failure_count == failures and updater._dcs_process_success:
                specs.worked()
            else:
                reason = describe(context.error, updater._dcs_final_error, secret)
                specs.failed(reason, have_specs=updater.last_update_time > 0)
        except Exception:
            log.debug("flagware: cannot tell a spec download's outcome", exc_info=True)
        return result

    updater.get_config_spec = get_config_spec


def describe(error: BaseException | None, final: str, secret: str) -> str:
    """A failed download's cause, short, and without the secret (the SDK's errors
    carry the URL, whose last part is the secret)."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        # Here, not at the top: endpoint imports ssl, which `import flagware` must
        # not (uWSGI's Python could not load the venv's _ssl: no app started).
        from flagware.events.endpoint import http_problem

        text = http_problem(error.response.status_code)
    elif isinstance(error, (requests.Timeout, concurrent.futures.TimeoutError, TimeoutError)):
        text = "timed out"
    elif isinstance(error, requests.ConnectionError):
        found = _ERRNO.search(str(error))
        text = found[0] if found else "connection failed"
    elif error is not None:
        text = f"{type(error).__name__}: {error}"
    else:  # an answer the SDK could not use
        text = final or "no specs in the answer"
    return text.replace(secret, "secret-****") if secret else text
