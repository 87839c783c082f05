"""Deciding a goal from paired rounds: a confidence interval for the median ratio.

throughput.py and compare.py run two apps back to back in every round, so
each round gives one ratio, and the machine's drift from round to round hits
both sides of it alike. On a shared machine those ratios still scatter (one
cell's rounds spanned 0.71-1.18 in a five-round run), and their median moves
by about 0.1 between runs of unchanged code: a median alone cannot say whether
0.97x is met.

The interval here needs no assumption about how the ratios are distributed,
only that rounds are independent: the distribution-free confidence interval
for a median from order statistics, the sign test inverted (Conover,
*Practical Nonparametric Statistics*, 3rd ed., 1999, section 3.2; Hollander,
Wolfe and Chicken, *Nonparametric Statistical Methods*, 3rd ed., 2014,
section 3.6). With n rounds sorted, [x(k), x(n+1-k)] covers the true median
with probability 1 - 2 P(Binomial(n, 1/2) < k), exactly and whatever the
distribution; k is the largest that keeps that at or above the level asked.
Five rounds cannot give 95% (min to max covers 93.75%); six can.

A goal is *met* when the whole interval is at or above it, *missed* when the
whole interval is below it, and *undecided* otherwise: more rounds, or a
quieter machine, narrow the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import NamedTuple


class Interval(NamedTuple):
    low: float
    high: float
    coverage: float  # the exact probability that [low, high] covers the median


def median_interval(values: Sequence[float], level: float = 0.95) -> Interval | None:
    """The order-statistic interval for the median of ``values``, or None if too few."""
    n = len(values)
    ordered = sorted(values)
    below = 0.0  # P(Binomial(n, 1/2) < k), for the k being tried
    best: Interval | None = None
    for k in range(1, n // 2 + 1):
        below += comb(n, k - 1) / 2**n
        coverage = 1 - 2 * below
        if coverage < level:
            break
        best = Interval(ordered[k - 1], ordered[n - k], coverage)
    return best


def verdict(interval: Interval | None, goal: float) -> str:
    """``met``, ``missed`` or ``undecided``: where the interval lies against the goal."""
    if interval is None:
        return "undecided"
    if interval.low >= goal:
        return "met"
    if interval.high < goal:
        return "missed"
    return "undecided"
