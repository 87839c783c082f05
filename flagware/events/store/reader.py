"""A read connection for analyses that build temporary tables (``flagware results``).

Results aggregate in the database, through temporary tables that live as long
as one connection. ``open_reader`` gives that connection for either backend,
wrapped so the analysis writes one SQL text: ``?`` placeholders, and the few
fragments that differ between SQLite and PostgreSQL taken from ``Dialect``
(side by side below). Reading never writes to the store: temporary tables are
private to the connection and vanish with it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flagware.events.store.postgres import PostgresStore, is_postgres_url
from flagware.events.store.sqlite import EventStore, connect


@dataclass(frozen=True)
class Dialect:
    name: str
    temp: str  # the schema of temporary tables
    without_rowid: str  # SQLite's clustered-table clause, where it exists
    real: str  # a double-precision column type

    def clustered(self, columns: str) -> str:
        """A temporary table's key, where rows stored in key order are worth the
        inserts' cost: in SQLite (a scan then follows the key, a GROUP BY on
        it needs no sort). PostgreSQL sorts or hashes faster than it maintains
        an index on every insert, so its tables get none."""
        if self.name == "sqlite":
            return f", PRIMARY KEY ({columns})) WITHOUT ROWID"
        return ")"

    def total(self, expr: str) -> str:
        """The sum of ``expr``, 0.0 (not NULL) over no or only NULL values."""
        return f"total({expr})" if self.name == "sqlite" else f"coalesce(sum({expr}), 0)"

    def total_where(self, expr: str, condition: str) -> str:
        """The sum of ``expr`` over the rows where ``condition`` holds, 0.0 over none."""
        if self.name == "sqlite":
            return f"total({expr}) FILTER (WHERE {condition})"
        return f"coalesce(sum({expr}) FILTER (WHERE {condition}), 0)"

    def least(self, a: str, b: str) -> str:
        """The smaller of two values (SQLite's two-argument min)."""
        return f"min({a}, {b})" if self.name == "sqlite" else f"least({a}, {b})"

    def json_text(self, column: str, *keys: str) -> str:
        """The text at ``keys`` inside the JSON object in ``column`` (NULL if absent)."""
        if self.name == "sqlite":
            members = "".join(
                '."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"' for key in keys
            )
            return "json_extract({}, '${}')".format(column, members.replace("'", "''"))
        elements = ",".join('"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys)
        return "({}::jsonb #>> '{{{}}}')".format(column, elements.replace("'", "''"))


SQLITE = Dialect("sqlite", temp="temp", without_rowid=" WITHOUT ROWID", real="REAL")
POSTGRES = Dialect("postgres", temp="pg_temp", without_rowid="", real="double precision")


class Reader:
    """One connection for one analysis; ``execute`` takes ``?`` placeholders."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self._conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.dialect is POSTGRES:
            # The analysis's SQL has no other "?" or "%": the placeholders are all.
            sql = sql.replace("?", "%s")
        return self._conn.execute(sql, params)

    def run(self, name: str) -> list[tuple[Any, ...]]:
        """One of the store's own named queries (``<dialect>.sql``), which take no
        ``?``: each is written in its backend's dialect, quoting and all."""
        queries = PostgresStore.queries if self.dialect is POSTGRES else EventStore.queries
        return list(self._conn.execute(queries[name], {}).fetchall())

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self.dialect is POSTGRES:
            with self._conn.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), list(rows))
            return
        self._conn.executemany(sql, rows)

    def analyze(self, table: str) -> None:
        """Give the planner a filled temporary table's statistics (PostgreSQL never
        gathers them for temporary tables by itself)."""
        if self.dialect is POSTGRES:
            self._conn.execute(f"ANALYZE {self.dialect.temp}.{table}")


@contextmanager
def open_reader(location: str | os.PathLike[str]) -> Iterator[Reader]:
    """A private read connection to the store at ``location``, closed afterwards."""
    if is_postgres_url(location):
        store = PostgresStore(str(location), create=False)
        session = store._connect()  # its own: never a writer thread's connection
        try:
            yield Reader(session, POSTGRES)
        finally:
            session.close()
        return
    conn = connect(location, readonly=True)
    try:
        yield Reader(conn, SQLITE)
    finally:
        conn.close()


def database_errors() -> tuple[type[Exception], ...]:
    """What a broken or unreadable store raises, whatever the backend."""
    errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)
    try:
        import psycopg
    except ImportError:
        return errors
    return (*errors, psycopg.Error)
