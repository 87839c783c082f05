"""The store's logic, written once over a backend's connections and named queries.

Both backends subclass ``SQLStore``: each method runs named queries of the
backend's dialect (``sqlite.sql``, ``postgres.sql``: the same names side by
side). A backend supplies connections, transactions, the bulk insert and its
schema.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, LiteralString

from flagware.events.model import Event
from flagware.events.store.base import (
    COUNTERS,
    DELIVERED,
    FAILURE_KEY,
    LAST_FAILURE,
    META_PREFIX,
    PARKED,
    Batch,
    StoreStats,
    event_rows,
    is_dead_local,
)
from flagware.events.store.connections import Connections

_NO_ID = 2**63 - 1  # above every id: where a newest-first read starts


class SQLStore(Connections):
    """The store's logic over a backend's connections and named queries."""

    location: str
    dialect: str
    queries: dict[str, LiteralString]

    def _transaction(self, conn: Any) -> AbstractContextManager[Any]:
        """A write transaction that waits for the locks it needs up front."""
        raise NotImplementedError

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _unfit_after(self, exc: BaseException) -> bool:
        """Whether a failed write leaves the connection unable to write again
        (it is then closed, and the next write opens a fresh one)."""
        return False

    def _drop_unfit(self, conn: Any) -> None:
        """Close a connection ``_unfit_after`` found unable to write."""
        self._drop(conn)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction on this thread's connection."""
        with self._guard():
            conn = self._conn()
            with self._transaction(conn):
                yield conn

    def _exec(self, conn: Any, name: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> Any:
        return conn.execute(self.queries[name], params)

    # -- events ---------------------------------------------------------------------

    def append(self, events: Sequence[Event], *, deliver: bool = False) -> None:
        """Store a batch in one transaction; ``deliver`` marks them for Statsig."""
        self.append_rows(event_rows(events, deliver))

    def append_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Store rows made by ``event_row`` (the writer's queue) in one transaction."""
        if not rows:
            return
        if self._pid != os.getpid():  # before taking a lock the fork may have copied held
            self._after_fork()
        with self._guard(), self._append_lock:
            conn = self._append_conn()
            try:
                with self._transaction(conn):
                    self._insert(conn, rows)
            except Exception as exc:
                if self._unfit_after(exc):
                    self._drop_unfit(conn)
                raise

    def iter_events(
        self, *, after_id: int = 0, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Stored events in order of id (``newest_first``: the other way), as
        plain dicts (the ``flagware events`` shape).

        Read in pages by id, each a short query: nothing is held across a
        yield, so a caller may fork, or take its time, between rows, or stop
        (``--tail 20`` reads a page from the end, not a million rows).
        """
        left = limit
        query, edge = ("events_before", _NO_ID) if newest_first else ("events_after", after_id)
        while left is None or left > 0:
            page = 1000 if left is None else min(1000, left)
            with self._guard():
                rows = self._exec(self._conn(), query, {"edge": edge, "limit": page}).fetchall()
            if not rows:
                return
            for row in rows:
                if newest_first and row[0] <= after_id:
                    return
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
                    "custom_ids": _custom_ids(row[9]),
                }
            edge = rows[-1][0]
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
        with self._write() as conn:
            self._exec(conn, "meta_set", {"key": key, "value": value})

    def init_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the one kept."""
        with self._write() as conn:
            self._exec(conn, "meta_init", {"key": key, "value": value})
            return str(self._exec(conn, "meta_get", {"key": key}).fetchone()[0])

    def add_to_counter(self, counter: str, by: int) -> None:
        with self._write() as conn:
            self._bump(conn, counter, by)

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one named query of this backend's dialect (one statement, atomic by
        itself); its rows."""
        with self._guard():
            cursor = self._exec(self._conn(), name, params or {})
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

    def settle(self, batch: Batch, state: int, failure: str = "") -> int:
        """Record the outcome of sending ``batch``: DELIVERED or PARKED.

        Only rows still leased to the batch's owner change, so a sender whose
        lease was taken over cannot overwrite the new owner's outcome. In the
        same transaction, the store's last failure is cleared (DELIVERED) or
        set to ``failure`` (PARKED, delivery's JSON), so it never outlives a
        delivery that followed it.
        """
        counter = {DELIVERED: "delivered", PARKED: "parked"}[state]
        with self._write() as conn:
            changed = int(self._exec(conn, "settle", {"state": state, **_range(batch)}).rowcount)
            # Before the counter, which every settle of every process waits on.
            if state == DELIVERED:
                self._exec(conn, "clear_meta", {"key": FAILURE_KEY})
            elif failure:
                self._exec(conn, "meta_set", {"key": FAILURE_KEY, "value": failure})
            self._bump(conn, counter, changed)
        return changed

    def release(self, batch: Batch, *, failed: bool) -> None:
        """Give the batch back to the pool; ``failed`` counts a retried attempt."""
        with self._write() as conn:
            self._exec(conn, "release", {"failed": int(failed), **_range(batch)})
            if failed:
                self._bump(conn, "retried", 1)

    def renew(self, batch: Batch, *, lease: float) -> bool:
        """Extend the batch's lease to ``lease`` seconds from now; False when the
        batch is no longer leased to its owner (settled, or run out and taken over)."""
        params = {"lease": lease, "now": time.time(), **_range(batch)}
        with self._write() as conn:
            return int(self._exec(conn, "renew", params).rowcount) > 0

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
            dead = [owner for owner in owners if is_dead_local(owner)]
            if not dead:
                return 0
            with self._transaction(conn):
                return sum(
                    int(self._exec(conn, "release_owner", {"owner": owner}).rowcount)
                    for owner in dead
                )

    def unpark(self) -> tuple[int, int | None]:
        """Make every parked event pending again (``flagware redeliver``).

        Returns how many, and the time (ms) of the oldest. The parked counter
        goes down by as many, so it keeps saying what is parked now. Their
        attempt counts stay: Statsig answered them, so none of them can be a
        duplicate when it goes out again.
        """
        with self._write() as conn:
            oldest = self._exec(conn, "oldest_parked").fetchone()[0]
            count = int(self._exec(conn, "unpark").rowcount)
            self._bump(conn, "parked", -count)
        return count, None if oldest is None else int(oldest)

    def claimable(self) -> int:
        """Pending events no live lease holds: what a drain still has to send."""
        with self._guard():
            return int(self._exec(self._conn(), "claimable", {"now": time.time()}).fetchone()[0])

    def stats(self) -> StoreStats:
        with self._guard():
            conn = self._conn()
            backlog, oldest = self._exec(conn, "backlog").fetchone()
            counters = dict.fromkeys(COUNTERS, 0)
            last_failure = ""
            for key, value in self._exec(conn, "counters").fetchall():
                name = key[len(META_PREFIX) :]
                if name in counters:
                    counters[name] = int(value)
                elif name == LAST_FAILURE:
                    last_failure = str(value)
        return StoreStats(
            backlog=int(backlog),
            oldest_pending_ms=None if oldest is None else int(oldest),
            last_failure=last_failure,
            **counters,
        )

    def _bump(self, conn: Any, counter: str, by: int) -> None:
        if by:
            self._exec(conn, "bump", {"key": META_PREFIX + counter, "by": by})

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location!r}>"


def _range(batch: Batch) -> dict[str, Any]:
    return {"first": batch.first_id, "last": batch.last_id, "owner": batch.owner}


def _custom_ids(text: str | None) -> dict[str, Any] | None:
    """The event's custom IDs (companyID...) from its stored wire payload; the
    stableID, which the payload keeps among them, has its own column."""
    if text is None or (text.startswith('{"stableID":') and text.count(":") == 1):
        return None  # the common case, no custom ID, without a parse
    ids = json.loads(text)
    ids.pop("stableID", None)
    return ids or None
