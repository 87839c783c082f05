"""flagware.results.stats and .inference against scipy, plus A/A and coverage simulations.

The simulations draw data with numpy and hand the library the same summary
statistics (n, mean, sum of squared deviations) the SQL aggregation returns, so
thousands of experiments run in a second or two. End-to-end SQL simulations
live in test_results.py; the catalog-wide decision simulations in
test_results_decisions.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.optimize import brentq

from flagware.results import stats
from flagware.results.inference import estimate
from flagware.results.stats import Sample, srm_test

ALPHA = 0.1


def sample(values: np.ndarray) -> Sample:
    return Sample.from_values([float(v) for v in values])


class Compared:
    """One comparison at one level, as the results show it."""

    def __init__(self, t: Sample, c: Sample, alpha: float, kind: str = "sum") -> None:
        est = estimate(kind, t, c) if min(t.n, c.n) >= 2 else None
        self.delta = t.mean - c.mean
        self.p_value = est.p_value if est else None
        self.df = est.df if est else None
        self.method = est.method if est else None
        self.relative = est.relative if est else None
        self.ci, self.relative_ci = est.intervals(alpha) if est else (None, None)


def compare_means(t: Sample, c: Sample, alpha: float, kind: str = "sum") -> Compared:
    return Compared(t, c, alpha, kind)


# --- special functions and distributions ---------------------------------------------


@pytest.mark.parametrize("df", [1, 1.5, 2, 3, 4.7, 10, 29, 100, 999, 5000, 1e5])
def test_t_distribution_matches_scipy(df: float) -> None:
    for t in [0.0, 0.01, 0.5, 1.0, 1.96, 3.0, 8.0, 50.0, 1e3]:
        assert stats.t_sf(t, df) == pytest.approx(sps.t.sf(t, df), rel=1e-9, abs=1e-300)
        assert stats.t_cdf(-t, df) == pytest.approx(sps.t.cdf(-t, df), rel=1e-9, abs=1e-300)
        assert stats.t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), rel=1e-9)
    for q in [0.5, 0.45, 0.1, 0.05, 0.025, 0.005, 5e-4, 1e-6, 0.9, 0.975]:
        assert stats.t_isf(q, df) == pytest.approx(sps.t.isf(q, df), rel=1e-9, abs=1e-12)
        assert stats.t_ppf(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-9, abs=1e-12)


def test_normal_matches_scipy() -> None:
    for p in [1e-9, 0.001, 0.05, 0.5, 0.95, 0.999]:
        assert stats.norm_ppf(p) == pytest.approx(sps.norm.ppf(p), rel=1e-12)
    # Far tails too, relative and with no absolute slack: p = 2e-17 printed as 0
    # (and pytest.approx's default abs=1e-12 had let 0 pass for 1e-19).
    for x in [-37.0, -9.0, -5.0, -1.0, 0.0, 1.2, 4.0, 8.4, 9.0, 20.0, 37.0]:
        assert stats.norm_cdf(x) == pytest.approx(sps.norm.cdf(x), rel=1e-12, abs=0)
        assert stats.norm_sf(x) == pytest.approx(sps.norm.sf(x), rel=1e-12, abs=0)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 20, 99])
def test_chi2_sf_matches_scipy(df: int) -> None:
    for x in [0.0, 1e-4, 0.5, 1.0, df - 0.5, df + 1.5, 10.0, 40.0, 150.0, 700.0]:
        assert stats.chi2_sf(x, df) == pytest.approx(sps.chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_betainc_matches_scipy() -> None:
    from scipy.special import betainc

    for a, b in [(0.5, 0.5), (1, 3), (2.5, 0.5), (30, 40), (500, 0.5)]:
        for x in [0.0, 1e-6, 0.1, 0.5, 0.9, 0.999, 1.0]:
            assert stats.betainc(a, b, x) == pytest.approx(betainc(a, b, x), rel=1e-10, abs=1e-300)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        stats.t_isf(0.0, 3)
    with pytest.raises(ValueError):
        stats.t_sf(1.0, 0)
    with pytest.raises(ValueError):
        stats.betainc(1, 1, 1.5)
    with pytest.raises(ValueError):
        srm_test([1, 2], [50.0])


# --- Welch interval and p-value --------------------------------------------------------


def scipy_two_sample(
    t: np.ndarray, c: np.ndarray, alpha: float
) -> tuple[float, float, float, float]:
    """p, ci low, ci high, df: Welch's test, or Student's where its standard error is larger."""
    welch = sps.ttest_ind(t, c, equal_var=False)
    student = sps.ttest_ind(t, c, equal_var=True)
    delta = t.mean() - c.mean()
    se_welch = math.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
    se_pooled = abs(delta / student.statistic)
    res, se = (student, se_pooled) if se_pooled > se_welch else (welch, se_welch)
    if res.df > stats.Z_DF_THRESHOLD:
        z = sps.norm.ppf(1 - alpha / 2)
        return 2 * sps.norm.sf(abs(delta / se)), delta - z * se, delta + z * se, math.inf
    ci = res.confidence_interval(confidence_level=1 - alpha)
    return float(res.pvalue), float(ci.low), float(ci.high), float(res.df)


def fieller_by_inversion(
    t: np.ndarray, c: np.ndarray, crit: float, pooled: bool
) -> tuple[float, float] | None:
    """Lift interval found numerically: every lift whose Fieller statistic is within crit."""
    mt, mc = t.mean(), c.mean()
    vt, vc = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    if pooled:
        s2 = ((len(t) - 1) * t.var(ddof=1) + (len(c) - 1) * c.var(ddof=1)) / (len(t) + len(c) - 2)
        vt, vc = s2 / len(t), s2 / len(c)

    def excess(r: float) -> float:  # > 0 outside the interval
        return (mt - r * mc) ** 2 - crit**2 * (vt + r * r * vc)

    point = mt / mc
    lo = brentq(excess, point - 1e3 * abs(point) - 1, point) if excess(-1e9) > 0 else None
    hi = brentq(excess, point, point + 1e3 * abs(point) + 1) if excess(1e9) > 0 else None
    if lo is None or hi is None:
        return None
    return lo - 1, hi - 1


SIZES = [(2, 2), (2, 5), (3, 3), (5, 9), (12, 30), (100, 80), (700, 650), (5000, 4000)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("n_t", "n_c"), SIZES)
@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.01])
def test_mean_comparison_matches_scipy(seed: int, n_t: int, n_c: int, alpha: float) -> None:
    rng = np.random.default_rng(seed * 1000 + n_t)
    t = rng.normal(10.3, rng.uniform(0.5, 3), n_t)
    c = rng.lognormal(2.3, rng.uniform(0.1, 0.6), n_c)  # skewed, unequal variance
    got = compare_means(sample(t), sample(c), alpha)
    p, lo, hi, df = scipy_two_sample(t, c, alpha)
    assert got.delta == pytest.approx(t.mean() - c.mean(), rel=1e-9)
    assert got.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert got.ci is not None
    assert got.ci[0] == pytest.approx(lo, rel=1e-7)
    assert got.ci[1] == pytest.approx(hi, rel=1e-7)
    assert (got.df or math.inf) == pytest.approx(df, rel=1e-7)
    crit = sps.norm.ppf(1 - alpha / 2) if math.isinf(df) else sps.t.ppf(1 - alpha / 2, df)
    assert got.relative == pytest.approx(t.mean() / c.mean() - 1, rel=1e-9)
    student = sps.ttest_ind(t, c, equal_var=True)
    se_pooled = abs((t.mean() - c.mean()) / student.statistic)
    pooled = se_pooled > math.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
    expected = fieller_by_inversion(t, c, crit, pooled)
    if expected is None:
        assert got.relative_ci is None
    else:
        assert got.relative_ci == pytest.approx(expected, rel=1e-7, abs=1e-9)
    # One story: the lift interval excludes 0 exactly when the delta interval does.
    if got.relative_ci is not None:
        assert (got.ci[0] > 0) == (got.relative_ci[0] > 0)
        assert (got.ci[1] < 0) == (got.relative_ci[1] < 0)


def test_large_offsets_keep_their_variance() -> None:
    """1e9 + N(0, 1): the naive sum-of-squares variance cancels; two passes do not."""
    rng = np.random.default_rng(8)
    t = 1e9 + rng.normal(0.1, 1.0, 4000)
    c = 1e9 + rng.normal(0.0, 1.0, 4000)
    got = compare_means(sample(t), sample(c), 0.05)
    p, lo, hi, _ = scipy_two_sample(t - 1e9, c - 1e9, 0.05)
    assert got.ci == pytest.approx((lo, hi), rel=1e-4)
    assert got.p_value == pytest.approx(p, rel=1e-4)


def test_degenerate_samples_give_no_test() -> None:
    one = Sample.from_values([5.0])
    many = sample(np.array([4.0, 6.0] * 5))
    assert compare_means(one, many, ALPHA).p_value is None
    constant = sample(np.full(10, 3.0))
    result = compare_means(constant, sample(np.full(10, 2.0)), ALPHA)
    assert result.delta == 1.0
    assert result.p_value is None and result.ci is None
    zero_control = compare_means(many, sample(np.zeros(5)), ALPHA)
    assert zero_control.p_value is not None
    assert zero_control.relative is None and zero_control.relative_ci is None


# --- SRM -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_srm_matches_scipy_chisquare(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    weights = rng.integers(1, 100, k).astype(float)
    observed = rng.multinomial(int(rng.integers(10, 100_000)), weights / weights.sum())
    got = srm_test([int(o) for o in observed], [float(w) for w in weights])
    expected = observed.sum() * weights / weights.sum()
    ref = sps.chisquare(observed, expected)
    assert got is not None
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)
    assert got.p_value == pytest.approx(sps.chi2.sf(ref.statistic, k - 1), rel=1e-8, abs=1e-300)


def test_srm_edge_cases() -> None:
    assert srm_test([0, 0], [50, 50]) is None
    assert srm_test([10], [100]) is None
    stray = srm_test([10, 10, 1], [50, 50, 0])  # units in a group the spec does not weight
    assert stray is not None and stray.p_value == 0.0
    assert srm_test([1000, 1200], [50, 50]).p_value < 0.001  # type: ignore[union-attr]


# --- simulations -----------------------------------------------------------------------


def _simulate(
    rng: np.random.Generator, experiments: int, n: int, effect: float, kind: str
) -> tuple[float, float, float]:
    """Rejection rate, coverage of the true delta, coverage of the true lift, at ALPHA."""
    if kind == "conversion":
        base = 0.2
        c = (rng.random((experiments, n)) < base).astype(float)
        t = (rng.random((experiments, n)) < base + effect).astype(float)
    elif kind == "normal":  # unequal variances: what Welch is for
        base = 10.0
        c = rng.normal(base, 1.0, (experiments, n))
        t = rng.normal(base + effect, 2.0, (experiments, n))
    else:  # skewed revenue-like values: exponential, mean 10
        base = 10.0
        c = rng.exponential(base, (experiments, n))
        t = rng.exponential(base, (experiments, n)) + effect
    lift = effect / base
    rejections = covered = lift_covered = 0
    for row_t, row_c in zip(t, c, strict=True):
        cmp = compare_means(
            sample(row_t), sample(row_c), ALPHA, "conversion" if kind == "conversion" else "sum"
        )
        assert cmp.p_value is not None and cmp.ci is not None
        rejections += cmp.ci[0] > 0 or cmp.ci[1] < 0
        covered += cmp.ci[0] <= effect <= cmp.ci[1]
        # No finite lift interval (the control mean is not clearly above 0):
        # the set of compatible lifts is unbounded and so covers the truth.
        rel = cmp.relative_ci
        lift_covered += rel is None or rel[0] <= lift <= rel[1]
    return rejections / experiments, covered / experiments, lift_covered / experiments


def _two_se(target: float, runs: int) -> float:
    return 2 * math.sqrt(target * (1 - target) / runs)


RUNS = 2000


@pytest.mark.parametrize(
    ("kind", "n"), [("conversion", 2000), ("revenue", 200), ("normal", 40), ("normal", 5)]
)
def test_aa_false_positive_rate_is_alpha(kind: str, n: int) -> None:
    rate, coverage, _ = _simulate(np.random.default_rng(20261124), RUNS, n, 0.0, kind)
    print(f"A/A {kind} n={n}/group: false-positive rate {rate:.4f} over {RUNS} experiments")
    assert abs(rate - ALPHA) <= _two_se(ALPHA, RUNS), rate
    assert abs(coverage - (1 - ALPHA)) <= _two_se(ALPHA, RUNS), coverage


def test_aa_tiny_skewed_samples_are_not_anti_conservative() -> None:
    # Welch's t on 8 exponential values per group is known to be conservative
    # (the t approximation overstates the tails of a skewed mean): the
    # false-positive rate may fall below alpha, but must not exceed it.
    rate, _, _ = _simulate(np.random.default_rng(3), RUNS, 8, 0.0, "revenue")
    print(f"A/A revenue n=8/group (skewed, tiny): false-positive rate {rate:.4f}")
    assert rate <= ALPHA + _two_se(ALPHA, RUNS)


@pytest.mark.parametrize(
    ("kind", "n", "effect"),
    [("conversion", 2000, 0.03), ("revenue", 300, 2.0), ("normal", 12, 1.5)],
)
def test_known_effect_is_covered_at_one_minus_alpha(kind: str, n: int, effect: float) -> None:
    power, coverage, lift_coverage = _simulate(np.random.default_rng(7), RUNS, n, effect, kind)
    print(
        f"known effect {effect:+g} ({kind}, n={n}/group): delta CI coverage {coverage:.4f},"
        f" lift CI coverage {lift_coverage:.4f} (target {1 - ALPHA:.2f}), power {power:.3f}"
    )
    assert abs(coverage - (1 - ALPHA)) <= _two_se(ALPHA, RUNS), coverage
    # The delta method is a large-sample approximation: hold the lift interval
    # to it where samples are large.
    if n >= 300:
        assert abs(lift_coverage - (1 - ALPHA)) <= _two_se(ALPHA, RUNS), lift_coverage
    assert power > 0.5
