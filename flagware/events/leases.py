"""One process's leases on the outbox: claim, keep alive, settle, recover.

A sender leases a batch in the store before it sends it (``Store.claim``), so
senders sharing a store never send the same event twice while a lease lives.
Leases are short (``lease`` seconds, 15 by default) and a heartbeat thread
renews those of batches still in flight every ``lease / 3`` seconds, on the
database's clock for PostgreSQL, so a live sender keeps a slow request's batch
for as long as the request takes, while a dead sender's batches (a host or
container gone, a SIGKILL) are free again at most ``lease`` seconds after its
last renewal. On the same host a dead process's leases are freed at once
(``Store.release_dead_leases``), at start, before a drain and every
``REAP_INTERVAL`` seconds.

A lease that ran out may have been sent already, so whoever takes it over
sends it with the attempt count raised (``STATSIG-RETRY``): a killed sender
can duplicate at most the batches it had in flight.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable

from flagware.events.store import Batch, Store, lease_owner
from flagware.threads import start_thread

log = logging.getLogger("flagware")

REAP_INTERVAL = 30.0  # seconds between checks for leases of dead local processes
DEFAULT_LEASE = 15.0


class Leases:
    """The leases one process holds on ``store``; safe to use from its threads."""

    def __init__(
        self,
        store: Store,
        *,
        lease: float,  # seconds a lease lives without a renewal
        max_age: float,  # older events are dropped at claim time
        persist_for: float,  # how long an outcome is retried while the store is away
        stop: threading.Event,  # the sender is closing: give up retrying outcomes
        report: Callable[[BaseException, str], None],
    ) -> None:
        self.store = store
        self.lease = lease
        self.heartbeat = lease / 3  # two renewals may fail before a lease runs out
        self.max_age = max_age
        self.persist_for = persist_for
        self._stop = stop
        self._report = report
        self._nonce = uuid.uuid4().hex[:8]
        self._batches = itertools.count()  # next() is atomic in CPython
        self._lock = threading.Lock()
        self._held: dict[str, tuple[Batch, float]] = {}  # owner -> (batch, renewed at)
        self._settling: set[str] = set()  # owners whose outcome is being written
        self._reaped = time.monotonic()
        self.renewals = 0  # leases renewed by the heartbeat
        self.lost = 0  # leases found taken over (they ran out before a renewal)
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # -- claim and outcome ------------------------------------------------------------

    def claim(self, limit: int) -> Batch | None:
        """Lease up to ``limit`` of the oldest claimable events; None when there are none."""
        owner = lease_owner(self._nonce, next(self._batches))
        batch = self.store.claim(owner, limit=limit, lease=self.lease, max_age=self.max_age)
        if batch is not None and batch.payloads:
            with self._lock:
                self._held[owner] = (batch, time.monotonic())
        return batch

    def settle(self, batch: Batch, state: int, failure: str = "") -> None:
        """Record a send's outcome (DELIVERED or PARKED) and stop renewing its lease."""
        self._persist(batch, lambda: self.store.settle(batch, state, failure))

    def release(self, batch: Batch, *, failed: bool) -> None:
        """Give the batch back to the pool; ``failed`` counts a retried attempt."""
        self._persist(batch, lambda: self.store.release(batch, failed=failed))

    def _persist(self, batch: Batch, write: Callable[[], object]) -> None:
        """Record an outcome, trying again while the store is briefly away (a
        database restart) for up to ``persist_for``. The heartbeat keeps renewing
        the lease meanwhile: giving up leaves the batch to run out and be sent
        again, even one Statsig already accepted."""
        deadline = time.monotonic() + self.persist_for
        pause = 0.1
        with self._lock:
            self._settling.add(batch.owner)
        try:
            while True:
                try:
                    write()
                    return
                except Exception as exc:
                    if time.monotonic() + pause > deadline or self._stop.is_set():
                        raise
                    self._report(exc, "event store (delivery outcome)")
                    self._stop.wait(pause)
                    pause = min(pause * 2, 2.0)
        finally:
            self.forget(batch)

    def forget(self, batch: Batch) -> None:
        """Stop renewing the batch's lease (its outcome is written, or never will be:
        the lease then runs out and the batch goes out again)."""
        with self._lock:
            self._held.pop(batch.owner, None)
            self._settling.discard(batch.owner)

    # -- dead senders -------------------------------------------------------------------

    def release_dead(self) -> None:
        """Free at once the leases of dead processes of this host."""
        self.store.release_dead_leases()
        with self._lock:
            self._reaped = time.monotonic()

    def reap(self) -> None:
        """Now and then, free leases of dead local processes (a worker killed by a
        timeout) instead of waiting for them to run out."""
        now = time.monotonic()
        with self._lock:
            if now - self._reaped < REAP_INTERVAL:
                return
            self._reaped = now
        self.store.release_dead_leases()

    # -- the heartbeat ------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat thread (once per process)."""
        thread = threading.Thread(target=self._beat, name="flagware-leases", daemon=True)
        start_thread(thread)  # may raise RuntimeError at interpreter shutdown (Delivery._start)
        self._thread = thread

    def close(self, timeout: float) -> bool:
        """Stop the heartbeat (once no send is in flight); False if it still runs."""
        self._done.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _beat(self) -> None:
        try:
            while not self._done.wait(min(1.0, self.heartbeat / 2)):
                try:
                    self.renew_due()
                except Exception as exc:  # the store is away: try again at the next tick
                    self._report(exc, "event store (lease renewal)")
        finally:
            self.store.close_thread()

    def renew_due(self) -> int:
        """Renew the leases of batches in flight for ``heartbeat`` seconds or more.

        Most sends take well under a heartbeat, so most leases are never renewed
        and this thread opens no store connection at all.
        """
        now = time.monotonic()
        with self._lock:
            due = [batch for batch, at in self._held.values() if now - at >= self.heartbeat]
        renewed = 0
        for batch in due:
            kept = self.store.renew(batch, lease=self.lease)
            with self._lock:
                if batch.owner not in self._held or (not kept and batch.owner in self._settling):
                    continue  # settled meanwhile (its rows left the lease)
                if kept:
                    self._held[batch.owner] = (batch, now)
                    renewed += 1
                else:  # ran out and taken over: its settle will change nothing
                    del self._held[batch.owner]
                    self.lost += 1
            if not kept:
                log.warning(
                    "flagware: a lease on %d events ran out before it was renewed; another"
                    " sender re-sends them (flagged as a retry)",
                    len(batch),
                )
        self.renewals += renewed
        return renewed
