"""Locks made in the process that takes them, when it first takes them.

flagware holds a few locks while it starts something: the SDK (its first
download, its threads), the event writer's thread, delivery's threads. Under
gevent such a start yields to the hub with the lock held, and another greenlet
waiting for the lock must wait as a greenlet does: on gevent's lock, not the
operating system's, which would stop the whole worker thread, and with it the
greenlet that holds the lock. Deadlock.

A lock made when its owner is built, or at a fork, is made too early for that:
``gunicorn --preload -k gevent`` imports the app in the master and
monkey-patches ``threading`` in each worker only after the fork. Every first
request of a worker then hung (the Core engine), or sometimes did (the legacy
engine). A ``ProcessLock`` makes its lock on first use in each process, after
any patching, so it is gevent's lock when gevent patched ``threading``. The
same rule covers forks no hook sees (uWSGI forks from C): a new process is
told by its PID, and gets a fresh lock, never one a parent's thread held.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

_making = threading.Lock()  # held only to make a lock: never across anything that yields


def _after_fork_in_child() -> None:
    global _making
    _making = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ProcessLock:
    """A ``threading.Lock`` of this process, made when first taken in it."""

    __slots__ = ("_lock", "_pid")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # replaced at the first use in each process
        self._pid = -1

    def _here(self) -> threading.Lock:
        pid = os.getpid()
        if self._pid != pid:
            with _making:
                if self._pid != pid:
                    self._lock = threading.Lock()
                    self._pid = pid
        return self._lock

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._here().acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._here().acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()
