"""``flagware status`` and ``flagware redeliver``: Statsig delivery, from the store.

Both work from any process (a shell, a health check) while the app runs:
every figure is in the store, written by whichever process did the work, and
the app's senders pick up whatever ``redeliver`` makes pending again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from flagware.cli import EXIT_BAD_INPUT, EXIT_OK, add_store_argument, existing_store
from flagware.events.stats import DeliveryStats, format_age
from flagware.events.store import (
    StoreStats,
    is_postgres_url,
    not_a_store,
    open_store,
    redact,
    store_exists,
)


def add_parser(subparsers: Any) -> None:
    """Add ``flagware status`` and ``flagware redeliver`` to the ``flagware`` command."""
    parser = subparsers.add_parser(
        "status",
        help="events stored, and Statsig delivery: backlog, delivered, retried, dropped, parked",
        description="How many events the store holds and how far delivery to Statsig has"
        " got, for every process sharing the store (read-only): events waiting, delivered,"
        " retried, dropped and parked, and the last failed send since a batch was delivered.",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one object, the figures and the newest stored event's time (ms),"
        " for monitoring",
    )
    parser.set_defaults(func=run)

    redeliver = subparsers.add_parser(
        "redeliver",
        help="send the events Statsig rejected (parked) again",
        description="Make every parked event pending again, once what made Statsig (or"
        " something on the way) reject it is fixed. A running app's senders send them"
        " within seconds; otherwise the next app process to log an event does (each"
        " process starts delivering with its first event). An event older than the"
        " app's max_age (7 days by default) is dropped and counted instead; one"
        " rejected again is parked again.",
    )
    add_store_argument(redeliver)
    redeliver.set_defaults(func=run_redeliver)


def run(args: argparse.Namespace) -> int:
    as_json = getattr(args, "format", "text") == "json"
    if _unwritten_database(args.store):
        # A database that answers, before the app's first event made the
        # tables: a freshly deployed app, not a mistake (a wrong name or
        # password is refused), and exit 2 turned a monitor red (a trial).
        nothing = StoreStats(0, 0, 0, 0, 0, None)
        stats, stored, newest_time = DeliveryStats.from_store(nothing), 0, None
    else:
        store = existing_store(args.store, "status", as_json=as_json)
        if store is None:
            return 2
        with store:
            stats = DeliveryStats.from_store(store.stats())
            # How many events the store holds, whatever the engine: on the local one
            # every delivery figure is 0, and a trial counted with `flagware events
            # | wc -l`. For a monitor (an operator's trial had only the diagnostics
            # page's HTML), the newest event's age says from outside that storing stopped.
            stored = store.count()
            newest = next(store.iter_events(newest_first=True, limit=1), None)
        newest_time = None if newest is None else int(newest["time"])
    if as_json:
        figures = {"store": redact(args.store), **dataclasses.asdict(stats)}
        figures["stored"] = stored
        figures["newest_event_time"] = newest_time
        print(json.dumps(figures))
    else:
        print(format_stats(stats, args.store, stored, newest_time))
    return 0


def _unwritten_database(location: str) -> bool:
    """Whether ``location`` is a PostgreSQL database that answers, without
    flagware's tables yet. Anything else is for ``existing_store`` to say."""
    if not is_postgres_url(location):
        return False
    try:
        return not store_exists(location)
    except Exception:  # unreachable or refused: existing_store says which
        return False


def run_redeliver(args: argparse.Namespace) -> int:
    problem = not_a_store(args.store)
    if problem is not None:
        print(f"flagware redeliver: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with open_store(args.store) as store:
        count, oldest = store.unpark()
    where = redact(args.store)
    if not count:
        print(f"flagware redeliver: no parked events in {where}")
        return EXIT_OK
    age = format_age(max(0.0, time.time() - oldest / 1000)) if oldest is not None else "-"
    print(
        f"flagware redeliver: {count:,} parked event{'s' if count > 1 else ''} pending again"
        f" in {where} (the oldest logged {age} ago): a running app sends them within"
        " seconds, or the next app process to log an event"
    )
    return EXIT_OK


def format_stats(stats: DeliveryStats, location: str, stored: int, newest_time: int | None) -> str:
    held = f"{stored:,} event{'' if stored == 1 else 's'}"
    if newest_time is not None:
        held += f", the newest logged {format_age(max(0.0, time.time() - newest_time / 1000))} ago"
    rows = [
        ("store", redact(location)),
        ("stored", held),
        ("backlog", f"{stats.backlog:,}"),
        ("delivered", f"{stats.delivered:,}"),
        ("retried", f"{stats.retried:,} (failed sends tried again)"),
        ("dropped", f"{stats.dropped:,} (older than the maximum age)"),
        ("parked", f"{stats.parked:,} (rejected by Statsig; see the log; `flagware redeliver`)"),
        ("queue dropped", f"{stats.queue_dropped:,} (never stored: a full queue)"),
        ("oldest undelivered", format_age(stats.oldest_age)),
    ]
    if stats.last_failure is not None:
        failure = f"{stats.last_failure} ({format_age(stats.last_failure_age)} ago)"
        rows.append(("last failure", failure))
    if not (
        stats.backlog
        or stats.delivered
        or stats.retried
        or stats.dropped
        or stats.parked
        or stats.queue_dropped  # never stored: whose they were is unknown
    ):
        # The figures above are Statsig delivery's: all zero on the local engine.
        note = "nothing here was logged for Statsig: the local engine keeps its events"
        if not stored:
            note = "nothing stored yet"
        rows.append(("note", note))
    return "\n".join(f"{name + ':':<20}{value}" for name, value in rows)
