"""A client's lifecycle: storing what is queued, closing, and the process's exit.

Whoever constructs a client owns it; interpreter exit closes the ones left
open (``_close_all``, which the SIGTERM handler and multiprocessing children
call too: see ``flagware.events.shutdown``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Self

from flagware.events.shutdown import resolving_here, warn_undelivered

if TYPE_CHECKING:
    from flagware.engine import Engine
    from flagware.events.delivery import Delivery
    from flagware.events.store import Store
    from flagware.events.writer import EventWriter
    from flagware.starts import Starts

log = logging.getLogger("flagware")


class Lifecycle:
    """What ``Flagware`` does to end what it started: flush, stop and close."""

    # Made by Flagware.__init__.
    writer: EventWriter
    delivery: Delivery | None
    starts: Starts
    engine: Engine
    store: Store
    shutdown_timeout: float
    isolated: bool
    _closed: bool
    _lock: threading.Lock

    def flush(self, *, timeout: float = -1, wait: float = 0.0) -> int:
        """Store everything queued so far; returns how many of this process's
        events still wait in memory (0: all are stored).

        ``timeout`` bounds the wait for a flush already running. ``wait``: while
        the store refuses writes, try again for up to that many seconds, and
        say what is left. A job that ends with ``os._exit`` (RQ's forked
        worker) loses what is left: a flush returned at once, with nothing
        said, when the store refused writes (a Django trial, 5 of 5 lost).
        """
        if wait <= 0:
            self.writer.flush(timeout=timeout)
            return self.writer.waiting()
        left = self.writer.store_within(wait)
        if left:
            log.error(
                "flagware: %d events could not be stored within %g s (the store refuses"
                " writes); they wait in this process's memory, and a process that ends"
                " now loses them",
                left,
                wait,
            )
        return left

    def stopping(self) -> None:
        """SIGTERM, handed on to the server's graceful shutdown: store what is
        queued, trying again for up to ``shutdown_timeout`` s while the store
        refuses writes (the server may end the process without closing it)."""
        self.writer.stopping(self.shutdown_timeout)

    def _reopened(self) -> None:
        """Used again after close(): a second lifespan in one process (each
        ``with TestClient(app)`` runs one) went on logging into a writer nobody
        would close, so its events were lost at exit. Live again instead: the
        next close, or exit, stores and delivers them."""
        with self._lock:
            self._closed = False
        _live_clients.add(self)
        _closed_clients.discard(self)
        if self.delivery is not None:
            self.delivery.reopen()

    def close(self) -> None:
        """Store everything queued and deliver it, for up to ``shutdown_timeout`` s
        in all, and stop.

        A client used again afterwards starts anew (its writer, SDK and
        connections start on first use), and is closed again at exit."""
        with self._lock:
            closed, self._closed = self._closed, True
        if closed:  # only what a read opened since (fw.store.iter_events() after close)
            self.store.close()
            return
        _live_clients.discard(self)
        _closed_clients.add(self)
        # One budget for storing what is queued (tried again while the store is
        # away) and delivering it; what is left of it, for the threads to stop.
        deadline = time.monotonic() + self.shutdown_timeout
        with resolving_here():  # gevent at exit: no thread for name lookups
            self.writer.close(self.shutdown_timeout)
            if self.writer.failing_for() is None:  # else the store is away, and said so:
                self.starts.record()  # "recorded after the next events" misled (a trial)
            if self.delivery is not None:
                try:
                    drained = self.delivery.drain(max(0.0, deadline - time.monotonic()))
                    warn_undelivered(self.delivery, self.shutdown_timeout, drained=drained)
                finally:
                    # What the drain left, and a second at least for the threads to
                    # stop. A send still in flight then (a Statsig API that hangs) is
                    # left to die with the process: its lease runs out and the batch
                    # goes again, so a stop stays within a container's grace period.
                    self.delivery.close(max(1.0, deadline - time.monotonic()))
        self.engine.close()  # at most 2 s (engine.legacy, engine.core: SHUTDOWN_TIMEOUT)
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Strong references: a client dropped without close() must still be flushed at exit.
_live_clients: set[Lifecycle] = set()
# Closed clients still referenced (a module's client after a test's lifespan
# closed it): used again on the next request, so overrides are checked
# against their specs while no client is live (flagware.testing).
_closed_clients: weakref.WeakSet[Lifecycle] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for client in list(_live_clients):
        try:
            client.close()
        except Exception:
            log.exception("flagware: closing at exit failed")
