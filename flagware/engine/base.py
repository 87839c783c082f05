"""The SDK wrapper both engines share: one StatsigServer per process, started on first use."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, NamedTuple

from statsig.statsig_options import StatsigOptions
from statsig.statsig_server import StatsigServer
from statsig.statsig_user import StatsigUser

log = logging.getLogger("flagware")


class Evaluation(NamedTuple):
    """What one gate or config evaluation gives, including what its exposure needs."""

    value: bool
    params: dict[str, Any]
    rule_id: str
    group: str | None
    secondary_exposures: list[dict[str, str]]


class Engine:
    """Starts the SDK lazily in each process, so pre-fork servers are safe.

    A server created before a fork is never used in the child: its threads did
    not survive the fork, so the child builds its own on first use.
    """

    kind = "engine"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: StatsigServer | None = None
        self._pid = -1

    # Subclasses say how to start the SDK.
    def _sdk_key(self) -> str:
        raise NotImplementedError

    def _options(self) -> StatsigOptions:
        raise NotImplementedError

    def server(self) -> StatsigServer:
        server = self._server
        if server is not None and self._pid == os.getpid():
            return server
        with self._lock:
            if self._server is None or self._pid != os.getpid():
                server = StatsigServer()
                server.initialize(self._sdk_key(), self._options())
                self._server, self._pid = server, os.getpid()
            return self._server

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

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            if server is not None and self._pid == os.getpid():
                try:
                    server.shutdown()
                except Exception:  # shutting down must never raise at exit
                    log.debug("flagware: statsig shutdown failed", exc_info=True)
