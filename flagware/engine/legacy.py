"""Evaluation with the legacy ``statsig`` SDK (0.72), the default engine."""

from __future__ import annotations

import threading
from typing import Any

from statsig.statsig_options import StatsigOptions
from statsig.statsig_server import StatsigServer
from statsig.statsig_user import StatsigUser

from flagware.engine.base import Engine, Evaluation, UserFields
from flagware.identity import country_table
from flagware.threads import start_thread

# Seconds close() waits for the SDK to stop. Its shutdown joins each download
# thread for up to 10 s (THREAD_JOIN_TIMEOUT): with a Statsig API that accepts
# and never answers, close() took 20 s, past Docker's 10 s grace before
# SIGKILL. Those threads are daemons holding nothing of flagware's (events are
# stored and delivered by flagware), so the rest is left to the process's end.
SHUTDOWN_TIMEOUT = 2.0


class LegacySDK(Engine):
    """One ``StatsigServer`` per process, evaluated through its evaluator."""

    sdk = "legacy"

    # Subclasses say how to start the SDK.
    def _sdk_key(self) -> str:
        raise NotImplementedError

    def _options(self) -> StatsigOptions:
        raise NotImplementedError

    def _new_server(self) -> StatsigServer:
        return StatsigServer()

    def prepare(self) -> None:
        # The evaluator's start imports ua-parser's legacy parser, whose import
        # compiles every rule (0.2 s).
        from ua_parser import user_agent_parser  # noqa: F401

    def _start(self) -> StatsigServer:
        options = self._options()
        # The evaluator would build its own copy of the address table flagware
        # holds already (0.08-0.3 s, in a worker's first request): it is given
        # that one instead, for users with an IP and no country (send_ip).
        options.disable_country_lookup = True
        server = self._new_server()
        server.initialize(self._sdk_key(), options)
        evaluator = server._evaluator
        evaluator._country_lookup, evaluator._disable_country_lookup = country_table(), False
        return server

    def _stop(self, server: Any) -> None:
        stopping = threading.Thread(
            target=server.shutdown, name="flagware-statsig-shutdown", daemon=True
        )
        start_thread(stopping)
        stopping.join(SHUTDOWN_TIMEOUT)

    def user(self, fields: UserFields) -> StatsigUser:
        return StatsigUser(
            user_id=fields.get("userID"),  # none for a user named by other IDs (flags_for)
            custom_ids=fields.get("customIDs"),
            country=fields.get("country"),
            ip=fields.get("ip"),
            user_agent=fields.get("userAgent"),
            custom=fields.get("custom"),
            _statsig_environment=fields.get("statsigEnvironment"),
        )

    def gate(self, user: StatsigUser, name: str) -> Evaluation:
        # The evaluator directly: the public check_gate copies the user, runs an
        # error boundary and the SDK's exposure logger, all of which flagware
        # does itself (once per request) or does not need.
        result = self.server()._evaluator.check_gate(user, name)
        return Evaluation(
            bool(result.boolean_value),
            {},
            result.rule_id or "",
            result.group_name,
            result.secondary_exposures or [],
        )

    def config(self, user: StatsigUser, name: str) -> Evaluation:
        result = self.server()._evaluator.get_config(user, name)
        params = result.json_value
        return Evaluation(
            bool(result.boolean_value),
            dict(params) if isinstance(params, dict) else {},
            result.rule_id or "",
            result.group_name,
            result.secondary_exposures or [],
        )

    def names(self) -> tuple[list[str], list[str]]:
        # The SDK's spec store has no public listing; Any keeps its untyped API contained.
        store: Any = self.server()._evaluator._spec_store
        configs = store.get_all_configs()
        experiments = [n for n, spec in configs.items() if spec.get("entity") == "experiment"]
        return sorted(store.get_all_gates()), sorted(experiments)

    def specs_time(self) -> int | None:
        return self.server()._spec_store.last_update_time() or None  # 0: none yet

    def experiment_groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        # Its config specs carry each experiment group's name and value on the
        # rules that assign it.
        store: Any = self.server()._evaluator._spec_store
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for name, config in store.get_all_configs().items():
            if config.get("entity") != "experiment":
                continue
            groups: dict[str, dict[str, Any]] = {}
            for rule in config.get("rules", ()):
                group = rule.get("groupName")
                if group and group not in groups:
                    groups[group] = dict(rule.get("returnValue") or {})
            found[name] = groups
        return found
