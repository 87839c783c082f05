"""The in-memory queue and the background thread that appends it to the store.

The request path only does ``SimpleQueue.put`` (a C call that never blocks).
A daemon thread drains the queue every ``flush_interval`` seconds into one
SQLite transaction. Everything here is per process: after a fork the child
gets a fresh queue and thread on first use, and the events it inherited in the
copied queue are left to the parent, which owns them (storing them twice
would duplicate them).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable

from flagware.events.model import Event
from flagware.events.store import EventStore

log = logging.getLogger("flagware")

MAX_BATCH = 5000

_writers: weakref.WeakSet[EventWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock some parent thread held at the fork stays held forever in the
    # child: give every writer fresh locks before anything can use them.
    for writer in list(_writers):
        writer._start_lock = threading.Lock()
        writer._flush_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class EventWriter:
    def __init__(
        self,
        store: EventStore,
        *,
        deliver: bool = False,
        flush_interval: float = 0.2,  # the most a kill -9 can lose
        on_stored: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException, str], None] | None = None,
        on_start: Callable[[], None] | None = None,  # once per process, on the writer thread
    ) -> None:
        self.store = store
        self.deliver = deliver
        self.flush_interval = flush_interval
        self.on_stored = on_stored
        self.on_error = on_error
        self.on_start = on_start
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pid = -1
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stored = 0
        _writers.add(self)

    def put(self, event: Event) -> None:
        """Queue one event: O(1), never blocks, safe from any thread."""
        if self._pid != os.getpid():
            self._start()
        self._queue.put(event)

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            # Fresh state in a new process: inherited events belong to the parent.
            self._queue = queue.SimpleQueue()
            self._wake = threading.Event()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="flagware-writer", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _run(self) -> None:
        stop, wake = self._stop, self._wake
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc, "writer start")
        while not stop.is_set():
            wake.wait(self.flush_interval)
            wake.clear()
            self.flush()

    def flush(self) -> int:
        """Store everything queued so far; returns how many events were stored."""
        if self._pid != os.getpid():
            return 0
        total = 0
        with self._flush_lock:
            while True:
                batch = self._take(MAX_BATCH)
                if not batch:
                    break
                try:
                    self.store.append(batch, deliver=self.deliver)
                except Exception as exc:  # keep the events: put them back for the next try
                    for event in batch:
                        self._queue.put(event)
                    if self.on_error is not None:
                        self.on_error(exc, "event store")
                    else:
                        log.exception("flagware: could not store events")
                    break
                total += len(batch)
        if total:
            self.stored += total
            if self.on_stored is not None:
                self.on_stored(total)
        return total

    def _take(self, limit: int) -> list[Event]:
        batch: list[Event] = []
        get = self._queue.get_nowait
        try:
            while len(batch) < limit:
                batch.append(get())
        except queue.Empty:
            pass
        return batch

    def close(self) -> None:
        """Stop the thread and store everything queued (this process only)."""
        if self._pid != os.getpid():
            return
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()
        self._pid = -1
