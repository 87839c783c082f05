"""``flagware status``: how far Statsig delivery has got, read from the store.

Works from any process (a shell, a health check) while the app runs: every
figure is in the store, written by whichever process did the work.
"""

from __future__ import annotations

import argparse
from typing import Any

from flagware.cli import add_store_argument, existing_store
from flagware.events.stats import DeliveryStats
from flagware.events.store import redact


def add_parser(subparsers: Any) -> None:
    """Add ``flagware status --store PATH`` to the ``flagware`` command."""
    parser = subparsers.add_parser(
        "status", help="Statsig delivery: backlog, delivered, retried, dropped, parked"
    )
    add_store_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = existing_store(args.store, "status")
    if store is None:
        return 2
    with store:
        stats = DeliveryStats.from_store(store.stats())
    print(format_stats(stats, args.store))
    return 0


def format_stats(stats: DeliveryStats, location: str) -> str:
    rows = [
        ("store", redact(location)),
        ("backlog", f"{stats.backlog:,}"),
        ("delivered", f"{stats.delivered:,}"),
        ("retried", f"{stats.retried:,} (failed sends tried again)"),
        ("dropped", f"{stats.dropped:,} (older than the maximum age)"),
        ("parked", f"{stats.parked:,} (rejected by Statsig; see the log)"),
        ("queue dropped", f"{stats.queue_dropped:,} (never stored: a full queue)"),
        ("oldest undelivered", _age(stats.oldest_age)),
    ]
    return "\n".join(f"{name + ':':<20}{value}" for name, value in rows)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
