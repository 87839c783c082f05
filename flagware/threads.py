"""flagware's background threads leave the process's signals to the main thread.

The kernel hands a signal sent to a process (``kill PID``, ``kill -- -PGID``)
to any one of its threads that does not block it. Python runs every handler
on the main thread anyway, so a background thread that blocks them changes
nothing for Python code, but it keeps a thread's own mask meaningful to
whoever set it: Celery's pool children (billiard) block SIGTERM on the main
thread while they hold the lock of the queue they share with their parent,
and a SIGTERM taken by flagware's writer thread ran billiard's exit handler
inside that window anyway. The lock died held, and the worker hung at exit
(new users' trials: 8 of 55 stops by SIGTERM to the whole process group,
0 of 24 with the signals blocked on every other thread; 0 of 16 by hand
since).

A new thread inherits its creator's mask, so the signals are held while a
thread (or an SDK that starts its own, Rust ones included) starts, then the
creator's mask is put back. Not where ``threading`` is monkey-patched
(gevent, eventlet): its threads are greenlets on the one operating-system
thread, so there is no other thread to keep the signals from, and a start
yields to the hub, where another greenlet's start could save the blocked
mask and put it back last. A gunicorn gevent worker was left with SIGTERM
and SIGHUP blocked for good, served on through stops and reloads, and was
killed at the graceful timeout (a new user's trial: 3 of about 45 runs).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import BuiltinFunctionType

log = logging.getLogger("flagware")
_said_disabled = False

# What servers and task runners stop, reload or inspect processes with.
# Never the synchronous ones (SIGSEGV, SIGFPE...), which a thread must take itself.
_HELD = frozenset(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


@contextmanager
def signals_held() -> Iterator[None]:
    """Block the process-control signals in this thread for the block's length,
    so the threads started inside it never take them."""
    if green_threads():
        yield
        return
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    except (AttributeError, OSError, ValueError):  # Windows: no thread masks
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def green_threads() -> bool:
    """Whether ``threading`` starts greenlets (gevent's or eventlet's monkey-patching).

    Asked at each start, not once: ``gunicorn --preload -k gevent`` imports
    the app before each worker patches ``threading``. The C function that
    starts a thread (``_start_new_thread``; ``_start_joinable_thread`` from
    3.13) is a Python function once patched."""
    start = getattr(threading, "_start_joinable_thread", None) or getattr(
        threading, "_start_new_thread", None
    )
    return start is not None and not isinstance(start, BuiltinFunctionType)


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()``, the thread born with the process signals blocked.

    Every thread flagware starts goes through here; raises as ``start`` does
    (RuntimeError at interpreter shutdown, which each caller handles)."""
    with signals_held():
        thread.start()


def threads_disabled() -> bool:
    """Whether this process's Python threads run only while a request does.

    uWSGI 2.0 runs Python without thread support unless ``enable-threads``
    (or ``threads``) is set: a worker keeps the GIL while it waits for a
    request, so flagware's writer and delivery threads run only while a
    request does. Measured (Debian's uWSGI 2.0.21, one worker): of 50 events,
    46 were stored within 2 s and the last 4 waited in memory, unstored, until
    the stop lost them, without a word. Sentry's and Datadog's SDKs check the
    same option. Such a client stores each event as it is logged instead
    (``EventWriter.inline``), and says so (:func:`warn_if_threads_disabled`).
    """
    # uWSGI puts its embedded module in sys.modules before it loads the app.
    opt = getattr(sys.modules.get("uwsgi"), "opt", None)
    if opt is None:
        return False
    return not ("threads" in opt or _enabled(opt.get("enable-threads")))


def warn_if_threads_disabled() -> None:
    """Say once a process, as an error, that its Python threads cannot run."""
    global _said_disabled
    if _said_disabled:
        return
    _said_disabled = True
    log.error(
        "flagware: uWSGI runs this app with Python threads disabled, so the threads"
        " that store events (and deliver them to Statsig) would run only while a request"
        " does: each event is stored as it is logged instead, on the request's thread"
        " (slower), and delivery to Statsig waits for requests. Set enable-threads = true"
        " (README: Stopping: SIGTERM)"
    )


def _enabled(value: object) -> bool:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)
