"""Reading the event store for the page: short-lived read-only connections, IPs scrubbed."""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flagware.events.store import connect

POLL_LIMIT = 200  # events per poll; the next poll fetches the rest
_HIDDEN_IP = "[ip hidden]"


_EVENT_COLUMNS = "id, time, event, user_id, stable_id, value, metadata, exposure, group_name"


def _read_events(
    path: Path, *, after: int = 0, limit: int = POLL_LIMIT, tail: int | None = None
) -> list[dict[str, Any]]:
    """Events newer than ``after`` (oldest first), or the newest ``tail`` of them.

    A short-lived read-only connection per call: the page is polled from
    whatever thread the server picks, and the client's store keeps one
    connection per thread until it closes, which would pile up here.
    """
    if not path.is_file():
        return []
    conn = connect(path, readonly=True)
    try:
        if tail is not None:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (tail,)
            ).fetchall()
            rows.reverse()
        else:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
    except sqlite3.Error:
        return []  # a store still being created: nothing to show yet
    finally:
        conn.close()
    return [_event(row) for row in rows]


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
