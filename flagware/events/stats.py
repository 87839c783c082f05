"""What Statsig delivery has done so far, for the whole store.

``fw.delivery_stats()`` and ``flagware status`` report it; every figure comes
from the store, so any process sharing it sees the same numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from flagware.events.store import StoreStats


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    backlog: int  # events stored for Statsig and not yet delivered, dropped or parked
    delivered: int
    retried: int  # failed sends that were (or will be) tried again
    dropped: int  # older than max_age before they could be delivered
    parked: int  # rejected by Statsig with a non-retryable 4xx
    oldest_age: float | None  # seconds since the oldest undelivered event was logged
    queue_dropped: int = 0  # never stored: a process's queue was full while the store failed
    # The last failed send since a batch was last delivered, by any process
    # ("HTTP 401: check the server secret ..."), or None.
    last_failure: str | None = None
    last_failure_age: float | None = None  # seconds since it was seen

    @classmethod
    def from_store(cls, stats: StoreStats) -> DeliveryStats:
        oldest = stats.oldest_pending_ms
        last_failure, last_failure_age = _read_failure(stats.last_failure)
        return cls(
            backlog=stats.backlog,
            delivered=stats.delivered,
            retried=stats.retried,
            dropped=stats.dropped,
            parked=stats.parked,
            oldest_age=None if oldest is None else max(0.0, time.time() - oldest / 1000),
            queue_dropped=stats.queue_dropped,
            last_failure=last_failure,
            last_failure_age=last_failure_age,
        )


def failure_record(problem: str) -> str:
    """The store's record of a failed send, as ``DeliveryStats`` reads it back."""
    return json.dumps({"time": time.time(), "text": problem})


def _read_failure(recorded: str) -> tuple[str | None, float | None]:
    if not recorded:
        return None, None
    try:
        found = json.loads(recorded)
        text, seen = found["text"], float(found["time"])
    except (ValueError, TypeError, KeyError):  # not ours to read
        return None, None
    return str(text), max(0.0, time.time() - seen)


def format_age(seconds: float | None) -> str:
    """A duration as `flagware status` and the diagnostics page show it."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
