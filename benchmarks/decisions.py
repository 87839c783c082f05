"""Bigger runs of the decision simulations in tests/test_results_decisions.py.

    .venv/bin/python benchmarks/decisions.py [--runs 10000] [--seed 1]

Same code as the suite (the catalog of 3 groups x 5 metrics, the peeking
experiment), more experiments, so the rates come with tighter error bars.
Prints each rate with its standard error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_results_decisions import ALPHA, _peek, run_catalog


def _rate(hits: int, runs: int) -> str:
    p = hits / runs
    return f"{p:.4f} +- {math.sqrt(p * (1 - p) / runs):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    significant = ships = 0
    for _ in range(args.runs):
        results, decision, _ = run_catalog(rng, 300)
        significant += any(r.significant for m in results for r in m.results)  # type: ignore[attr-defined]
        ships += decision == "ship"
    print(f"A/A 3 groups x 5 metrics, {args.runs} experiments, alpha {ALPHA}:")
    print(f"  any significant decision call {_rate(significant, args.runs)}")
    print(f"  false ship                    {_rate(ships, args.runs)}")
    runs = max(args.runs // 5, 100)
    fixed, seq, coverage = _peek(rng, runs, 0.0)
    print(f"A/A, 10 looks, {runs} experiments: any-look false positives")
    print(f"  fixed horizon {fixed:.4f}, sequential {seq:.4f}; sequential coverage {coverage:.4f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
