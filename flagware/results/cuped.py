"""Regression adjustment (CUPED) and ratio metrics, from per-group moments.

**CUPED** (Deng, Xu, Kohavi and Walker (2013), "Improving the sensitivity of
online controlled experiments by utilizing pre-experiment data", WSDM). Each
unit's metric y is adjusted by its value x of the same metric in the days
before its first exposure: ``y - theta (x - mean x)``, with
``theta = cov(x, y) / var(x)``. Randomisation makes x independent of the group,
so the adjusted difference estimates the same effect with variance shrunk by
``1 - rho^2``, rho the correlation of x and y. theta is estimated once from all
groups pooled (within-group co-deviations, as Statsig does), so every group is
adjusted alike. Units with no events in the lookback have x = 0, as GrowthBook
zero-fills them: they stay in the analysis. Without any pre-exposure data
(x constant) there is nothing to adjust by, and the metric is analysed as is.
A conversion metric is adjusted only when that shrinks its variance by
:data:`MIN_CONVERSION_GAIN` or more: adjusted, its values are no longer 0/1,
and the t-test on them takes the place of the score test, whose level holds
in small samples (a statistician's trial found the swap made at 0% gain).

**Ratio metrics** (``kind = "ratio"``, and ``mean``, the sum of values over
the number of valued events): per group ``R = mean(y) / mean(x)`` over every
unit exposed, whose variance by the delta method is
``(var y - 2 R cov(x, y) + R^2 var x) / (n mean(x)^2)`` (Deng, Knoblich and Lu
(2018), "Applying the delta method in metric analytics", KDD). Statsig and
GrowthBook analyse ratio metrics this way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flagware.results.inference import Estimate, normal_estimate
from flagware.results.stats import Moments, Sample

__all__ = ["MIN_CONVERSION_GAIN", "adjust", "pooled_reduction", "ratio", "ratio_estimate", "theta"]

#: The least variance reduction for which a conversion metric is adjusted: at
#: 5% the interval narrows by 2.5%, about what the score test's exactness is worth.
MIN_CONVERSION_GAIN = 0.05


def theta(moments: Mapping[str, Moments]) -> float | None:
    """The pooled regression coefficient of y on x; None when x does not vary."""
    m2_x = sum(m.m2_x for m in moments.values())
    if m2_x <= 0.0:
        return None
    return sum(m.c_xy for m in moments.values()) / m2_x


def adjust(moments: Mapping[str, Moments], coefficient: float) -> dict[str, Sample]:
    """Each group's adjusted per-unit values as a Sample (mean kept on y's scale)."""
    total = sum(m.n for m in moments.values())
    mean_x = sum(m.n * m.mean_x for m in moments.values()) / total if total else 0.0
    return {
        group: Sample(
            m.n,
            m.mean_y - coefficient * (m.mean_x - mean_x),
            max(m.m2_y - 2 * coefficient * m.c_xy + coefficient**2 * m.m2_x, 0.0),
        )
        for group, m in moments.items()
    }


def pooled_reduction(moments: Mapping[str, Moments], adjusted: Mapping[str, Sample]) -> float:
    """The share of the within-group variance the adjustment removes, all groups pooled."""
    before = sum(m.m2_y for m in moments.values())
    if before <= 0.0:
        return 0.0
    return 1.0 - sum(s.m2 for s in adjusted.values()) / before


def ratio(m: Moments) -> tuple[float, float]:
    """(R, its squared standard error by the delta method); (nan, nan) without a denominator."""
    if m.n < 2 or m.mean_x <= 0.0:
        return math.nan, math.nan
    r = m.mean_y / m.mean_x
    dof = m.n - 1
    spread = m.m2_y / dof - 2 * r * m.c_xy / dof + r * r * m.m2_x / dof
    return r, max(spread, 0.0) / (m.n * m.mean_x**2)


def ratio_estimate(t: Moments, c: Moments, sequential_rho: float | None) -> Estimate | None:
    """Treatment minus control ratio; None when either group has no denominator."""
    r_t, v_t = ratio(t)
    r_c, v_c = ratio(c)
    if math.isnan(r_t) or math.isnan(r_c):
        return None
    return normal_estimate(r_t, v_t, t.n, r_c, v_c, c.n, "delta", sequential_rho)
