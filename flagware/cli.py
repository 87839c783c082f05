"""The ``flagware`` command.

Every command takes ``--spec`` and ``--store`` where it reads them, with the
defaults ``Flagware(...)`` uses: ``$FLAGWARE_SPEC`` or ``flagware.toml``, and
``$FLAGWARE_EVENT_STORE`` or ``.flagware/events.db``. Commands that only read
open the store read-only: they never create, migrate or write to it.
Exit codes: 0 success, 2 bad input (with a message on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from flagware import __version__
from flagware.events.store import Store, StoreUnavailable, not_a_store, open_store, redact
from flagware.outages import describe, is_outage
from flagware.settings import DEFAULT_EVENT_STORE, DEFAULT_SPEC, env

EXIT_OK = 0
EXIT_BAD_INPUT = 2
# The store's database could not be reached: try again (a CI job can tell
# this from bad input, 2, and from a blocked launch, 3).
EXIT_UNAVAILABLE = 4


def default_spec() -> str:
    return env("FLAGWARE_SPEC") or DEFAULT_SPEC


def default_store() -> str:
    return env("FLAGWARE_EVENT_STORE") or DEFAULT_EVENT_STORE


class _Given(argparse.Action):
    """Stores the value and that it was given: ``flagware check`` must tell a
    ``--spec`` the user named from the default the app would not read."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def add_spec_argument(parser: argparse.ArgumentParser, *, read: bool = True) -> None:
    unused = "; not read by this command" if not read else ""
    parser.add_argument(
        "--spec",
        action=_Given,
        metavar="PATH",
        default=default_spec(),
        help=f"the local spec file (default: $FLAGWARE_SPEC or {DEFAULT_SPEC}{unused})",
    )


def on_statsig(args: argparse.Namespace) -> str | None:
    """What puts the app on Statsig when the spec is not there and was not named,
    as ``Flagware(...)`` and Django's check (E002) decide; None: read the spec."""
    if getattr(args, "spec_given", False) or os.path.exists(args.spec):
        return None
    setting: str | None = getattr(args, "statsig", None)
    return setting or ("STATSIG_SERVER_SECRET" if env("STATSIG_SERVER_SECRET") else None)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="PATH|URL",
        default=default_store(),
        help="the event store, a SQLite file or a postgresql:// URL (default:"
        f" $FLAGWARE_EVENT_STORE or {DEFAULT_EVENT_STORE})",
    )


def existing_store(location: str, command: str, *, as_json: bool = False) -> Store | None:
    """The store at ``location``, opened read-only, or None after a one-line message
    (with ``as_json``, also ``{"store", "error"}`` on stdout, for a monitor).

    Reading must not create an empty store where the user mistyped a path, nor
    add tables to (or switch the journal of) a database that is not ours.
    """
    problem = not_a_store(location)
    if problem is not None:
        print(f"flagware {command}: {problem}", file=sys.stderr)
        if as_json:  # a wrong password gave a monitor nothing to parse (a trial)
            print(json.dumps({"store": redact(location), "error": problem}))
        return None
    return open_store(location, create=False)


def iso_ms(value: str, option: str) -> int:
    """An ISO 8601 date or time (UTC when it has no offset) as ms since the epoch."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{option} must be an ISO 8601 date or time (2026-11-30T12:00:00Z), got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _events(args: argparse.Namespace) -> int:
    try:
        since = None if args.since is None else iso_ms(args.since, "--since")
    except ValueError as exc:
        print(f"flagware events: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.tail is not None and args.tail < 1:
        print("flagware events: --tail must be 1 or more", file=sys.stderr)
        return EXIT_BAD_INPUT
    store = existing_store(args.store, "events")
    if store is None:
        return EXIT_BAD_INPUT
    names, users = set(args.event or ()), set(args.user or ())

    def wanted(row: dict[str, Any]) -> bool:
        return (
            (not names or row["event"] in names or row["exposure"] in names)
            and (
                not users
                or row["user_id"] in users
                or row["stable_id"] in users
                or _unit_in(row, users)
            )
            and (since is None or row["time"] >= since)
        )

    out = sys.stdout
    table = args.format == "table"
    if table:
        out.write(
            _table_line(
                "time (UTC)",
                "event",
                "user_id",
                "stable_id",
                "custom_ids",
                "flag",
                "value",
                "metadata",
            )
        )
    try:
        if args.tail is None:
            rows: Iterable[dict[str, Any]] = filter(wanted, store.iter_events())
        else:  # read from the end until N match, then show them oldest first as always
            newest = filter(wanted, store.iter_events(newest_first=True))
            rows = reversed(list(islice(newest, args.tail)))
        for row in rows:
            row.pop("id")
            if not table:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
                continue
            value, metadata = row["value"], row["metadata"]
            out.write(
                _table_line(
                    _utc(row["time"]),
                    row["event"],
                    row["user_id"] or "-",
                    row["stable_id"] or "-",
                    _custom_ids(row["custom_ids"]),
                    _flag(row),
                    "" if value is None else json.dumps(value),
                    # An exposure's metadata is its flag column.
                    "" if metadata is None or row["exposure"] else json.dumps(metadata),
                )
            )
    finally:
        store.close()
    return EXIT_OK


# IDs are 32 hex digits (an HMAC) or the app's own: shown whole, to grep for.
_TABLE = "{:<23}  {:<28} {:<32} {:<32} {:<20} {:<16} {:<8} {}"


def _table_line(*columns: str) -> str:
    return _TABLE.format(*columns).rstrip() + "\n"


def _unit_in(row: dict[str, Any], wanted: set[str]) -> bool:
    """Whether one of the event's custom IDs (companyID...) is wanted: a
    companyID experiment's units are audited by their IDs too. Integer IDs
    compare as the text given on the command line."""
    ids = row["custom_ids"]
    # Either the value, or name=value as the table shows it (companyID=acme).
    return ids is not None and any(
        str(v) in wanted or f"{k}={v}" in wanted or _pair(k, v) in wanted for k, v in ids.items()
    )


def _custom_ids(ids: dict[str, Any] | None) -> str:
    """``companyID=acme``, comma-separated: one word, as the table's columns are."""
    return "" if not ids else ",".join(_pair(k, v) for k, v in ids.items())


def _pair(name: str, value: object) -> str:
    return f"{_word(name)}={_word(value)}"


def _word(text: object) -> str:
    """``text``, or as a JSON string where it would be ambiguous in the column:
    ``companyID=Smith, Jones`` read as two IDs (a new user's trial)."""
    text = str(text)
    if text and not any(c in text for c in ',="\\') and not any(c.isspace() for c in text):
        return text
    return json.dumps(text)


def _flag(row: dict[str, Any]) -> str:
    """An exposure's flag and what it gave: ``new_signup=true``, ``button_color:Red``."""
    name = row["exposure"]
    if name is None:
        return ""
    metadata = row["metadata"] or {}
    if "gateValue" in metadata:
        return f"{name}={metadata['gateValue']}"
    return f"{name}:{row['group'] or '-'}"  # "-": not in the experiment


def _utc(time_ms: int) -> str:
    """``2026-12-02 06:10:12.345``: an event's time as the table shows it."""
    moment = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{time_ms % 1000:03d}"


def build_parser(
    prog: str = "flagware", defaults: Mapping[str, str] | None = None, source: str = ""
) -> argparse.ArgumentParser:
    """The command's parser; ``defaults`` replace the ``--spec``/``--store``
    defaults (keys ``spec``, ``store``), their help naming ``source``; key
    ``statsig`` names the setting that puts the app on Statsig."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Feature gates, experiments and events for Python web apps.",
        epilog=f"`{prog} COMMAND --help` describes a command and its options.",
    )
    parser.add_argument("--version", action="version", version=f"flagware {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    events = sub.add_parser(
        "events",
        help="print every stored event, exposures included",
        description="Print every stored event, oldest first (read-only).",
    )
    add_store_argument(events)
    events.add_argument(
        "--format",
        choices=("jsonl", "table"),
        default="jsonl",
        help="one JSON object a line, or an aligned table (default: %(default)s)",
    )
    events.add_argument(
        "--event",
        action="append",
        metavar="NAME",
        help="only events of this name, or exposures of this gate or experiment (repeatable)",
    )
    events.add_argument(
        "--user",
        action="append",
        metavar="ID",
        help="only events whose user_id, stable_id or a custom ID (companyID...) is ID"
        " (repeatable)",
    )
    events.add_argument(
        "--since",
        metavar="TIME",
        help="only events logged at or after TIME, ISO 8601 (UTC when no offset is given)",
    )
    events.add_argument("--tail", type=int, metavar="N", help="only the newest N of those")
    events.set_defaults(func=_events)

    from flagware import commands, demo

    commands.add_parsers(sub)
    demo.add_parser(sub)
    # Subcommands that live with their feature.
    for module in ("flagware.events.status", "flagware.results.command"):
        try:
            imported = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        imported.add_parser(sub)
    # Every command that works on the app's data takes the same two options,
    # so a script can pass both to any of them.
    for name, command in sub.choices.items():
        options = {option for action in command._actions for option in action.option_strings}
        if name != "demo" and "--spec" not in options:
            add_spec_argument(command, read=False)
        if name != "demo" and defaults:
            _replace_defaults(command, defaults, source)
            # Settings that name a spec choose it as spec= does; "statsig" names
            # the setting that selects Statsig instead (manage.py flagware).
            command.set_defaults(spec_given="spec" in defaults, statsig=defaults.get("statsig"))
    return parser


def _replace_defaults(
    command: argparse.ArgumentParser, defaults: Mapping[str, str], source: str
) -> None:
    for action in command._actions:
        value = defaults.get(action.dest)
        if value is None or not action.option_strings:
            continue
        action.default = value
        described, _, rest = (action.help or "").partition(" (default: ")
        unused = "; not read by this command" if "not read" in rest else ""
        # No password in --help; and argparse %-formats help texts.
        shown = redact(value).replace("%", "%%")
        action.help = f"{described} (default: {shown}, from {source}{unused})"


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "flagware",
    defaults: Mapping[str, str] | None = None,
    source: str = "",
) -> int:
    """Run one command; ``defaults`` as in :func:`build_parser` (``manage.py flagware``)."""
    parser = build_parser(prog, defaults, source)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `flagware events | head`: the reader had enough
        # Python flushes stdout again at exit, into the closed pipe: point it away.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # the database went away, before or during the command
        if not isinstance(exc, StoreUnavailable) and not is_outage(exc):
            raise
        said = str(exc) if isinstance(exc, StoreUnavailable) else describe(exc)
        print(f"flagware {args.command}: {said}; try again once it is reachable", file=sys.stderr)
        if getattr(args, "format", None) == "json":  # a monitor parsing stdout got nothing
            store = getattr(args, "store", None)
            unavailable = {"store": None if store is None else redact(store), "error": said}
            print(json.dumps(unavailable))
        return EXIT_UNAVAILABLE
    if code == EXIT_BAD_INPUT and defaults is None and _defaulted(args) and _in_django_project():
        print(
            f"flagware {args.command}: in a Django project, `python manage.py flagware"
            f" {args.command} ...` reads the spec and store settings.FLAGWARE names",
            file=sys.stderr,
        )
    elif code == EXIT_BAD_INPUT and getattr(args, "spec", None) == DEFAULT_SPEC:
        found = _specs_below() if not os.path.exists(DEFAULT_SPEC) else []
        if found:  # an app factory's package keeps it (a new user's trial)
            print(
                f"flagware {args.command}: found {', '.join(found)}: pass --spec {found[0]}",
                file=sys.stderr,
            )
    return code


def _specs_below() -> list[str]:
    """``flagware.toml`` one folder down (an app package's), hidden folders left out."""
    try:
        folders = sorted(e.name for e in os.scandir() if e.is_dir() and e.name[0] not in "._")
    except OSError:
        return []
    return [f"{d}/{DEFAULT_SPEC}" for d in folders if os.path.isfile(os.path.join(d, DEFAULT_SPEC))]


def _defaulted(args: argparse.Namespace) -> bool:
    """Whether the command read the default spec and store (no option, no variable)."""
    store = getattr(args, "store", DEFAULT_EVENT_STORE)
    return getattr(args, "spec", DEFAULT_SPEC) == DEFAULT_SPEC and store == DEFAULT_EVENT_STORE


def _in_django_project() -> bool:
    return os.path.exists("manage.py") or "DJANGO_SETTINGS_MODULE" in os.environ


if __name__ == "__main__":
    sys.exit(main())
