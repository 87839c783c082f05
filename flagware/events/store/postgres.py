"""The PostgreSQL backend: one store shared by every process on every host.

``event_store="postgresql://user@host/db"``. The tables live in a ``flagware``
schema of that database (created on first open), so they never meet the app's
own. Senders claim outbox rows with ``FOR UPDATE SKIP LOCKED`` and leases expire
on the database's clock, so any number of hosts deliver each event once without
their clocks having to agree. Needs psycopg 3: ``pip install 'flagware[postgres]'``.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from flagware.events.store.base import EVENT_COLUMNS, load_queries
from flagware.events.store.sql import SQLStore

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")
# Any fixed number: it only serializes concurrent first opens of one database.
_SCHEMA_LOCK = 0x666C6167
_COPY = f"COPY events ({EVENT_COLUMNS}) FROM STDIN"

# The lease heartbeat (events/leases.py): extends a batch's lease on the
# database's clock, if the batch is still its owner's.
_inherited: list[Any] = []


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs.

    A password is whatever lies between the user's ``:`` and the last ``@``, so
    one that was not percent-encoded (``ab/cd``, ``abc@hunter2``) is hidden
    whole too; a libpq ``password=`` parameter hides the rest of the text.
    """
    url = re.sub(r"(://[^:/@]*):.*@", r"\1:***@", url)
    return re.sub(r"(password\s*=\s*)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ImportError(
            "a postgresql:// event store needs psycopg 3: pip install 'flagware[postgres]'"
        ) from None
    return psycopg


class PostgresStore(SQLStore):
    """The store in the PostgreSQL database at ``url``; connections are per thread.

    ``create=False`` opens an existing store for reading and never creates the
    schema (read-only commands must not write to a store).
    """

    dialect = "postgres"
    queries = load_queries("postgres")

    def __init__(self, url: str, *, create: bool = True, connect_timeout: int = 10) -> None:
        super().__init__()
        _psycopg()
        self.url = url
        self.location = redact(url)
        self._create = create
        self._connect_timeout = connect_timeout
        self._schema_ready = not create

    def _connect(self) -> psycopg.Connection[Any]:
        driver = _psycopg()
        # autocommit: reads are single statements, writes open their own
        # transactions, and no idle connection ever sits inside one.
        conn: psycopg.Connection[Any] = driver.connect(
            self.url, autocommit=True, connect_timeout=self._connect_timeout
        )
        try:
            if not self._schema_ready:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(self.queries["schema"])
                self._schema_ready = True
            conn.execute("SET search_path TO flagware")
        except BaseException:
            conn.close()
            raise
        return conn

    def exists(self) -> bool:
        """Whether the database holds a flagware store (without creating one)."""
        row = self._conn().execute(self.queries["exists"]).fetchone()
        return bool(row and row[0])

    def _transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        return conn.transaction()

    def _insert(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        # COPY: one round trip for the whole batch, the fastest way in.
        with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)

    def _usable(self, conn: psycopg.Connection[Any]) -> bool:
        # A restarted or unreachable server leaves the connection broken: the
        # next call opens a fresh one instead of failing forever.
        return not (conn.closed or conn.broken)

    def _forget_inherited(self, conns: list[Any]) -> None:
        # The parent's sockets: closing them here would end the parent's sessions.
        _inherited.extend(conns)

    def __enter__(self) -> PostgresStore:
        return self
