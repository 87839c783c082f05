"""The in-memory queue and the background thread that appends it to the store.

The request path encodes each event into the row the store inserts and
queues it with ``SimpleQueue.put`` (a C call that never blocks). A row is a
tuple of strings and numbers, which the garbage collector stops tracking at
its first pass. Queued as they were, events (each with its user dict and
lists) stayed tracked for the up to 0.2 s they waited, were promoted to the
oldest generation, and brought on a full collection of the whole app every
few seconds per worker (25-45 ms each here; 5-10x fewer with rows). Encoding at
log time also stores what was logged, whatever the caller changes later, and
an event that cannot be encoded is refused alone, where the caller reports
it, instead of failing every batch after it.

A daemon thread drains the queue into one store transaction per batch on a
fixed cadence: each flush is due ``flush_interval`` after the previous one
STARTED, so a slow flush (a busy machine, a slow database) does not stretch
the window a kill -9 can lose. Everything here is per process: after a fork
the child gets a fresh queue and thread on first use, and the events it
inherited in the copied queue are left to the parent, which owns them (storing
them twice would duplicate them).

Memory is bounded: at most ``max_queue`` events wait in a process, counting a
batch the store refused (kept, and tried again first). While the store fails
and the queue is full, new events are dropped, counted (``dropped``, and
``queue_dropped`` in the store once it takes writes again) and logged once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from flagware.events import shutdown
from flagware.events.model import Event
from flagware.events.store import Store, StoreUnavailable
from flagware.events.store.base import event_row
from flagware.locks import ProcessLock
from flagware.outages import describe, is_outage, is_refusal
from flagware.threads import start_thread

log = logging.getLogger("flagware")

MAX_BATCH = 5000
STORE_FAILURE = "event store"  # where a failed append is reported (Flagware.errors key)
# Seconds a write may take before it is said to hang: a database that stops
# answering (up, frozen) holds a write on an open connection for good, and a
# trial's workers said nothing for a 10 minute hang.
HUNG_AFTER = 10.0
# About 40 MB of events (~750 bytes each): a store outage of 25 s at 2,000
# events/s per process before anything is dropped.
DEFAULT_MAX_QUEUE = 50_000
# The longest pause between the writer's tries while the store refuses writes:
# an outage's end is found within 2 s; a database refusing the URL (a wrong
# password) is asked every 30 s, and found fixed within that.
RETRY_MAX = 2.0
REFUSED_RETRY_MAX = 30.0

Row = tuple[Any, ...]  # an event as the store inserts it (events.store.base.event_row)

_writers: weakref.WeakSet[EventWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The locks are the child's own on first use (ProcessLock): none a parent's
    # thread held at the fork. The flusher was a parent's thread.
    for writer in list(_writers):
        writer._flusher = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class EventWriter:
    def __init__(
        self,
        store: Store,
        *,
        deliver: bool = False,
        flush_interval: float = 0.2,  # the most a kill -9 can lose, plus one flush
        max_queue: int = DEFAULT_MAX_QUEUE,  # events waiting in memory; more are dropped
        on_stored: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException, str], None] | None = None,
        on_start: Callable[[], None] | None = None,  # once per process, on the writer thread
        on_process: Callable[[], None] | None = None,  # once per process, by its first event
        on_recovered: Callable[[], None] | None = None,  # the store takes writes after failing
        on_reopen: Callable[[], None] | None = None,  # used again after close(), same process
    ) -> None:
        self.store = store
        self.deliver = deliver
        self.flush_interval = flush_interval
        self.on_stored = on_stored
        self.on_error = on_error
        self.on_recovered = on_recovered
        self.on_reopen = on_reopen
        self._closed_pid = -1  # the process that closed it, which may use it again
        self._failing_since: float | None = None  # monotonic time of the outage's first failure
        self._refusing = False  # the last failure: the database refusing the URL
        self.on_start = on_start
        self.on_process = on_process
        self.max_queue = max(1, max_queue)
        # Made in each process on first use (see flagware.locks): starting the
        # thread, and a flush, may yield to gevent's hub with the lock held.
        self._start_lock = ProcessLock()
        self._flush_lock = ProcessLock()
        self._flusher: int | None = None  # the thread holding _flush_lock
        self._drop_lock = ProcessLock()
        self._held: list[Row] = []  # a batch the store refused: stored first next time
        # Events of the batch being written: a write that never returns (a
        # database that hangs mid-COPY) holds them, and an exit loses them.
        self._writing = 0
        self._write_began = 0.0  # monotonic time the write in flight began
        self._waited_out = False  # stopping() spent its timeout on a store that refused
        self._say_held_at = 0.0  # when _say_held may speak again
        self._room = self.max_queue  # what the queue may hold besides the held batch
        self.dropped = 0  # events refused because the queue was full
        self._unrecorded = 0  # of those, not yet added to the store's counter
        self._pid = -1
        self._queue: queue.SimpleQueue[Row] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stored = 0
        # Store each event as it is queued, as after SIGTERM: for a process
        # whose threads run only during requests (uWSGI without threads).
        self.inline = False
        _writers.add(self)

    def put(self, event: Event) -> None:
        """Queue one event: O(1), never blocks, safe from any thread.

        Raises what encoding the event raises (a metadata cycle): nothing is queued.
        """
        if self._pid != os.getpid():
            self._start()
        size = self._queue.qsize()
        if size >= self._room:
            self._drop()
            return
        self._queue.put(event_row(event, self.deliver))
        if size == MAX_BATCH:  # a burst: store it now rather than at the next tick
            self._wake.set()
        if self._writing:  # the writer cannot say it hangs: its callers do
            self.check_hung()
        if shutdown.draining or self.inline:  # SIGTERM: the process may end without a flush
            self.flush(timeout=5)
            if self._waited_out and self._held:
                self._say_held()

    def _drop(self) -> None:
        with self._drop_lock:
            self.dropped += 1
            self._unrecorded += 1
            first = self._unrecorded == 1
        if first:  # once per outage: the count says the rest
            log.error(
                "flagware: the event queue is full (%d events): the store is not taking writes"
                " or not keeping up; dropping new events and counting them (queue_dropped)",
                self.max_queue,
            )

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid():
                return
            # Fresh state in a new process: inherited events belong to the parent.
            self._queue = queue.SimpleQueue()
            self._held = []
            self._writing = 0
            self._waited_out = False
            self._room = self.max_queue
            self._wake = threading.Event()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="flagware-writer", daemon=True)
            self._pid = os.getpid()
            if self.on_process is not None:
                self.on_process()
            try:
                start_thread(self._thread)
            except RuntimeError:
                # Python 3.12 at interpreter shutdown (an event logged from an
                # atexit handler): no thread may start, so each event is stored
                # as it is queued, as after SIGTERM.
                self._thread = None
                shutdown.draining = True
            if self._closed_pid == self._pid:  # closed, and used again since
                self._closed_pid = -1
                if self.on_reopen is not None:
                    self.on_reopen()

    def _run(self) -> None:
        stop, wake = self._stop, self._wake
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc, "writer start")
        due = time.monotonic() + self.flush_interval
        failed = 0  # flushes in a row that the store refused
        while not stop.is_set():
            wake.wait(max(0.0, due - time.monotonic()))
            wake.clear()
            started = time.monotonic()
            if failed and started < due:
                continue  # backing off: a burst's wake-up waits too
            self.flush()
            # The next flush is due one interval after this one started, not
            # after it ended: a flush that ran long is followed at once.
            if self._failing_since is None:
                failed, pause = 0, self.flush_interval
            else:
                # A store that refuses writes is tried again less and less often:
                # each try is a connection, and a wrong password made PostgreSQL log
                # five refusals a second for every process (a trial: 3,299 lines).
                failed += 1
                cap = REFUSED_RETRY_MAX if self._refusing else RETRY_MAX
                pause = max(
                    self.flush_interval, min(cap, self.flush_interval * 2 ** min(failed, 16))
                )
            due = started + pause

    def flush(self, *, timeout: float = -1) -> int:
        """Store everything queued so far; returns how many events were stored.

        ``timeout`` bounds the wait for a flush running on another thread (a
        SIGTERM handler must not wait long for the writer's). A flush its own
        thread was interrupted in is not waited for at all: it returns 0 at
        once, and that flush stores these events when the handler returns.
        """
        if self._pid != os.getpid():
            return 0
        me = threading.get_ident()
        if self._flusher == me:
            # A signal handler interrupted this thread's own flush, which stores
            # everything queued, this call's events too, once the handler
            # returns: waiting for the lock would be waiting for ourselves.
            return 0
        if not self._flush_lock.acquire(timeout=timeout):
            return 0
        self._flusher = me
        try:
            total = self._store_queued()
        finally:
            self._flusher = None
            self._flush_lock.release()
        if total:
            self.stored += total
            if self.on_stored is not None:
                self.on_stored(total)
        return total

    def _store_queued(self) -> int:
        total = 0
        while True:
            batch, self._held = self._held or self._take(min(MAX_BATCH, self.max_queue)), []
            if not batch:
                break
            self._write_began = time.monotonic()  # first: check_hung reads _writing first
            self._writing = len(batch)
            try:
                self.store.append_rows(batch)
            except Exception as exc:  # keep the events for the next try, within the cap
                self._held = batch
                self._room = max(0, self.max_queue - len(batch))
                self._report(exc)
                break
            finally:
                self._writing = 0
            self._room = self.max_queue
            total += len(batch)
        if total and (self._failing_since is not None or self._unrecorded):
            self._backlog_cleared(total)
        return total

    def _backlog_cleared(self, stored: int) -> None:
        """Say once that an outage or an overflow ended, and what it cost: its
        start was logged, so its end is too, in one line."""
        with self._drop_lock:
            dropped, self._unrecorded = self._unrecorded, 0
        if dropped:
            try:
                self.store.add_to_counter("queue_dropped", dropped)
            except Exception as exc:  # counted at the next success instead
                with self._drop_lock:
                    self._unrecorded += dropped
                self._report(exc)
                return
        lost = (
            f"; {dropped} that found the queue full were dropped (counted in queue_dropped)"
            if dropped
            else ""
        )
        if self._failing_since is None:  # the store kept up too slowly, never failed
            log.warning("flagware: the event queue has room again%s", lost)
            return
        lasted = time.monotonic() - self._failing_since
        self._failing_since = None
        log.warning(
            "flagware: the event store takes writes again after %.1f s; the %d events that"
            " waited or came meanwhile are stored%s",
            lasted,
            stored,
            lost,
        )
        if self.on_recovered is not None:
            self.on_recovered()

    def check_hung(self) -> None:
        """Say a write that has not returned for HUNG_AFTER s as an outage, from
        when it began (its end as a recovery), and keep request reads off the
        database meanwhile (each queued event and diagnostics request asks)."""
        if not self._writing or time.monotonic() - self._write_began < HUNG_AFTER:
            return
        if self._pid != os.getpid():  # a parent's write, inherited by a fork
            return
        if self._failing_since is None:
            self._failing_since = self._write_began
            self._report(StoreUnavailable(f"a write has not returned for {HUNG_AFTER:g} s"))
        else:
            self._mark_away("a write does not return")

    def _mark_away(self, failure: str) -> None:
        away = getattr(self.store, "away", None)  # PostgreSQL's: see request_reads
        if away is not None:
            away(failure)

    def _report(self, exc: BaseException) -> None:
        if is_outage(exc) and not is_refusal(exc):
            self._mark_away(describe(exc))
        self._refusing = is_refusal(exc)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if self.on_error is not None:
            self.on_error(exc, STORE_FAILURE)
        else:
            log.error("flagware: could not store events", exc_info=exc)

    def _take(self, limit: int) -> list[Row]:
        batch: list[Row] = []
        get = self._queue.get_nowait
        try:
            while len(batch) < limit:
                batch.append(get())
        except queue.Empty:
            pass
        return batch

    def close(self, timeout: float = 0.0) -> None:
        """Stop the thread and store everything queued (this process only).

        While the store refuses writes, it tries again for up to ``timeout`` s:
        a SIGTERM during a database restart (a deploy meeting a failover) lost
        the whole queue at once, with the database back two seconds later.
        """
        if self._pid != os.getpid():
            return
        deadline = time.monotonic() + timeout  # the writer's last flush counts against it
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Its write in flight, within the timeout (a second at least, at
            # most five); after a SIGTERM that waited out the outage (see
            # stopping()), a second.
            thread.join(timeout=1.0 if self._waited_out else min(5.0, max(1.0, timeout)))
        # After such a SIGTERM: one more try, not a second wait.
        left = self.store_within(0.0 if self._waited_out else max(0.0, deadline - time.monotonic()))
        if left:  # the store still refuses writes: say what is lost, never silently
            # The total: any count a SIGTERM said is part of it (three lines
            # with overlapping counts read as three losses in a trial's log).
            log.error("flagware: %d events held in all could not be stored before exit: lost", left)
        self._pid = -1
        self._closed_pid = os.getpid()

    def stopping(self, timeout: float) -> None:
        """SIGTERM handed on to a server's graceful shutdown: store what is
        queued now, tried again while the store refuses writes for up to
        ``timeout`` s. The server may end the process without exit handlers
        (uvicorn's worker processes do), so nothing later might: a new user's
        trial lost 990 events without a word, the database back 2.2 s after the
        SIGTERM, where close() would have waited for it."""
        if self._pid != os.getpid():
            return
        left = self.store_within(timeout)
        self._waited_out = bool(left)
        if left:
            log.error(
                "flagware: %d queued events could not be stored within %g s of SIGTERM (the"
                " store refuses writes or does not answer); they and the events of requests"
                " still in flight are tried again until this process ends, and lost if it"
                " ends first",
                left,
                timeout,
            )

    def _say_held(self) -> None:
        """After stopping() waited out the store: the events of requests still in
        flight cannot be stored either. Their running count, at most once a
        second: the process may end at any moment (a trial found the count of
        stopping() alone 4-17 events short)."""
        now = time.monotonic()
        if now < self._say_held_at:
            return
        self._say_held_at = now + 1.0
        log.error(
            "flagware: now %d events held in all, those said before included (the store"
            " still refuses writes after SIGTERM); lost if this process ends first",
            self.waiting(),
        )

    def store_within(self, timeout: float) -> int:
        """Store what is queued, tried again while the store refuses writes for up
        to ``timeout`` s; how many events are left."""
        if self._flusher == threading.get_ident():
            return 0  # a signal handler in this thread's own flush, which stores them all
        # A flush running in the writer is waited for within the time given (a
        # second at least): at exit, one that outlived close()'s join is a
        # write that hangs, not one about to end. Its waits count against the
        # time (a hung database's SIGTERM waited 5 s more each).
        deadline, pause = time.monotonic() + timeout, 0.1
        self.flush(timeout=min(5.0, max(1.0, timeout)))
        while (self._held or self._queue.qsize()) and time.monotonic() < deadline:
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(2 * pause, 1.0)
            self.flush(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        return self._left()

    def _left(self) -> int:
        # With a write still running in another thread (a hung database: a
        # trial's exit said nothing of the batch it held), its events too.
        return len(self._held) + self._queue.qsize() + self._writing

    def failing_for(self) -> float | None:
        """Seconds since this process's writes began to fail, or None while they succeed."""
        since = self._failing_since
        return None if since is None else time.monotonic() - since

    def waiting(self) -> int:
        """Events this process holds in memory, not yet stored."""
        if self._pid != os.getpid():
            return 0
        return self._left()

    def pending_drops(self) -> int:
        """Events this process dropped that the store's counter does not show yet."""
        return self._unrecorded
