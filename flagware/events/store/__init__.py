"""Event stores: one interface (``Store``), a SQLite and a PostgreSQL backend.

``open_store(location)`` picks the backend: a ``postgresql://`` URL is the
shared PostgreSQL store, anything else a SQLite file path.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from flagware.events.store.base import (
    COUNTERS,
    DELIVERED,
    DROPPED,
    PARKED,
    PENDING,
    Batch,
    Store,
    StoreStats,
    lease_owner,
)
from flagware.events.store.postgres import (
    is_postgres_url,
    redact,
    request_reads,
    unsupported_url,
)
from flagware.events.store.sqlite import (
    SQLITE_NOTADB,
    EventStore,
    connect,
    error_code,
    fork_guard,
    fork_safe,
)
from flagware.outages import REFUSAL_HINT, describe, is_outage, is_refusal

__all__ = [
    "COUNTERS",
    "DELIVERED",
    "DROPPED",
    "PARKED",
    "PENDING",
    "Batch",
    "EventStore",
    "Store",
    "StoreStats",
    "StoreUnavailable",
    "connect",
    "fork_guard",
    "fork_safe",
    "is_postgres_url",
    "lease_owner",
    "not_a_store",
    "open_store",
    "redact",
    "request_reads",
    "store_exists",
]

Location = str | os.PathLike[str]


class StoreUnavailable(Exception):
    """The store's database could not be reached (away, starting, stopping):
    no answer about the store either way, so worth trying again."""


def open_store(location: Location, *, create: bool = True) -> Store:
    """The store at ``location``: a ``postgresql://`` URL or a SQLite file path.

    ``create=False`` opens it for reading only: it never creates, migrates or
    writes (read commands; check ``store_exists`` first).
    """
    if is_postgres_url(location):
        from flagware.events.store.postgres import PostgresStore

        return PostgresStore(str(location), create=create)
    problem = unsupported_url(location)
    if problem is not None:
        raise ValueError(problem)
    return EventStore(location, readonly=not create)


def store_exists(location: Location) -> bool:
    """Whether a store is at ``location``, found without creating one."""
    if is_postgres_url(location):
        from flagware.events.store.postgres import PostgresStore

        with PostgresStore(str(location), create=False) as store:
            return store.exists()
    if unsupported_url(location) is not None:
        return False
    return os.path.exists(location)


def not_a_store(location: Location) -> str | None:
    """Why ``location`` cannot be read as an event store, or None if it can.

    The one place a ``--store`` value is checked; it only reads. A database
    that cannot be reached raises :class:`StoreUnavailable`: that is no
    answer, and a command exits with its own code for it.
    """
    if is_postgres_url(location):
        try:
            found = store_exists(location)
        except Exception as exc:  # an unreachable server, a bad URL, no driver
            refused = is_refusal(exc)
            if is_outage(exc) and not refused:
                raise StoreUnavailable(
                    f"cannot reach {redact(str(location))}: {describe(exc)}"
                ) from exc
            hint = f" (the database refuses this URL: {REFUSAL_HINT})" if refused else ""
            return f"cannot open {redact(str(location))}: {describe(exc)}{hint}"
        if found:
            return None
        # Reached, but without flagware's tables: "no event store at" read as
        # an unreachable database (a new user's trial).
        return (
            f"no event store in the database at {redact(str(location))} yet: it answers, but"
            " nothing has been logged to it (flagware makes its tables at the first write,"
            " as `flagware check` says)"
        )
    problem = unsupported_url(location)
    if problem is not None:
        return f"cannot open {redact(str(location))}: {problem}"
    path = Path(location)
    location = redact(os.fspath(location))  # a libpq "password=..." string lands here
    if not path.exists():
        # A relative path is the working directory's: say which, and the way
        # out (a new user ran the command from the folder above the app's).
        relative = not path.is_absolute() and "=" not in location  # not a libpq string
        where = f" (in the working directory, {Path.cwd()})" if relative else ""
        return f"no event store at {location}{where}"
    if path.is_dir():
        return f"{location} is a directory, not a flagware event store"
    try:
        conn = connect(path, readonly=True)
        try:
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if error_code(exc) == SQLITE_NOTADB:
            return f"{location} is not a flagware event store (not an SQLite database)"
        # Anything else is access, not the file's kind: another user reading a
        # stopped app's store read "not an SQLite database" (a new user's trial).
        return (
            f"cannot read {location}: {exc} (reading a store in WAL mode takes read access"
            " to it and write access to its folder, or to its -wal and -shm files)"
        )
    if not {"events", "meta"} <= tables:
        return f"{location} is not a flagware event store (an SQLite database without its tables)"
    return None
