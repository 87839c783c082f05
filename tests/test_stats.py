"""flagware.results.stats against scipy, plus A/A and coverage simulations.

The simulations draw data with numpy and hand the library the same summary
statistics (n, sum, sum of squares) the SQL aggregation returns, so thousands
of experiments run in a second or two. End-to-end SQL simulations live in
test_results.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from flagware.results import stats
from flagware.results.stats import Sample, compare_means, srm_test

ALPHA = 0.1


def sample(values: np.ndarray) -> Sample:
    return Sample(len(values), float(values.sum()), float((values * values).sum()))


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
    for x in [-5.0, -1.0, 0.0, 1.2, 4.0, 9.0]:
        assert stats.norm_cdf(x) == pytest.approx(sps.norm.cdf(x), rel=1e-12)
        assert stats.norm_sf(x) == pytest.approx(sps.norm.sf(x), rel=1e-9)


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


def scipy_welch(t: np.ndarray, c: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    """p, ci low, ci high, df: scipy's Welch test, or its normal version above the threshold."""
    res = sps.ttest_ind(t, c, equal_var=False)
    if res.df > stats.Z_DF_THRESHOLD:
        delta = t.mean() - c.mean()
        se = math.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
        z = sps.norm.ppf(1 - alpha / 2)
        return 2 * sps.norm.sf(abs(delta / se)), delta - z * se, delta + z * se, math.inf
    ci = res.confidence_interval(confidence_level=1 - alpha)
    return float(res.pvalue), float(ci.low), float(ci.high), float(res.df)


def scipy_relative_ci(t: np.ndarray, c: np.ndarray, alpha: float, df: float) -> tuple[float, float]:
    """Delta-method interval of mean_t / mean_c - 1, with scipy's quantile."""
    mt, mc = t.mean(), c.mean()
    var = t.var(ddof=1) / len(t) / mc**2 + mt**2 * c.var(ddof=1) / len(c) / mc**4
    q = sps.norm.ppf(1 - alpha / 2) if math.isinf(df) else sps.t.ppf(1 - alpha / 2, df)
    rel = mt / mc - 1
    return rel - q * math.sqrt(var), rel + q * math.sqrt(var)


SIZES = [(2, 2), (2, 5), (3, 3), (5, 9), (12, 30), (100, 80), (700, 650), (5000, 4000)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("n_t", "n_c"), SIZES)
@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.01])
def test_welch_matches_scipy(seed: int, n_t: int, n_c: int, alpha: float) -> None:
    rng = np.random.default_rng(seed * 1000 + n_t)
    t = rng.normal(10.3, rng.uniform(0.5, 3), n_t)
    c = rng.lognormal(2.3, rng.uniform(0.1, 0.6), n_c)  # skewed, unequal variance
    got = compare_means(sample(t), sample(c), alpha)
    p, lo, hi, df = scipy_welch(t, c, alpha)
    assert got.delta == pytest.approx(t.mean() - c.mean(), rel=1e-9)
    assert got.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert got.ci is not None
    assert got.ci[0] == pytest.approx(lo, rel=1e-7)
    assert got.ci[1] == pytest.approx(hi, rel=1e-7)
    assert (got.df or math.inf) == pytest.approx(df, rel=1e-7)
    rlo, rhi = scipy_relative_ci(t, c, alpha, df)
    assert got.relative == pytest.approx(t.mean() / c.mean() - 1, rel=1e-9)
    assert got.relative_ci is not None
    assert got.relative_ci[0] == pytest.approx(rlo, rel=1e-7, abs=1e-12)
    assert got.relative_ci[1] == pytest.approx(rhi, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_welch_on_conversions_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (4, 40, 400, 4000):
        t = (rng.random(n) < 0.3).astype(float)
        c = (rng.random(n + 7) < 0.25).astype(float)
        if t.var() == 0 or c.var() == 0:
            continue
        got = compare_means(sample(t), sample(c), ALPHA)
        p, lo, hi, _ = scipy_welch(t, c, ALPHA)
        assert got.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
        assert got.ci == pytest.approx((lo, hi), rel=1e-7)


def test_degenerate_samples_give_no_test() -> None:
    one = Sample(1, 5.0, 25.0)
    many = Sample(10, 50.0, 260.0)
    assert compare_means(one, many, ALPHA).p_value is None
    constant = Sample(10, 30.0, 90.0)  # ten 3s
    result = compare_means(constant, Sample(10, 20.0, 40.0), ALPHA)  # ten 2s
    assert result.delta == 1.0
    assert result.p_value is None and result.ci is None
    zero_control = compare_means(many, Sample(5, 0.0, 0.0), ALPHA)
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
        cmp = compare_means(sample(row_t), sample(row_c), ALPHA)
        assert cmp.p_value is not None and cmp.ci is not None and cmp.relative_ci is not None
        rejections += cmp.p_value < ALPHA
        covered += cmp.ci[0] <= effect <= cmp.ci[1]
        lift_covered += cmp.relative_ci[0] <= lift <= cmp.relative_ci[1]
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
