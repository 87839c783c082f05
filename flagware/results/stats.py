"""Pure-Python statistics for experiment results (the library ships without numpy/scipy).

Everything works on summary statistics (n, mean, sum of squared deviations per group), which
is what the SQL aggregation returns. Every function here is checked against
scipy in ``tests/test_stats.py``.

- Normal distribution: :class:`statistics.NormalDist` (exact to double precision).
- Student t: through the regularized incomplete beta function, evaluated with
  Lentz's continued fraction (Numerical Recipes, 6.4); quantiles by safeguarded
  Newton iteration.
- Chi-square survival: through the regularized upper incomplete gamma function
  (series below ``a + 1``, continued fraction above).
- Welch-Satterthwaite degrees of freedom, and the two-sided p-value and
  critical value of a t or z statistic. Above :data:`Z_DF_THRESHOLD` degrees of
  freedom the normal quantile is used instead: t and normal quantiles then
  differ by less than 0.1% (the textbook large-sample z-test that Statsig's
  console also uses), and the incomplete beta would only burn iterations to say
  the same thing.
- Pearson's chi-square test of the sample ratio.

The comparisons built on these live in :mod:`.inference`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

#: Welch degrees of freedom above which the normal distribution replaces t.
Z_DF_THRESHOLD = 1000.0

_STD_NORMAL = NormalDist()
_SQRT2 = math.sqrt(2.0)
_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 10_000


# --- special functions -------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast only below the mean; use the
    # symmetry I_x(a, b) = 1 - I_{1-x}(b, a) above it.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x)."""
    if x < 0 or a <= 0:
        raise ValueError("gammaincc needs a > 0 and x >= 0")
    if x == 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        # Series for the lower function P, then Q = 1 - P.
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                return max(0.0, 1.0 - total * math.exp(log_front))
        raise ArithmeticError(f"incomplete gamma series did not converge (a={a}, x={x})")
    # Continued fraction for Q (modified Lentz).
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(log_front) * h
    raise ArithmeticError(f"incomplete gamma fraction did not converge (a={a}, x={x})")


# --- distributions -----------------------------------------------------------------


def norm_cdf(x: float) -> float:
    return norm_sf(-x)


def norm_sf(x: float) -> float:
    # erfc keeps full precision in the far tail: NormalDist.cdf is 0.5 (1 + erf),
    # which cancels to 0.0 below -8.3 (a p of 2e-17 printed as 0).
    return 0.5 * math.erfc(x / _SQRT2)


def norm_ppf(p: float) -> float:
    return _STD_NORMAL.inv_cdf(p)


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    return t_sf(-t, df)


def _t_logpdf(t: float, df: float) -> float:
    return (
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * math.log(df * math.pi)
        - (df + 1.0) / 2.0 * math.log1p(t * t / df)
    )


@lru_cache(maxsize=4096)
def t_isf(q: float, df: float) -> float:
    """The t with P(T > t) = q: the upper-tail quantile of Student's t."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"tail probability must be in (0, 1), got {q}")
    if q > 0.5:
        return -t_isf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    # t's tails are heavier than the normal's, so the normal quantile is a lower
    # bound; double an upper bound until it brackets the root.
    lo = norm_ppf(1.0 - q)
    hi = max(2.0 * lo, 1.0)
    while t_sf(hi, df) > q:
        lo, hi = hi, 2.0 * hi
    t = lo
    for _ in range(200):
        diff = t_sf(t, df) - q
        if diff > 0:
            lo = t
        else:
            hi = t
        # Newton on log-space-safe density; fall back to bisection when it
        # leaves the bracket (far in the heavy tails of tiny df).
        step = diff / math.exp(_t_logpdf(t, df))
        nxt = t + step
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - t) <= 1e-13 * max(1.0, abs(t)):
            return nxt
        t = nxt
    return t


def t_ppf(p: float, df: float) -> float:
    return -t_isf(p, df)


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for the chi-square distribution with ``df`` degrees of freedom."""
    if x <= 0:
        return 1.0
    return gammaincc(df / 2.0, x / 2.0)


# --- tests and intervals -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """Summary statistics of one group's per-unit values.

    ``m2`` is the sum of squared deviations from the mean, computed in two passes
    (mean first) so the variance stays exact for values far from zero:
    ``sum(x^2) - sum(x)^2 / n`` cancels catastrophically there (for 1e9 + N(0, 1)
    it turned an interval of [0.0, 0.18] into [-3.5, 3.6]).
    """

    n: int
    mean: float
    m2: float

    @classmethod
    def from_values(cls, values: Sequence[float]) -> Sample:
        n = len(values)
        if n == 0:
            return cls(0, math.nan, 0.0)
        mean = math.fsum(values) / n
        m2 = math.fsum((v - mean) ** 2 for v in values)
        return cls(n, mean, m2)

    @property
    def total(self) -> float:
        return self.mean * self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Unbiased sample variance (n - 1 in the denominator)."""
        if self.n < 2:
            return math.nan
        return max(0.0, self.m2) / (self.n - 1)


@dataclass(frozen=True, slots=True)
class Moments:
    """Per group: two per-unit quantities y and x, their means, squared deviations and co-deviation.

    x is the pre-exposure covariate of y for CUPED, or the denominator of a
    ratio metric (y / x). All sums are around the group's own means (two
    passes), for the same reason as :class:`Sample`.
    """

    n: int
    mean_y: float
    m2_y: float
    mean_x: float = 0.0
    m2_x: float = 0.0
    c_xy: float = 0.0
    # Units whose x is above 0: for a ratio metric, the units its ratio is made
    # of (see inference.too_few_in_ratio). None where not counted.
    n_x: int | None = None

    @property
    def y(self) -> Sample:
        return Sample(self.n, self.mean_y, self.m2_y)

    @property
    def x(self) -> Sample:
        return Sample(self.n, self.mean_x, self.m2_x)


def welch_df(var_t: float, n_t: int, var_c: float, n_c: int) -> float:
    """Welch-Satterthwaite degrees of freedom."""
    a, b = var_t / n_t, var_c / n_c
    denominator = a * a / (n_t - 1) + b * b / (n_c - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else math.inf


def two_sided_p(statistic: float, df: float | None) -> float:
    """Two-sided p-value of a t (``df``) or z (``df is None``) statistic."""
    tail = norm_sf(abs(statistic)) if df is None else t_sf(abs(statistic), df)
    return min(1.0, 2.0 * tail)


def critical_value(alpha: float, df: float | None) -> float:
    """The two-sided critical value at ``alpha``: z or t with ``df``."""
    if df is None:
        return norm_ppf(1.0 - alpha / 2.0)
    return t_isf(alpha / 2.0, df)


@dataclass(frozen=True, slots=True)
class SrmTest:
    statistic: float
    df: int
    p_value: float
    expected: tuple[float, ...]


def srm_test(observed: list[int], weights: list[float]) -> SrmTest | None:
    """Pearson's chi-square goodness of fit of unit counts against the group weights.

    Groups with zero weight expect no units: any unit there is a certain
    mismatch (p = 0). ``None`` when there is nothing to test (no units, or
    fewer than two groups with weight).
    """
    if len(observed) != len(weights):
        raise ValueError("one weight per group is required")
    total = sum(observed)
    weight_sum = sum(weights)
    if total == 0 or weight_sum <= 0:
        return None
    expected = tuple(total * w / weight_sum for w in weights)
    if any(o > 0 and e == 0 for o, e in zip(observed, expected, strict=True)):
        return SrmTest(math.inf, len(observed) - 1, 0.0, expected)
    cells = [(o, e) for o, e in zip(observed, expected, strict=True) if e > 0]
    if len(cells) < 2:
        return None
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    return SrmTest(statistic, df, chi2_sf(statistic, df), expected)
