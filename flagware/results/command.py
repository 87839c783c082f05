"""``flagware results EXPERIMENT --spec PATH --store PATH``: the results in a terminal or CI job.

Exit codes: 0 results computed (ship, no-ship or inconclusive), 3 blocked (a
guardrail regressed or is stale, or the sample ratio is off), so a deploy
pipeline can stop a launch; 2 bad input (unknown experiment, missing store or
spec, bad alpha), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from flagware.cli import add_spec_argument, add_store_argument
from flagware.results.compute import ResultsError, compute_results
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
    parser.add_argument("experiment", help="experiment name in the spec")
    add_spec_argument(parser)  # $FLAGWARE_SPEC and $FLAGWARE_EVENT_STORE, as Flagware(...)
    add_store_argument(parser)
    # A string, validated in run(): a bad value then gets the same one-line
    # message and exit code as every other bad input.
    parser.add_argument("--alpha", default="0.1", help="significance level (default: 0.1)")
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


def run(args: argparse.Namespace) -> int:
    try:
        alpha = _alpha(args.alpha)
        spec = load_spec(args.spec)
        results = compute_results(spec, args.experiment, args.store, alpha=alpha)
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
