"""SIGTERM: store what is queued before the process goes.

``docker stop``, systemd and Kubernetes stop a process with SIGTERM. A server
with its own handler (gunicorn, uvicorn) exits gracefully and ``atexit``
closes the client; one without (waitress, ``python app.py``) dies on the spot
and would lose the queue.

A multiprocessing child ends with ``os._exit``, past ``atexit``; a server
whose workers are such children and replace flagware's SIGTERM handler
(Granian) would lose the queue too: ``close_at_child_exit`` closes the
clients at that child's end as well. Celery's prefork pool children end
with ``os._exit`` from inside their work loop, past multiprocessing's
finalizers too: there Celery's own ``worker_process_shutdown`` signal does it.

A process that is stopping also needs its name lookups done here:
``resolving_here`` keeps gevent's resolver off its thread pool while a
client closes.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flagware.events.delivery import Delivery

log = logging.getLogger("flagware")


def warn_undelivered(delivery: Delivery, shutdown_timeout: float, *, drained: bool) -> None:
    """A client stopped delivering with events left: they are kept, and said so.

    ``drained``: nothing was left for this process to send, the rest being
    another live process's batches in flight. Said too while sends fail (this
    process's last, or the last the store recorded): a worker that stopped
    while the other held the one batch left said nothing (a trial, 5 of 8
    stops during an outage)."""
    try:
        stats = delivery.stats()
    except Exception:  # the store is failing: the writer has reported it
        return
    problem = delivery.problem() or (stats.last_failure if drained else None)
    if stats.backlog and (problem or not drained):
        log.warning(
            "flagware: the event store holds %d events not yet delivered to Statsig (this"
            " process's and any other's) as this process (pid %d) stops: %s; they stay"
            " there, and the next process that sends events sends them too (`flagware"
            " status`)",
            stats.backlog,
            os.getpid(),  # gunicorn's workers each say it: which one (a re-check)
            f"the last send failed ({problem})"
            if problem
            else f"shutdown_timeout ({shutdown_timeout:g} s) ran out",
        )


class _Client(Protocol):
    def flush(self, *, timeout: float = -1) -> object: ...
    def stopping(self) -> None: ...
    def close(self) -> None: ...


_sigterm_installed = False
_handling = False  # a SIGTERM is being handled in this process (its main thread)
# Set once SIGTERM has been handed on to a server's own graceful shutdown: from
# then on the writer stores each event as it is queued (see on_sigterm).
draining = False


def install_sigterm(clients: Callable[[], Iterable[_Client]]) -> None:
    """Store every client's queue when SIGTERM arrives, then do what SIGTERM did before.

    An existing Python handler is called after the queue is stored (its
    graceful exit closes the clients through ``atexit``). Where SIGTERM had its
    default action, the clients close (delivering for ``shutdown_timeout``) and
    the process then dies by SIGTERM as it would have. A process that ignores
    SIGTERM keeps ignoring it. Handlers can only be set in the main thread: a
    client made in another thread installs nothing. Installed once per process.
    """
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:  # ignored, or a handler set in C
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        global _handling
        if _handling:
            # Another SIGTERM while this one is handled: gunicorn's master sends
            # each worker one more, and systemd (KillMode=control-group) or
            # pkill signals every process. The first handling stores the queue
            # and passes SIGTERM on; this one waited for the flush its own
            # thread was interrupted in: a 5 s stop instead of 0.4 s, measured.
            return
        _handling = True
        loop = _running_loop() if callable(previous) else None
        if loop is None:
            try:
                _handle(signum, frame)
            finally:
                _handling = False
            return

        # An event loop runs in this thread, and a handler of the server's
        # waits for this one (uvicorn's worker processes load the app inside
        # their signal handling). Storing waits for a store that refuses
        # writes, for up to shutdown_timeout, and the whole loop stood still
        # meanwhile, the requests in flight with it. The wait goes to a
        # thread, and the server's handler runs on the loop once it is done.
        def in_thread() -> None:
            global _handling
            try:
                _handle(signum, None, lambda: loop.call_soon_threadsafe(previous, signum, None))
            finally:
                _handling = False

        draining_now()
        threading.Thread(target=in_thread, name="flagware-sigterm", daemon=True).start()

    def draining_now() -> None:
        global draining
        # The server shuts down gracefully: requests in flight still log
        # events (a success event is released when its response starts),
        # and a server may end the process without exit handlers (uvicorn's
        # worker processes re-raise SIGTERM with its default action once
        # they are done). So each event is stored as it is logged from now on.
        draining = True

    def _handle(signum: int, frame: Any, hand_on: Callable[[], None] | None = None) -> None:
        chained = callable(previous)
        if chained:
            draining_now()
        for client in list(clients()):
            try:
                if chained:  # stored now, while the store is away too: nothing later might
                    client.stopping()
                else:  # bounded: the writer's thread may be in a flush of its own
                    client.flush(timeout=5)
                    client.close()
            except Exception:
                log.exception("flagware: storing events on SIGTERM failed")
        if hand_on is not None:
            hand_on()
        elif callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_installed = True


def _running_loop() -> Any:
    """The asyncio event loop running in this thread, or None."""
    asyncio: Any = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_child_exit_pids: set[int] = set()  # the processes close_at_child_exit registered in


def close_at_child_exit(close_all: Callable[[], None]) -> None:
    """In a multiprocessing child, run ``close_all`` at its exit too (once per process).

    Such a child ends with ``os._exit`` once its target returns, so ``atexit``
    never runs there; multiprocessing runs its own finalizers first. Granian's
    workers are such children, and replace flagware's SIGTERM handler with
    their own: a worker stopped by SIGTERM or SIGINT lost what was queued, 15-20%
    of a 2,000-request run in a new user's trial. Registered from the
    process's first event (the writer's start), since a child forgets the
    finalizers its parent registered.
    """
    pid = os.getpid()
    if pid in _child_exit_pids:
        return
    _child_exit_pids.add(pid)
    try:
        _close_at_celery_child_exit(close_all)
        multiprocessing: Any = sys.modules.get("multiprocessing")
        if multiprocessing is None or multiprocessing.parent_process() is None:
            return  # not a multiprocessing child
        util: Any = importlib.import_module("multiprocessing.util")
        # A positive priority: run among the first, while the process is whole.
        util.Finalize(None, close_all, exitpriority=10)
    except Exception:  # never in the way of the event that got here; atexit stays
        log.warning("flagware: could not close at this process's exit", exc_info=True)


def _close_at_celery_child_exit(close_all: Callable[[], None]) -> None:
    """In a Celery worker, run ``close_all`` as each prefork pool child ends.

    A pool child (billiard's) leaves its work loop with ``os._exit``, past
    ``atexit`` and multiprocessing's finalizers alike: every event its tasks
    logged in the last flush interval was lost, 195 of 200 with
    ``--max-tasks-per-child 1``, and a recycled child never said so. Celery
    sends ``worker_process_shutdown`` in the child just before. Connected in
    any process that imported Celery (a receiver connected before the fork is
    the children's too); ``dispatch_uid`` keeps it to one.
    """
    if "celery" not in sys.modules:
        return
    signals: Any = importlib.import_module("celery.signals")

    def closing(**_: Any) -> None:
        close_all()

    signals.worker_process_shutdown.connect(closing, weak=False, dispatch_uid="flagware.close")


@contextmanager
def resolving_here() -> Iterator[None]:
    """Name lookups without a thread of gevent's pool, while a client closes.

    gevent's default resolver looks names up on a thread of its pool (even an
    IP address), and Python 3.12 starts no thread at exit: a process whose
    ``socket`` gevent patched (a ``gunicorn.conf.py`` that patches first, as
    the README advises for ``--preload``) failed every send of its exit-time
    drain with ``RuntimeError: can't create new thread at interpreter
    shutdown``, and left its backlog to the next process. While a client
    closes, its process is stopping: gevent's blocking resolver stands in, in
    this thread's hub, where the senders (greenlets under gevent) run.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        yield
        return
    gevent: Any = importlib.import_module("gevent")
    blocking: Any = importlib.import_module("gevent.resolver.blocking")
    hub = gevent.get_hub()
    previous, hub.resolver = hub.resolver, blocking.Resolver(hub)
    try:
        yield
    finally:
        hub.resolver = previous
