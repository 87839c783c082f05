"""What changed between two definitions, as an operator reads it in a log line.

Shared by the start records (a started experiment's refused edit) and the
spec reload (what an edit changed): ``groups[1].params.color changed from
"red" to "darkred"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["differences", "show"]


def differences(old: Any, new: Any, path: str = "") -> Iterator[str]:
    """Each difference between two JSON-shaped values, by key path."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                yield f"{sub} removed (was {show(old[key])})"
            elif key not in old:
                yield f"{sub} added (= {show(new[key])})"
            else:
                yield from differences(old[key], new[key], sub)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from differences(a, b, f"{path}[{i}]")
    elif path == "groups" and isinstance(old, list) and isinstance(new, list):
        yield f"groups changed from {_group_names(old)} to {_group_names(new)}"
    elif old != new:
        yield f"{path} changed from {show(old)} to {show(new)}"
    elif type(old) is not type(new):  # 1 and 1.0: equal in Python, not in the fingerprint
        yield f"{path} changed from {json.dumps(old)} to {json.dumps(new)} (its type)"


def _group_names(groups: list[Any]) -> str:
    names = [str(g.get("name")) if isinstance(g, dict) else str(g) for g in groups]
    return "[" + ", ".join(names) + "]"


def show(value: Any) -> str:
    """A value as it would be written in the TOML spec (50, not 50.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True, default=str)
