"""A started experiment's record: what its first stored exposure fixed.

Kept in the store's ``meta`` table under ``experiment:<name>`` (JSON)::

    {"fingerprint": "...", "fields": {...}, "allocation": 50.0, "targeting_gate": null,
     "sequential": true, "sequential_tuning": 5000,
     "started": <ms of the first record>, "window_start": <ms>, "restarts": 0}

(Records made before ``targeting_gate`` was kept lack it, and their
targeting gate is not checked; those made before ``sequential`` was kept are
read with the defaults.) ``results.lock`` writes and enforces them;
``results.changes`` says how a spec differs from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from flagware.spec import ExperimentSpec

__all__ = [
    "StartRecord",
    "meta_key",
    "record_keys",
    "reset_key",
    "served_targeting",
    "shipped_key",
    "stored_values",
]


def meta_key(experiment: str) -> str:
    return f"experiment:{experiment}"


def reset_key(experiment: str) -> str:
    """When ``flagware reset`` last forgot ``experiment`` (ms, in ``meta``): the
    analysis window of the start recorded after it opens there."""
    return f"reset:{experiment}"


def shipped_key(experiment: str) -> str:
    """Which group ``ship`` launched, and when the app first served it
    (``{"group": ..., "at": ms}`` in ``meta``): results read up to then."""
    return f"shipped:{experiment}"


def record_keys(experiment: str) -> tuple[str, str, str]:
    """The ``meta`` keys a record is read from, in :meth:`StartRecord.stored`'s order."""
    return meta_key(experiment), reset_key(experiment), shipped_key(experiment)


def stored_values(
    execute: Callable[[str, tuple[str, str, str]], Iterable[Any]], experiment: str
) -> tuple[str | None, str | None, str | None]:
    """The values under :func:`record_keys` (None where absent), read with one
    query through ``execute`` (an SQLite connection's, or a results Reader's)."""
    keys = record_keys(experiment)
    found = {
        str(key): str(value)
        for key, value in execute("SELECT key, value FROM meta WHERE key IN (?, ?, ?)", keys)
    }
    record, reset, shipped = (found.get(key) for key in keys)
    return record, reset, shipped


@dataclass(frozen=True)
class StartRecord:
    fingerprint: str
    fields: dict[str, Any]
    allocation: float  # the largest allocation seen so far
    started: int  # ms: the first exposure ever recorded
    window_start: int  # ms: the start of the current analysis window
    restarts: int
    reset_at: int | None = None  # ms: the `flagware reset` before this record, if any
    targeting_gate: str | None = None  # the experiment's targeting gate when it started
    targeting_known: bool = False  # False for records made before it was kept
    # How its results were to be read when it started (None: records made
    # before they were kept): switched after looks, the error rate is not alpha.
    sequential: bool | None = None
    sequential_tuning: int | None = None
    # The group `ship` launched in this window, and when (ms), if it did.
    shipped: str | None = None
    shipped_at: int | None = None

    @classmethod
    def from_json(cls, text: str) -> StartRecord:
        data = json.loads(text)
        return cls(
            fingerprint=str(data["fingerprint"]),
            fields=dict(data["fields"]),
            allocation=float(data.get("allocation", 0.0)),
            started=int(data["started"]),
            window_start=int(data.get("window_start", data["started"])),
            restarts=int(data.get("restarts", 0)),
            targeting_gate=None
            if data.get("targeting_gate") is None
            else str(data["targeting_gate"]),
            targeting_known="targeting_gate" in data,
            sequential=None if data.get("sequential") is None else bool(data["sequential"]),
            sequential_tuning=None
            if data.get("sequential_tuning") is None
            else int(data["sequential_tuning"]),
        )

    @classmethod
    def stored(
        cls, record: str | None, reset: str | None, shipped: str | None = None
    ) -> StartRecord | None:
        """From the ``meta`` values under :func:`meta_key`, :func:`reset_key`
        and :func:`shipped_key`. A launch before this window (a restart since)
        is none of its business."""
        if record is None:
            return None
        started = cls.from_json(record)
        if reset is not None:
            started = replace(started, reset_at=int(reset))
        if shipped is not None:
            launch = json.loads(shipped)
            group, at = str(launch["group"]), int(launch["at"])
            if at >= started.window_start:
                started = replace(started, shipped=group, shipped_at=at)
        return started


def served_targeting(record: StartRecord, experiment: ExperimentSpec) -> str | None:
    if not record.targeting_known or experiment.targeting_gate in (None, record.targeting_gate):
        return experiment.targeting_gate
    return record.targeting_gate
