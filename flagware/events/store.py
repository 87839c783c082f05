"""The SQLite event store: the local engine's event log and Statsig's durable outbox.

One table holds every event. Columns that results aggregate on (name, IDs,
numeric value, exposure name and group) are real columns so analysis runs in
SQL; ``payload`` keeps the exact wire event so delivery can send it unchanged.
WAL mode lets readers (CLI, diagnostics, results) run while the writer appends.

Delivery state lives in the same rows: ``delivery`` says where an event is,
``lease_owner``/``lease_until`` say which process is sending it right now. A
lease is taken and given up in single write transactions, so two processes
sharing the store never send the same event, and a dead process's lease either
expires or is released at once by the next process on the same host.
Counters that rows cannot reconstruct (retries) and running totals that would
be slow to count (delivered, dropped, parked) live in ``meta``, updated in the
same transaction as the rows they describe, so they are exact.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from flagware.events.model import Event, numeric_value

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
CREATE INDEX IF NOT EXISTS events_by_name ON events (event);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Added after the first release: stores created before them gain them on open.
LEASE_COLUMNS = {
    "lease_owner": "TEXT",  # host/pid/nonce/batch of the process sending the row
    "lease_until": "REAL",  # unix time the lease expires
    "attempts": "INTEGER NOT NULL DEFAULT 0",  # failed sends so far
}
# Only pending rows are indexed, so claiming stays fast however many rows were
# delivered. Queries must say ``delivery = 0`` literally for SQLite to use it.
PENDING_INDEX = "CREATE INDEX IF NOT EXISTS events_pending ON events (delivery) WHERE delivery = 0"

PENDING = 0
DELIVERED = 1
PARKED = 2
DROPPED = 3

COUNTERS = ("delivered", "retried", "dropped", "parked")
_META_PREFIX = "delivery."

_HOST = socket.gethostname()


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


P = ParamSpec("P")
R = TypeVar("R")


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
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against process crashes in WAL mode; only a power
        # loss can take the last transactions, and it costs no fsync per batch.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        _migrate(conn)
    return conn


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


# Made once: json.dumps with keyword arguments builds a new JSONEncoder on every
# call, and the writer thread made three such calls per event.
_encode = json.JSONEncoder(default=str).encode


def _row(event: Event, deliver: bool) -> tuple[Any, ...]:
    value = event.value
    value_num = numeric_value(value)
    return (
        event.time,
        event.name,
        event.user_id,
        event.stable_id,
        None if value is None else json.dumps(value),
        value_num,
        None if event.metadata is None else _encode(event.metadata),
        event.exposure,
        event.group,
        event.payload(),
        PENDING if deliver else None,
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """Events leased to one sender: send ``payloads``, then settle by ``owner``."""

    owner: str
    first_id: int
    last_id: int
    payloads: list[str]
    expired: int  # older than max_age: dropped at claim time, not sent
    attempts: int  # failed sends of these events so far (the STATSIG-RETRY header)

    def __len__(self) -> int:
        return len(self.payloads)


@dataclass(frozen=True, slots=True)
class StoreStats:
    backlog: int  # pending events, leased or not
    delivered: int
    retried: int  # failed delivery attempts that were retried
    dropped: int  # older than max_age before they could be delivered
    parked: int  # rejected by the API with a non-retryable 4xx
    oldest_pending_ms: int | None  # log time of the oldest pending event


# Connections inherited through a fork are kept here, unreferenced by anything
# else, so the child never finalizes (closes) SQLite handles the parent owns.
_inherited: list[sqlite3.Connection] = []


class EventStore:
    """Appends and reads events. One instance per process; connections are per thread."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly  # for commands that read: never creates, migrates or writes
        self._local = threading.local()
        self._pid = os.getpid()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        # A connection must never cross a fork or a thread: each thread of each
        # process opens its own.
        if self._pid != os.getpid():
            self._after_fork()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=self.readonly)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _after_fork(self) -> None:
        _inherited.extend(self._all)
        self._all = []
        self._all_lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()

    @fork_safe
    def append(self, events: Sequence[Event], *, deliver: bool = False) -> None:
        """Store a batch in one transaction; ``deliver`` marks them for Statsig."""
        if not events:
            return
        conn = self._conn()
        rows = [_row(e, deliver) for e in events]
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO events (time, event, user_id, stable_id, value, value_num,"
                " metadata, exposure, group_name, payload, delivery)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def iter_events(
        self, *, after_id: int = 0, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stored events in order, as plain dicts (the ``flagware events`` shape)."""
        sql = (
            "SELECT id, time, event, user_id, stable_id, value, metadata, exposure, group_name"
            " FROM events WHERE id > ? ORDER BY id"
        )
        params: tuple[Any, ...] = (after_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        with _fork_guard:
            cursor = self._conn().execute(sql, params)
        while True:
            with _fork_guard:  # never held across a yield: the caller may fork
                rows = cursor.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield {
                    "id": row[0],
                    "time": row[1],
                    "event": row[2],
                    "user_id": row[3],
                    "stable_id": row[4],
                    "value": None if row[5] is None else json.loads(row[5]),
                    "metadata": None if row[6] is None else json.loads(row[6]),
                    "exposure": row[7],
                    "group": row[8],
                }

    @fork_safe
    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM events").fetchone()[0])

    @fork_safe
    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @fork_safe
    def set_meta(self, key: str, value: str) -> None:
        self._conn().execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- delivery ---------------------------------------------------------------

    @fork_safe
    def claim(self, owner: str, *, limit: int, lease: float, max_age: float) -> Batch | None:
        """Lease the oldest claimable pending events to ``owner``.

        Events older than ``max_age`` seconds are dropped (and counted) in the
        same transaction instead of being leased. Returns None when nothing is
        claimable.
        """
        now = time.time()
        cutoff_ms = int((now - max_age) * 1000)
        conn = self._conn()
        # A read first: an idle worker polling must not take the write lock.
        if not conn.execute(
            "SELECT 1 FROM events WHERE delivery = 0"
            " AND (lease_until IS NULL OR lease_until < ?) LIMIT 1",
            (now,),
        ).fetchone():
            return None
        with _write(conn):
            rows = conn.execute(
                "UPDATE events SET lease_owner = ?, lease_until = ?"
                " WHERE id IN (SELECT id FROM events WHERE delivery = 0"
                "   AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?)"
                " RETURNING id, time, payload, attempts",
                (owner, now + lease, now, limit),
            ).fetchall()
            if not rows:
                return None
            rows.sort()
            expired = sum(1 for row in rows if row[1] < cutoff_ms)
            if expired:
                conn.execute(
                    "UPDATE events SET delivery = 3, lease_owner = NULL, lease_until = NULL"
                    " WHERE id BETWEEN ? AND ? AND delivery = 0 AND lease_owner = ? AND time < ?",
                    (rows[0][0], rows[-1][0], owner, cutoff_ms),
                )
                _bump(conn, "dropped", expired)
        payloads = [row[2] for row in rows if row[1] >= cutoff_ms]
        attempts = max(row[3] for row in rows)
        return Batch(owner, rows[0][0], rows[-1][0], payloads, expired, attempts)

    @fork_safe
    def settle(self, batch: Batch, state: int) -> int:
        """Record the outcome of sending ``batch``: DELIVERED or PARKED.

        Only rows still leased to the batch's owner change, so a sender whose
        lease was taken over cannot overwrite the new owner's outcome.
        """
        counter = {DELIVERED: "delivered", PARKED: "parked"}[state]
        conn = self._conn()
        with _write(conn):
            changed = conn.execute(
                "UPDATE events SET delivery = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE id BETWEEN ? AND ? AND delivery = 0 AND lease_owner = ?",
                (state, batch.first_id, batch.last_id, batch.owner),
            ).rowcount
            _bump(conn, counter, changed)
        return changed

    @fork_safe
    def release(self, batch: Batch, *, failed: bool) -> None:
        """Give the batch back to the pool; ``failed`` counts a retried attempt."""
        conn = self._conn()
        with _write(conn):
            conn.execute(
                "UPDATE events SET lease_owner = NULL, lease_until = NULL,"
                " attempts = attempts + ?"
                " WHERE id BETWEEN ? AND ? AND delivery = 0 AND lease_owner = ?",
                (int(failed), batch.first_id, batch.last_id, batch.owner),
            )
            if failed:
                _bump(conn, "retried", 1)

    @fork_safe
    def release_dead_leases(self) -> int:
        """Free leases held by processes of this host that no longer exist.

        Without this a crashed worker's batch waits for its lease to expire.
        """
        conn = self._conn()
        owners = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT lease_owner FROM events"
                " WHERE delivery = 0 AND lease_owner IS NOT NULL"
            )
        ]
        dead = [owner for owner in owners if _is_dead_local(owner)]
        if not dead:
            return 0
        with _write(conn):
            return sum(
                conn.execute(
                    "UPDATE events SET lease_owner = NULL, lease_until = NULL"
                    " WHERE delivery = 0 AND lease_owner = ?",
                    (owner,),
                ).rowcount
                for owner in dead
            )

    @fork_safe
    def claimable(self) -> int:
        """Pending events no live lease holds: what a drain still has to send."""
        return int(
            self._conn()
            .execute(
                "SELECT count(*) FROM events WHERE delivery = 0"
                " AND (lease_until IS NULL OR lease_until < ?)",
                (time.time(),),
            )
            .fetchone()[0]
        )

    @fork_safe
    def stats(self) -> StoreStats:
        conn = self._conn()
        backlog, oldest = conn.execute(
            "SELECT count(*), min(time) FROM events WHERE delivery = 0"
        ).fetchone()
        counters = dict.fromkeys(COUNTERS, 0)
        for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'delivery.%'"):
            name = key[len(_META_PREFIX) :]
            if name in counters:
                counters[name] = int(value)
        return StoreStats(
            backlog=int(backlog),
            oldest_pending_ms=None if oldest is None else int(oldest),
            **counters,
        )

    @fork_safe
    def close_thread(self) -> None:
        """Close the calling thread's connection (worker threads, as they exit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            return
        self._local.conn = None
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()

    @fork_safe
    def close(self) -> None:
        """Close every connection this process opened (call once its threads are done)."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _write:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: waits for the write lock up front.

    A deferred transaction that reads before it writes can fail at once with
    SQLITE_BUSY when another process committed in between; IMMEDIATE waits.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _bump(conn: sqlite3.Connection, counter: str, by: int) -> None:
    if by:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
            " DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
            (_META_PREFIX + counter, by),
        )


def lease_owner(nonce: str, batch: int) -> str:
    """A lease owner name that says which host and process hold the lease."""
    return f"{_HOST}/{os.getpid()}/{nonce}/{batch}"


def _is_dead_local(owner: str) -> bool:
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != _HOST or not pid_text.isdigit():
        return False  # another host's process: only its lease expiry frees it
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by another user
    return False
