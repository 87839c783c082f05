"""One comparison (a treatment group against the control on one metric): test and intervals.

Every estimator gives a p-value that does not depend on the level, and the
absolute and relative intervals at any level ``alpha``. The three always agree:
the absolute interval excludes 0 exactly when ``p < alpha``, and then the
relative interval excludes 0 on the same side. That is what lets the verdict,
the table and the chart never tell two stories.

- **Welch** (count, sum and mean metrics, fixed horizon): Welch's t with
  Welch-Satterthwaite degrees of freedom (the normal above
  :data:`~flagware.results.stats.Z_DF_THRESHOLD`), except where Student's
  pooled standard error is larger: then the pooled t with n - 2 degrees of
  freedom (see :func:`estimate`).
- **Score** (conversion metrics, fixed horizon): Miettinen-Nurminen, see
  :mod:`.proportions`.
- **Sequential** (``sequential = true``, any metric): the always-valid
  normal-mixture confidence sequence, see :mod:`.sequential`.

The relative interval of Welch and Sequential is Fieller's interval for the
ratio of two means (E. C. Fieller (1954), "Some problems in interval
estimation", JRSS B 16(2)): the ratios R for which ``|m_t - R m_c|`` is within
``crit * sqrt(v_t + R^2 v_c)``. At R = 1 that is the absolute test itself,
which the delta-method lift interval is not (in 30-42% of significant results
it crossed 0). When the control mean is not clearly above zero at that level,
the ratio has no finite interval and none is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from flagware.results import proportions, sequential
from flagware.results.stats import Z_DF_THRESHOLD, Sample, critical_value, two_sided_p, welch_df

__all__ = [
    "MIN_UNITS",
    "Estimate",
    "Method",
    "estimate",
    "fieller",
    "too_few_in_ratio",
    "too_small",
]

Method = Literal["welch", "pooled", "score", "delta", "delta-pooled", "sequential"]

#: No comparison is called with fewer units than this in either group.
MIN_UNITS = 10

Interval = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Estimate:
    """Treatment minus control on one metric, testable at any level."""

    method: Method
    m_t: float  # the two group means (for ratio metrics, the two ratios)
    m_c: float
    n_t: int
    n_c: int
    p_value: float | None  # None: no variance to test against
    se: float
    df: float | None  # t degrees of freedom; None for normal-based methods
    v_t: float = math.nan  # the squared standard errors of the two means that se is made of
    v_c: float = math.nan
    rho: float | None = None  # sequential tuning
    successes: tuple[int, int] | None = None  # score method: conversions per group

    @property
    def delta(self) -> float:
        return self.m_t - self.m_c

    @property
    def relative(self) -> float | None:
        """m_t / m_c - 1, when the control mean is positive."""
        return self.m_t / self.m_c - 1.0 if self.m_c > 0 else None

    def crit(self, alpha: float) -> float:
        """The multiple of ``se`` that makes the interval at ``alpha``."""
        if self.rho is not None:
            return sequential.critical(alpha, self.n_t + self.n_c, self.rho)
        return critical_value(alpha, self.df)

    def intervals(self, alpha: float) -> tuple[Interval | None, Interval | None]:
        """(absolute interval, relative interval) at level ``1 - alpha``."""
        if self.p_value is None:
            return None, None
        crit = self.crit(alpha)
        if self.successes is not None:
            x_t, x_c = self.successes
            absolute = proportions.diff_interval(x_t, self.n_t, x_c, self.n_c, crit)
            ratio = proportions.ratio_interval(x_t, self.n_t, x_c, self.n_c, crit)
        else:
            absolute = (self.delta - crit * self.se, self.delta + crit * self.se)
            ratio = fieller(self.m_t, self.m_c, self.v_t, self.v_c, crit)
        relative = None if ratio is None else (ratio[0] - 1.0, ratio[1] - 1.0)
        return absolute, relative


def _successes(sample: Sample) -> int:
    return round(sample.mean * sample.n) if sample.n else 0


def too_small(treatment: Sample, control: Sample) -> str | None:
    """Why this comparison is below the minimum for any call, or None.

    The rule (README, "Small samples"): at least :data:`MIN_UNITS` units in each
    group. Above it the tests themselves hold their level (the score test for
    conversions, the larger of Welch's and the pooled standard error for the
    rest); the minimum keeps the normal approximations, and the sequential
    method's asymptotics, away from a handful of units.
    """
    if min(treatment.n, control.n) < MIN_UNITS:
        return f"needs at least {MIN_UNITS} units in each group"
    return None


def too_few_in_ratio(n_x_t: int | None, n_x_c: int | None, what: str) -> str | None:
    """Why a ratio metric's comparison is below the minimum, or None: at least
    :data:`MIN_UNITS` units in each group with ``what`` (its denominator).

    A ratio is made of the units with a denominator, not of every unit
    exposed. With one buyer in a group, revenue per purchase is that buyer's
    own ratio, the delta method's residual is 0 (or rounding error), and a
    statistician's trial saw SHIP at p < 0.0001 on one buyer a group: 20% of
    A/A experiments called at some daily look (sequential, 1-5 buyers a group
    at the first looks), 0.2% with this rule (``test_results_inference.py``).
    """
    known = [n for n in (n_x_t, n_x_c) if n is not None]
    if known and min(known) < MIN_UNITS:
        return f"needs at least {MIN_UNITS} units with {what} in each group"
    return None


def estimate(
    kind: str,
    treatment: Sample,
    control: Sample,
    *,
    sequential_rho: float | None = None,
) -> Estimate:
    """The comparison's estimator: sequential when tuned, else score or Welch by metric kind."""
    n_t, n_c = treatment.n, control.n
    m_t, m_c = treatment.mean, control.mean
    if min(n_t, n_c) < 2:
        return Estimate("welch", m_t, m_c, n_t, n_c, None, math.nan, None)
    v_t = treatment.variance / n_t
    v_c = control.variance / n_c
    se = math.sqrt(v_t + v_c)
    if sequential_rho is not None:
        # The larger of the pooled and unpooled errors, as at a fixed horizon
        # for sums: a small group with 0-3 conversions (or purchases) has a
        # variance near 0, and the unpooled sequence called that side 4.75%
        # of A/A runs where alpha/2 is 2.5% (20/80 groups, 2% conversion, 10
        # looks; a statistician's trial), 0.03-0.05% with the larger error.
        pooled = _pooled_se(treatment, control)
        if pooled > se:
            pooled_var = pooled * pooled / (1.0 / n_t + 1.0 / n_c)
            v_t, v_c = pooled_var / n_t, pooled_var / n_c
        return normal_estimate(m_t, v_t, n_t, m_c, v_c, n_c, "sequential", sequential_rho)
    if kind == "conversion":
        x_t, x_c = _successes(treatment), _successes(control)
        z = proportions.score_statistic(x_t, n_t, x_c, n_c)
        p = None if z is None else two_sided_p(z, None)
        return Estimate("score", m_t, m_c, n_t, n_c, p, se, None, v_t, v_c, None, (x_t, x_c))
    df: float | None = None
    p = None
    method: Method = "welch"
    pooled = _pooled_se(treatment, control)
    if pooled > se:
        # The null "no effect on anyone" means one distribution, one variance:
        # the pooled standard error. It is larger exactly when the smaller group
        # happened to vary less (a control with no purchase), which is when
        # Welch's test calls noise significant (A/A: 7-9% at alpha 0.05 with
        # 12 vs 28 units). Taking the larger of the two keeps the test valid
        # under that null and the interval valid under unequal variances.
        se, df, method = pooled, float(n_t + n_c - 2), "pooled"
        pooled_var = pooled * pooled / (1.0 / n_t + 1.0 / n_c)
        v_t, v_c = pooled_var / n_t, pooled_var / n_c
    elif se > 0:
        df = welch_df(treatment.variance, n_t, control.variance, n_c)
    if se > 0:
        assert df is not None
        if df > Z_DF_THRESHOLD:
            df = None
        p = two_sided_p((m_t - m_c) / se, df)
    return Estimate(method, m_t, m_c, n_t, n_c, p, se, df, v_t, v_c)


def normal_estimate(
    m_t: float,
    v_t: float,
    n_t: int,
    m_c: float,
    v_c: float,
    n_c: int,
    method: Method = "delta",
    sequential_rho: float | None = None,
) -> Estimate:
    """A large-sample z comparison from two means and their squared standard errors.

    Ratio metrics (delta method) and the sequential test use it; with
    ``sequential_rho`` the p-value is the always-valid one.
    """
    se = math.sqrt(v_t + v_c) if math.isfinite(v_t + v_c) else math.nan
    p = None
    if se > 0:
        z = (m_t - m_c) / se
        p = (
            sequential.p_value(z, n_t + n_c, sequential_rho)
            if sequential_rho is not None
            else two_sided_p(z, None)
        )
    if sequential_rho is not None:
        method = "sequential"
    return Estimate(method, m_t, m_c, n_t, n_c, p, se, None, v_t, v_c, sequential_rho)


def _pooled_se(treatment: Sample, control: Sample) -> float:
    """Student's pooled standard error of the difference of means."""
    dof = treatment.n + control.n - 2
    pooled_var = (max(treatment.m2, 0.0) + max(control.m2, 0.0)) / dof
    return math.sqrt(pooled_var * (1.0 / treatment.n + 1.0 / control.n))


def fieller(m_t: float, m_c: float, v_t: float, v_c: float, crit: float) -> Interval | None:
    """Fieller's interval for m_t / m_c from squared standard errors (None: unbounded)."""
    a = m_c * m_c - crit * crit * v_c
    if m_c <= 0 or a <= 0:
        return None
    half = crit * math.sqrt(max(m_t * m_t * v_c + v_t * a, 0.0))
    return (m_t * m_c - half) / a, (m_t * m_c + half) / a
