"""``Flagware``: configuration, the engine, the event pipeline and their lifecycle."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flagware import flags as _flags
from flagware.engine import Engine, local_engine, statsig_engine
from flagware.events.limits import cap_event
from flagware.events.model import Event
from flagware.events.shutdown import (
    close_at_child_exit,
    install_sigterm,
)
from flagware.events.store import Store, is_postgres_url, open_store, redact
from flagware.events.writer import DEFAULT_MAX_QUEUE, STORE_FAILURE, EventWriter
from flagware.failures import Failures
from flagware.identity import country_table
from flagware.lifecycle import Lifecycle, _close_all, _live_clients
from flagware.overrides import overrides
from flagware.settings import (
    DEFAULT_EVENT_STORE,
    DEFAULT_STATSIG_API,
    ConfigurationError,
    EngineChoice,
    check_options,
    check_statsig,
    engine_choice,
    env,
    flag_source,
    local_hash_key,
    statsig_api_url,
)
from flagware.shared_key import UNAVAILABLE, SharedKey, check_key_id
from flagware.starts import Starts
from flagware.startup import announce, warn_ignored_secret
from flagware.threads import threads_disabled, warn_if_threads_disabled
from flagware.users import NamedUsers
from flagware.visitors import Repeats, prepare_bot_rules

if TYPE_CHECKING:
    from flagware.events.delivery import Delivery
    from flagware.events.stats import DeliveryStats
    from flagware.identity import CustomResolver, UserResolver
    from flagware.visitors import ExposureFilter

__all__ = ["ConfigurationError", "Flagware"]

log = logging.getLogger("flagware")

# Set for a test run by flagware.testing.isolate() (the pytest plugin uses it):
# it returns a fresh temporary store path for each new client. Isolated clients
# store there whatever their options say, deliver nothing to Statsig and hash
# with TEST_HASH_KEY unless given a hash_key, so a test run never touches the
# app's own store or key and gives the same flag values on every machine.
isolated_store: Callable[[], Path] | None = None
TEST_HASH_KEY = "flagware-test-hash-key"


class Flagware(Lifecycle, NamedUsers):
    """One flagware client: an engine, an event store and, with Statsig, delivery.

    Every option can be passed explicitly; the ones that hold secrets or paths
    also come from the environment. Explicit arguments always win, so
    ``Flagware(spec=...)`` is the local engine even where
    ``STATSIG_SERVER_SECRET`` is set.

    Lifecycle: whoever constructs a client owns it. A client holds a writer
    thread, a store connection per thread that used it and, with Statsig, a
    delivery thread and the SDK's threads; they start lazily, on the first
    event or evaluation. Make one per process and configuration (at module
    level, or through the Flask extension or Django settings, which share
    one), and call :meth:`close` (or use ``with``) when you make clients in a
    loop or per test; interpreter exit closes the ones left open.
    """

    def __init__(
        self,
        *,
        spec: str | os.PathLike[str] | None = None,  # local spec file (FLAGWARE_SPEC)
        statsig_secret: str | None = None,  # STATSIG_SERVER_SECRET; selects the Statsig engine
        statsig_api: str | None = None,  # base URL override for proxies and tests (STATSIG_API)
        engine: EngineChoice | None = None,  # the SDK that evaluates: FLAGWARE_ENGINE, "legacy"
        # A SQLite path, or a postgresql:// URL for a store shared by many hosts
        # (FLAGWARE_EVENT_STORE)
        event_store: str | os.PathLike[str] | None = None,
        hash_key: str | bytes | None = None,  # secret for hashing IPs (FLAGWARE_HASH_KEY)
        user_id: UserResolver | None = None,  # environ -> the app's user ID, or None
        user_custom: CustomResolver | None = None,  # environ -> custom fields for conditions
        # environ -> {"companyID": "acme"}: the IDs of the spec's custom_ids units
        user_custom_ids: CustomResolver | None = None,
        # environ -> False for requests whose flag reads are not exposures
        # (health checks, internal traffic); bots, HEAD and prefetches never are.
        exposure_filter: ExposureFilter | None = None,
        # Seconds a visitor shown the same gate value or group is not exposed
        # again (Statsig's SDKs: 60); 0 logs an exposure on every request.
        exposure_dedupe: float = 60.0,
        allow_random_override: bool = False,  # honour ?random=1 (lets anyone pick a group)
        cookie_name: str = "flagware_id",
        cookie_max_age: int = 365 * 24 * 3600,
        proxy_hops: int = 0,  # trusted X-Forwarded-For hops, applied with werkzeug's ProxyFix
        send_ip: bool = False,  # the raw IP never leaves the process unless this is set
        tier: str | None = None,  # environment tier for conditions (FLAGWARE_TIER)
        init_timeout: float = 3.0,  # most a request waits for Statsig specs at start-up
        shutdown_timeout: float = 5.0,  # how long close() keeps delivering
        flush_interval: float = 0.2,  # how often queued events are written to the store
        max_queue: int = DEFAULT_MAX_QUEUE,  # events held in memory; beyond it dropped, counted
        handle_sigterm: bool = True,  # store the queue on SIGTERM (see events/shutdown.py)
        delivery_options: Mapping[str, Any] | None = None,  # Delivery(...) tuning, Statsig only
        diagnostics: bool | Literal["debug"] = False,  # the page in flagware.diagnostics
        diagnostics_path: str = "/_flagware/",  # where the middleware serves it
        diagnostics_token: str | None = None,  # required when set (FLAGWARE_DIAGNOSTICS_TOKEN)
    ) -> None:
        diagnostics_token = diagnostics_token or env("FLAGWARE_DIAGNOSTICS_TOKEN")
        check_options(
            exposure_dedupe=exposure_dedupe,
            proxy_hops=proxy_hops,
            diagnostics=diagnostics,
            diagnostics_path=diagnostics_path,
            diagnostics_token=diagnostics_token,
            cookie_name=cookie_name,
            cookie_max_age=cookie_max_age,
            tier=tier,
            init_timeout=init_timeout,
            shutdown_timeout=shutdown_timeout,
            flush_interval=flush_interval,
            max_queue=max_queue,
        )
        engine = engine_choice(engine)
        spec_given = spec is not None
        spec, statsig_secret = flag_source(spec, statsig_secret)
        isolate = isolated_store
        self.isolated = isolate is not None  # under the pytest plugin: see isolated_store
        if isolate is not None:
            location: str | os.PathLike[str] = isolate()
        else:
            location = event_store or env("FLAGWARE_EVENT_STORE") or DEFAULT_EVENT_STORE
        self.event_store = os.fspath(location)  # the path or URL, as given
        self._shared_store = is_postgres_url(self.event_store)
        # The SQLite file; for PostgreSQL only a name (use event_store).
        self.event_store_path = Path(self.event_store)
        self.allow_random_override = allow_random_override
        self.cookie_name = cookie_name
        self.cookie_max_age = cookie_max_age
        self.proxy_hops = proxy_hops
        self.send_ip = send_ip
        self.tier = tier or env("FLAGWARE_TIER")
        self.user_id_resolver = user_id
        self.custom_resolver = user_custom
        self.custom_ids_resolver = user_custom_ids
        self.exposure_filter = exposure_filter
        self.shutdown_timeout = shutdown_timeout
        self.diagnostics = diagnostics
        self.diagnostics_path = diagnostics_path
        self.diagnostics_token = diagnostics_token
        self.failures = Failures(store=redact(self.event_store))
        self.errors = self.failures.errors  # internal failures by where they happened
        self.truncated = self.failures.truncated  # "user_agent", "metadata": inputs capped
        # Exposures not logged because the request was no visitor, by reason:
        # "bot", "method" (HEAD, OPTIONS), "prefetch", "filter" (exposure_filter).
        # "repeat": the visitor was shown the same thing within exposure_dedupe.
        self.skipped_exposures: Counter[str] = Counter()
        self.repeats = Repeats(exposure_dedupe, self.skipped_exposures)
        self._closed = False
        self._lock = threading.Lock()

        # Opening connects nothing yet: each process connects on first use.
        try:
            self.store: Store = open_store(self.event_store)
        except ValueError as exc:  # a URL no store reads, said without its password
            raise ConfigurationError(f"event_store {redact(self.event_store)}: {exc}") from None
        self.starts = Starts(self.store, self.event_store, self.report, self.errors)
        if hash_key is not None:
            key: str | bytes | None = hash_key
        else:
            key = TEST_HASH_KEY if self.isolated else env("FLAGWARE_HASH_KEY")
        self.engine: Engine
        self.delivery: Delivery | None = None
        if statsig_secret is not None:
            key = check_statsig(statsig_secret, key)
            self.statsig_api: str | None = (api := statsig_api_url(statsig_api))
            self.engine = statsig_engine(engine)(
                statsig_secret,
                api=api,
                init_timeout=init_timeout,
                tier=self.tier,
                offline=self.isolated,
            )
        else:
            assert spec is not None
            self.statsig_api = None
            if not self.isolated:  # before the spec is read, whose absence would be all it says
                warn_ignored_secret(spec=spec, spec_given=spec_given)
            # An experiment that has started may not change under its results.
            starts = self.starts
            self.engine = starts.engine = local_engine(engine)(
                spec, tier=self.tier, check=starts.served, on_reload=starts.forget
            )
            if key is None and self._shared_store:
                self._shared_key = SharedKey(self.store, self.event_store, self._got_hash_key)
                key = self._shared_key.first()  # b"" while the database is away
            elif key is None:
                key = local_hash_key(self.event_store)
        # b"" only while a shared store's key is unread (flagware.shared_key).
        self.hash_key: bytes = key.encode() if isinstance(key, str) else key

        if statsig_secret is not None and not self.isolated:
            from flagware.events.delivery import Delivery

            self.delivery = Delivery(
                self.event_store,
                secret=statsig_secret,
                api=self.statsig_api or DEFAULT_STATSIG_API,
                on_error=self.report,
                on_recovered=self.failures.recovered,
                sdk=self.engine.sdk,
                **(delivery_options or {}),
            )
        self.writer = EventWriter(
            self.store,
            deliver=self.delivery is not None,
            flush_interval=flush_interval,
            max_queue=max_queue,
            on_stored=self._on_stored,
            on_error=self.report,
            on_recovered=lambda: self.failures.recovered(STORE_FAILURE),
            # A process's first event also starts delivery, so a backlog left
            # by a crashed worker goes out without waiting for new events.
            on_start=self._on_stored_start,
            # A multiprocessing child forked from this process: its exit too.
            on_process=lambda: close_at_child_exit(_close_all),
            on_reopen=self._reopened,
        )
        # Interpreter exit stores what is queued and delivers what it can; so
        # does a multiprocessing child's exit (Granian's workers end past atexit).
        _live_clients.add(self)
        close_at_child_exit(_close_all)
        # Not for tests' isolated clients: their stores are thrown away, and a
        # handler that stores a queue can wait, in a test runner's worker
        # terminated mid-test, for a lock the test held (a CI run hung).
        if handle_sigterm and not self.isolated:
            install_sigterm(lambda: _live_clients)
        announce(self, spec=spec)
        if threads_disabled():
            self.writer.inline = True  # the writer thread would run only during requests
            warn_if_threads_disabled()
        if overrides.unchecked:  # a test overrode flags before any client existed
            overrides.check_unchecked()
        self._prepare()

    def _prepare(self) -> None:
        """Build now, once per process, the tables a worker's first request
        would build: 0.5 s idle, 0.8-1.9 s on a busy machine, in that request.
        Plain data, so safe before a fork (gunicorn ``--preload`` shares it)."""
        try:
            country_table()
            prepare_bot_rules()
            self.engine.prepare()
        except Exception:  # met again where a request needs it, and reported there
            log.debug("flagware: preparing tables failed", exc_info=True)

    @classmethod
    def from_env(cls, **options: Any) -> Flagware:
        """Statsig when ``STATSIG_SERVER_SECRET`` is set, else the local spec.

        Reads ``STATSIG_SERVER_SECRET``, ``STATSIG_API``, ``FLAGWARE_SPEC``,
        ``FLAGWARE_EVENT_STORE``, ``FLAGWARE_HASH_KEY`` and ``FLAGWARE_TIER``;
        keyword options win over them.
        """
        return cls(**options)

    @property
    def engine_name(self) -> str:
        """Where the specs come from: "local" or "statsig"."""
        return self.engine.kind

    @property
    def engine_sdk(self) -> str:
        """The SDK that evaluates them: "legacy" (the statsig package) or "core"."""
        return self.engine.sdk

    # -- the event pipeline ----------------------------------------------------

    def log(self, event: Event) -> None:
        """Queue an event for the store (and Statsig). O(1); never touches disk or network."""
        for cut in cap_event(event):  # a huge User-Agent or metadata: counted, logged once
            self.failures.truncated_input(cut)
        self._log_exposure(event)

    def _log_exposure(self, event: Event) -> None:
        """``log`` for the exposures Flags builds: their user was capped when it
        was built and their metadata is flagware's own, so nothing needs capping."""
        self.writer.put(event)
        if _flags.listeners:
            for listener in tuple(_flags.listeners):
                listener(event)

    def _on_stored(self, count: int) -> None:
        if self.delivery is not None:
            self.delivery.wake()
        if self.starts.pending:
            self.starts.record()
        self.starts.verify()

    def _on_stored_start(self) -> None:
        if self.delivery is not None:
            self.delivery.wake()
        if not self.isolated and self.hash_key:  # b"": a shared store's key, unread yet
            try:
                check_key_id(self.store, self.event_store, self.hash_key)
            except Exception as exc:  # the store away: the next process to start checks
                self.report(exc, "hash key check")

    def delivery_stats(self) -> DeliveryStats:
        """Backlog, delivered, retried, dropped and parked counts, and the oldest
        undelivered event's age (what ``flagware status`` prints)."""
        from flagware.events.stats import DeliveryStats

        # Its own short-lived connection: callable from any thread, even after close().
        with open_store(self.event_store) as store:
            stats = DeliveryStats.from_store(store.stats())
        # Drops this process has not been able to record in the store yet.
        pending = self.writer.pending_drops()
        return replace(stats, queue_dropped=stats.queue_dropped + pending) if pending else stats

    _shared_key: SharedKey | None = None

    def _got_hash_key(self, key: bytes) -> None:
        self.hash_key = key

    def hash_key_missing(self) -> None:
        """A request hashed no address: the shared key is unread (counted; read again)."""
        self.errors[UNAVAILABLE] += 1
        if self._shared_key is not None:
            self._shared_key.retry()

    def report(self, exc: BaseException, where: str) -> None:
        """Count an internal failure in ``errors`` and log it once per place and kind."""
        self.failures.report(exc, where)

    def __repr__(self) -> str:
        engine = f"{self.engine_name}/{self.engine_sdk}"
        return f"<Flagware engine={engine} store={redact(self.event_store)!r}>"
