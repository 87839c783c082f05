"""The SQLite event store: the local engine's event log and Statsig's durable outbox.

One table holds every event. Columns that results aggregate on (name, IDs,
numeric value, exposure name and group) are real columns so analysis runs in
SQL; ``payload`` keeps the exact wire event so delivery can send it unchanged.
WAL mode lets readers (CLI, diagnostics, results) run while the writer appends.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flagware.events.model import Event

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

PENDING = 0
DELIVERED = 1
PARKED = 2
DROPPED = 3


def connect(path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store with the settings every flagware connection needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True, timeout=30)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(os.fspath(path), timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against process crashes in WAL mode; only a power
        # loss can take the last transactions, and it costs no fsync per batch.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    return conn


def _row(event: Event, deliver: bool) -> tuple[Any, ...]:
    value = event.value
    value_num = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    return (
        event.time,
        event.name,
        event.user_id,
        event.stable_id,
        None if value is None else json.dumps(value),
        value_num,
        None if event.metadata is None else json.dumps(event.metadata, default=str),
        event.exposure,
        event.group,
        event.payload(),
        PENDING if deliver else None,
    )


class EventStore:
    """Appends and reads events. One instance per process; connections are per thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._pid = os.getpid()

    def _conn(self) -> sqlite3.Connection:
        # A connection must never cross a fork or a thread: each thread of each
        # process opens its own.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
            conn = connect(self.path)
            self._local.conn = conn
        return conn

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

    def iter_events(self, *, after_id: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Stored events in order, as plain dicts (the ``flagware events`` shape)."""
        sql = (
            "SELECT id, time, event, user_id, stable_id, value, metadata, exposure, group_name"
            " FROM events WHERE id > ? ORDER BY id"
        )
        params: tuple[Any, ...] = (after_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        for row in self._conn().execute(sql, params):
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

    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM events").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn().execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            conn.close()
        self._local = threading.local()
