"""End to end: events in a real SQLite store -> flagware.results -> numbers, verdicts, output.

Every number is checked against an independent computation: the events are
replayed in plain Python (first exposure per unit, per-unit metric values)
and the samples handed to scipy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats import proportion as smp

from flagware.events.model import CONFIG_EXPOSURE, Event
from flagware.events.store import EventStore
from flagware.results import (
    ResultsError,
    compute_results,
    render_chart_svg,
    render_html,
    render_json,
    render_text,
)
from flagware.results.command import add_parser, run
from flagware.results.lock import record_started
from flagware.results.sql import SETTLE_MS
from flagware.results.stats import Z_DF_THRESHOLD
from flagware.spec import Spec, parse_spec
from tests.reference import brute_force_interval, brute_force_z

NOW = time.time_ns() // 1_000_000 // 1000 * 1000  # ms; guardrail freshness uses the clock
HOUR = 3_600_000
ALPHA = 0.05  # the default

METRICS: dict[str, dict[str, Any]] = {
    "signed_up": {"event": "signup", "kind": "conversion", "tags": ["core"]},
    "clicks": {"event": "click", "kind": "count"},
    "revenue": {"event": "purchase", "kind": "sum"},
    "order_value": {"event": "purchase", "kind": "mean"},
    "errors": {
        "event": "error",
        "kind": "count",
        "tags": ["guardrail"],
        "direction": "decrease",
        "fresh_within": 24,
    },
}


def make_spec(
    groups: Iterable[tuple[str, float]] = (("Control", 50), ("Red", 50)),
    *,
    unit: str = "stableID",
    metrics: dict[str, dict[str, Any]] | None = None,
    experiments: Iterable[str] = ("button_color",),
    **extra: Any,
) -> Spec:
    body = {
        "unit": unit,
        "groups": [{"name": n, "weight": w, "params": {"color": n.lower()}} for n, w in groups],
        # Fixed horizon, whose numbers the tests check against scipy and
        # statsmodels; the sequential ones are checked on their own.
        "sequential": False,
        **extra,
    }
    return parse_spec(
        {
            "flagware": {"custom_ids": ["companyID"]},
            "experiments": {name: dict(body) for name in experiments},
            "metrics": METRICS if metrics is None else metrics,
        }
    )


def user(i: int | str) -> dict[str, Any]:
    return {"userID": f"u{i}", "customIDs": {"stableID": f"s{i}", "companyID": f"c{i}"}}


@dataclass
class Log:
    """Builds the events of a test and remembers them for the independent computation."""

    events: list[Event] = field(default_factory=list)

    def expose(self, i: int | str, group: str | None, t: int, exp: str = "button_color") -> None:
        self.events.append(Event(CONFIG_EXPOSURE, user(i), time=t, exposure=exp, group=group))

    def force(self, i: int | str, group: str, t: int, exp: str = "button_color") -> None:
        """An exposure forced by an ID override (rule "override")."""
        metadata = {"ruleID": "override"}
        self.events.append(
            Event(CONFIG_EXPOSURE, user(i), time=t, exposure=exp, group=group, metadata=metadata)
        )

    def log(self, i: int | str, name: str, t: int, value: float | None = None) -> None:
        self.events.append(Event(name, user(i), value=value, time=t))

    def store(self, tmp_path: Path, name: str = "events.db") -> Path:
        path = tmp_path / name
        store = EventStore(path)
        store.append(self.events)
        store.close()
        return path


def independent_samples(
    events: list[Event],
    exp: str,
    event_name: str,
    kind: str,
    unit_key: str = "stableID",
    before_ms: int | None = None,
) -> dict[str, list[float]]:
    """Per group, per-unit metric values: the analysis rules replayed in plain Python.

    ``kind`` "valued" is the number of events with a numeric value; with
    ``before_ms`` the values are over that many ms before the first exposure
    (CUPED's covariate) instead of after it.
    """

    def unit_of(e: Event) -> str | None:
        return e.user_id if unit_key == "userID" else e.user["customIDs"].get(unit_key)

    first: dict[str, Event] = {}
    seen: dict[str, set[str]] = {}
    for e in sorted(events, key=lambda e: e.time):  # stable: storage order breaks ties
        u = unit_of(e)
        if e.name != CONFIG_EXPOSURE or e.exposure != exp or u is None:
            continue
        if (e.metadata or {}).get("ruleID") == "override" or e.time > NOW:
            continue
        first.setdefault(u, e)
        if e.group is not None:
            seen.setdefault(u, set()).add(e.group)
    crossovers = {u for u, groups in seen.items() if len(groups) > 1}
    values: dict[str, list[float]] = {}
    for u, exposure in first.items():
        if exposure.group is None or u in crossovers:
            continue
        if before_ms is None:
            start, end = exposure.time, NOW
        else:
            start, end = exposure.time - before_ms, exposure.time - 1
        mine = [
            e for e in events if e.name == event_name and unit_of(e) == u and start <= e.time <= end
        ]
        valued = [float(e.value) for e in mine if isinstance(e.value, int | float)]
        if kind == "conversion":
            v = 1.0 if mine else 0.0
        elif kind == "count":
            v = float(len(mine))
        elif kind == "sum":
            v = sum(valued)
        else:
            assert kind == "valued"
            v = float(len(valued))
        values.setdefault(exposure.group, []).append(v)
    return values


def delta_method_ratio(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """sum(y) / sum(x) and its squared standard error by the delta method, in numpy."""
    r = y.sum() / x.sum()
    cov = np.cov(y, x, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (len(y) * x.mean() ** 2)
    return float(r), float(var)


def random_log(seed: int, units: int = 300, effect: float = 0.0) -> Log:
    """Messy but realistic traffic: repeat exposures, pre-exposure events, NULL groups."""
    rng = random.Random(seed)
    log = Log()
    for i in range(units):
        t0 = NOW - 48 * HOUR + rng.randrange(24 * HOUR)
        if rng.random() < 0.1:  # not allocated on first exposure: never in the experiment
            log.expose(i, None, t0)
            log.expose(i, rng.choice(["Control", "Red"]), t0 + 1000)
            group = None
        else:
            group = rng.choice(["Control", "Red"])
            log.expose(i, group, t0)
            if rng.random() < 0.2:  # later exposures do not move the unit
                log.expose(i, rng.choice(["Control", "Red"]), t0 + rng.randrange(1, HOUR))
        lift = effect if group == "Red" else 0.0
        if rng.random() < 0.3:
            log.log(i, "click", t0 - 5000)  # before the exposure: does not count
        if rng.random() < 0.3 + lift:
            log.log(i, "signup", t0 + rng.randrange(HOUR))
        for _ in range(rng.choice([0, 0, 1, 2, 5])):
            log.log(i, "click", t0 + rng.randrange(HOUR))
        for _ in range(rng.choice([0, 0, 0, 1, 3])):
            value = None if rng.random() < 0.2 else round(rng.expovariate(1 / 30) + lift * 50, 2)
            log.log(i, "purchase", t0 + rng.randrange(HOUR), value)
        if rng.random() < 0.05:
            log.log(i, "error", t0 + rng.randrange(HOUR))
    log.log("late", "error", NOW - HOUR)  # keeps the guardrail fresh
    return log


def reference_test(
    method: str | None, treated: np.ndarray, control: np.ndarray, level: float
) -> tuple[float, tuple[float, float]]:
    """(p, interval at ``level``) from scipy or statsmodels, for the method flagware chose."""
    n_t, n_c = len(treated), len(control)
    if method == "score":  # Miettinen-Nurminen (N/(N-1)), corrected for skewness (Laud)
        x_t, x_c = int(treated.sum()), int(control.sum())
        z = brute_force_z(0.0, x_t, n_t, x_c, n_c, ratio=False, skew=True)
        p = 2 * sps.norm.sf(abs(z))
        if n_t == n_c:  # no skew at "no difference": statsmodels' test as it is
            ref = smp.score_test_proportions_2indep(x_t, n_t, x_c, n_c, correction=True)
            assert p == pytest.approx(ref.pvalue, rel=1e-6)
        crit = sps.norm.ppf(1 - level / 2)
        return float(p), brute_force_interval(x_t, n_t, x_c, n_c, crit, False, skew=True)
    welch = sps.ttest_ind(treated, control, equal_var=False)
    student = sps.ttest_ind(treated, control, equal_var=True)
    se_welch = math.sqrt(treated.var(ddof=1) / n_t + control.var(ddof=1) / n_c)
    se_pooled = abs((treated.mean() - control.mean()) / student.statistic)
    ref = student if se_pooled > se_welch else welch
    assert method == ("pooled" if ref is student else "welch")  # the output names the one used
    delta = treated.mean() - control.mean()
    if ref.df > Z_DF_THRESHOLD:
        se = max(se_pooled, se_welch)
        z = sps.norm.ppf(1 - level / 2)
        return 2 * sps.norm.sf(abs(delta / se)), (delta - z * se, delta + z * se)
    ci = ref.confidence_interval(confidence_level=1 - level)
    return float(ref.pvalue), (float(ci.low), float(ci.high))


def check_against_scipy(results: Any, log: Log, exp: str = "button_color") -> int:
    """Assert every metric row matches the independent computation; returns rows checked."""
    checked = 0
    for metric in results.metrics:
        if metric.kind == "mean":
            checked += check_ratio_metric(metric, log, exp)
            continue
        samples = independent_samples(log.events, exp, metric.event, metric.kind)
        if metric.kind in ("sum", "count") and metric.role == "guardrail":
            assert metric.cap is None and not metric.capped_units  # guardrails: uncapped
        elif metric.kind in ("sum", "count"):  # winsorized at the 99.9th percentile of all units
            cap = float(
                np.percentile(
                    np.concatenate([np.array(v) for v in samples.values()]),
                    99.9,
                    method="inverted_cdf",
                )
            )
            assert metric.cap == pytest.approx(cap, rel=1e-12)
            assert metric.capped_units == sum(
                int((np.array(v) > cap).sum()) for v in samples.values()
            )
            samples = {g: list(np.minimum(np.array(v), cap)) for g, v in samples.items()}
        control = np.array(samples.get("Control", []))
        for row in metric.results:
            treated = np.array(samples.get(row.group, []))
            assert row.units == len(treated) and row.control_units == len(control)
            assert row.mean == pytest.approx(treated.mean(), rel=1e-9)
            assert row.control_mean == pytest.approx(control.mean(), rel=1e-9)
            assert row.delta == pytest.approx(treated.mean() - control.mean(), rel=1e-9, abs=1e-12)
            expected = {"score"} if metric.kind == "conversion" else {"welch", "pooled"}
            assert row.method in expected
            p, (lo, hi) = reference_test(row.method, treated, control, row.ci_alpha)
            assert row.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
            assert row.ci == pytest.approx((lo, hi), rel=1e-6, abs=1e-9)
            check_call(results, metric, row, p)
            checked += 1
    return checked


def check_call(results: Any, metric: Any, row: Any, p: float) -> None:
    """The correction and the one-story rule, for any row."""
    lo, hi = row.ci
    if metric.role == "decision":
        size = metric.family_size
        assert row.ci_alpha == pytest.approx(results.alpha / size)
        assert row.p_value_adjusted == pytest.approx(min(1.0, p * size), rel=1e-6)
    assert row.significant == (lo > 0 or hi < 0)
    assert row.significant == (row.p_value_adjusted < results.alpha)
    if row.significant:
        assert row.relative_ci is not None
        assert (row.relative_ci[0] > 0) == (lo > 0)
        assert (row.relative_ci[1] < 0) == (hi < 0)


def pooled_delta_variances(
    y_t: np.ndarray, x_t: np.ndarray, y_c: np.ndarray, x_c: np.ndarray
) -> tuple[float, float]:
    """Each ratio's squared standard error from the linearised values y - R x of
    both groups (each around its own ratio) pooled, in numpy."""
    d_t = y_t - y_t.sum() / x_t.sum() * x_t
    d_c = y_c - y_c.sum() / x_c.sum() * x_c
    ss = ((d_t - d_t.mean()) ** 2).sum() + ((d_c - d_c.mean()) ** 2).sum()
    spread = ss / (len(d_t) + len(d_c) - 2)
    return spread / (len(x_t) * x_t.mean() ** 2), spread / (len(x_c) * x_c.mean() ** 2)


def check_ratio_metric(metric: Any, log: Log, exp: str) -> int:
    """A mean metric is sum of values over valued events: the delta method, in
    numpy, with the pooled error where it is larger."""
    sums = independent_samples(log.events, exp, metric.event, "sum")
    counts = independent_samples(log.events, exp, metric.event, "valued")
    y_c, x_c = np.array(sums["Control"]), np.array(counts["Control"])
    r_c, v_c = delta_method_ratio(y_c, x_c)
    for row in metric.results:
        y_t, x_t = np.array(sums[row.group]), np.array(counts[row.group])
        r_t, v_t = delta_method_ratio(y_t, x_t)
        assert row.units == len(sums[row.group])
        assert (row.mean, row.control_mean) == pytest.approx((r_t, r_c), rel=1e-9)
        p_t, p_c = pooled_delta_variances(y_t, x_t, y_c, x_c)
        method = "delta-pooled" if p_t + p_c > v_t + v_c else "delta"
        se = math.sqrt(max(v_t + v_c, p_t + p_c))
        z = sps.norm.ppf(1 - row.ci_alpha / 2)
        assert row.method == method
        assert row.ci == pytest.approx((r_t - r_c - z * se, r_t - r_c + z * se), rel=1e-7)
        p = 2 * sps.norm.sf(abs(r_t - r_c) / se)
        assert row.p_value == pytest.approx(p, rel=1e-6)
    return len(metric.results)


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_numbers_match_an_independent_computation(tmp_path: Path, seed: int) -> None:
    log = random_log(seed, effect=0.15 if seed == 3 else 0.0)
    store = log.store(tmp_path)
    # Unadjusted here; CUPED against its own independent computation in test_results_power.
    results = compute_results(make_spec(), "button_color", store, now=NOW, cuped=False)
    assert check_against_scipy(results, log) == len(METRICS)
    units = {g.name: g.units for g in results.groups}
    expected = independent_samples(log.events, "button_color", "signup", "conversion")
    assert units == {g: len(v) for g, v in expected.items()}
    observed = [units["Control"], units["Red"]]
    assert results.srm_p_value == pytest.approx(sps.chisquare(observed).pvalue, rel=1e-9)


def test_the_method_line_names_the_estimators_used(tmp_path: Path) -> None:
    """It said "Welch or pooled t otherwise" above a mean metric tested by the delta method."""
    from dataclasses import replace

    from flagware.results.formatting import method_line

    store = random_log(1, effect=0.0).store(tmp_path)
    every = compute_results(make_spec(), "button_color", store, now=NOW, cuped=False)
    used = {r.method for m in every.metrics for r in m.results}
    assert {"score", "welch"} <= used <= {"score", "welch", "pooled", "delta", "delta-pooled"}
    pooled = ", pooled t where its error is larger than Welch's" if "pooled" in used else ""
    delta = ", delta method for means and ratios" if "delta" in used else ""
    if "delta-pooled" in used:
        delta += ", pooled delta method where its error is larger than the unpooled"
    assert method_line(every).startswith(
        f"Intervals: fixed-horizon tests (score for conversions, Welch t{pooled}{delta}),"
        " lifts by Fieller's interval, the score ratio interval for conversions;"
    )
    spec = make_spec(metrics={"signed_up": METRICS["signed_up"]})
    one = compute_results(spec, "button_color", store, now=NOW, cuped=False)
    assert method_line(one).startswith(
        "Intervals: fixed-horizon tests (score for conversions), lifts by Fieller's interval,"
        " the score ratio interval for conversions;"
    )
    none = replace(one, metrics=[replace(m, results=[]) for m in one.metrics])
    assert method_line(none).startswith("Intervals: fixed-horizon tests (none made yet: ")

    # A variance reduction a hair below zero is none, not "-0%".
    from flagware.results.formatting import metric_notes

    metric = replace(one.metrics[0], cuped=True, variance_reduction={"Red": -0.0004, "Blue": 0.25})
    adjusted = "; means and intervals are CUPED-adjusted (--no-cuped: as observed)"
    assert metric_notes(metric) == [f"CUPED variance reduction: Red 0%, Blue 25%{adjusted}"]
    # Under 1%, one decimal: 0.19% read "0%" while CUPED was applied.
    metric = replace(metric, variance_reduction={"Red": 0.0019, "Blue": -0.005})
    assert metric_notes(metric) == [f"CUPED variance reduction: Red 0.2%, Blue -0.5%{adjusted}"]
    # Nobody converted in the window (a trial's): said, not left blank.
    metric = replace(metric, variance_reduction={})
    assert metric_notes(metric) == ["CUPED variance reduction: none (the metric does not vary)"]


def test_units_later_exposed_outside_their_group_are_counted_and_said(tmp_path: Path) -> None:
    """A targeting gate narrowed mid-run serves units of the groups the
    defaults: they stay in their groups (intention to treat), and results say
    how many (an operator's trial: 51 of 74 returning units, said nowhere)."""
    log = Log()
    for i in range(6):
        log.expose(i, ("Control", "Red")[i % 2], NOW - 10 * HOUR)
    log.expose(0, None, NOW - 5 * HOUR)  # targeted out later: still Control's
    log.expose(1, None, NOW - 5 * HOUR)
    log.expose(1, None, NOW - 4 * HOUR)  # one unit, however often
    log.force(2, "Red", NOW - 5 * HOUR)  # Control's, then forced into Red by an ID override
    log.force(3, "Red", NOW - 5 * HOUR)  # Red's, forced to Red: stays
    log.expose(4, None, NOW - 5 * HOUR)  # both ways: one unit, said in each
    log.force(4, "Red", NOW - 5 * HOUR)
    log.expose(9, None, NOW - 10 * HOUR)  # never in a group: ungrouped, not "left"
    log.expose(9, None, NOW - 9 * HOUR)
    log.expose(7, "Red", NOW - 10 * HOUR)  # a crossover is said as one, not here
    log.expose(7, "Control", NOW - 9 * HOUR)
    log.expose(7, None, NOW - 8 * HOUR)
    spec = make_spec(metrics={"clicks": {"event": "click", "kind": "count"}})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    assert {g.name: g.units for g in results.groups} == {"Control": 3, "Red": 3}
    assert (results.units_left_groups, results.ungrouped_units) == (4, 1)
    assert json.loads(render_json(results))["units_left_groups"] == 4
    [said] = [w for w in results.warnings if "later exposed outside" in w]
    # Which way each left, said (a statistician's trial could not tell).
    assert said.startswith(
        "4 unit(s) in the groups were later exposed outside them (3 served the defaults, as a"
        " narrowed targeting gate does; 2 forced into another group by an override): "
    )


def test_first_exposure_decides_group_and_start(tmp_path: Path) -> None:
    log = Log()
    log.expose(1, "Control", NOW - 10 * HOUR)
    log.expose(1, "Control", NOW - 9 * HOUR)  # a repeat exposure changes nothing
    log.log(1, "click", NOW - 11 * HOUR)  # before exposure: ignored
    log.log(1, "click", NOW - 10 * HOUR)  # at the exposure: counts
    log.log(1, "click", NOW - 8 * HOUR)
    log.expose(2, None, NOW - 10 * HOUR)  # first exposure without a group: out
    log.expose(2, "Red", NOW - 9 * HOUR)
    log.log(2, "click", NOW - 8 * HOUR)
    log.expose(3, "Red", NOW - 10 * HOUR, exp="other_experiment")  # another experiment
    log.expose(4, "Red", NOW - 10 * HOUR)
    log.expose(5, "Red", NOW - 10 * HOUR)  # a crossover: counted, left out
    log.expose(5, "Control", NOW - 9 * HOUR)
    log.log(5, "click", NOW - 8 * HOUR)
    log.expose(6, None, NOW - 10 * HOUR)  # no group first, then two: a crossover only
    log.expose(6, "Red", NOW - 9 * HOUR)
    log.expose(6, "Control", NOW - 8 * HOUR)
    spec = make_spec(metrics={"clicks": {"event": "click", "kind": "count"}})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    assert {g.name: g.units for g in results.groups} == {"Control": 1, "Red": 1}
    assert (results.crossover_units, results.ungrouped_units) == (2, 1)
    assert json.loads(render_json(results))["ungrouped_units"] == 1
    from flagware.results.formatting import method_line

    assert method_line(results).endswith(
        "2 crossover unit(s) left out, 1 unit(s) exposed outside the groups left out"
    )
    row = results.metrics[0].results[0]
    assert (row.group, row.control_mean, row.mean) == ("Red", 2.0, 0.0)
    assert row.p_value is None and row.ci is None  # one unit per group: no test
    assert row.note == "needs at least 10 units in each group"
    assert results.verdict == "blocked"  # 2 crossovers in 4 units is far above 1%


def test_a_conversions_intervals_keep_to_what_can_be_true(tmp_path: Path) -> None:
    """A sequential interval on a few units reached [-1.341, +1.28] and a lift
    of -122.3% (a new user's trial): a difference of shares lies in [-1, 1]."""
    log = Log()
    for i in range(24):
        group = "Control" if i % 2 else "Red"
        log.expose(i, group, NOW - 2 * HOUR)
        if i % 4 == 1 or i % 8 == 0:
            log.log(i, "signup", NOW - HOUR)
    spec = make_spec(metrics={"signed_up": METRICS["signed_up"]}, sequential=True)
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW, cuped=False)
    (row,) = results.metrics[0].results
    assert row.ci == (-1.0, 1.0)  # the raw interval went past both ends
    assert not row.significant
    for units in range(40, 200, 20):  # a lift's interval, where there is one
        log = Log()
        for i in range(2 * units):
            group = "Control" if i % 2 else "Red"
            log.expose(i, group, NOW - 2 * HOUR)
            if (group == "Control" and i % 6 == 1) or i % 40 == 0:
                log.log(i, "signup", NOW - HOUR)
        store = log.store(tmp_path, f"e{units}.db")
        results = compute_results(spec, "button_color", store, now=NOW, cuped=False)
        (row,) = results.metrics[0].results
        assert row.ci is not None and -1.0 <= row.ci[0] < row.ci[1] <= 1.0
        assert row.relative_ci is None or row.relative_ci[0] >= -1.0, (units, row.relative_ci)


def test_no_decision_metric_is_said_as_such(tmp_path: Path) -> None:
    """With no metric to decide by, the reason said none "moved significantly"
    (a new user's trial, whose spec had no metrics yet)."""
    store = balanced_log(300, 300).store(tmp_path)
    guardrail_only = {"errors": METRICS["errors"]}
    for metrics in ({}, guardrail_only):
        results = compute_results(make_spec(metrics=metrics), "button_color", store, now=NOW)
        assert results.verdict == "inconclusive"
        assert results.reasons[0].startswith("no decision metric to decide by: declare metrics")


def test_units_all_exposed_outside_the_groups_are_said(tmp_path: Path) -> None:
    """A trial's targeting gate let nobody in: results read "no units exposed to
    the experiment yet" over 50 stored exposures, as if no traffic had come."""
    log = Log()
    for unit in range(5):
        log.expose(unit, None, NOW - 10 * HOUR)
    spec = make_spec(metrics={"signed_up": METRICS["signed_up"]})  # no guardrail to block
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    assert (results.ungrouped_units, results.verdict) == (5, "inconclusive")
    assert results.reasons == (
        "no unit is in a group: the 5 unit(s) exposed were first exposed outside the groups"
        " (not allocated, or failing the experiment's targeting gate)",
    )
    assert "Data: no unit in a group yet (5 exposed outside the groups)" in render_text(results)


@pytest.mark.parametrize("unit", ["userID", "companyID"])
def test_unit_id_follows_the_experiment(tmp_path: Path, unit: str) -> None:
    log = Log()
    # Same user ID for two stable IDs: as userID they are one unit, as stableID two.
    for i, group in ((1, "Control"), (2, "Red"), (3, "Red")):
        log.events.append(
            Event(
                CONFIG_EXPOSURE,
                {"userID": "same" if i > 1 else "u1", "customIDs": {"companyID": f"c{i}"}},
                time=NOW - i,
                exposure="button_color",
                group=group,
            )
        )
    spec = make_spec(unit=unit, metrics={})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    expected = {"userID": {"Control": 1, "Red": 1}, "companyID": {"Control": 1, "Red": 2}}
    assert {g.name: g.units for g in results.groups} == expected[unit]


def test_mean_is_value_sum_over_valued_events_of_every_unit(tmp_path: Path) -> None:
    log = Log()
    for i in range(6):
        log.expose(i, "Control" if i < 3 else "Red", NOW - HOUR)
    log.log(0, "purchase", NOW, 10)
    log.log(0, "purchase", NOW, 20)
    log.log(1, "purchase", NOW, 30)
    log.log(1, "purchase", NOW)  # no value: not in the mean
    log.log(3, "purchase", NOW, 40)
    log.log(4, "purchase", NOW, 44)
    spec = make_spec(metrics={"aov": {"event": "purchase", "kind": "mean"}})
    row = compute_results(spec, "button_color", log.store(tmp_path), now=NOW).metrics[0].results[0]
    # Every exposed unit is in the sample (units without a purchase too), so the
    # metric does not condition on what the treatment may have changed.
    assert (row.control_units, row.control_mean) == (3, 20.0)
    assert (row.units, row.mean) == (3, 42.0)


def test_a_mean_over_no_events_in_a_group_has_no_lift_and_renders(tmp_path: Path) -> None:
    """A group that never purchased has no mean: the lift read "+nan%" and JSON crashed
    (a new user's trial: only Control purchased)."""
    from flagware.results.render import render_html, render_json, render_text

    log = Log()
    for i in range(60):
        log.expose(i, "Control" if i % 2 else "Red", NOW - HOUR)
        if i % 2:
            log.log(i, "purchase", NOW, 10.0)
    spec = make_spec(metrics={"aov": {"event": "purchase", "kind": "mean"}})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    row = results.metrics[0].results[0]
    assert (row.mean, row.relative, row.control_mean) == (None, None, 10.0)
    assert json.loads(render_json(results))["metrics"][0]["results"][0]["relative"] is None
    assert "nan" not in render_text(results).lower()
    assert "nan%" not in render_html(results).lower()


@pytest.mark.parametrize("sequential", [True, False])
def test_a_ratio_needs_ten_units_with_its_denominator_in_each_group(
    tmp_path: Path, sequential: bool
) -> None:
    """80 units exposed, one buyer a group: revenue per purchase was each
    buyer's own value, the delta method's residual 0 up to rounding, and the
    verdict SHIP at p < 0.0001 with a zero-width interval (a statistician's
    trial, 33.3 against 44.4). The ratio is made of the buyers: ten a group
    at least, as for units."""
    log = Log()
    for i in range(80):
        log.expose(i, "Control" if i % 2 else "Red", NOW - HOUR)
        log.log(i, "visit", NOW)
    log.log(1, "purchase", NOW, 33.3)
    log.log(2, "purchase", NOW, 44.4)
    metrics = {
        "aov": {"event": "purchase", "kind": "mean", "tags": ["primary"]},
        "per_visit": {
            "kind": "ratio",
            "numerator": {"event": "purchase", "aggregate": "sum"},
            "denominator": {"event": "visit", "aggregate": "count"},
        },
        "visits_per_purchase": {
            "kind": "ratio",
            "tags": ["primary"],
            "numerator": {"event": "visit", "aggregate": "count"},
            "denominator": {"event": "purchase", "aggregate": "count"},
        },
    }
    spec = make_spec(metrics=metrics, sequential=sequential)
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    aov, per_visit, buys_per_visit = results.metrics
    for metric, what in (
        (aov, "a valued 'purchase' event"),
        (buys_per_visit, "a 'purchase' event"),
    ):
        row = metric.results[0]
        assert row.note == f"needs at least 10 units with {what} in each group"
        assert row.p_value is None and row.ci is None and not row.significant
        assert row.units_needed is None  # the planning table said 1 unit
        # Each group's ratio rests on one unit: no interval, not one of width 0.
        assert metric.group_intervals == {"Control": None, "Red": None}
    # Every unit visited: the ratio over visits is made of all 40 a group.
    assert per_visit.results[0].note is None and per_visit.results[0].p_value is not None
    assert results.verdict == "inconclusive"
    # Only the two held back decide (primary): not enough data, and why.
    assert per_visit.role == "secondary"
    assert results.reasons[0].startswith("not enough data for a call")
    assert "a ratio or mean metric, 10 units with its denominator" in results.reasons[0]


@pytest.mark.parametrize("kind", ["count", "sum"])
def test_a_count_lift_interval_stops_at_minus_100_percent(tmp_path: Path, kind: str) -> None:
    """Fieller's interval knows nothing of signs: a skewed treatment (one unit
    with 20 clicks, 99 with none) gave a count metric a lift interval from
    -119%, lower than any count can fall. A count's ratio is never negative, so
    its interval stops at -100%; a sum, whose values may be negative, is left
    as it is."""
    from flagware.results.inference import fieller

    log = Log()
    for i in range(200):
        treated = i % 2 == 0
        log.expose(i, "Red" if treated else "Control", NOW - HOUR)
        clicks = (20 if i == 0 else 0) if treated else 1 + (i // 2) % 2
        for k in range(clicks):
            log.log(i, "click", NOW - HOUR + 1 + k, 1.0)
    spec = make_spec(metrics={"clicks": {"event": "click", "kind": kind}})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    (row,) = results.metrics[0].results
    assert row.relative_ci is not None and row.ci is not None
    assert row.relative is not None and row.relative == pytest.approx(0.2 / 1.5 - 1)
    # The unclamped interval, from the same means and standard errors, reaches below.
    treated = np.array([20.0] + [0.0] * 99)
    control = np.array([1.0 + (i % 2) for i in range(100)])
    v_t, v_c = treated.var(ddof=1) / 100, control.var(ddof=1) / 100
    crit = (row.ci[1] - row.ci[0]) / 2 / math.sqrt(v_t + v_c)
    low, high = fieller(treated.mean(), control.mean(), v_t, v_c, crit)  # type: ignore[misc]
    assert low - 1 < -1.05
    if kind == "count":
        assert row.relative_ci == pytest.approx((-1.0, high - 1))
    else:
        assert row.relative_ci == pytest.approx((low - 1, high - 1))


def test_multiple_groups_each_against_control(tmp_path: Path) -> None:
    log = Log()
    rng = random.Random(5)
    groups = ["Control", "Red", "Green"]
    for i in range(600):
        g = groups[i % 3]
        log.expose(i, g, NOW - HOUR)
        if rng.random() < {"Control": 0.2, "Red": 0.2, "Green": 0.45}[g]:
            log.log(i, "signup", NOW - 10)
    spec = make_spec(
        (("Red", 33.3), ("Control", 33.3), ("Green", 33.4)),
        metrics={"signed_up": METRICS["signed_up"]},
    )
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    assert results.control == "Control"
    assert [r.group for r in results.metrics[0].results] == ["Red", "Green"]
    assert {r.vs for r in results.metrics[0].results} == {"Control"}
    assert results.verdict == "ship" and results.best_group == "Green"
    assert check_against_scipy(results, log) == 2


# --- A/A end to end ----------------------------------------------------------------------


def test_aa_end_to_end_false_positive_rate(tmp_path: Path) -> None:
    """200 A/A experiments through SQL: the false-positive rate stays near alpha."""
    rng = np.random.default_rng(11)
    names = [f"aa{k}" for k in range(200)]
    log = Log()
    for name in names:
        groups = rng.random(150) < 0.5
        converts = rng.random(150) < 0.3
        for i, (red, converted) in enumerate(zip(groups, converts, strict=True)):
            unit = f"{name}-{i}"
            log.expose(unit, "Red" if red else "Control", NOW - HOUR, exp=name)
            if converted:
                log.log(unit, "signup", NOW - 10)
    spec = make_spec(experiments=names, metrics={"signed_up": METRICS["signed_up"]})
    store = log.store(tmp_path)
    rejections = sum(
        compute_results(spec, n, store, now=NOW).metrics[0].results[0].significant for n in names
    )
    rate = rejections / len(names)
    print(f"A/A end to end (SQL): false-positive rate {rate:.3f} over {len(names)} experiments")
    assert abs(rate - ALPHA) <= 2 * math.sqrt(ALPHA * (1 - ALPHA) / len(names))


# --- checks and verdicts ---------------------------------------------------------------


def balanced_log(
    control: int, red: int, *, red_signup: float = 0.3, red_errors: float = 0.05
) -> Log:
    log = Log()
    rng = random.Random(control * 7 + red)
    for i in range(control + red):
        g = "Control" if i < control else "Red"
        log.expose(i, g, NOW - 2 * HOUR)
        if rng.random() < (0.3 if g == "Control" else red_signup):
            log.log(i, "signup", NOW - HOUR)
        if rng.random() < (0.05 if g == "Control" else red_errors):
            log.log(i, "error", NOW - HOUR)
    return log


def test_srm_failure_blocks(tmp_path: Path) -> None:
    results = compute_results(
        make_spec(), "button_color", balanced_log(1000, 1200).store(tmp_path), now=NOW
    )
    assert results.srm_p_value == pytest.approx(sps.chisquare([1000, 1200]).pvalue)
    assert results.srm_status == "failed"
    assert results.verdict == "blocked"
    assert any("sample ratio mismatch" in r for r in results.reasons)


def test_srm_warning_does_not_block(tmp_path: Path) -> None:
    results = compute_results(
        make_spec(), "button_color", balanced_log(1000, 1130).store(tmp_path), now=NOW
    )
    assert 0.001 < results.srm_p_value < 0.01  # type: ignore[operator]
    assert results.srm_status == "warning"
    assert results.verdict != "blocked"
    assert any("sample ratio mismatch" in w for w in results.warnings)


def test_srm_uses_the_weights(tmp_path: Path) -> None:
    spec = make_spec((("Control", 20), ("Red", 80)))
    results = compute_results(
        spec, "button_color", balanced_log(400, 1600).store(tmp_path), now=NOW
    )
    assert results.srm_p_value == pytest.approx(1.0)
    assert [g.expected for g in results.groups] == [400.0, 1600.0]


@pytest.mark.parametrize("age_hours", [30, None])
def test_stale_guardrail_blocks(tmp_path: Path, age_hours: int | None) -> None:
    log = balanced_log(500, 500, red_errors=0.0)
    log.events = [e for e in log.events if e.name != "error"]
    if age_hours is not None:
        log.log(0, "error", NOW - age_hours * HOUR)
    results = compute_results(make_spec(), "button_color", log.store(tmp_path), now=NOW)
    (guardrail,) = results.guardrails
    # None in the window: "not fed" ("stale" of a guardrail never fed read oddly, a trial).
    assert guardrail.status == "blocked" and guardrail.reason.startswith("not fed: no 'error'")
    assert results.verdict == "blocked"
    assert any("not fed" in r for r in results.reasons)


def test_guardrail_freshness_is_judged_at_the_windows_end(tmp_path: Path) -> None:
    """Read up to --until, a guardrail fresh then is fresh: from now, every
    result of a past cut blocked as stale (a statistician's trial)."""
    store = balanced_log(500, 500, red_errors=0.05).store(tmp_path)  # errors at NOW - 1 h
    later = NOW + 30 * HOUR  # reading the same data 30 h on (fresh_within = 24)
    now_cut = compute_results(make_spec(), "button_color", store, now=later)
    assert now_cut.guardrails[0].reason.startswith("stale: newest 'error' event is 31.0 h old")
    past_cut = compute_results(make_spec(), "button_color", store, now=later, until=NOW)
    assert past_cut.guardrails[0].status == "ok"


def test_a_stale_guardrail_still_says_its_regression(tmp_path: Path) -> None:
    """Stale and regressed: both said. Only "stale" was (a new user's trial),
    and fixing the logging would have read as clearing the block."""
    store = balanced_log(2000, 2000, red_errors=0.15).store(tmp_path)  # errors at NOW - 1 h
    fresh = compute_results(make_spec(), "button_color", store, now=NOW)
    assert fresh.guardrails[0].reason.startswith("regressed: errors +")
    stale = compute_results(make_spec(), "button_color", store, now=NOW + 30 * HOUR)
    (reason,) = [r for r in stale.reasons if r.startswith("guardrail errors")]
    assert reason.startswith("guardrail errors: stale: newest 'error' event is 31.0 h old")
    assert "; and regressed: errors +" in reason and " in Red vs Control (" in reason
    # Under an hour, the age in the unit that shows it: it read "0.0 h old
    # (fresh_within = 0.01 h)".
    spec = make_spec(metrics={**METRICS, "errors": {**METRICS["errors"], "fresh_within": 0.01}})
    soon = compute_results(spec, "button_color", store, now=NOW - 30 * 60_000)
    assert soon.guardrails[0].reason.startswith(
        "stale: newest 'error' event is 30.0 min old (fresh_within = 0.01 h, 36 s); and regressed"
    )


def test_a_metric_event_never_stored_is_named_with_a_did_you_mean(tmp_path: Path) -> None:
    """A misspelled event reads as 0 for every unit, which looks like "no effect"
    (a new user's trial: `signedup` for `signup`). Results say so, and a
    guardrail's stale reason tells a typo from a window without events."""
    metrics = {
        "signed_up": {"event": "signups", "kind": "conversion", "tags": ["primary"]},
        "clicks": {"event": "click", "kind": "count"},
        "errors": {"event": "eror", "kind": "count", "tags": ["guardrail"]},
    }
    store = balanced_log(300, 300).store(tmp_path)
    results = compute_results(make_spec(metrics=metrics), "button_color", store, now=NOW)
    assert [w for w in results.warnings if "events stored" in w] == [
        "signed_up: no 'signups' events stored (did you mean 'signup'?), so it is 0 for every unit",
        "clicks: no 'click' events stored, so it is 0 for every unit",
    ]
    (guardrail,) = results.guardrails
    assert guardrail.reason == (
        "not fed: no 'eror' events stored (did you mean 'error'?), so the guardrail cannot be"
        " checked"
    )
    # Spelled right, the events exist: no warning, and an --until before them says so.
    results = compute_results(make_spec(), "button_color", store, now=NOW, until=NOW - 90 * 60_000)
    assert not [w for w in results.warnings if "signup" in w or "'error'" in w]
    (guardrail,) = results.guardrails
    assert guardrail.reason == (
        "not fed: no 'error' events in the analysis window, so the guardrail cannot be checked"
    )
    # An --until before the first exposure: the window holds no unit at all, and
    # the reason says that rather than blaming the guardrail's events. Nothing
    # can launch, and nothing blocks: two trials read exit 3 right after a
    # restart as a real block.
    results = compute_results(make_spec(), "button_color", store, now=NOW, until=NOW - 3 * HOUR)
    assert sum(g.units for g in results.groups) == 0
    (guardrail,) = results.guardrails
    assert (guardrail.status, guardrail.reason) == (
        "untested",
        "no unit was exposed in the analysis window yet: nothing to check",
    )
    assert results.verdict == "inconclusive"
    assert results.reasons == ("no units exposed to the experiment yet",)
    from datetime import UTC, datetime

    cut = datetime.fromtimestamp((NOW - 3 * HOUR) / 1000, tz=UTC)
    assert f"Data: no exposures counted up to {cut:%Y-%m-%d %H:%M:%S} UTC (--until)" in (
        render_text(results)
    )


def test_a_metric_whose_events_no_exposed_unit_logged_is_said(tmp_path: Path) -> None:
    """A userID experiment whose signups are logged after login, under the
    account's ID: every exposed unit reads 0 and results said only "no
    variance to test" (a new user's trial, 266 signups). They say why now."""
    log = balanced_log(200, 200)
    for e in log.events:
        if e.name == "signup":  # logged in since: the same visitor, another userID
            e.user = {**e.user, "userID": "acct-" + e.user["userID"]}
    store = log.store(tmp_path)
    spec = make_spec(unit="userID")
    results = compute_results(spec, "button_color", store, now=NOW)
    said = [w for w in results.warnings if "none by an exposed unit" in w]
    assert said == [
        "signed_up: 'signup' events were logged in the analysis window, but none by an exposed"
        " unit after its exposure (unit userID), so it is 0 for every unit; if they carry another"
        " ID than the exposures: a webhook or a task that logged them under its own request's"
        " identity (log those with fw.log_event(..., user_id=..., stable_id=...) for the user"
        " they are about), or a userID that changed at login (an experiment on stableID follows"
        " the visitor across it)"
    ]
    # By stableID the same events join, and nothing is said.
    results = compute_results(make_spec(), "button_color", store, now=NOW)
    assert not [w for w in results.warnings if "none by an exposed unit" in w]
    assert results.metrics[0].results[0].mean > 0
    # Events only before the first exposure are not in the window: nothing said.
    for e in log.events:
        if e.name == "signup":
            e.time = NOW - 3 * HOUR
    results = compute_results(spec, "button_color", log.store(tmp_path, "before.db"), now=NOW)
    assert not [w for w in results.warnings if "none by an exposed unit" in w]


def test_guardrail_events_from_before_the_window_vouch_for_nothing(tmp_path: Path) -> None:
    """Errors logged before the first exposure (or a restart) do not show the
    app still logs them: a release that stopped logging them would pass."""
    log = balanced_log(300, 300)
    for e in log.events:
        if e.name == "error":
            e.time = NOW - 3 * HOUR  # exposures are at NOW - 2 h
    results = compute_results(make_spec(), "button_color", log.store(tmp_path), now=NOW)
    (guardrail,) = results.guardrails
    assert (guardrail.status, guardrail.reason) == (
        "blocked",
        "not fed: no 'error' events in the analysis window, so the guardrail cannot be checked",
    )


def test_missing_events_on_either_side_of_a_ratio_and_of_a_mean(tmp_path: Path) -> None:
    """A mean or a ratio without its denominator's events is not 0 but not
    computed; a guardrail missing either side's events blocks (it said "ok")."""
    metrics = {
        "per_click": {
            "kind": "ratio",
            "numerator": {"event": "signup"},
            "denominator": {"event": "clik"},
        },
        "order_value": {"event": "purchse", "kind": "mean"},
        "error_rate": {
            "kind": "ratio",
            "numerator": {"event": "error"},
            "denominator": {"event": "pageveiw"},
            "tags": ["guardrail"],
            "direction": "decrease",
        },
        "gate_seen": {"event": "statsig::gate_exposures", "kind": "count"},
    }
    store = balanced_log(300, 300).store(tmp_path)
    results = compute_results(make_spec(metrics=metrics), "button_color", store, now=NOW)
    assert [w for w in results.warnings if "events stored" in w] == [
        "per_click: no 'clik' events stored, so it cannot be computed",
        "order_value: no 'purchse' events stored, so it cannot be computed",
        "gate_seen: no 'statsig::gate_exposures' events stored (did you mean"
        " 'statsig::gate_exposure'?), so it is 0 for every unit",
    ]
    (guardrail,) = results.guardrails
    assert (guardrail.status, guardrail.reason) == (
        "blocked",
        "not fed: no 'pageveiw' events stored, so the guardrail cannot be checked",
    )
    assert results.verdict == "blocked"


def test_reasons_word_p_as_the_tables_do(tmp_path: Path) -> None:
    results = compute_results(
        make_spec(), "button_color", balanced_log(1000, 1500).store(tmp_path), now=NOW
    )
    (srm,) = [r for r in results.reasons if "sample ratio" in r]
    assert "p < 0.0001 for units Control 1000, Red 1500" in srm  # not "p = 0" or "p = 3e-23"
    assert "SRM chi-square p < 0.0001 (failed; warns below 0.01, blocks below 0.001)" in (
        render_text(results)
    )
    # The page words it alike (a trial compared the two).
    assert (
        'SRM chi-square p &lt; 0.0001 (<span class="failed">failed</span>; warns below 0.01,'
        " blocks below 0.001)"
    ) in render_html(results)


def test_guardrail_regression_blocks_and_exits_3(tmp_path: Path, capsys: Any) -> None:
    store = balanced_log(1000, 1000, red_errors=0.15).store(tmp_path)
    spec_path = write_spec_file(tmp_path)
    results = compute_results(make_spec(), "button_color", store, now=NOW)
    (guardrail,) = results.guardrails
    assert guardrail.status == "blocked" and "regressed" in guardrail.reason
    assert results.verdict == "blocked"
    code = run(namespace(spec_path, store, fmt="json"))
    assert code == 3
    assert json.loads(capsys.readouterr().out)["verdict"] == "blocked"


def test_a_blocked_winner_is_no_best_group(tmp_path: Path, capsys: Any) -> None:
    """Red wins its decision metric and regresses a guardrail: blocked, and the
    JSON's best_group is null (it said "Red", which a script would ship)."""
    store = balanced_log(1000, 1000, red_signup=0.4, red_errors=0.15).store(tmp_path)
    results = compute_results(make_spec(), "button_color", store, now=NOW)
    assert results.metrics[0].results[0].outcome == "better"
    assert results.verdict == "blocked" and results.best_group is None
    assert run(namespace(write_spec_file(tmp_path), store, fmt="json")) == 3
    assert json.loads(capsys.readouterr().out)["best_group"] is None


def test_a_guardrail_is_uncapped_so_a_crash_loop_in_a_few_units_blocks(tmp_path: Path) -> None:
    """A statistician's trial: 6 of 3,000 units with 200 errors each. Capped at
    the 99.9th percentile, as other count metrics are, the excess all but
    vanished; a guardrail is uncapped unless its spec says otherwise."""
    log = balanced_log(1500, 1500, red_errors=0.05)
    for i in range(1500, 1506):  # six Red units in a crash loop
        for k in range(200):
            log.log(i, "error", NOW - HOUR + k)
    store = log.store(tmp_path)
    results = compute_results(make_spec(), "button_color", store, now=NOW)
    (errors,) = [m for m in results.metrics if m.name == "errors"]
    assert errors.cap is None and errors.capped_units == 0
    assert results.guardrails[0].status == "blocked" and results.verdict == "blocked"
    capped = {**METRICS, "errors": {**METRICS["errors"], "cap_percentile": 99.5}}
    again = compute_results(make_spec(metrics=capped), "button_color", store, now=NOW)
    (errors,) = [m for m in again.metrics if m.name == "errors"]
    assert errors.cap is not None and errors.capped_units >= 6  # asked for: capped
    assert again.guardrails[0].status == "ok"  # which is what capping hid
    # The same default for a metric built in Python as for one read from TOML.
    from flagware.spec import MetricSpec

    assert MetricSpec("e", "error", "count", tags=("guardrail",)).cap == 100.0
    assert MetricSpec("r", "purchase", "sum").cap == 99.9
    assert MetricSpec("e", "error", "count", tags=("guardrail",), cap_percentile=99).cap == 99


def test_guardrail_improvement_does_not_block(tmp_path: Path) -> None:
    log = balanced_log(1000, 1000, red_errors=0.0)
    log.log("late", "error", NOW - HOUR)
    results = compute_results(make_spec(), "button_color", log.store(tmp_path), now=NOW)
    assert results.guardrails[0].status == "ok"
    assert results.metrics[-1].results[0].outcome == "better"
    assert results.verdict == "inconclusive"  # guardrail wins are not reasons to ship


def test_verdicts_ship_and_no_ship(tmp_path: Path) -> None:
    ship = compute_results(
        make_spec(),
        "button_color",
        balanced_log(1000, 1000, red_signup=0.4).store(tmp_path, "a.db"),
        now=NOW,
    )
    assert ship.verdict == "ship" and ship.best_group == "Red"
    assert ship.reasons[0].startswith("ship Red: signed_up")
    no_ship = compute_results(
        make_spec(),
        "button_color",
        balanced_log(1000, 1000, red_signup=0.2).store(tmp_path, "b.db"),
        now=NOW,
    )
    assert no_ship.verdict == "no-ship" and no_ship.best_group is None
    assert "signed_up" in no_ship.reasons[0]


def test_decrease_metrics_invert_good_direction(tmp_path: Path) -> None:
    metrics = {"bounced": {"event": "signup", "kind": "conversion", "direction": "decrease"}}
    store = balanced_log(1000, 1000, red_signup=0.4).store(tmp_path)
    results = compute_results(make_spec(metrics=metrics), "button_color", store, now=NOW)
    assert results.metrics[0].results[0].outcome == "worse"
    assert results.verdict == "no-ship"


def test_no_exposures_is_inconclusive(tmp_path: Path) -> None:
    log = Log()
    log.log(1, "signup", NOW)
    results = compute_results(
        make_spec(metrics={"s": METRICS["signed_up"]}), "button_color", log.store(tmp_path), now=NOW
    )
    assert results.verdict == "inconclusive" and results.srm_p_value is None
    assert results.srm_status == "untested"
    assert "no units" in results.reasons[0]


def test_restart_window_counts_only_new_exposures(tmp_path: Path) -> None:
    log = Log()
    for i in range(10):
        log.expose(i, "Control" if i % 2 else "Red", NOW - 10 * HOUR)
    for i in range(10, 16):
        log.expose(i, "Control" if i % 2 else "Red", NOW - HOUR)
    log.expose(0, "Red", NOW - HOUR)  # re-exposed after the restart: its first in the window
    log.expose(1, "Red", NOW - HOUR)  # Control's before the restart, Red's after: switched
    log.expose(20, None, NOW - 9 * HOUR)  # never in a group before: not the experiment's units
    log.force(21, "Red", NOW - 9 * HOUR)
    store = log.store(tmp_path)
    record_started(store, make_spec().experiments["button_color"], time_ms=NOW - 10 * HOUR)
    restarted = make_spec((("Control", 40), ("Red", 60)), restart=True)
    record_started(store, restarted.experiments["button_color"], time_ms=NOW - 2 * HOUR)
    results = compute_results(restarted, "button_color", store, now=NOW)
    assert results.window_start == NOW - 2 * HOUR + SETTLE_MS
    assert {g.name: g.units for g in results.groups} == {"Control": 3, "Red": 5}
    # What a switched unit saw before carries over (a trial: 96 of 299, said nowhere).
    assert results.units_switched_groups == 1
    # What the window left out, and what opened it (a trial read neither): the
    # units in its groups then (one counted visitors never in one, a trial),
    # less units 0 and 1, back in the window (read as counted twice, a re-check).
    assert (results.units_before_window, results.window_opened_by) == (8, "restart")
    assert "(8 unit(s) in its groups then were not exposed again since;" in render_text(results)
    assert json.loads(render_json(results))["units_before_window"] == 8
    [said] = [w for w in results.warnings if "another group before it opened" in w]
    assert said.startswith("1 unit(s) of the window were exposed to another group before")


def test_a_restart_window_opens_once_every_process_serves_the_new_definition(
    tmp_path: Path,
) -> None:
    """Processes serve the old definition until they look at the spec again
    (up to 6 s): those exposures, counted, failed the sample-ratio check with
    a group the spec no longer had (a new user's trial, a reset under load)."""
    log = Log()
    restart = NOW - 2 * HOUR
    for i in range(12):  # an old process, 0-6 s after the restart: Control and Purple
        log.expose(f"old{i}", "Control" if i % 2 else "Purple", restart + 500 * i)
    for i in range(40):  # every process on the new definition
        log.expose(f"new{i}", "Control" if i % 2 else "Red", restart + SETTLE_MS + 1000 * i)
    store = log.store(tmp_path)
    record_started(store, make_spec().experiments["button_color"], time_ms=restart - HOUR)
    restarted = make_spec((("Control", 50), ("Red", 50)), restart=True, salt="new")
    record_started(store, restarted.experiments["button_color"], time_ms=restart)
    results = compute_results(restarted, "button_color", store, now=NOW)
    assert {g.name: g.units for g in results.groups} == {"Control": 20, "Red": 20}
    assert results.srm_p_value == 1.0


def test_unknown_group_in_data_fails_srm(tmp_path: Path) -> None:
    log = balanced_log(100, 100)
    log.expose("x", "Purple", NOW - HOUR)
    results = compute_results(make_spec(), "button_color", log.store(tmp_path), now=NOW)
    assert [g.name for g in results.groups] == ["Control", "Red", "Purple"]
    assert results.srm_p_value == 0.0 and results.verdict == "blocked"


def test_bad_inputs_raise_results_error(tmp_path: Path) -> None:
    store = balanced_log(10, 10).store(tmp_path)
    with pytest.raises(ResultsError, match="unknown experiment 'nope'"):
        compute_results(make_spec(), "nope", store)
    with pytest.raises(ResultsError, match=r"'button_colour' \(did you mean 'button_color'\?\)"):
        compute_results(make_spec(), "button_colour", store)
    gated = parse_spec({"gates": {"new_signup": {}}})
    with pytest.raises(ResultsError, match="'new_signup': it is a gate, and results are an"):
        compute_results(gated, "new_signup", store)
    with pytest.raises(ResultsError, match="no event store at "):
        compute_results(make_spec(), "button_color", tmp_path / "missing.db")
    with pytest.raises(ResultsError, match="alpha"):
        compute_results(make_spec(), "button_color", store, alpha=1.0)
    with pytest.raises(ResultsError, match="unknown metric"):
        compute_results(make_spec(), "button_color", store, metrics=["nope"])
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not sqlite" * 100)
    with pytest.raises(ResultsError, match=r"not a flagware event store \(not an SQLite"):
        compute_results(make_spec(), "button_color", garbage)


# --- output ------------------------------------------------------------------------------


@pytest.fixture
def results(tmp_path: Path) -> Any:
    return compute_results(
        make_spec(), "button_color", random_log(3, effect=0.15).store(tmp_path), now=NOW
    )


def test_json_shape(results: Any) -> None:
    data = json.loads(render_json(results))
    assert {
        "experiment",
        "alpha",
        "groups",
        "srm_p_value",
        "metrics",
        "guardrails",
        "verdict",
        "reasons",
    } <= set(data)
    assert data["experiment"] == "button_color" and data["alpha"] == ALPHA
    assert all({"name", "units"} <= set(g) for g in data["groups"])
    row_keys = {
        "group",
        "vs",
        "mean",
        "control_mean",
        "delta",
        "ci",
        "relative",
        "relative_ci",
        "p_value",
        "significant",
    }
    for metric in data["metrics"]:
        assert {"name", "kind", "tags", "results"} <= set(metric)
        for row in metric["results"]:
            assert row_keys <= set(row)
            assert len(row["ci"]) == 2 and row["ci"][0] <= row["delta"] <= row["ci"][1]
            assert len(row["relative_ci"]) == 2
            assert isinstance(row["significant"], bool)
            lift = "score-ratio" if row["method"] == "score" else "fieller"
            assert row["relative_method"] == lift
    assert data["metrics"][0]["tags"] == ["core"]
    assert [g["metric"] for g in data["guardrails"]] == ["errors"]
    assert {"metric", "status", "reason"} <= set(data["guardrails"][0])
    assert data["verdict"] in {"blocked", "ship", "no-ship", "inconclusive"}
    assert isinstance(data["reasons"], list) and data["reasons"]


def test_text_table_is_aligned(results: Any) -> None:
    text = render_text(results)
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("metric "))
    header, separator = lines[top], lines[top + 1]
    rows = lines[top + 2 : top + 2 + len(METRICS)]
    spans = [m.span() for m in re.finditer(r"-+", separator)]
    assert len(spans) == 14
    left = {0, 1, 2, len(spans) - 1}  # metric, kind, group, result
    for line in [header, *rows]:
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            assert line[end:nxt] == "  ", (line, end)  # every gap is blank: nothing spills
        for k, (a, b) in enumerate(spans):
            cell = line[a:b]
            if k in left:
                assert cell[0] != " ", (line, k)  # left-aligned cell
            else:
                assert cell[-1] != " ", (line, k)  # right-aligned number
    assert "Verdict: " in text and "SRM chi-square p" in text and "errors: " in text


def test_html_is_one_self_contained_file(results: Any, tmp_path: Path) -> None:
    html = render_html(results)
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") == len(METRICS) == html.count("</svg>")
    for external in (
        "http://",
        "https://",
        "src=",
        "href=",
        "<link",
        "<script",
        "url(",
        "@import",
        "//",
    ):
        assert external not in html.replace("<!--", ""), external
    assert results.verdict.upper() in html
    assert "SRM chi-square" in html and "Guardrails" in html
    for metric in results.metrics:
        assert f"<h3>{metric.name}</h3>" in html


def test_chart_draws_each_group_around_zero(results: Any) -> None:
    metric = results.metrics[0]
    svg = render_chart_svg(metric)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<rect") == len(metric.results)
    assert ">0</text>" in svg  # the zero line is labelled
    # An interval across 0 is "inconclusive": "neutral" read as "no effect" (a
    # statistician's trial).
    outcomes = {r.outcome for m in results.metrics for r in m.results}
    assert "inconclusive" in outcomes and outcomes <= {"better", "worse", "inconclusive"}
    colour = {"better": "#1a7f37", "worse": "#cf222e", "inconclusive": "#8c959f"}[
        metric.results[0].outcome
    ]
    assert colour in svg
    standalone = render_chart_svg(metric, standalone=True)
    assert 'xmlns="http://www.w3.org/2000/svg"' in standalone
    # A row with no test says why, as the tables do (a new user's trial saw
    # "not enough data" on the page for a guardrail the CLI called constant).
    untested_row = replace(metric.results[0], ci=None, relative_ci=None, note="no variance to test")
    untested = replace(metric, results=(untested_row,))
    assert ">no variance to test</text>" in render_chart_svg(untested)


# --- the command -------------------------------------------------------------------------


def write_spec_file(tmp_path: Path) -> Path:
    lines = [
        "[experiments.button_color]",
        'unit = "stableID"',
        "sequential = false",
        "groups = [",
        '  { name = "Control", weight = 50, params = { color = "control" } },',
        '  { name = "Red", weight = 50, params = { color = "red" } },',
        "]",
    ]
    for name, body in METRICS.items():
        lines.append(f"[metrics.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in body.items()]
    path = tmp_path / "flagware.toml"
    path.write_text("\n".join(lines) + "\n")
    assert parse_spec_file_matches(path)
    return path


def parse_spec_file_matches(path: Path) -> bool:
    from flagware.spec import load_spec

    loaded = load_spec(path)
    return (
        loaded.experiments["button_color"].fingerprint()
        == make_spec().experiments["button_color"].fingerprint()
    )


def namespace(
    spec: Path,
    store: Path,
    *,
    fmt: str = "text",
    alpha: str = "0.05",
    output: Path | None = None,
    experiment: str = "button_color",
    until: str | None = None,
    sequential: bool | None = None,
) -> argparse.Namespace:
    return argparse.Namespace(
        experiment=experiment,
        spec=str(spec),
        store=str(store),
        alpha=alpha,
        format=fmt,
        output=None if output is None else str(output),
        until=until,
        sequential=sequential,
    )


def test_command_parses_and_writes_output(tmp_path: Path, capsys: Any) -> None:
    parser = argparse.ArgumentParser(prog="flagware")
    add_parser(parser.add_subparsers(dest="command"))
    store = random_log(3, effect=0.15).store(tmp_path)
    spec = write_spec_file(tmp_path)
    out = tmp_path / "report.html"
    args = parser.parse_args(
        [
            "results",
            "button_color",
            "--spec",
            str(spec),
            "--store",
            str(store),
            "--format",
            "html",
            "--output",
            str(out),
            "--alpha",
            "0.05",
        ]
    )
    code = args.func(args)
    assert code in (0, 3)
    assert out.read_text().count("<svg") == len(METRICS)
    assert "alpha 0.05" in out.read_text()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"experiment": "nope"}, "unknown experiment 'nope'"),
        ({"store": "missing.db"}, "no event store at "),  # as every read command says it
        ({"store": "."}, "is a directory, not a flagware event store"),
        ({"store": "flagware.toml"}, "is not a flagware event store (not an SQLite database)"),
        ({"store": "other.db"}, "is not a flagware event store (an SQLite database without"),
        ({"alpha": "abc"}, "--alpha must be a number"),
        ({"alpha": "0"}, "--alpha must be between 0 and 1"),
        ({"alpha": "1.5"}, "--alpha must be between 0 and 1"),
        ({"alpha": "nan"}, "--alpha must be between 0 and 1"),
        ({"spec": "missing.toml"}, "spec file not found"),
    ],
)
def test_command_bad_input_exits_2(
    tmp_path: Path, capsys: Any, change: dict[str, str], message: str
) -> None:
    store = balanced_log(10, 10).store(tmp_path)
    spec = write_spec_file(tmp_path)
    other = sqlite3.connect(tmp_path / "other.db")  # an app's database, not a store
    other.execute("CREATE TABLE users (id INTEGER)")
    other.commit()
    other.close()
    args = namespace(spec, store)
    for key, value in change.items():
        setattr(args, key, str(tmp_path / value) if key in ("store", "spec") else value)
    assert run(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("flagware results: ")


def test_command_exit_0_when_not_blocked(tmp_path: Path, capsys: Any) -> None:
    store = balanced_log(1000, 1000, red_signup=0.4).store(tmp_path)
    spec = write_spec_file(tmp_path)
    assert run(namespace(spec, store)) == 0
    assert "Verdict: SHIP" in capsys.readouterr().out


def test_the_text_says_which_data_it_read(tmp_path: Path) -> None:
    """The window was only in the JSON and HTML: a date-only --until (its
    midnight) that left out the whole day went unnoticed in the text."""
    from datetime import UTC, datetime

    from flagware.results.render import render_text

    store = balanced_log(300, 300).store(tmp_path)
    cut = NOW - 30 * 60_000
    text = render_text(compute_results(make_spec(), "button_color", store, now=NOW, until=cut))
    [line] = [line for line in text.splitlines() if line.startswith("Data: ")]
    exposed = f"{datetime.fromtimestamp((NOW - 2 * HOUR) / 1000, tz=UTC):%Y-%m-%d %H:%M}"
    assert f"first exposures from {exposed} to {exposed} UTC" in line
    assert line.endswith(
        f"data until {datetime.fromtimestamp(cut / 1000, tz=UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    empty = compute_results(make_spec(), "button_color", store, now=NOW, until=NOW - 3 * HOUR)
    assert "Data: no exposures counted up to " in render_text(empty)
    assert "Data: no exposures counted yet" in render_text(replace(empty, until=NOW))
    later = compute_results(make_spec(), "button_color", store, now=NOW, until=NOW + HOUR)
    assert later.until == NOW  # read up to now, and said (it was cut without a word)
    assert "--until is later than now: the results read up to now" in later.warnings


def test_an_event_logged_before_the_flag_read_is_no_outcome(tmp_path: Path) -> None:
    """A statistician's trial: a request that logged an event and then read the
    experiment stamped both in the same millisecond, so the event counted as an
    outcome of the exposure (43-52% of pre-exposure signups). A request's times
    now keep its order: the exposure after the event, later events after it."""
    from werkzeug.test import Client

    from flagware import Flagware, FlagwareMiddleware

    spec = write_spec_file(tmp_path)
    fw = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key="k")

    def app(environ: Any, start_response: Any) -> list[bytes]:
        flags = environ["flagware.flags"]
        before = environ["QUERY_STRING"] == "before"
        if before:
            flags.log_event("signup")  # before the read: no outcome
        group = flags.experiment("button_color").group
        flags.log_event("click")  # after it: an outcome
        start_response("200 OK", [])
        return [str(group).encode()]

    http = Client(FlagwareMiddleware(app, fw), use_cookies=False)  # every visit a new visitor
    for i in range(200):
        http.get("/?before" if i % 2 else "/", environ_base={"REMOTE_ADDR": f"10.0.{i}.1"})
    fw.close()
    events = list(fw.store.iter_events())
    fw.close()  # the connection that read opened (Python 3.13 warns of an unclosed one)
    exposed = {e["stable_id"]: e["time"] for e in events if e["event"] == CONFIG_EXPOSURE}
    signups = [e for e in events if e["event"] == "signup"]
    clicks = [e for e in events if e["event"] == "click"]
    assert len(exposed) == 200 and len(signups) == 100 and len(clicks) == 200
    assert all(e["time"] < exposed[e["stable_id"]] for e in signups)
    assert all(e["time"] >= exposed[e["stable_id"]] for e in clicks)
    results = compute_results(make_spec(), "button_color", tmp_path / "events.db")
    rates = {m.name: m.samples for m in results.metrics}
    assert all(s.mean == 0.0 for s in rates["signed_up"].values())  # none an outcome
    assert all(s.mean == 1.0 for s in rates["clicks"].values())  # every one


def test_a_lift_interval_past_a_thousand_percent_is_shown_as_such(tmp_path: Path) -> None:
    """A trial read "[-100.0%, +154670.9%]" beside "-" for the next group with
    the same control: each is drawn at its comparison's level, and a bound
    that far says only that the control's mean is barely above 0 there."""
    store = random_log(3).store(tmp_path)
    results = compute_results(make_spec(), "button_color", store, now=NOW, sequential=True)
    metric = results.metrics[0]
    first, *rest = metric.results
    barely = replace(first, relative_ci=(-1.0, 1546.709))
    metric = replace(metric, results=[barely, *rest])
    text = render_text(replace(results, metrics=[metric, *results.metrics[1:]]))
    assert "[-100.0%, >+1000%]" in text and "1546" not in text
    assert (
        f"{metric.name}: a lift CI past +1000% for {first.group}: the control mean is not"
        " clearly above 0 at that comparison's level" in text
    )
    # The always-valid p of 1 beside it is said to be no evidence either way.
    assert results.sequential and any(r.p_value == 1.0 for m in results.metrics for r in m.results)
    assert "p 1.0000 is no evidence either way" in text
    fixed = compute_results(make_spec(), "button_color", store, now=NOW, sequential=False)
    assert "p 1.0000 is no evidence" not in render_text(fixed)
    shown = json.loads(render_json(replace(results, metrics=[metric])))
    assert shown["metrics"][0]["results"][0]["relative_ci"] == [-1.0, 1546.709]  # as it is


def test_a_lift_without_an_interval_says_why(tmp_path: Path) -> None:
    """A walk-through read `lift CI -` with no word why: Fieller's interval for
    the ratio is unbounded when the control's rate is not clearly above 0."""
    log = Log()
    for i in range(400):
        group = "Control" if i % 2 else "Red"
        log.expose(i, group, NOW - 10 * HOUR)
        if (group == "Control" and i < 5) or (group == "Red" and i < 40):
            log.log(i, "click", NOW - 9 * HOUR)
    spec = make_spec(metrics={"clicks": METRICS["clicks"]})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    (red,) = results.metrics[0].results
    assert red.ci is not None and red.relative_ci is None  # 2 clicks from 200 in control
    text = render_text(results)
    assert "clicks: no lift CI for Red: the control mean is not clearly above 0 at" in text
    # A control rate clearly above 0 has its lift interval and no such note.
    results = compute_results(
        make_spec(), "button_color", random_log(3).store(tmp_path, "b.db"), now=NOW
    )
    assert all(r.relative_ci is not None for m in results.metrics for r in m.results if r.ci)
    assert "no lift CI" not in render_text(results)
