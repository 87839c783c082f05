"""The ``flagware`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flagware.client import DEFAULT_EVENT_STORE


def _default_store() -> str:
    return os.environ.get("FLAGWARE_EVENT_STORE") or DEFAULT_EVENT_STORE


def _events(args: argparse.Namespace) -> int:
    from flagware.events.store import EventStore

    path = Path(args.store)
    if not path.exists():
        print(f"flagware events: no event store at {path}", file=sys.stderr)
        return 2
    store = EventStore(path)
    out = sys.stdout
    try:
        for row in store.iter_events():
            row.pop("id")
            if args.format == "jsonl":
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
            else:
                out.write(
                    f"{row['time']}  {row['event']:<28} {row['user_id'] or '-':<32} "
                    f"{row['group'] or row['exposure'] or '':<16} "
                    f"{json.dumps(row['value']) if row['value'] is not None else ''}\n"
                )
    except BrokenPipeError:  # `flagware events | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
    finally:
        store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagware", description="Feature gates, experiments and events for WSGI apps."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    events = sub.add_parser("events", help="print every stored event, exposures included")
    events.add_argument("--store", default=_default_store(), help="SQLite event store")
    events.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    events.set_defaults(func=_events)

    from flagware import demo

    demo.add_parser(sub)
    # Subcommands that live with their feature.
    for module in ("flagware.events.status", "flagware.results.command"):
        try:
            imported = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        imported.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
