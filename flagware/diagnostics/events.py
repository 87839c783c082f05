"""Reading the event store for the page: short-lived read-only connections, IPs scrubbed."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any

from flagware.events.store import redact, store_exists
from flagware.events.store.reader import Reader, database_errors, open_reader

if TYPE_CHECKING:
    from flagware.client import Flagware

POLL_LIMIT = 200  # events per poll; the next poll fetches the rest
_HIDDEN_IP = "[ip hidden]"


_EVENT_COLUMNS = "id, time, event, user_id, stable_id, value, metadata, exposure, group_name"


def is_store(location: str) -> bool:
    """A store (SQLite file or PostgreSQL database) is at ``location``; creates nothing."""
    return store_exists(location) and not os.path.isdir(location)


def _read_events(location: str, *, after: int = 0, limit: int = POLL_LIMIT) -> list[dict[str, Any]]:
    """Events newer than ``after``, oldest first (the page's poll); none while
    the store cannot be read (the page says why, once, when loaded)."""
    return _read(location, after, limit, None) or []


def tail_events(location: str, tail: int) -> list[dict[str, Any]] | None:
    """The newest ``tail`` events, oldest first; None when the store cannot be
    read (the page said "no events yet" through a PostgreSQL outage)."""
    return _read(location, 0, 0, tail)


def _read(location: str, after: int, limit: int, tail: int | None) -> list[dict[str, Any]] | None:
    """A short-lived read-only connection per call: the page is polled from
    whatever thread the server picks, and the client's store keeps one
    connection per thread until it closes, which would pile up here.
    """
    try:
        if not is_store(location):  # not created yet: nothing to show
            return []
        with open_reader(location) as conn:
            rows = _select(conn, after, limit, tail)
    except database_errors():
        return None
    return [_event(row) for row in rows]


def _select(conn: Reader, after: int, limit: int, tail: int | None) -> list[tuple[Any, ...]]:
    if tail is not None:
        rows: list[tuple[Any, ...]] = conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (tail,)
        ).fetchall()
        rows.reverse()
        return rows
    return list(
        conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
    )


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[0],
        "time": row[1],
        "event": _scrub(row[2]),
        "user_id": _scrub(row[3]),
        "stable_id": row[4],
        "value": _scrub(_loads(row[5])),
        "metadata": _scrub(_loads(row[6])),
        "exposure": row[7],
        "group": row[8],
    }


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _scrub(value: Any) -> Any:
    """Replace any string that is an IP address: the store holds none, but apps log metadata."""
    if isinstance(value, str):
        return _HIDDEN_IP if _is_ip(value) else value
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _is_ip(text: str) -> bool:
    if not 2 < len(text) < 46 or not ("." in text or ":" in text):
        return False  # cheap rejection for the common case
    try:
        ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return False
    return True


def stored_summary(client: Flagware) -> str:
    """How many events the store holds, or that it cannot be read (it said
    "0 events stored" while a PostgreSQL store refused the password)."""
    location = client.event_store
    try:
        count = 0
        if is_store(location):  # none yet: a first deploy whose folder may not be written
            with open_reader(location) as conn:
                count = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except database_errors() as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        problem = escape(redact(lines[0]))
        # What this process holds meanwhile: the part of an outage the store
        # cannot say (a new user's trial saw only "unreadable").
        return (
            f'<span class="off" id="stored">event store unreadable: {problem}; '
            f"{escape(_held(client))}</span>"
        )
    if client.writer.failing_for() is not None:
        # A store that reads but refuses writes (a full disk, a read-only
        # file, a folder it cannot be made in): the page said "1398 events
        # stored" while 13,500 waited in memory (a new user's trial).
        return (
            f'<span class="off" id="stored">{count} events stored; {escape(_held(client))}</span>'
        )
    return f"{count} events stored"


def _held(client: Flagware) -> str:
    writer, errors = client.writer, client.errors
    failing = writer.failing_for()
    held = "" if failing is None else f"this process cannot store for {failing:.0f} s: "
    held += (
        f"this process holds {writer.waiting()} event(s) in memory (at most"
        f" {writer.max_queue}), {writer.dropped} dropped"
    )
    if errors:
        held += "; errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
    return held
