"""The SQLite backend: the embedded default, one file on the host's own disk.

One table holds every event. Columns that results aggregate on (name, IDs,
numeric value, exposure name and group) are real columns so analysis runs in
SQL; ``payload`` keeps the exact wire event so delivery can send it unchanged.
WAL mode lets readers (CLI, diagnostics, results) run while the writer appends.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import lru_cache, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from flagware.events.store.base import EVENT_COLUMNS, load_queries
from flagware.events.store.sql import SQLStore

log = logging.getLogger("flagware")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        INTEGER NOT NULL,  -- ms since the epoch, when logged
    event       TEXT    NOT NULL,  -- name; exposures keep statsig::... names
    user_id     TEXT,
    stable_id   TEXT,
    value       TEXT,              -- JSON of the value, or NULL
    value_num   REAL,              -- the value when numeric, for sums and means
    metadata    TEXT,              -- JSON object, or NULL
    exposure    TEXT,              -- exposures: gate or config name
    group_name  TEXT,              -- experiment exposures: the group
    payload     TEXT    NOT NULL,  -- the event exactly as Statsig's wire format carries it
    delivery    INTEGER            -- NULL local only; 0 pending; 1 delivered; 2 parked; 3 dropped
);
CREATE INDEX IF NOT EXISTS events_by_exposure ON events (exposure, group_name)
    WHERE exposure IS NOT NULL;
-- Metric events by name, then unit, then time, with the value: results read a
-- unit's events as one contiguous run of this index and never touch the table.
-- Exposures are left out (they have their own index), which keeps the writer's
-- cost per event what a plain index on the name cost. `exposure` (always NULL
-- here) is listed so that SQLite sees the index cover its own condition.
CREATE INDEX IF NOT EXISTS events_by_user
    ON events (event, user_id, time, value_num, exposure) WHERE exposure IS NULL;
-- Values that are not numbers (sums count them as 0, and results say how many).
CREATE INDEX IF NOT EXISTS events_non_numeric ON events (event)
    WHERE value IS NOT NULL AND value_num IS NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# How many pages the WAL grows to before a commit copies it back into the
# database (SQLite's default: 1,000 pages, 4 MB). Each metric event lands on a
# random page of events_by_user, and later batches change most of those pages
# again: checkpointing four times less often copies each of them back fewer
# times. Measured (benchmarks/writer_io.py, batches of 600 into a growing
# store, two runs): 16% fewer bytes written and 0.7-0.9 us less system CPU per
# stored event, for a WAL file of up to 16 MB and, every few seconds, one
# append of 50-65 ms instead of 33 ms (the checkpoint runs inside it).
WAL_CHECKPOINT_PAGES = 4000
# The size the WAL file is cut back to once a checkpoint has emptied it. A
# checkpoint cannot empty the WAL past a reader's snapshot, so while a long
# read runs (`flagware results`, the diagnostics page) every append grows the
# file, and without a limit it keeps its largest size until the last
# connection closes, which in a server is never (measured: 59 MB left after a
# read that lasted 190,000 appended events). Twice what the checkpoint
# interval lets it reach, so that steady writing never cuts and regrows it.
JOURNAL_SIZE_LIMIT = 2 * WAL_CHECKPOINT_PAGES * 4096  # bytes, at SQLite's 4 KiB pages

# SQLite's primary result codes that flagware tells apart (see error_code).
SQLITE_READONLY = 8  # a write refused: the file was opened read-only
SQLITE_NOTADB = 26  # the file is not a database

# Added after the first release: stores created before them gain them on open.
LEASE_COLUMNS = {
    "lease_owner": "TEXT",  # host/pid/nonce/batch of the process sending the row
    "lease_until": "REAL",  # unix time the lease expires
    "attempts": "INTEGER NOT NULL DEFAULT 0",  # sends so far that may have failed
}
# Only pending rows are indexed, so claiming stays fast however many rows were
# delivered. Queries must say ``delivery = 0`` literally for SQLite to use it.
PENDING_INDEX = "CREATE INDEX IF NOT EXISTS events_pending ON events (delivery) WHERE delivery = 0"
# Replaced by events_by_user (schema above), which serves every query it did.
OLD_NAME_INDEX = "events_by_name"


def error_code(exc: BaseException) -> int | None:
    """SQLite's primary result code for ``exc``, or None when it carries none.

    Extended codes (``SQLITE_READONLY_DBMOVED``...) keep the primary one in
    their low byte, and the message text differs between SQLite versions.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


# SQLite's unix VFS keeps process-wide mutexes around its file locks. If a
# process forks while another of its threads holds one (the writer appending,
# a delivery thread polling), the child inherits it locked and its first
# SQLite call hangs forever: seen under `gunicorn --preload` when the master
# had logged an event. Every SQLite call flagware makes holds this lock, and
# os.fork() waits for it, so a fork never lands inside one.
_fork_guard = threading.RLock()


def _before_fork() -> None:
    _fork_guard.acquire()


def _after_fork_in_parent() -> None:
    _fork_guard.release()


def _after_fork_in_child() -> None:
    global _fork_guard
    _fork_guard = threading.RLock()  # the child's only thread is the forking one


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def fork_guard() -> AbstractContextManager[Any]:
    """The guard itself, for SQLite calls made outside this module."""
    return _fork_guard


# Python 3.11's sqlite3 binds a None parameter only after trying the adapter
# protocol on it, which raises and clears an AttributeError: 0.4 us a None,
# and an event row binds up to eight (measured: 5.7 us a row, 2.6 us with
# this). An adapter registered for None is found first; it returns None, which
# binds NULL as before, so nothing another user of sqlite3 sees changes. 3.12
# looks the protocol up without raising, and an app's own adapter is kept.
if sys.version_info < (3, 12):
    sqlite3.adapters.setdefault((type(None), sqlite3.PrepareProtocol), {}.get)


P = ParamSpec("P")
R = TypeVar("R")


def _file_of(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), or None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def fork_safe(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``'s SQLite calls where a fork cannot interrupt them."""

    @wraps(function)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        with _fork_guard:
            return function(*args, **kwargs)

    return guarded


@fork_safe
def connect(path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store with the settings every flagware connection needs."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{os.fspath(path)}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False only so close() can close every thread's
        # connection once those threads are done; no connection is shared.
        conn = sqlite3.connect(
            os.fspath(path), timeout=30, isolation_level=None, check_same_thread=False
        )
        _enter_wal(conn)
        # NORMAL is durable against process crashes in WAL mode; only a power
        # loss can take the last transactions, and it costs no fsync per batch.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.executescript(SCHEMA)
        _migrate(conn)
    return conn


def _enter_wal(conn: sqlite3.Connection, patience: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out another process doing the same.

    On a new file the switch needs the file to itself, and SQLite answers a
    second process switching at the same moment "database is locked" at
    once, without its busy timeout: two Celery pool children (or gunicorn
    workers) whose first events came together logged an event store failure
    on their first start (2 of 120 connections, four processes opening one
    new file at once). Once the file is in WAL mode the pragma takes no lock.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    missing = [name for name in LEASE_COLUMNS if name not in have]
    if missing:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated.
            have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
            for name in missing:
                if name not in have:
                    conn.execute(f"ALTER TABLE events ADD COLUMN {name} {LEASE_COLUMNS[name]}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.execute(PENDING_INDEX)
    conn.execute(f"DROP INDEX IF EXISTS {OLD_NAME_INDEX}")


# Connections inherited through a fork are kept here, unreferenced by anything
# else, so the child never finalizes (closes) SQLite handles the parent owns.
_inherited: list[sqlite3.Connection] = []

# OR FAIL, not the default ABORT: an ABORT statement that writes many rows
# inside a transaction keeps a statement journal, the original of every page
# it changes, so that it alone can be undone; past 64 KiB SQLite spills it to
# a temporary file. A writer's batch changes a page of events_by_user for
# most metric events (their units are random), so the journal spilled, and
# it made half the writer's write calls (1.28 a stored event, now 0.64;
# benchmarks/writer_io.py). Nothing needs one statement undone alone: a
# failed append rolls back its whole transaction (_immediate), and the
# writer keeps the batch to try again.
_INSERT = f"INSERT OR FAIL INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Rows per multi-row INSERT: a power of two, so a batch is a few statements
# of at most log2(_CHUNK) + 1 distinct sizes (each prepared once, cached).
_CHUNK = 256


@lru_cache(maxsize=16)
def _insert_rows(count: int) -> str:
    return _INSERT + ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" * (count - 1)


class EventStore(SQLStore):
    """The SQLite store at ``path``. One instance per process; connections are
    per thread, and the appends of every thread share one."""

    dialect = "sqlite"
    queries = load_queries("sqlite")

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.location = os.fspath(path)
        self.readonly = readonly  # for commands that read: never creates, migrates or writes
        self._files: dict[int, tuple[int, int] | None] = {}  # id(connection): its file's

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path, readonly=self.readonly)
        self._files[id(conn)] = _file_of(self.path)
        return conn

    def _usable(self, conn: sqlite3.Connection) -> bool:
        """False once the file was deleted or replaced under the connection.

        A connection keeps writing into the file it opened: deleted (``rm
        events.db*``) or moved away while the app served, every later event
        went into a file no path reached, lost without a word (an operator's
        trial: 6,000 events). Checked at each use (a ``stat``, 1-2 us); all
        the process's connections are closed then, and the next opens the
        path anew. What the old file's WAL held is lost with it (SQLite
        writes no moved file).
        """
        opened = self._files.get(id(conn))
        if opened is None or self.readonly or _file_of(self.path) == opened:
            return True
        log.warning(
            "flagware: the event store %s was deleted or replaced while this process"
            " had it open; events are stored in a new store at that path from now on"
            " (what its -wal file held is lost: to back up or prune a store in use,"
            " see the README's Events section)",
            self.location,
        )
        self._drop_unfit(conn)
        return False

    def _drop(self, conn: sqlite3.Connection) -> None:
        self._files.pop(id(conn), None)
        super()._drop(conn)

    def _forget_all(self) -> list[Any]:
        self._files.clear()
        return super()._forget_all()

    def _transaction(self, conn: sqlite3.Connection) -> AbstractContextManager[Any]:
        return _immediate(conn)

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        # Multi-row INSERTs, not executemany: executemany releases and retakes
        # the GIL around every row's step, and under a server each retake may
        # wait for a request thread; one statement runs many rows per release.
        start, left = 0, len(rows)
        size = _CHUNK
        while left:
            while size > left:
                size //= 2
            chunk = rows[start : start + size]
            conn.execute(_insert_rows(size), [value for row in chunk for value in row])
            start += size
            left -= size

    def _drop_unfit(self, conn: sqlite3.Connection) -> None:
        # Every connection of this process, not only the one that failed: they
        # share the -shm file's mapping, which SQLite keeps, read-only, while
        # any connection to the file is open. Reopened alone, a connection
        # found it read-only still: an operator's trial fixed the modes and no
        # worker stored again (24,000 events lost at the restart). Under the
        # fork guard, which every SQLite call holds, so no other thread is in
        # one; the others open anew at their next call.
        for each in self._forget_all():
            with suppress(Exception):
                each.close()

    def _unfit_after(self, exc: BaseException) -> bool:
        # SQLite opens a file it may not write read-only, without a word, and
        # the connection stays so: a worker started while the store was
        # read-only never stored again once it was writable (a new user's
        # trial: 13,006 events waited, then were lost at exit).
        return error_code(exc) == SQLITE_READONLY

    def _guard(self) -> AbstractContextManager[Any]:
        return _fork_guard

    def _forget_inherited(self, conns: list[Any]) -> None:
        _inherited.extend(conns)
        self._files.clear()

    def __enter__(self) -> EventStore:
        return self


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: waits for the write lock up front.

    A deferred transaction that reads before it writes can fail at once with
    SQLITE_BUSY when another process committed in between; IMMEDIATE waits.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
