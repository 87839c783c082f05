"""What every engine shares: the evaluation result and one SDK per process, started on first use."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from flagware.locks import ProcessLock
from flagware.threads import signals_held

if TYPE_CHECKING:
    from flagware.engine.specs_log import SpecsLog

log = logging.getLogger("flagware")

# What flagware puts in a user (the Statsig wire shape); engines build their SDK's user from it.
UserFields = Mapping[str, Any]


class Evaluation(NamedTuple):
    """What one gate or config evaluation gives, including what its exposure needs."""

    value: bool
    params: dict[str, Any]
    rule_id: str
    group: str | None
    secondary_exposures: list[dict[str, str]]


class Engine:
    """Starts its SDK lazily in each process, so pre-fork servers are safe.

    A server created before a fork is never used in the child: its threads did
    not survive the fork, so the child builds its own on first use. Subclasses
    say how to start and stop their SDK and how to evaluate with it.
    """

    kind = "engine"  # "local" or "statsig": where the specs come from
    sdk = "legacy"  # "legacy" (the statsig package) or "core" (statsig-python-core)

    def __init__(self) -> None:
        self._lock = ProcessLock()  # held while the SDK starts (see flagware.locks)
        self._server: Any = None
        self._pid = -1
        # started(), for the check every ASGI request makes: no call and no
        # os.getpid() (a system call), which cost 0.5 us of the middleware's
        # 1.6 us a request. Reset at a fork; a fork no hook sees (uWSGI's, from
        # C) can leave it stale, and then the first evaluation starts the SDK
        # itself, as server() checks the PID.
        self.ready = False
        engines.add(self)

    def _start(self) -> Any:
        raise NotImplementedError

    def _stop(self, server: Any) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Load what the SDK's start needs that is plain data (its imports, its
        tables): safe before a fork, and shared by the workers forked after it.
        The SDK itself (threads, connections) still starts in each process."""

    def started(self) -> bool:
        """Whether this process's SDK is running (so evaluating will not start it)."""
        return self._server is not None and self._pid == os.getpid()

    def server(self) -> Any:
        server = self._server
        if server is not None and self._pid == os.getpid():
            return server
        with self._lock:
            if self._server is None or self._pid != os.getpid():
                with signals_held():  # the SDK's own threads, Core's Rust ones too
                    self._server, self._pid = self._start(), os.getpid()
                self.ready = True
            return self._server

    def _replace_server(self) -> None:
        """Start this process's server anew on the current specs, then stop the old one.

        In that order: a Core instance started while the one before it was
        winding down stalled the request thread for up to 30 s (Core printed
        "Failed to acquire read lock for logger" and its shutdown timed out),
        and uvicorn's health check killed the worker (2 of 30 reloads in one
        process, 5 of 10 under ``uvicorn --workers 2``; none started first).
        A start that fails raises, and the old server stays.
        """
        with self._lock:
            old = self._server if self._pid == os.getpid() else None
            if old is None:  # none yet in this process: the next call starts one
                self._server = None
                self.ready = False
                return
            with signals_held():  # on whichever request thread read the edit first
                self._server = self._start()
        self._stop(old)

    def user(self, fields: UserFields) -> Any:
        """The SDK's user object for flagware's user fields (built once per request)."""
        raise NotImplementedError

    def gate(self, user: Any, name: str) -> Evaluation:
        raise NotImplementedError

    def config(self, user: Any, name: str) -> Evaluation:
        raise NotImplementedError

    def names(self) -> tuple[list[str], list[str]]:
        """Gate and experiment names in the specs this process holds."""
        raise NotImplementedError

    def experiment_groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Each experiment's groups and their params, from the specs this process holds."""
        raise NotImplementedError

    def specs_time(self) -> int | None:
        """When the specs this process evaluates last changed (Unix ms, their
        ``time``); None while it has none and serves defaults."""
        raise NotImplementedError

    def specs_log(self) -> SpecsLog | None:
        """This process's Statsig specs downloads (None: the local spec, or not
        started): the diagnostics page says an outage the log said."""
        return None

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            self.ready = False
            if server is not None and self._pid == os.getpid():
                try:
                    self._stop(server)
                except Exception:  # shutting down must never raise at exit
                    log.debug("flagware: %s SDK shutdown failed", self.sdk, exc_info=True)


# Every engine of this process: reset at a fork, closed at exit (core.py).
engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The lock is the child's own on first use (a ProcessLock), never one a
    # parent's thread held while starting the SDK at the fork.
    for engine in list(engines):
        engine.ready = False  # the parent's SDK did not survive the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
