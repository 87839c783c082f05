"""Delivery: forwards stored events to Statsig's ``POST {api}/log_event``.

Events reach Statsig from the store (SQLite or PostgreSQL), never from memory,
so whatever was stored survives an outage, a restart or a crash. A batch is
leased in the store before it is sent (``events/leases.py``) and marked
delivered only on a 2xx, so processes sharing one store never send the same
event twice. The one exception: a process that dies between a send and its
settle leaves a lease that is re-sent (with ``STATSIG-RETRY`` raised) when it
runs out or is found dead, so a SIGKILL can duplicate at most
``concurrency x batch_size`` events.

Failures:
- connection errors, timeouts, 408, 429 and 5xx give the batch back and back
  off (capped exponential, jittered, shared by this process's threads), with
  no limit on attempts while an event is younger than ``max_age``;
- so do 401 (Statsig refusing the secret) and 407 (a proxy's login): they
  refuse the credentials whatever the payload, and once the configuration is
  fixed the events go out with nothing more to do; a drain stops at them;
- 413 halves the batch size; other 4xx, 403 included (a firewall may refuse
  one payload, which retried would hold every later event), park the batch
  (``delivery = 2``) with one log line a run, since sending the same payload
  again cannot succeed (``flagware redeliver`` sends parked events again).

Everything runtime (threads, HTTP connections, store connections) belongs to
one process and is created lazily on first use in that process, so a fork
(gunicorn ``--preload``) never shares any of it.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from flagware.events.endpoint import Endpoint, http_problem
from flagware.events.leases import DEFAULT_LEASE
from flagware.events.runtime import DELIVERY_FAILURE, Runtime, log_failure
from flagware.events.stats import DeliveryStats
from flagware.events.store import DELIVERED, Batch, Store, open_store
from flagware.events.wire import SDKS, Sender, headers
from flagware.events.wire import body as wire_body
from flagware.locks import ProcessLock
from flagware.settings import shown_url, statsig_api_problem
from flagware.threads import start_thread

__all__ = ["DEFAULT_API", "Delivery", "DeliveryStats"]

log = logging.getLogger("flagware")

DEFAULT_API = "https://statsigapi.net/v1"
# Refusals of the credentials: the same whatever the payload, so retried (and
# a drain stops at them). A 403 may be a firewall refusing one payload: parked.
RETRIED_REFUSALS = (401, 407)
RETRIED = (*RETRIED_REFUSALS, 408, 429)  # and every 5xx


_inherited: list[Runtime] = []
T = TypeVar("T")


class Delivery:
    def __init__(
        self,
        store: str | os.PathLike[str],  # a SQLite path or a postgresql:// URL
        *,
        secret: str,
        api: str = DEFAULT_API,
        max_age: float = 7 * 86400,  # older undelivered events are dropped and counted
        # Well above the API's normal latency: a timeout after the API accepted a
        # batch is the one way an event can be sent twice.
        request_timeout: float = 30.0,
        # A SIGKILL mid-send can duplicate up to concurrency x batch_size events
        # (the batches in flight are re-sent): 2 x 500 = 1,000 at most.
        batch_size: int = 500,
        concurrency: int = 2,  # requests in flight per process
        # A dead sender's batches are re-sent at most this long after its last
        # renewal; a live one renews every lease / 3 s while a send is in flight.
        lease: float = DEFAULT_LEASE,
        retry_min: float = 0.5,  # first backoff, doubled per consecutive failure
        retry_max: float = 60.0,  # backoff cap
        poll_interval: float = 2.0,  # idle re-check for other processes' leftovers
        on_error: Callable[[BaseException, str], None] | None = None,
        on_recovered: Callable[[str], None] | None = None,  # a place on_error named works again
        sdk: str = "legacy",  # the engine's SDK (Engine.sdk): batches name it, wire.SDKS
    ) -> None:
        problem = statsig_api_problem(api)  # the rule Flagware(...) and Django's check apply
        if problem is not None:
            raise ValueError(
                f"statsig api must be an http(s) base URL, not {shown_url(api)!r}: {problem}"
            )
        parts = urlsplit(api)
        # Made here, so that a proxy flagware cannot use is an error at startup.
        self._endpoint = Endpoint(
            parts._replace(path=parts.path.rstrip("/") + "/log_event").geturl()
        )
        self.store_location = os.fspath(store)
        self.secret = secret
        self.api = api
        self.max_age = max_age
        self.request_timeout = request_timeout
        if lease < 1:
            raise ValueError(f"lease must be at least 1 s, got {lease}")
        self.lease = lease
        # An outcome is retried while the store is away (a database restart or
        # failover) for this long; giving up re-sends a batch Statsig accepted.
        self.persist_for = max(30.0, 1.5 * request_timeout)
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.poll_interval = poll_interval
        self._report = on_error or log_failure
        self._on_recovered = on_recovered
        self.sdk = SDKS[sdk]
        # Made in each process on first use, so never one a parent's thread held
        # at a fork, and gevent's lock under gevent (see flagware.locks).
        self._start_lock = ProcessLock()
        self._rt: Runtime | None = None
        self._closed_pid = -1

    # -- public -------------------------------------------------------------------

    def wake(self) -> None:
        """New events were stored: send them soon. Cheap; starts the worker lazily."""
        rt = self._running()
        if rt is not None:
            rt.wake.set()

    def drain(self, timeout: float) -> bool:
        """Deliver until nothing is left for this process to send, or ``timeout`` passes.

        Returns True when the backlog this process can claim is empty. Events
        another live process holds a lease on are that process's to send.
        """
        if self._closed_pid == os.getpid():
            return False
        try:
            return self._drain(timeout)
        except Exception as exc:  # the store away (PostgreSQL stopped): the events stay there
            # It was raised through close(), which then skipped the engine's and
            # the store's closing, and logged a traceback at every worker's exit
            # (a trial: PostgreSQL stopped, then SIGTERM).
            self._report(exc, DELIVERY_FAILURE)
            return False

    def _drain(self, timeout: float) -> bool:
        if timeout <= 0:  # nothing to wait for: report without starting threads
            return self._read(lambda store: store.claimable()) == 0
        rt = self._running()
        if rt is None:
            return False
        deadline = time.monotonic() + timeout
        with rt.lock:
            rt.draining += 1
            # A refusal of the credentials (401, 407) ends the drain: retrying
            # until the timeout cannot help, and the events stay in the store.
            # One from before the drain gets the try the kick below gives.
            rt.refused = False
        try:
            rt.leases.release_dead()
            if not rt.threads:  # none could start: this thread sends
                return self._send_here(rt, deadline)
            rt.kick.set()
            rt.wake.set()
            while True:
                if self._drained(rt):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or rt.refused:
                    return False
                rt.stop.wait(min(0.02, remaining))
        finally:
            with rt.lock:
                rt.draining -= 1

    def _send_here(self, rt: Runtime, deadline: float) -> bool:
        """``drain`` in the calling thread, for a process that could start no sender.

        Each request may take what is left of the drain's time (at least 1 s),
        not ``request_timeout``: the process is exiting, and a batch whose
        answer never came is re-sent from its lease, as when a sender thread
        dies with its process.
        """
        sender = self._sender(max(1.0, min(self.request_timeout, deadline - time.monotonic())))
        try:
            while True:
                now = time.monotonic()
                if now >= deadline or rt.refused:
                    return self._drained(rt)
                if rt.retry_at > now:  # backing off after a failed send
                    time.sleep(min(rt.retry_at, deadline) - now)
                    continue
                if rt.step(lambda: self._step(rt, sender)) is False:
                    return self._drained(rt)
        finally:
            sender.close()
            rt.store.close_thread()

    def _drained(self, rt: Runtime) -> bool:
        """Nothing claimable and no send of ours in progress, observed together:
        no claim may start between the two looks, or its batch (leased, so not
        claimable) could be released again unseen."""
        with rt.lock:
            idle, claims = rt.inflight == 0, rt.claims
        if not idle or rt.store.claimable():
            return False
        with rt.lock:
            return rt.claims == claims

    def reopen(self) -> None:
        """Deliver again in the process that closed it (its client is used again)."""
        with self._start_lock:
            if self._closed_pid == os.getpid():
                self._closed_pid = -1

    def close(self, timeout: float = 5.0) -> None:
        """Stop this process's threads; a request still in flight after ``timeout`` is
        left to finish or die with the process (its lease then expires)."""
        with self._start_lock:
            rt, self._rt = self._rt, None
            self._closed_pid = os.getpid()
        if rt is None or rt.pid != os.getpid():
            return
        rt.stop.set()
        rt.wake.set()
        rt.kick.set()
        deadline = time.monotonic() + timeout
        for thread in rt.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # A send still in flight keeps its lease alive until it ends or the
        # process does; only then may the heartbeat and the connections go.
        if not any(thread.is_alive() for thread in rt.threads) and rt.leases.close(
            max(0.0, deadline - time.monotonic())
        ):
            rt.store.close()

    def problem(self) -> str | None:
        """Why this process's last send failed, while none has worked since."""
        rt = self._rt
        return rt.problem if rt is not None and rt.pid == os.getpid() else None

    def stats(self) -> DeliveryStats:
        """Backlog and counters for the whole store (all processes sharing it)."""
        return DeliveryStats.from_store(self._read(lambda store: store.stats()))

    def _read(self, query: Callable[[Store], T]) -> T:
        """Run a read on this process's store, or on a short-lived one before the
        first wake (so nothing is opened in a parent that is about to fork)."""
        rt = self._rt
        if rt is not None and rt.pid == os.getpid():
            return query(rt.store)
        store = open_store(self.store_location)
        try:
            return query(store)
        finally:
            store.close()

    # -- per-process runtime ------------------------------------------------------

    def _runtime(self) -> Runtime:
        rt = self._rt
        if rt is not None and rt.pid == os.getpid():
            return rt
        with self._start_lock:
            rt = self._rt
            if rt is None or rt.pid != os.getpid():
                if rt is not None:
                    # A parent's runtime: its threads do not exist here and its
                    # store connections are the parent's. Keep it referenced so it
                    # is never finalized (closed) in this process.
                    _inherited.append(rt)
                rt = self._rt = Runtime(self)
            return rt

    def _running(self) -> Runtime | None:
        """The runtime with its threads started, or None once closed in this process."""
        if self._closed_pid == os.getpid():
            return None
        rt = self._runtime()
        if not rt.started:
            with self._start_lock:
                if not rt.started:
                    self._start(rt)
                    rt.started = True
        return rt

    def _start(self, rt: Runtime) -> None:
        try:
            rt.leases.release_dead()
        except Exception as exc:
            self._report(exc, DELIVERY_FAILURE)
        try:
            rt.leases.start()
            for i in range(self.concurrency):
                thread = threading.Thread(
                    target=self._work, args=(rt,), name=f"flagware-delivery-{i}", daemon=True
                )
                start_thread(thread)
                rt.threads.append(thread)
        except RuntimeError:
            # Python 3.12 refuses new threads once the interpreter is shutting
            # down, atexit handlers included (CPython issue 113964): a process
            # that exits before its first delivery (a script, a test run) kept
            # its events in the store but sent none. With no sender thread,
            # drain() sends from the thread that calls it (close() does).
            log.debug("flagware: no delivery thread could start; drain() will send")

    # -- worker -------------------------------------------------------------------

    def _sender(self, timeout: float) -> Sender:
        return Sender(self._endpoint, timeout=timeout)

    def _work(self, rt: Runtime) -> None:
        sender = self._sender(self.request_timeout)
        try:
            while not rt.stop.is_set():
                try:
                    rt.wait_backoff()
                    if rt.stop.is_set():
                        break
                    if rt.step(lambda: self._step(rt, sender)) is False:
                        sender.close()  # idle: no stale keep-alive connection later
                        rt.wake.wait(self.poll_interval)
                        rt.leases.reap()
                except Exception as exc:  # a bug or a broken store: never kill the thread
                    self._report(exc, DELIVERY_FAILURE)
                    rt.failed()
        finally:
            sender.close()
            rt.store.close_thread()

    def _step(self, rt: Runtime, sender: Sender) -> bool:
        """Claim one batch and send it; False when there was nothing to claim."""
        with rt.lock:
            rt.inflight += 1
            rt.claims += 1
        try:
            rt.wake.clear()
            batch = rt.leases.claim(rt.batch_size)
            if batch is None:
                rt.idle()  # after failures: maybe another process delivered meanwhile
                return False
            if len(batch) + batch.expired >= rt.batch_size:
                rt.wake.set()  # probably more behind it: let the other threads in
            if batch.expired:
                log.warning(
                    "flagware: dropped %d undelivered events older than %.0f s",
                    batch.expired,
                    self.max_age,
                )
            if batch.payloads:
                try:
                    self._send(rt, sender, batch)
                finally:
                    rt.leases.forget(batch)  # settled, released, or left to run out
            return True
        finally:
            with rt.lock:
                rt.inflight -= 1

    def _send(self, rt: Runtime, sender: Sender, batch: Batch) -> None:
        body = wire_body(batch.payloads, rt.session_id, self.sdk)
        started = time.monotonic()
        try:
            status, reply, retry_after = sender.post(
                body, headers(self.secret, rt.session_id, batch.attempts, len(batch), self.sdk)
            )
        except (OSError, http.client.HTTPException) as exc:
            if rt.outdated(started):  # overtaken by a send that went through: no outage
                rt.leases.release(batch, failed=True)
                return
            rt.retry(batch, f"{type(exc).__name__}: {exc}{self._endpoint.route}", None)
            return
        if 200 <= status < 300:
            rt.leases.settle(batch, DELIVERED)  # clears the store's last failure too
            rt.delivered()
        elif status in RETRIED or status >= 500:
            problem = http_problem(status, self._endpoint.route)
            rt.retry(batch, problem, retry_after, status in RETRIED_REFUSALS)
        elif status == 413 and len(batch) > 1:
            with rt.lock:  # before the release, so no thread re-claims at the old size
                rt.batch_size = max(1, min(rt.batch_size, len(batch)) // 2)
            rt.leases.release(batch, failed=False)
            log.warning("flagware: Statsig says the batch is too large; now %d", rt.batch_size)
        else:
            detail = reply[:300].decode("utf-8", "replace").strip() or "no body"
            # A 403 gets the secret's hint, though parked: it may be about the payload.
            rt.park(batch, http_problem(status, f"{self._endpoint.route} ({detail})"))
