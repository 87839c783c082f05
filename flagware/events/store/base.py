"""The store interface (``Store``) and what every backend shares: the batch and
statistics types, delivery states, the SQL files' loader, the lease owner names.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from json.encoder import encode_basestring_ascii as _string  # json's own string encoder
from typing import Any, LiteralString, Protocol

from flagware.events.model import Event, compact_json, numeric_value

PENDING = 0
DELIVERED = 1
PARKED = 2
DROPPED = 3

# Running totals kept in ``meta`` under ``delivery.<name>``. ``queue_dropped``
# counts events a process could not even queue (its store was unwritable and
# its queue full); it is written once the store takes writes again.
COUNTERS = ("delivered", "retried", "dropped", "parked", "queue_dropped")
META_PREFIX = "delivery."
LAST_FAILURE = "last_failure"  # the key (after META_PREFIX) of the last failed send
FAILURE_KEY = META_PREFIX + LAST_FAILURE  # delivery writes it, any delivered settle clears it


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
    last_failure: str = ""  # the last failed send since one worked (delivery's JSON), or ""


class Store(Protocol):
    """One event store, whatever the backend. Safe to share between threads; a
    forked child opens its own connections on first use."""

    location: str  # the path or URL it was opened with (passwords never included)
    dialect: str  # "sqlite" or "postgres": which .sql file its named queries come from

    def append(self, events: Sequence[Event], *, deliver: bool = False) -> None: ...
    def append_rows(self, rows: list[tuple[Any, ...]]) -> None: ...
    def iter_events(
        self, *, after_id: int = 0, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[dict[str, Any]]: ...
    def count(self) -> int: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def init_meta(self, key: str, value: str) -> str: ...
    def add_to_counter(self, counter: str, by: int) -> None: ...
    def claim(self, owner: str, *, limit: int, lease: float, max_age: float) -> Batch | None: ...
    def settle(self, batch: Batch, state: int, failure: str = "") -> int: ...
    def release(self, batch: Batch, *, failed: bool) -> None: ...
    def renew(self, batch: Batch, *, lease: float) -> bool: ...
    def release_dead_leases(self) -> int: ...
    def claimable(self) -> int: ...
    def unpark(self) -> tuple[int, int | None]: ...
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


def event_rows(events: Sequence[Event], deliver: bool) -> list[tuple[Any, ...]]:
    """Events as the rows both backends insert (``EVENT_COLUMNS`` order).

    Each piece of JSON is encoded once: the events of one request share one
    user dict (encoded once per call, keyed by identity: every event of the
    call is alive, so no identity is reused; or already encoded by the request
    that logged them, ``Event.user_json``), and the metadata column and the
    payload share one encoding. ``payload`` is the text ``Event.payload()``
    gives, assembled from those pieces.
    """
    state = PENDING if deliver else None
    users: dict[int, str] = {}  # id(user) -> its JSON
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for event in events:
        user_json = event.user_json
        if user_json is None:
            user = event.user
            user_json = users.get(id(user))
            if user_json is None:
                user_json = users[id(user)] = compact_json(user)
        append(_row(event, user_json, state))
    return rows


def event_row(event: Event, deliver: bool) -> tuple[Any, ...]:
    """One event as the row both backends insert (see :func:`event_rows`)."""
    user_json = event.user_json
    if user_json is None:
        user_json = compact_json(event.user)
    return _row(event, user_json, PENDING if deliver else None)


def _row(event: Event, user_json: str, state: int | None) -> tuple[Any, ...]:
    name, user, time_ms, value = event.name, event.user, event.time, event.value
    metadata = None if event.metadata is None else compact_json(event.metadata)
    # Exposures and most events carry no value: no encoding and no number to find.
    value_json = number = None
    if value is not None:
        value_json, number = json.dumps(value), numeric_value(value)
    # Exact types only: anything else is left to the encoder, as to_wire does.
    if type(name) is not str or type(time_ms) is not int:
        payload = event.payload()
    else:
        # to_wire's optional members in its order, assembled as one f-string
        # (one BUILD_STRING), since every event of every request passes here.
        more = "" if value is None else ',"value":' + compact_json(value)
        if metadata is not None:
            more += ',"metadata":' + metadata
        secondary = event.secondary_exposures
        if secondary is not None:
            more += ',"secondaryExposures":' + (compact_json(secondary) if secondary else "[]")
        payload = f'{{"eventName":{_string(name)},"user":{user_json},"time":{time_ms}{more}}}'
    ids = user.get("customIDs")
    return (
        time_ms,
        name,
        user.get("userID"),
        ids.get("stableID") if ids else None,
        value_json,
        number,
        metadata,
        event.exposure,
        event.group,
        payload,
        state,
    )


def lease_owner(nonce: str, batch: int) -> str:
    """A lease owner name that says which host and process hold the lease."""
    return f"{_HOST}/{os.getpid()}/{nonce}/{batch}"


def is_dead_local(owner: str) -> bool:
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
