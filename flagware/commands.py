"""``flagware check`` and ``flagware reset``: the spec and the start records, for development."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from flagware.cli import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    add_spec_argument,
    add_store_argument,
    existing_store,
    on_statsig,
)
from flagware.events.store import is_postgres_url, not_a_store, open_store, redact, store_exists
from flagware.results.compute import ResultsError
from flagware.results.coverage import unstored_metric_events
from flagware.spec import SpecError, did_you_mean, load_spec
from flagware.spec.model import SEQUENTIAL_TUNING


def add_parsers(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="validate a spec file, listing every problem",
        description="Validate a spec file. Exit 0 when it is valid; 2 with every problem listed"
        " (file: key path: problem), and, when the store has started experiments, every"
        " change a running experiment may not take. With STATSIG_SERVER_SECRET set, no"
        " spec file and no --spec, the app reads its flags from Statsig: exit 0.",
    )
    add_spec_argument(check)
    add_store_argument(check)
    check.set_defaults(func=run_check)

    reset = sub.add_parser(
        "reset",
        help="forget an experiment's start record (local engine, development)",
        description="Forget the start record of EXPERIMENT in the store, so a changed"
        " definition is accepted and its next exposure starts a new analysis window."
        " Events are kept. Meant for development with the local engine.",
    )
    reset.add_argument("experiment", help="the experiment's name")
    add_store_argument(reset)
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=run_reset)


def run_check(args: argparse.Namespace) -> int:
    # It said "spec file not found" and exited 2 for an app on Statsig,
    # failing the CI step the README suggests.
    statsig = on_statsig(args)
    if statsig is not None:
        # The store is still the app's: a database refusing its URL passed the
        # check the README has run before a deploy (a multi-host trial).
        missing, unread = _store_state(args.store)
        if unread is not None:
            print(f"flagware check: {unread}", file=sys.stderr)
            return EXIT_BAD_INPUT
        state = "not written yet" if missing else "readable"
        print(
            f"flagware check: {statsig} is set, so the app reads its flags from Statsig:"
            f" there is no local spec to check (no {args.spec}; --spec PATH checks one);"
            f" the event store at {redact(args.store)} is {state}"
        )
        return EXIT_OK
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        blank = os.environ.get("STATSIG_SERVER_SECRET")
        if blank is not None and not blank.strip() and not os.path.exists(args.spec):
            # An app meant for Statsig whose secret came through empty (an unset
            # CI variable): the app warns of it, and so does its check.
            print(
                "flagware check: STATSIG_SERVER_SECRET is set but empty, so it is ignored"
                " and the local spec is read; set it to the server secret to use Statsig",
                file=sys.stderr,
            )
        _say_problems(len(exc.problems), args.spec)
        if _has_started(args.store):  # "every problem" included these (a trial)
            print(
                f"flagware check: its started experiments are compared with"
                f" {redact(args.store)} once the file is valid",
                file=sys.stderr,
            )
        return EXIT_BAD_INPUT
    missing, unread = _store_state(args.store)
    if unread is not None:
        print(f"flagware check: {unread}", file=sys.stderr)
        return EXIT_BAD_INPUT
    changes, reminders = ([], []) if missing else _changes_since_start(spec, args.store)
    for change in changes:
        print(change, file=sys.stderr)
    for reminder in reminders:
        print(reminder, file=sys.stderr)
    # Warnings, not errors: a metric the code does not log yet is no mistake,
    # but a misspelled event reads as "no effect" in every result. Said with
    # an error too: "every problem" left them for the next run (a trial).
    try:
        unstored = [] if missing else unstored_metric_events(spec, args.store)
    except ResultsError as exc:
        print(f"flagware check: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in unstored:
        print(f"{spec.source}: warning: metrics.{warning}", file=sys.stderr)
    for name, experiment in spec.experiments.items():
        # Accepted, and read by nothing: a statistician's trial tuned a
        # fixed-horizon experiment and was not told.
        if not experiment.sequential and experiment.sequential_tuning != SEQUENTIAL_TUNING:
            print(
                f"{spec.source}: warning: experiments.{name}.sequential_tuning is not used:"
                " the experiment sets sequential = false, so its results are read once,"
                " at the planned size, with no confidence sequence to tune",
                file=sys.stderr,
            )
    if changes:
        _say_problems(len(changes), args.spec)
        return EXIT_BAD_INPUT
    compared = (
        f"; no event store {_where(args.store)}, so no started experiment was compared with it"
        if missing and spec.experiments
        else ""
    )
    print(
        f"flagware check: {args.spec} is valid ({_count(spec.gates, 'gate')},"
        f" {_count(spec.experiments, 'experiment')}, {_count(spec.metrics, 'metric')}){compared}"
    )
    return EXIT_OK


def _store_state(store: str) -> tuple[bool, str | None]:
    """(missing, why it cannot be read). A store that is not there yet has
    nothing started: the spec is all there is to check, and the line says so
    (a CI job pointing at the wrong path must not read it as "compared"). One
    that is not a store, or a database that refuses the URL, is bad input."""
    try:
        missing = not store_exists(store)
    except Exception:  # an unreachable server, a bad URL: not_a_store words it
        missing = False
    return missing, None if missing else not_a_store(store)


def _where(store: str) -> str:
    # A database the app has not written yet holds no tables: "no event store
    # at postgresql://..." read as a wrong URL (an operator's trial).
    if is_postgres_url(store):
        return f"in the database at {redact(store)} yet (the app creates it on its first event)"
    return f"at {redact(store)}"


def _say_problems(count: int, spec: str) -> None:
    print(f"flagware check: {count} problem{'s' if count > 1 else ''} in {spec}", file=sys.stderr)


def _has_started(store: str) -> bool:
    try:
        if not store_exists(store) or not_a_store(store) is not None:
            return False
        with open_store(store, create=False) as opened:
            return any(True for _ in opened.run("started_experiments"))
    except Exception:  # the store is no concern of a file that does not parse
        return False


def _count(items: Any, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _changes_since_start(spec: Any, store: str) -> tuple[list[str], list[str]]:
    """What the running app would refuse (started experiments changed without
    restart), and reminders: a ``restart = true`` left set once its restart is
    recorded, a started experiment the spec no longer has."""
    from flagware.results.changes import (
        describe_changes,
        reading_changes,
        shipped_message,
        since_start,
    )
    from flagware.results.lock import read_started

    problems, reminders = [], []
    with open_store(store, create=False) as opened:
        for experiment in spec.experiments.values():
            record = read_started(opened, experiment.name)
            if record is None:
                continue
            reminders += [
                f"{spec.source}: warning: experiments.{experiment.name}: {said}"
                for said in reading_changes(record, experiment)
            ]
            if record.shipped is not None and experiment.ship != record.shipped:
                problems.append(f"{spec.source}: {shipped_message(experiment, record)}")
                continue
            changes = describe_changes(record, experiment)
            if experiment.restart:
                if not changes:  # the restart happened, or there is none to make
                    done = "its restart is recorded" if record.restarts else "nothing to restart"
                    reminders.append(
                        f"{spec.source}: warning: experiments.{experiment.name}: {done};"
                        " remove `restart = true`, or the next change restarts it (said"
                        " here, and at WARNING by the app)"
                    )
                else:
                    # A restart left set took the next edit as a new restart,
                    # and check said only "valid" (an operator's trial).
                    since = since_start(record)
                    opened_at = datetime.fromtimestamp(record.window_start / 1000, tz=UTC)
                    reminders.append(
                        f"{spec.source}: warning: experiments.{experiment.name}: restart = true"
                        f" and {'; '.join(changes)} since {since}: the app restarts it when it"
                        f" loads this spec, and results then count only exposures from then"
                        f" on; the analysis window open since {opened_at:%Y-%m-%d %H:%M} UTC"
                        f" is no longer read (read it first: until the app loads this spec,"
                        f" `flagware results {experiment.name}` reads it as it started)"
                    )
                continue
            if changes:
                problems.append(
                    f"{spec.source}: experiments.{experiment.name}: {'; '.join(changes)} since"
                    f" {since_start(record)} (recorded in {redact(store)}): rename it, set"
                    f" `restart = true`, or, in development, `flagware reset {experiment.name}`"
                )
        # Not a mistake (an experiment that ended is removed), but its record
        # stays: re-added with another definition it is refused.
        reminders += [
            f"{spec.source}: note: experiments.{name} has a start record in {redact(store)}"
            f" and is not in the spec: reads of it serve empty params; `flagware results"
            f" {name}` reads it as recorded; re-added, it must be unchanged (or renamed)"
            for (name,) in opened.run("started_experiments")
            if name not in spec.experiments
        ]
    return problems, reminders


def run_reset(args: argparse.Namespace) -> int:
    from flagware.events.model import now_ms
    from flagware.results.lock import meta_key, reset_key, shipped_key

    reader = existing_store(args.store, "reset")
    if reader is None:
        return EXIT_BAD_INPUT
    with reader:
        started = [str(name) for (name,) in reader.run("started_experiments")]
    if args.experiment not in started:
        known = ", ".join(started) or "none"
        print(
            f"flagware reset: {args.experiment!r} has no start record in {redact(args.store)}"
            f"{did_you_mean(args.experiment, started)} (started: {known})",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if not args.yes:
        if not sys.stdin.isatty():
            print("flagware reset: not a terminal; pass --yes to confirm", file=sys.stderr)
            return EXIT_BAD_INPUT
        answer = input(
            f"Forget when {args.experiment!r} started and what it was, in {redact(args.store)}? "
            "Its results restart from its next exposure. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("flagware reset: nothing changed")
            return EXIT_OK
    with open_store(args.store) as store:
        # Its next start opens an analysis window here (results.sql.window_start).
        store.set_meta(reset_key(args.experiment), str(now_ms()))
        store.run("meta_delete", {"key": meta_key(args.experiment)})
        # Its ship too: read nowhere once the record is gone, but left in the
        # database as if it stood (an operator's trial read it there).
        store.run("meta_delete", {"key": shipped_key(args.experiment)})
    print(f"flagware reset: {args.experiment} forgotten; it starts again on its next exposure")
    return EXIT_OK
