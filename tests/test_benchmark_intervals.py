"""The interval that decides a benchmark goal (benchmarks/paired.py), checked by simulation.

Seeded, so each run draws the same rounds; the bounds allow three standard
errors of the simulated rate, so the checks fail only if the method is wrong.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from paired import Interval, median_interval, verdict

TRIALS = 4000

# Per-round ratios as a noisy machine gives them, each with its true median:
# skewed, heavy-tailed, and a mixture of quiet rounds and rounds that lost
# the CPU to something else.
Draw = Callable[[random.Random], float]
DISTRIBUTIONS: dict[str, tuple[Draw, float]] = {
    "lognormal": (lambda rng: math.exp(rng.gauss(0.0, 0.15)), 1.0),
    "exponential tail": (lambda rng: 0.9 + rng.expovariate(10.0), 0.9 + math.log(2) / 10.0),
    "cauchy": (lambda rng: 1.0 + 0.05 * math.tan(math.pi * (rng.random() - 0.5)), 1.0),
}


def _mixture(rng: random.Random) -> float:
    return rng.gauss(1.0, 0.03) if rng.random() < 0.5 else rng.gauss(1.0, 0.25)


DISTRIBUTIONS["quiet and busy rounds"] = (_mixture, 1.0)  # symmetric about 1: median 1


def test_too_few_rounds_give_no_interval_and_decide_nothing() -> None:
    # Min to max of five rounds covers the median 93.75% of the time: under 95%.
    assert median_interval([1.0, 1.1, 0.9, 1.2, 1.05]) is None
    assert verdict(None, 0.97) == "undecided"
    six = median_interval([0.9, 1.3, 1.0, 1.1, 1.2, 1.05])
    assert six == Interval(0.9, 1.3, 1 - 2 / 64)


@pytest.mark.parametrize("n", [6, 10, 15, 25])
def test_the_interval_is_the_tabulated_one(n: int) -> None:
    # Conover (1999), table A3's ranks: x(k) and x(n+1-k) at 95% or more.
    ranks = {6: 1, 10: 2, 15: 4, 25: 8}
    interval = median_interval([float(i) for i in range(1, n + 1)])
    assert interval is not None
    assert (interval.low, interval.high) == (ranks[n], n + 1 - ranks[n])
    # One rank narrower would cover less than 95%.
    k = ranks[n] + 1
    narrower = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
    assert narrower < 0.95 <= interval.coverage


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("n", [6, 12, 20])
def test_the_interval_covers_the_median_as_often_as_it_says(name: str, n: int) -> None:
    draw, median = DISTRIBUTIONS[name]
    rng = random.Random(f"{name}-{n}")
    covered = 0
    stated = 0.0
    for _ in range(TRIALS):
        interval = median_interval([draw(rng) for _ in range(n)])
        assert interval is not None
        stated = interval.coverage
        covered += interval.low <= median <= interval.high
    rate = covered / TRIALS
    error = 3 * math.sqrt(stated * (1 - stated) / TRIALS)
    assert abs(rate - stated) <= error  # exact, whatever the distribution
    assert rate >= 0.95 - error


@pytest.mark.parametrize("n", [6, 12, 20])
def test_a_goal_just_out_of_reach_is_called_met_at_most_2_5_percent_of_the_time(n: int) -> None:
    # The true median ratio is 0.969 against a goal of 0.97: "met" would be wrong.
    rng = random.Random(n)
    draw, median = DISTRIBUTIONS["quiet and busy rounds"]
    wrong = sum(
        verdict(median_interval([draw(rng) - median + 0.969 for _ in range(n)]), 0.97) == "met"
        for _ in range(TRIALS)
    )
    assert wrong / TRIALS <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / TRIALS)


def test_the_verdict_needs_the_whole_interval_on_one_side() -> None:
    assert verdict(Interval(0.98, 1.05, 0.96), 0.97) == "met"
    assert verdict(Interval(0.97, 1.05, 0.96), 0.97) == "met"  # "at least 0.97"
    assert verdict(Interval(0.90, 0.96, 0.96), 0.97) == "missed"
    assert verdict(Interval(0.95, 1.01, 0.96), 0.97) == "undecided"


def test_throughput_decides_each_goal_from_paired_rounds() -> None:
    import throughput

    # Six rounds where wrapped is a clear 0.99-1.01x of bare by req/s, and 0.90x by CPU.
    bare = [{"rps": 1000.0 + 10 * i, "cpu_us": 200.0} for i in range(6)]
    factors = [0.99, 1.0, 1.01] * 2
    wrapped = [
        {"rps": r["rps"] * f, "cpu_us": 200.0 / 0.9} for r, f in zip(bare, factors, strict=True)
    ]
    spread = throughput._spread({"bare": bare, "wrapped": wrapped})
    figure = spread["wrapped/bare (goal >= 0.97)"]
    assert figure is not None
    assert figure["rps_interval"] == [0.99, 1.01] and figure["rps_verdict"] == "met"
    assert figure["cpu_interval"] == [0.9, 0.9] and figure["cpu_verdict"] == "missed"
    assert spread["core/hand (goal >= 1.2)"] is None  # not run
    # Ratios without a goal get the interval and no verdict.
    hand = [{"rps": 500.0, "cpu_us": 400.0} for _ in range(6)]
    without_goal = throughput._spread({"hand": hand, "bare": bare})["hand/bare"]
    assert without_goal is not None and "rps_verdict" not in without_goal
    assert without_goal["rps_interval"] == [0.476, 0.5]  # six rounds: lowest to highest


def test_a_round_where_a_server_failed_is_left_out_not_a_crash() -> None:
    """A round with no worker CPU or no requests (a worker died) divided by zero
    in the summary and lost a whole run's figures; now its pairs are left out."""
    import throughput

    bare = [{"rps": 1000.0, "cpu_us": 200.0} for _ in range(7)]
    wrapped = [{"rps": 990.0, "cpu_us": 210.0} for _ in range(7)]
    wrapped[3] = {"rps": 0.0, "cpu_us": None}
    bare[5] = {"rps": 1000.0, "cpu_us": None}
    spread = throughput._spread({"bare": bare, "wrapped": wrapped})
    figure = spread["wrapped/bare (goal >= 0.97)"]
    assert figure is not None
    assert (figure["min"], figure["max"]) == (0.99, 0.99)  # five good rounds
    assert figure["cpu_interval"] is None  # five rounds: too few to decide
    assert (
        throughput._spread({"bare": bare[3:4], "wrapped": wrapped[3:4]})[
            "wrapped/bare (goal >= 0.97)"
        ]
        is None
    )
    assert throughput._median([]) is None and throughput._cpu(None) == "-"
