"""``flagware results EXPERIMENT --spec PATH --store PATH``: the results in a terminal or CI job.

Exit codes: 0 results computed (ship, no-ship or inconclusive), 3 blocked (a
guardrail regressed or is stale, the sample ratio is off, or too many units
crossed over between groups), so a deploy
pipeline can stop a launch; 2 bad input (unknown experiment, missing store or
spec, bad alpha or time), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from flagware.cli import add_spec_argument, add_store_argument, iso_ms, on_statsig
from flagware.results.compute import DEFAULT_ALPHA, ResultsError, compute_results
from flagware.results.render import render
from flagware.spec import SpecError, load_spec

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BLOCKED = 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "results",
        help="analyse an experiment: intervals, SRM, guardrails and a verdict",
        description="Compare every group with the control on every metric of the spec's"
        " catalog. Exit code 3 when the launch is blocked, 2 on bad input, else 0.",
    )
    parser.add_argument(
        "experiment", help="experiment name: in the spec, or removed from it once started"
    )
    add_spec_argument(parser)  # $FLAGWARE_SPEC and $FLAGWARE_EVENT_STORE, as Flagware(...)
    add_store_argument(parser)
    # Strings, validated in run(): a bad value then gets the same one-line
    # message and exit code as every other bad input.
    parser.add_argument(
        "--alpha",
        default=str(DEFAULT_ALPHA),
        help="family-wise significance level (default: %(default)s)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        help="end of the analysis window, ISO 8601 (2026-11-30 or 2026-11-30T12:00:00+01:00;"
        " UTC when no offset is given); default: now",
    )
    parser.add_argument(
        "--sequential",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="always-valid intervals and p-values (a confidence sequence; the default),"
        " or with --no-sequential fixed-horizon tests, valid read once at a planned"
        " sample size; default: the experiment's `sequential` setting",
    )
    parser.add_argument(
        "--no-cuped",
        dest="cuped",
        action="store_false",
        help="show the analysis without CUPED's pre-exposure adjustment",
    )
    parser.add_argument(
        "--mde",
        default="0.05",
        metavar="LIFT",
        help="relative effect the planning figures are for: units needed to detect it with"
        " 80%% power (default: %(default)s, i.e. 5%%)",
    )
    parser.add_argument(
        "--format", choices=("text", "json", "html"), default="text", help="(default: text)"
    )
    parser.add_argument("--output", metavar="PATH", help="write to this file instead of stdout")
    parser.set_defaults(func=run)


def _alpha(value: object) -> float:
    try:
        alpha = float(str(value))
    except ValueError:
        raise ResultsError(f"--alpha must be a number, got {value!r}") from None
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise ResultsError(f"--alpha must be between 0 and 1 (exclusive), got {value}")
    return alpha


def _mde(value: object) -> float:
    try:
        mde = float(str(value))
    except ValueError:
        raise ResultsError(f"--mde must be a number (0.05 for 5%), got {value!r}") from None
    if not (math.isfinite(mde) and mde > 0):
        raise ResultsError(f"--mde must be a positive relative effect, got {value}")
    return mde


def _until(value: str | None) -> int | None:
    """``--until`` as ms since the epoch."""
    if value is None:
        return None
    try:
        return iso_ms(value, "--until")
    except ValueError as exc:
        raise ResultsError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    statsig = on_statsig(args)
    if statsig is not None:  # it said "spec file not found" (a new user's trial)
        print(
            f"flagware results: {statsig} is set, so the app reads its flags from Statsig,"
            " whose console has its results: this command reads a local spec's experiments"
            f" and metrics (no {args.spec}; --spec PATH names one)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        alpha = _alpha(args.alpha)
        until = _until(getattr(args, "until", None))
        mde = _mde(getattr(args, "mde", "0.05"))
        spec = load_spec(args.spec)
        results = compute_results(
            spec,
            args.experiment,
            args.store,
            alpha=alpha,
            until=until,
            sequential=getattr(args, "sequential", None),
            cuped=getattr(args, "cuped", True),
            target_mde=mde,
        )
    except (ResultsError, SpecError) as exc:
        print(f"flagware results: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    output = render(results, args.format)
    if args.output:
        try:
            Path(args.output).write_text(output, encoding="utf-8")
        except OSError as exc:
            print(f"flagware results: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        sys.stdout.write(output)
    return EXIT_BLOCKED if results.blocked else EXIT_OK
