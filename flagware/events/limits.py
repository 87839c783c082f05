"""Bounded inputs: what a request copies into every event is capped.

One huge header or a careless metadata dict must not multiply into megabytes
per request in memory and in the store. What is cut is counted by the client
(``Flagware.truncated``) and logged once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flagware.events.model import Event

MAX_USER_AGENT = 512  # characters; real browsers send 100 to 300
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 128  # characters per key
MAX_METADATA_VALUE = 1024  # characters per value (containers as their JSON)


def cap_event(event: Event) -> list[str]:
    """Cap ``event``'s inputs in place; the names of what was cut ("user_agent", "metadata")."""
    cut: list[str] = []
    agent = event.user.get("userAgent")
    if agent is not None and len(agent) > MAX_USER_AGENT:
        # In place: the request's other events share this user and stay capped.
        event.user["userAgent"] = agent[:MAX_USER_AGENT]
        event.user_json = None  # no longer the user's encoding
        cut.append("user_agent")
    if event.metadata and _oversized(event.metadata):
        event.metadata = _cap_metadata(event.metadata)
        cut.append("metadata")
    return cut


def _oversized(metadata: Mapping[str, Any]) -> bool:
    if len(metadata) > MAX_METADATA_KEYS:
        return True
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            return True
        if isinstance(value, str):
            if len(value) > MAX_METADATA_VALUE:
                return True
        elif isinstance(value, dict | list | tuple) and _json_len(value) > MAX_METADATA_VALUE:
            return True
    return False


def _cap_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    capped: dict[str, Any] = {}
    for key, value in list(metadata.items())[:MAX_METADATA_KEYS]:
        if isinstance(value, dict | list | tuple) and _json_len(value) > MAX_METADATA_VALUE:
            value = json.dumps(value, default=str)
        if isinstance(value, str):
            value = value[:MAX_METADATA_VALUE]
        capped[key[:MAX_METADATA_KEY]] = value
    return capped


def _json_len(value: Any) -> int:
    return len(json.dumps(value, default=str))
