"""Event stores: one interface (``Store``), a SQLite and a PostgreSQL backend.

``open_store(location)`` picks the backend: a ``postgresql://`` URL is the
shared PostgreSQL store, anything else a SQLite file path.
"""

from __future__ import annotations

import os

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
from flagware.events.store.postgres import is_postgres_url, redact
from flagware.events.store.sqlite import EventStore, connect, fork_guard, fork_safe

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
    "connect",
    "fork_guard",
    "fork_safe",
    "is_postgres_url",
    "lease_owner",
    "open_store",
    "redact",
    "store_exists",
]

Location = str | os.PathLike[str]


def open_store(location: Location, *, create: bool = True) -> Store:
    """The store at ``location``: a ``postgresql://`` URL or a SQLite file path.

    ``create=False`` opens it for reading only: it never creates, migrates or
    writes (read commands; check ``store_exists`` first).
    """
    if is_postgres_url(location):
        from flagware.events.store.postgres import PostgresStore

        return PostgresStore(str(location), create=create)
    return EventStore(location, readonly=not create)


def store_exists(location: Location) -> bool:
    """Whether a store is at ``location``, found without creating one."""
    if is_postgres_url(location):
        from flagware.events.store.postgres import PostgresStore

        with PostgresStore(str(location), create=False) as store:
            return store.exists()
    return os.path.exists(location)
