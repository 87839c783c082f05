"""A store's connections: one per thread that reads, one for appends, per process.

``SQLStore`` inherits this; a backend supplies ``_connect`` and, where it
needs them, the hooks below. Connections are never shared between threads
(the appender's, used by whichever thread flushes, is held under a lock), a
forked child opens its own, and a thread's connection is closed once the
thread has ended.
"""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any


class Connections:
    """Opens, keeps and closes one process's connections to a store."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._pid = os.getpid()
        self._all: list[Any] = []  # every open connection of this process
        self._orphans: list[Any] = []  # connections of threads that have ended
        self._all_lock = threading.Lock()
        self._appender: Any = None  # see _append_conn
        self._append_lock = threading.Lock()

    # -- what a backend provides ----------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:
        """False for a connection the server dropped (it is then reopened)."""
        return True

    def _guard(self) -> AbstractContextManager[Any]:
        """Held around every database call (SQLite: the fork guard)."""
        return nullcontext()

    def _forget_inherited(self, conns: list[Any]) -> None:
        """A parent's connections after a fork: never used, never closed here."""

    # -- connections ----------------------------------------------------------------

    def _conn(self) -> Any:
        """The calling thread's connection (held under ``_guard``)."""
        if self._pid != os.getpid():
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None and self._orphans:  # a thread's first call: ended threads' go
            self._close_orphans()
        kept = self._kept(conn)
        if kept is not conn:
            self._local.conn = kept
            # The thread's end (or a greenlet's) drops its local, and with it
            # this marker: its connection is closed at another thread's first
            # call. Not Thread.is_alive(): with it, a gevent-patched process's
            # exit closed a connection still in use (test_gevent.py).
            self._local.marker = marker = _Marker()
            weakref.finalize(marker, self._orphans.append, kept).atexit = False
        return kept

    def _append_conn(self) -> Any:
        """The connection every append of this process makes, whichever thread
        flushes (held under ``_append_lock``).

        A SIGTERM or SIGHUP handler flushes on the main thread. With a
        connection of its own it was the only one to open the file anew: when
        the file had become read-only since, SQLite opened it read-only, the
        flush failed and was reported as an outage, and the writer's older
        connection then stored the same events and said the store "takes
        writes again after 0.0 s" (two operators' trials).
        """
        conn = self._appender = self._kept(self._appender)
        return conn

    def _kept(self, conn: Any) -> Any:
        """``conn`` while the server keeps it; otherwise (or None) a new one."""
        if conn is not None and not self._usable(conn):
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _close_orphans(self) -> None:
        """Close the connections of threads that have ended.

        A thread's connection outlived it: under Django's runserver (a
        thread a request) a view reading ``fw.store`` left two open files a
        request, 600 after 300 requests, until the process ran out of them.
        """
        while self._orphans:
            self._drop(self._orphans.pop())

    def _drop(self, conn: Any) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        if self._appender is conn:
            self._appender = None
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
        with suppress(Exception):  # already broken: nothing left to release
            conn.close()

    def _forget_all(self) -> list[Any]:
        """Every connection of this process, forgotten (each thread opens anew
        at its next call): the caller closes them, under the guard."""
        with self._all_lock:
            conns, self._all = self._all, []
        self._local = threading.local()
        self._appender = None
        return conns

    def _after_fork(self) -> None:
        self._forget_inherited(self._all)
        self._all = []
        self._orphans = []  # the parent's threads' (inherited, never closed here)
        self._all_lock = threading.Lock()
        self._local = threading.local()
        self._appender = None
        self._append_lock = threading.Lock()  # may have been held by a thread the child lacks
        self._pid = os.getpid()

    # -- lifecycle ------------------------------------------------------------------

    def close_thread(self) -> None:
        """Close the calling thread's connection (worker threads, as they exit)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            return
        with self._guard():
            self._drop(conn)

    def close(self) -> None:
        """Close every connection this process opened (call once its threads are done)."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        with self._guard():
            for conn in self._forget_all():
                conn.close()


class _Marker:
    """Lives in a thread's local as long as the thread (see ``_conn``)."""
