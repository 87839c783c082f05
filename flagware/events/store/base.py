"""The store interface, and the logic both backends share.

``Store`` is what the writer, delivery, the CLI and results rely on. Both
backends subclass ``SQLStore``: every method's logic is written once here and
runs one named query of the backend's dialect (``sqlite.sql``, ``postgres.sql``:
the same names side by side). A backend supplies connections, transactions,
the bulk insert and its schema.

Delivery state lives in the event rows: ``delivery`` says where an event is,
``lease_owner``/``lease_until`` say which sender holds it right now. A lease is
taken and given up in single transactions, so senders sharing a store never
send the same event twice while a lease is live. A lease that expired (its
sender died, or hung past the lease) may have been sent already, so taking it
over raises the row's attempt count: the next send carries ``STATSIG-RETRY``.
Counters that rows cannot reconstruct (retries) and running totals that would be
slow to count live in ``meta``, updated in the same transaction as the rows.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString, Protocol

from flagware.events.model import Event

PENDING = 0
DELIVERED = 1
PARKED = 2
DROPPED = 3

# Running totals kept in ``meta`` under ``delivery.<name>``. ``queue_dropped``
# counts events a process could not even queue (its store was unwritable and
# its queue full); it is written once the store takes writes again.
COUNTERS = ("delivered", "retried", "dropped", "parked", "queue_dropped")
META_PREFIX = "delivery."


def _host() -> str:
    """This host as lease owners name it: the hostname, plus the PID namespace where
    there is one, since a PID says whether a process lives only inside its own
    namespace (containers sharing a hostname must not judge each other's PIDs)."""
    try:
        return f"{socket.gethostname()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


_HOST = _host()

EVENT_COLUMNS = (
    "time, event, user_id, stable_id, value, value_num, metadata, exposure, group_name,"
    " payload, delivery"
)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events leased to one sender: send ``payloads``, then settle by ``owner``."""

    owner: str
    first_id: int
    last_id: int
    payloads: list[str]
    expired: int  # older than max_age: dropped at claim time, not sent
    attempts: int  # earlier sends of these events that may have failed (STATSIG-RETRY)

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
    queue_dropped: int = 0  # never stored: a process's queue was full


class Store(Protocol):
    """One event store, whatever the backend. Safe to share between threads; a
    forked child opens its own connections on first use."""

    location: str  # the path or URL it was opened with (passwords never included)

    def append(self, events: Sequence[Event], *, deliver: bool = False) -> None: ...
    def iter_events(
        self, *, after_id: int = 0, limit: int | None = None
    ) -> Iterator[dict[str, Any]]: ...
    def count(self) -> int: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def init_meta(self, key: str, value: str) -> str: ...
    def add_to_counter(self, counter: str, by: int) -> None: ...
    def claim(self, owner: str, *, limit: int, lease: float, max_age: float) -> Batch | None: ...
    def settle(self, batch: Batch, state: int) -> int: ...
    def release(self, batch: Batch, *, failed: bool) -> None: ...
    def release_dead_leases(self) -> int: ...
    def claimable(self) -> int: ...
    def stats(self) -> StoreStats: ...
    def run(self, name: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...
    def close_thread(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc_info: object) -> None: ...


def load_queries(dialect: str) -> dict[str, LiteralString]:
    """``-- name: x`` blocks of ``<dialect>.sql``, read once per process."""
    text = resources.files(__package__).joinpath(f"{dialect}.sql").read_text("utf-8")
    queries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("-- name: "):
            name = line.removeprefix("-- name: ").strip()
            queries[name] = ""
        elif name is not None and not line.startswith("--"):
            queries[name] += line + "\n"
    # The files ship with the package: their text is as fixed as a literal
    # (drivers typed for LiteralString accept it as one).
    return {key: sql.strip() for key, sql in queries.items()}


def event_row(event: Event, deliver: bool) -> tuple[Any, ...]:
    """An event as the row both backends insert (``EVENT_COLUMNS`` order)."""
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


class SQLStore:
    """The store's logic over a backend's connections and named queries."""

    location: str
    dialect: str
    queries: dict[str, LiteralString]

    def __init__(self) -> None:
        self._local = threading.local()
        self._pid = os.getpid()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()

    # -- what a backend provides ----------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _transaction(self, conn: Any) -> AbstractContextManager[Any]:
        """A write transaction that waits for the locks it needs up front."""
        raise NotImplementedError

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:
        """False for a connection the server dropped (it is then reopened)."""
        return True

    def _guard(self) -> AbstractContextManager[Any]:
        """Held around every database call (SQLite: the fork guard)."""
        return nullcontext()

    def _forget_inherited(self, conns: list[Any]) -> None:
        """A parent's connections after a fork: never used, never closed here."""

    # -- connections: one per thread per process ------------------------------------

    def _conn(self) -> Any:
        if self._pid != os.getpid():
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._usable(conn):
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
        with suppress(Exception):  # already broken: nothing left to release
            conn.close()

    def _after_fork(self) -> None:
        self._forget_inherited(self._all)
        self._all = []
        self._all_lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()

    def _exec(self, conn: Any, name: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> Any:
        return conn.execute(self.queries[name], params)

    def _locked(self, work: Callable[[Any], Any]) -> Any:
        with self._guard():
            return work(self._conn())

    # -- events ---------------------------------------------------------------------

    def append(self, events: Sequence[Event], *, deliver: bool = False) -> None:
        """Store a batch in one transaction; ``deliver`` marks them for Statsig."""
        if not events:
            return
        rows = [event_row(e, deliver) for e in events]
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                self._insert(conn, rows)

    def iter_events(
        self, *, after_id: int = 0, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stored events in order, as plain dicts (the ``flagware events`` shape).

        Read in pages by id, each a short query: nothing is held across a
        yield, so a caller may fork, or take its time, between rows.
        """
        left = limit
        while left is None or left > 0:
            page = 1000 if left is None else min(1000, left)
            with self._guard():
                rows = self._exec(
                    self._conn(), "events_after", {"after": after_id, "limit": page}
                ).fetchall()
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
            after_id = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def count(self) -> int:
        with self._guard():
            return int(self._exec(self._conn(), "count").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        with self._guard():
            row = self._exec(self._conn(), "meta_get", {"key": key}).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                self._exec(conn, "meta_set", {"key": key, "value": value})

    def init_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the one kept."""
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                self._exec(conn, "meta_init", {"key": key, "value": value})
                return str(self._exec(conn, "meta_get", {"key": key}).fetchone()[0])

    def add_to_counter(self, counter: str, by: int) -> None:
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                self._bump(conn, counter, by)

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one named query of this backend's dialect (one transaction); its rows."""
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                cursor = self._exec(conn, name, params or {})
                return list(cursor.fetchall()) if cursor.description else []

    # -- delivery -------------------------------------------------------------------

    def claim(self, owner: str, *, limit: int, lease: float, max_age: float) -> Batch | None:
        """Lease the oldest claimable pending events to ``owner`` for ``lease`` seconds.

        Events older than ``max_age`` seconds are dropped (and counted) in the
        same transaction instead of being leased. Returns None when nothing is
        claimable.
        """
        now = time.time()
        cutoff_ms = int((now - max_age) * 1000)
        params = {"owner": owner, "limit": limit, "lease": lease, "now": now}
        with self._guard():
            conn = self._conn()
            # A read first: an idle sender polling must not take a write lock.
            if not self._exec(conn, "any_claimable", params).fetchone():
                return None
            with self._transaction(conn):
                rows = self._exec(conn, "claim", params).fetchall()
                if not rows:
                    return None
                rows.sort()
                expired = sum(1 for row in rows if row[1] < cutoff_ms)
                if expired:
                    self._exec(
                        conn,
                        "drop_expired",
                        {
                            "first": rows[0][0],
                            "last": rows[-1][0],
                            "owner": owner,
                            "cutoff": cutoff_ms,
                        },
                    )
                    self._bump(conn, "dropped", expired)
        payloads = [row[2] for row in rows if row[1] >= cutoff_ms]
        attempts = max(row[3] for row in rows)
        return Batch(owner, rows[0][0], rows[-1][0], payloads, expired, attempts)

    def settle(self, batch: Batch, state: int) -> int:
        """Record the outcome of sending ``batch``: DELIVERED or PARKED.

        Only rows still leased to the batch's owner change, so a sender whose
        lease was taken over cannot overwrite the new owner's outcome.
        """
        counter = {DELIVERED: "delivered", PARKED: "parked"}[state]
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                changed = int(
                    self._exec(conn, "settle", {"state": state, **_range(batch)}).rowcount
                )
                self._bump(conn, counter, changed)
        return changed

    def release(self, batch: Batch, *, failed: bool) -> None:
        """Give the batch back to the pool; ``failed`` counts a retried attempt."""
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                self._exec(conn, "release", {"failed": int(failed), **_range(batch)})
                if failed:
                    self._bump(conn, "retried", 1)

    def release_dead_leases(self) -> int:
        """Free leases held by processes of this host that no longer exist.

        Without this a crashed worker's batches wait for their leases to
        expire. They may have reached the API before the crash, so their
        attempt count goes up (they go out again with ``STATSIG-RETRY``).
        Leases of other hosts' processes only expire.
        """
        with self._guard():
            conn = self._conn()
            owners = [row[0] for row in self._exec(conn, "lease_owners").fetchall()]
            dead = [owner for owner in owners if _is_dead_local(owner)]
            if not dead:
                return 0
            with self._transaction(conn):
                return sum(
                    int(self._exec(conn, "release_owner", {"owner": owner}).rowcount)
                    for owner in dead
                )

    def claimable(self) -> int:
        """Pending events no live lease holds: what a drain still has to send."""
        with self._guard():
            return int(self._exec(self._conn(), "claimable", {"now": time.time()}).fetchone()[0])

    def stats(self) -> StoreStats:
        with self._guard():
            conn = self._conn()
            backlog, oldest = self._exec(conn, "backlog").fetchone()
            counters = dict.fromkeys(COUNTERS, 0)
            for key, value in self._exec(conn, "counters").fetchall():
                name = key[len(META_PREFIX) :]
                if name in counters:
                    counters[name] = int(value)
        return StoreStats(
            backlog=int(backlog),
            oldest_pending_ms=None if oldest is None else int(oldest),
            **counters,
        )

    def _bump(self, conn: Any, counter: str, by: int) -> None:
        if by:
            self._exec(conn, "bump", {"key": META_PREFIX + counter, "by": by})

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
            with self._all_lock:
                conns, self._all = self._all, []
            for conn in conns:
                conn.close()
            self._local = threading.local()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location!r}>"


def _range(batch: Batch) -> dict[str, Any]:
    return {"first": batch.first_id, "last": batch.last_id, "owner": batch.owner}


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
