"""Evaluation with Statsig's Core SDK (``statsig-python-core``, a Rust core): ``engine="core"``.

Install it with ``pip install 'flagware[core]'``. Both spec sources work:

- the local spec, compiled as for the legacy SDK, converted to the v2 shape Core
  reads (``core_dcs.to_v2``) and handed over through a ``DataStore`` with the
  network off, so nothing leaves the process;
- Statsig with a secret: flagware downloads the specs from ``statsig_api`` and
  hands them over the same way (``core_specs``), so Core never opens a
  connection: with its network on, it reports its own errors to statsigapi.net.

Core's own event logging is off in both: flagware records exposures and events
itself (store and delivery), exactly as on the legacy engine. Overrides are
flagware's too (``flagware.testing``), so they never reach Core.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flagware.engine import base
from flagware.engine.base import Engine, Evaluation, UserFields
from flagware.engine.core_dcs import to_v2
from flagware.engine.core_specs import POLL_MS, REFUSED, Specs, SpecsDownload
from flagware.engine.local import LOCAL_SDK_KEY, LocalSpec
from flagware.engine.specs_log import SpecsLog
from flagware.engine.statsig import StatsigSource
from flagware.settings import DEFAULT_STATSIG_API
from flagware.spec import compile_dcs

# The modules, or None without the extra; Any keeps their untyped API contained.
core: Any
core_statsig: Any
try:
    core = importlib.import_module("statsig_python_core")
    core_statsig = importlib.import_module("statsig_python_core.statsig")
except ImportError:  # pragma: no cover - exercised only without the extra
    core = core_statsig = None

core_log = logging.getLogger("flagware.core")  # what the Core SDK itself reports

SHUTDOWN_TIMEOUT = 2.0  # seconds close() waits for Core's runtime to stop
# Core's shutdown Event is set while its runtime is still winding down: an exit
# within this long of it printed "StatsigSafeGil: GIL Unavailable" from a worker
# thread in 9 of 37 gunicorn --preload stops here; with the pause, 0 of 32.
EXIT_SETTLE = 0.05
_last_stop = -EXIT_SETTLE  # time.monotonic() of this process's last Core shutdown
# Rule IDs that mean no rule matched (or the spec is off): the config's rule did not pass.
_NOT_PASSED = frozenset(("", "default", "disabled"))


def require_core() -> None:
    if core is None:
        raise ImportError(
            "engine='core' needs Statsig's Core SDK: pip install 'flagware[core]' "
            "(statsig-python-core)"
        )


class EngineStartError(RuntimeError):
    """Core started but could not read the specs it was given."""


if core is not None:

    class _Server(core.StatsigBasePy):  # type: ignore[misc]
        """Core's base class without the Python wrapper's per-call error boundary
        (flagware catches, counts and logs errors itself); a Python subclass so the
        instance can join Core's fork-recovery set (a WeakSet)."""

    class _Logs(core.OutputLoggerProvider):  # type: ignore[misc]
        """Core's own log lines into Python logging (it prints them to stdout otherwise)."""

        def warn(self, tag: str, msg: str) -> None:
            core_log.warning("%s: %s", tag, msg)

        def error(self, tag: str, msg: str) -> None:
            core_log.error("%s: %s", tag, msg)

    class _SpecsStore(core.DataStore):  # type: ignore[misc]
        """Core's only source of specs, with the network off: each version handed over once.

        ``specs`` gives the newest specs (or None). Core reads the store when it
        starts and, if ``polling``, every ``POLL_MS`` after: specs it has seen
        come back as ``{"has_updates": false}``, as from Statsig's API, and so
        does the lack of any: Core parses whatever it is given again (measured:
        38 ms a second for a 1.2 MB project) and logs an error for no answer.
        """

        def __init__(self, specs: Callable[[], Specs | None], *, polling: bool) -> None:
            super().__init__()
            self._specs, self._polling = specs, polling
            self.given: Specs | None = None  # the last specs handed to Core
            self.read = False  # whether Core has read the store (its first read: at start)
            self.at_start: Specs | None = None  # the specs Core's start read, if any
            self._response: Any = importlib.import_module("statsig_python_core.data_store")

        def get(self, key: str) -> Any:
            if "download_config_specs" not in key:
                return None
            specs = self._specs()
            first, self.read = not self.read, True
            if specs is None or specs is self.given:  # nothing yet (defaults), or seen
                time = 0 if specs is None else specs.time
                return self._response.DataStoreResponse(result=_NO_UPDATES, time=time)
            self.given = specs
            if first:
                self.at_start = specs
            return self._response.DataStoreResponse(result=specs.document, time=specs.time)

        def set(self, key: str, value: str, time: int | None = None) -> None:
            pass  # read-only: the spec file, or flagware's download, is the truth

        def support_polling_updates_for(self, key: str) -> bool:
            return self._polling  # the local spec: a changed file starts a new server instead


_NO_UPDATES = '{"has_updates":false}'


@atexit.register  # after Core's own atexit hook, so it runs before it (LIFO)
def _close_engines() -> None:
    # Core's hook stops its runtime; an instance still alive after that is
    # dropped during finalisation and prints "StatsigSafeGil: GIL Unavailable".
    for engine in list(base.engines):
        if isinstance(engine, CoreSDK):
            engine.close()
    settle = EXIT_SETTLE - (time.monotonic() - _last_stop)
    if settle > 0:  # a shutdown just now (here, or a SIGTERM handler's close())
        time.sleep(settle)


class CoreSDK(Engine):
    """One Core instance per process; evaluations through its raw dict API."""

    sdk = "core"

    def __init__(self) -> None:
        require_core()
        super().__init__()

    def _sdk_key(self) -> str:
        raise NotImplementedError

    def _core_options(self) -> Any:
        raise NotImplementedError

    def _start(self) -> Any:
        server = _Server(self._sdk_key(), self._core_options())
        # The Python package quiesces Core's runtime around os.fork() and restarts
        # the instances it knows; join that set as its own Statsig class does.
        core_statsig._live_statsig_instances.add(server)
        details = server.initialize_with_details().result()
        self._check_started(details)
        return server

    def _check_started(self, details: Any) -> None:
        pass

    def _stop(self, server: Any) -> None:
        global _last_stop
        server.shutdown().wait(SHUTDOWN_TIMEOUT)  # a threading.Event, set once stopped
        _last_stop = time.monotonic()

    def user(self, fields: UserFields) -> Any:
        return core.StatsigUser(
            user_id=fields.get("userID"),  # none for a user named by other IDs (flags_for)
            custom_ids=fields.get("customIDs"),
            country=fields.get("country"),
            ip=fields.get("ip"),
            user_agent=fields.get("userAgent"),
            custom=fields.get("custom"),
            statsig_environment=fields.get("statsigEnvironment"),
        )

    def gate(self, user: Any, name: str) -> Evaluation:
        # No disable_exposure_logging option: with it, Core counts the check and
        # POSTs a statsig::non_exposed_checks event to log_event_url at shutdown,
        # even with disable_all_logging (measured, 0.24.2). Without it, the
        # exposure is made and dropped by disable_all_logging: nothing is sent.
        raw = self.server()._INTERNAL_get_feature_gate(user, name, None)
        return Evaluation(
            bool(raw.get("value")),
            {},
            raw.get("ruleID") or "",
            None,
            raw.get("secondaryExposures") or [],
        )

    def config(self, user: Any, name: str) -> Evaluation:
        # get_experiment, not get_dynamic_config: only it reports the group and
        # secondary exposures, and it evaluates dynamic configs the same way.
        raw = self.server()._INTERNAL_get_experiment(user, name, None)
        rule_id = raw.get("ruleID") or ""
        value = raw.get("value")
        return Evaluation(
            # Core does not say whether the rule's pass percentage passed; flagware's
            # own rules all pass at 100%, so a matched rule is a passed one.
            rule_id not in _NOT_PASSED,
            value if isinstance(value, dict) else {},
            rule_id,
            raw.get("groupName"),
            raw.get("secondaryExposures") or [],
        )

    def names(self) -> tuple[list[str], list[str]]:
        server = self.server()
        return sorted(server.get_feature_gate_list()), sorted(server.get_experiment_list())

    def specs_time(self) -> int | None:
        # Every result says which specs Core evaluated it on (lcut; 0 with none).
        user = core.StatsigUser(user_id="")
        raw = self.server()._INTERNAL_get_feature_gate(user, "flagware::specs_time", None)
        lcut = (raw.get("details") or {}).get("lcut")
        return lcut if isinstance(lcut, int) and lcut > 0 else None

    def experiment_groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        server = self.server()
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for name in server.get_experiment_list():
            groups: dict[str, dict[str, Any]] = {}
            for group in server._INTERNAL_get_experiment_groups(name).get("groups") or ():
                if group.get("group_name") and group["group_name"] not in groups:
                    groups[group["group_name"]] = dict(group.get("return_value") or {})
            found[name] = groups
        return found


class CoreLocalEngine(LocalSpec, CoreSDK):
    """The local spec evaluated by Core, offline."""

    def _sdk_key(self) -> str:
        return LOCAL_SDK_KEY

    def _core_options(self) -> Any:
        dcs = compile_dcs(self.spec)
        specs = Specs(json.dumps(to_v2(dcs)), dcs["time"])
        store = _SpecsStore(lambda: specs, polling=False)
        return core.StatsigOptions(
            disable_network=True,  # specs come from the store; nothing else is fetched
            data_store=store,
            disable_all_logging=True,  # flagware logs exposures and events itself
            disable_country_lookup=True,  # flagware sets user.country, and never sends the IP
            environment=self.tier,
            output_log_level="error",
            output_logger_provider=_Logs(),
        )

    def _check_started(self, details: Any) -> None:
        # init_success is True even when Core could not parse the specs: only
        # is_config_spec_ready says that the gates in the spec are the ones served.
        if not details.is_config_spec_ready:
            failure = details.failure_details
            reason = failure.error or failure.reason if failure is not None else "unknown"
            raise EngineStartError(f"the Core SDK did not accept the compiled spec: {reason}")


class CoreStatsigEngine(StatsigSource, CoreSDK):
    """Specs from Statsig (or ``statsig_api``), downloaded by flagware for Core (``core_specs``)."""

    _download: SpecsDownload | None = None
    _store: _SpecsStore | None = None

    def _sdk_key(self) -> str:
        return self.secret

    def specs_log(self) -> SpecsLog | None:
        return None if self._download is None else self._download.log

    def _start(self) -> Any:
        # Once per process, as the engine starts: the first download may delay
        # this process's first request by at most init_timeout.
        if self.offline:
            return super()._start()  # no download: Core serves defaults
        download = self._download = SpecsDownload(self.api or DEFAULT_STATSIG_API, self.secret)
        download.refused = self._refused
        download.start(wait=self.init_timeout)
        try:
            return super()._start()
        except BaseException:
            download.stop()
            raise

    def _stop(self, server: Any) -> None:
        if self._download is not None:
            self._download.stop()
        super()._stop(server)

    def _core_options(self) -> Any:
        download = self._download  # None when offline
        self._store = _SpecsStore(
            (lambda: download.specs) if download else (lambda: None), polling=download is not None
        )
        return core.StatsigOptions(
            disable_network=True,  # Core's own requests (its error reports) never leave
            data_store=self._store,
            specs_sync_interval_ms=POLL_MS,
            disable_all_logging=True,  # flagware stores and delivers events itself
            disable_country_lookup=True,
            enable_id_lists=False,
            environment=self.tier,
            output_log_level="error",
            output_logger_provider=_Logs(),
        )

    def _refused(self, specs: Specs) -> bool | None:
        """Whether Core was handed ``specs`` and serves others (or none); None
        while that cannot be told (not handed yet, no time to tell them by)."""
        store = self._store
        if store is None or store.given is not specs or not specs.time or not self.started():
            return None
        return self.specs_time() != specs.time

    def _check_started(self, details: Any) -> None:
        # As on the legacy engine, not fatal: defaults are served until a
        # download brings specs Core reads. A failed (or late) download says so
        # itself: only specs Core's start was handed, and refused, are news here
        # (specs handed by a poll since may be serving already). Said as the
        # start of an outage, which the next download finds again (and counts)
        # and starts over from none (SpecsDownload._check_taken).
        download, store = self._download, self._store
        if not details.is_config_spec_ready and download and store and store.at_start:
            download.log.failed(REFUSED, have_specs=False)
