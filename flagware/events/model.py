"""One logged event, custom or exposure, in the shape Statsig's wire format carries."""

from __future__ import annotations

import json
import json.encoder
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GATE_EXPOSURE = "statsig::gate_exposure"
CONFIG_EXPOSURE = "statsig::config_exposure"

JSONValue = str | int | float | bool | None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def numeric_value(value: object) -> float | None:
    """The number a logged value stands for, or None.

    Numbers count as themselves; strings that spell a finite number
    (``"20.0"``, ``" 3 "``) as that number, so a sum metric never adds them as
    0. Booleans, NaN, infinities and other strings are not numbers.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(slots=True)
class Event:
    """An event as logged on the request path.

    ``user`` is the Statsig user dictionary as the wire carries it (``userID``,
    ``customIDs``, ``country``...; never the raw IP). ``exposure`` and ``group``
    are flagware's own bookkeeping for exposures (the gate or config name and,
    for experiments, the group), kept in columns so results can aggregate in SQL.
    """

    name: str
    user: dict[str, Any]
    value: str | float | int | None = None
    metadata: dict[str, Any] | None = None
    time: int = field(default_factory=now_ms)
    secondary_exposures: list[dict[str, str]] | None = None
    exposure: str | None = None
    group: str | None = None
    # ``user`` as compact JSON, when the request that logged the event has it
    # already (its events share one user): the row is made without encoding it again.
    user_json: str | None = field(default=None, repr=False, compare=False)

    @property
    def user_id(self) -> str | None:
        return self.user.get("userID")

    @property
    def stable_id(self) -> str | None:
        ids = self.user.get("customIDs")
        return ids.get("stableID") if ids else None

    def to_wire(self) -> dict[str, Any]:
        """The event as the SDK posts it to ``/log_event``."""
        wire: dict[str, Any] = {"eventName": self.name, "user": self.user, "time": self.time}
        if self.value is not None:
            wire["value"] = self.value
        if self.metadata is not None:
            wire["metadata"] = self.metadata
        if self.secondary_exposures is not None:
            wire["secondaryExposures"] = self.secondary_exposures
        return wire

    def payload(self) -> str:
        return compact_json(self.to_wire())


def _compact_encoder() -> Callable[[Any], str]:
    """``json.JSONEncoder(separators=(",", ":"), default=str).encode``, in half the time.

    Compact, as the wire payload is, so the metadata column and the payload
    share one encoding. ``encode`` builds a C encoder on every call; this one is
    built once. Without circular-reference markers: a cycle raises
    RecursionError instead of ValueError, and whoever logged the event reports
    either (the event is refused, alone).
    """
    slow: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), default=str).encode
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    try:
        # CPython's own call in JSONEncoder.iterencode: markers, default, string
        # encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan.
        chunks = make(None, str, json.encoder.encode_basestring_ascii, None, ":", ",", *_FLAGS)
    except TypeError:  # no C accelerator (make is None), or another signature
        return slow
    return lambda value: "".join(chunks(value, 0))


_FLAGS = (False, False, True)
compact_json = _compact_encoder()
