"""One process's delivery state: its store, threads, leases and shared backoff,
and what a failed send leaves (given back to be retried, or parked).

Made lazily by :class:`~flagware.events.delivery.Delivery` in the process
that delivers, and never used in another: after a fork the child makes its own.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from flagware.events.leases import Leases
from flagware.events.stats import failure_record
from flagware.events.store import PARKED, Batch, open_store, redact
from flagware.events.store.base import FAILURE_KEY

if TYPE_CHECKING:
    from flagware.events.delivery import Delivery

log = logging.getLogger("flagware")

DELIVERY_FAILURE = "statsig delivery"  # where delivery's own errors are reported (Flagware.errors)


def log_failure(exc: BaseException, where: str) -> None:
    """Where a delivery made without ``on_error`` reports what failed inside it."""
    log.error("flagware: %s failed", where, exc_info=exc)


class Runtime:
    """One process's delivery state. Never used in another process."""

    def __init__(self, delivery: Delivery) -> None:
        self.pid = os.getpid()
        self.store = open_store(delivery.store_location)
        self.where = redact(delivery.store_location)  # for the log
        self.session_id = str(uuid.uuid4())
        self.batch_size = delivery.batch_size
        self.retry_min = delivery.retry_min
        self.retry_max = delivery.retry_max
        self.report = delivery._report
        self.on_recovered = delivery._on_recovered
        self.raised = False  # the last step raised: reported, and a recovery is news
        self.raises = 0  # steps that raised, so a step can tell one raised while it ran
        self.lock = threading.Lock()
        self.wake = threading.Event()  # new events stored
        self.kick = threading.Event()  # a drain wants a retry now, not after the backoff
        self.stop = threading.Event()
        self.leases = Leases(
            self.store,
            lease=delivery.lease,
            max_age=delivery.max_age,
            persist_for=delivery.persist_for,
            stop=self.stop,
            report=self.report,
        )
        self.started = False  # threads started, or refused (see Delivery._start)
        self.threads: list[threading.Thread] = []  # those that started
        self.failures = 0  # consecutive failed sends, shared by the threads
        self.parks = 0  # batches parked since the last accepted one
        # Why the last send failed, while none has worked since: the close()
        # warning repeats it, and a refusal of the credentials (401, 407) ends a
        # drain: they refuse every payload alike, and the events stay stored.
        self.problem: str | None = None
        self.refused = False
        self.retry_at = 0.0  # monotonic time before which nobody sends
        self.succeeded_at = 0.0  # monotonic time of the last send that went through
        self.draining = 0
        self.inflight = 0  # threads between claim and settle
        self.claims = 0  # claims started, so a drain can tell none slipped past it

    def step(self, step: Callable[[], bool]) -> bool | None:
        """One claim-and-send ``step``: whether it found work, or None if it raised
        (a bug, or the store away: reported, and backed off like a failed send).

        A step that works after one that raised says so (``on_recovered``), so
        that the next failure is logged as a new outage: only a place's first
        failure is logged, and a second store outage under delivery was silent.
        """
        with self.lock:
            seen = self.raises
        try:
            busy = step()
        except Exception as exc:
            self.report(exc, DELIVERY_FAILURE)
            self.failed()
            with self.lock:
                self.raised = True
                self.raises += 1
            return None
        with self.lock:
            # Only a step begun after the last one that raised is news: one begun
            # before it (another thread's, its claim made while the store was
            # still up) ended the outage just begun, logged twice (a CI run).
            recovered = self.raised and seen == self.raises
            if recovered:
                self.raised = False
        if recovered and self.on_recovered is not None:
            self.on_recovered(DELIVERY_FAILURE)
        return busy

    def succeeded(self) -> bool:
        """A send went through: no more backoff. True when it ends a run of failures."""
        with self.lock:
            recovered = self.failures > 0
            self.failures = self.parks = 0
            self.retry_at = 0.0
            self.succeeded_at = time.monotonic()
            self.problem, self.refused = None, False
        return recovered

    def delivered(self) -> None:
        """This process sent a batch that Statsig accepted."""
        if self.succeeded():
            log.info("flagware: Statsig delivery recovered")

    def idle(self) -> None:
        """Nothing to claim. After failed sends, the failure recorded in the store
        being gone means a batch was delivered since, by another process sharing
        the store: the outage is over for this one too. Without this, a worker whose
        backlog another drained kept its failures, so its next outage was silent
        (only a first failure is logged) and began at the longest backoff."""
        with self.lock:
            if not (self.failures or self.parks) or self.problem is None:
                return
        try:
            if self.store.get_meta(FAILURE_KEY):  # cleared: "" (or never written: None)
                return
        except Exception:  # the store is failing: the writer reports it
            return
        if self.succeeded():
            log.info(
                "flagware: Statsig delivery recovered (the events this process could not"
                " send were delivered by another process sharing the store)"
            )

    def park(self, batch: Batch, problem: str) -> None:
        """Statsig refused ``batch`` for good (a 4xx): kept aside, not sent again."""
        self.leases.settle(batch, PARKED, failure_record(f"{problem}; parked"))
        with self.lock:
            self.parks += 1
            self.problem = problem
            first = self.parks == 1
        if first:
            # Once a run: a lasting 4xx (a relay's wrong path) parks every batch,
            # and one line a batch would flood the log. The counter says the rest.
            log.error(
                "flagware: Statsig rejected %d events with %s; parked in %s (delivery = 2),"
                " not retried, and so is every batch it rejects until it accepts one"
                " (counted: `flagware status`); once the cause is fixed, `flagware"
                " redeliver` sends them again",
                len(batch),
                problem,
                self.where,
            )

    def retry(self, batch: Batch, problem: str, after: float | None, refused: bool = False) -> None:
        """A send of ``batch`` failed: given back, to be sent again after a backoff."""
        self.leases.release(batch, failed=True)
        # Recorded first: a thread of this process finding nothing to claim takes
        # a failure whose record is missing as another process's delivery since.
        self.note_failure(problem)
        if self.failed(after, problem, refused):
            log.warning(
                "flagware: Statsig delivery failed (%s); events stay in %s and are retried"
                " with backoff",
                problem,
                self.where,
            )

    def failed(
        self, retry_after: float | None = None, problem: str | None = None, refused: bool = False
    ) -> bool:
        """Back off every thread of this process; True for the first failure in a row.

        ``problem`` (with ``refused``) says why; without one (a store error)
        the last known cause stays.
        """
        with self.lock:
            self.failures += 1
            if problem is not None:
                self.problem, self.refused = problem, refused
            cap = self.retry_max if not self.draining else min(self.retry_max, 1.0)
            ceiling = min(cap, self.retry_min * 2 ** min(self.failures - 1, 30))
            # Equal jitter: never less than half the delay, so processes that
            # failed together do not all come back at the same instant.
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, cap))
            self.retry_at = max(self.retry_at, time.monotonic() + delay)
            return self.failures == 1

    def outdated(self, started: float) -> bool:
        """Whether a send that began at ``started`` was overtaken by one that
        went through since: its failure (a timeout against an API that hung,
        then came back) says nothing of the API now. Without this, the log said
        "delivery failed" after "recovered", a second outage that never was
        (a trial: up to 30 s later, once or twice a worker)."""
        with self.lock:
            return started < self.succeeded_at

    def note_failure(self, problem: str) -> None:
        """Keep a failed send's cause in the store for `flagware status`, until a
        batch is delivered (``settle`` clears it, in the same transaction).
        Written at every failure, which backoff spaces out, so its time is when
        it was last seen. (A park records its own, in its settle.)"""
        try:
            self.store.set_meta(FAILURE_KEY, failure_record(problem))
        except Exception as exc:  # the store is failing: the writer reports it too
            self.report(exc, "event store (delivery outcome)")

    def wait_backoff(self) -> None:
        """Wait out the backoff, or until a drain kicks for one try now, or stop."""
        while not self.stop.is_set():
            remaining = self.retry_at - time.monotonic()
            if remaining <= 0:
                return
            if self.kick.wait(remaining):
                self.kick.clear()  # a drain started: try once now
                return
