"""The ``flagware`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from flagware.client import DEFAULT_EVENT_STORE
from flagware.events.store import Store, open_store, redact, store_exists


def _default_store() -> str:
    return os.environ.get("FLAGWARE_EVENT_STORE") or DEFAULT_EVENT_STORE


def existing_store(location: str, command: str) -> Store | None:
    """The store at ``location`` (a SQLite path or a ``postgresql://`` URL) for a
    read-only command, or None (and a message) if there is none.

    Reading must not create an empty store where the user mistyped a path.
    """
    try:
        found = store_exists(location)
    except Exception as exc:  # unreachable server, bad URL, no driver
        print(f"flagware {command}: cannot open {redact(location)}: {exc}", file=sys.stderr)
        return None
    if not found:
        print(f"flagware {command}: no event store at {redact(location)}", file=sys.stderr)
        return None
    return open_store(location, create=False)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=_default_store(),
        help="SQLite event store path or postgresql:// URL"
        f" (default: $FLAGWARE_EVENT_STORE or {DEFAULT_EVENT_STORE})",
    )


def _events(args: argparse.Namespace) -> int:
    store = existing_store(args.store, "events")
    if store is None:
        return 2
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
    add_store_argument(events)
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
