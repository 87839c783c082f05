"""The PostgreSQL backend: one store shared by every process on every host.

``event_store="postgresql://user@host/db"``. The tables live in a ``flagware``
schema of that database (created on first open), so they never meet the app's
own. Senders claim outbox rows with ``FOR UPDATE SKIP LOCKED`` and leases expire
on the database's clock, so any number of hosts deliver each event once without
their clocks having to agree. Needs psycopg 3: ``pip install 'flagware[postgres]'``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flagware.events.store.base import EVENT_COLUMNS, load_queries
from flagware.events.store.sql import SQLStore

if TYPE_CHECKING:
    import psycopg

# postgresql:// and postgres://, and SQLAlchemy's postgresql+psycopg:// (the
# driver part dropped): that one made a SQLite file named after the URL,
# password included, on each host.
_SCHEME = re.compile(r"postgres(?:ql)?(?:\+\w+)?://", re.IGNORECASE)
# Any other scheme is no SQLite path either: refused by name.
_ANY_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
# In a URL's password, what libpq would read as the end of the password (it
# takes the first "@") or of the host part: it must be percent-encoded.
_UNENCODED = re.compile(r"[@/?#\s]")
# Any fixed number: it only serializes concurrent first opens of one database.
_SCHEMA_LOCK = 0x666C6167
_COPY = f"COPY events ({EVENT_COLUMNS}) FROM STDIN"
# A connection idle this long (s) is tried with a round trip before use: a
# database restarted or failed over meanwhile cut it, and the first write
# after the quiet would otherwise fail, be reported as an outage and wait a
# flush interval, although the server is back. Under traffic the writer
# uses its connection every flush_interval and never pays for the check.
IDLE_CHECK = 1.0
# Seconds a connection may take to open (psycopg's least), unless the URL sets
# ``connect_timeout``. A database that hangs (up, answering nothing) held a
# worker's first request for 17 s, the diagnostics page 10 s a poll and a
# stop 23 s at libpq's 10 s a try (a new user's trial); one slower than this
# to connect is away for flagware: its events wait in memory, tried again.
CONNECT_TIMEOUT = 2
# After a read a request waits for failed to connect (``request_reads``), the
# next ones skip the database for this long (s) and fail at once: a request
# pays for one timeout, not one per read (the start check and the shared
# key, each page poll). The writer and the commands always try.
AWAY_SKIP = 5.0
_TIMEOUT = {"connect_timeout": CONNECT_TIMEOUT}
# url -> (monotonic time request reads skip it until, the failure that said so)
_away: dict[str, tuple[float, str]] = {}
_request_reads: ContextVar[bool] = ContextVar("flagware_request_reads", default=False)


def forget_failures() -> None:
    """Request reads try every database again at once (a test starts afresh)."""
    _away.clear()


@contextmanager
def request_reads() -> Iterator[None]:
    """Reads a request waits for, in this block: connections opened within
    :data:`CONNECT_TIMEOUT` s whatever the URL says, and none tried for
    :data:`AWAY_SKIP` s after one failed (psycopg's ``OperationalError`` at once)."""
    token = _request_reads.set(True)
    try:
        yield
    finally:
        _request_reads.reset(token)


# The lease heartbeat (events/leases.py): extends a batch's lease on the
# database's clock, if the batch is still its owner's.
_inherited: list[Any] = []


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and _SCHEME.match(location) is not None


def unsupported_url(location: object) -> str | None:
    """Why ``location`` is a URL no store can open (it is no file path either)."""
    if not isinstance(location, str) or is_postgres_url(location):
        return None
    scheme = _ANY_SCHEME.match(location)
    if scheme is None:
        return None
    return (
        f"{scheme.group(1)}:// is not an event store; use a postgresql:// URL or a SQLite file path"
    )


def libpq_url(url: str) -> str:
    """``url`` as psycopg takes it, or ValueError naming what to fix, without
    the password: psycopg's own parse errors quote it (``unexpected spaces
    found in "hunter 2"``), and a password with an unencoded ``@`` or ``/``
    sent its tail to DNS as a host name."""
    url = _SCHEME.sub("postgresql://", url, count=1)
    userinfo = _userinfo(url[len("postgresql://") :])
    if ":" in userinfo and _UNENCODED.search(userinfo.partition(":")[2]):
        raise ValueError(
            "the password has a character that must be percent-encoded in a URL"
            " (@ as %40, / as %2F, ? as %3F, # as %23, a space as %20)"
        )
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:
        raise ValueError(
            "not a URL psycopg can read (in a password, % must be percent-encoded as"
            " %25 and a space as %20)"
        ) from None
    # libpq reads the port only when it connects: a port that is no number
    # was logged as an outage that could never end (a new user's trial).
    ports = str(params.get("port") or "").split(",")
    if not all(port.isdigit() or not port for port in ports):
        raise ValueError(f"the port must be a number, not {params['port']!r}")
    return url


def _userinfo(rest: str) -> str:
    """What the user meant before the host: up to the last ``@``, which ends
    a password holding an unencoded one, but not one in a query parameter's
    value (``?application_name=a@b`` has no password, and was refused)."""
    query = rest.find("?")
    value = rest.find("=", query) if query >= 0 else -1
    return (rest if value < 0 else rest[:value]).rpartition("@")[0]


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
    """The store in the PostgreSQL database at ``url``; connections are per
    thread, and the appends of every thread share one.

    ``create=False`` opens an existing store for reading and never creates the
    schema (read-only commands must not write to a store).
    """

    dialect = "postgres"
    queries = load_queries("postgres")

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__()
        _psycopg()
        self.url = libpq_url(url)
        self.location = redact(url)
        self._create = create
        self._schema_ready = not create
        from psycopg.conninfo import conninfo_to_dict

        # The URL's own connect_timeout wins, except for a request's reads.
        self._timeout = {} if "connect_timeout" in conninfo_to_dict(self.url) else _TIMEOUT

    def away(self, failure: str) -> None:
        """The writer's word that the database is away (a failed or hung write):
        request reads skip it for AWAY_SKIP s, as after one of their own fails."""
        _away[self.url] = (time.monotonic() + AWAY_SKIP, failure)

    def _connect(self) -> psycopg.Connection[Any]:
        driver = _psycopg()
        timeout = self._timeout
        if _request_reads.get():
            until, failure = _away.get(self.url, (0.0, ""))
            if time.monotonic() < until:  # what the failure raised, for every handler
                raise driver.OperationalError(
                    f"{failure} (not tried again for {AWAY_SKIP:g} s, so that no request"
                    " waits for the database)"
                )
            timeout = _TIMEOUT
        # autocommit: reads are single statements, writes open their own
        # transactions, and no idle connection ever sits inside one.
        try:
            conn: psycopg.Connection[Any] = driver.connect(self.url, autocommit=True, **timeout)
        except driver.OperationalError as exc:
            if _request_reads.get():
                self.away(" ".join(str(exc).split()))
            raise
        try:
            if not self._schema_ready:
                self._make_schema(conn, driver)
                self._schema_ready = True
            conn.execute("SET search_path TO flagware")
        except BaseException:
            conn.close()
            raise
        self._local.used = (conn, time.monotonic())  # see IDLE_CHECK
        return conn

    def _make_schema(self, conn: psycopg.Connection[Any], driver: Any) -> None:
        """Create or bring up to date flagware's schema, unless it is current."""
        if conn.execute(self.queries["schema_current"]).fetchone()[0]:  # type: ignore[index]
            return
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                # Only if missing: CREATE SCHEMA IF NOT EXISTS still asks for
                # CREATE on the database, which a schema made for the user spares.
                if not conn.execute(self.queries["schema_exists"]).fetchone()[0]:  # type: ignore[index]
                    conn.execute(self.queries["create_schema"])
                conn.execute(self.queries["schema"])
        except driver.errors.InsufficientPrivilege as exc:
            raise driver.errors.InsufficientPrivilege(
                f"{exc}; flagware's user creates its tables on first open: grant it CREATE"
                " on the database once, or create the schema for it"
                " (CREATE SCHEMA flagware AUTHORIZATION that_user)"
            ) from None

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
        if conn.closed or conn.broken:
            return False
        now = time.monotonic()
        used = getattr(self._local, "used", None)  # (connection, when this thread last took it)
        self._local.used = (conn, now)
        if used is not None and used[0] is conn and now - used[1] < IDLE_CHECK:
            return True
        try:  # SQLAlchemy's pool_pre_ping, after a quiet spell only
            conn.execute("SELECT 1")
        except Exception:  # cut while idle: a fresh connection instead, said nowhere
            return False
        return True

    def _forget_inherited(self, conns: list[Any]) -> None:
        # The parent's sockets: closing them here would end the parent's sessions.
        _inherited.extend(conns)

    def __enter__(self) -> PostgresStore:
        return self
