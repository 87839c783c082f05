"""End to end through a real store and the CLI: families, data quality, window, sequential."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flagware.events.model import CONFIG_EXPOSURE, Event
from flagware.results import compute_results
from flagware.results.command import run
from flagware.results.render import render_text
from flagware.results.verdict import CROSSOVER_BLOCK
from tests.test_results import HOUR, NOW, Log, make_spec, namespace, write_spec_file

SIGNUP = {"event": "signup", "kind": "conversion"}


def converting_log(
    n: int, rates: dict[str, float], seed: int = 1, exp: str = "button_color"
) -> Log:
    rng = random.Random(seed)
    log = Log()
    groups = list(rates)
    for i in range(n):
        group = groups[i % len(groups)]
        log.expose(f"{exp}-{i}", group, NOW - 2 * HOUR, exp=exp)
        if rng.random() < rates[group]:
            log.log(f"{exp}-{i}", "signup", NOW - HOUR)
    return log


def test_aa_catalog_end_to_end_ships_at_most_alpha(tmp_path: Path) -> None:
    """3 groups x 5 metrics through SQLite: 80 A/A experiments in one store."""
    rng = np.random.default_rng(5)
    names = [f"aa{k}" for k in range(80)]
    log = Log()
    for name in names:
        for i in range(150):
            unit = f"{name}-{i}"
            log.expose(unit, ("Control", "A", "B")[i % 3], NOW - 2 * HOUR, exp=name)
            if rng.random() < 0.2:
                log.log(unit, "signup", NOW - HOUR)
            if rng.random() < 0.4:
                log.log(unit, "activate", NOW - HOUR)
            for _ in range(int(rng.poisson(1.0))):
                log.log(unit, "click", NOW - HOUR)
            if rng.random() < 0.3:
                log.log(unit, "purchase", NOW - HOUR, round(float(rng.exponential(20)), 2))
    metrics = {
        "signed_up": SIGNUP,
        "activated": {"event": "activate", "kind": "conversion"},
        "clicks": {"event": "click", "kind": "count"},
        "revenue": {"event": "purchase", "kind": "sum"},
        "order_value": {"event": "purchase", "kind": "mean"},
    }
    spec = make_spec(
        (("Control", 33.3), ("A", 33.3), ("B", 33.4)), experiments=names, metrics=metrics
    )
    store = log.store(tmp_path)
    ships = 0
    for name in names:
        results = compute_results(spec, name, store, now=NOW)
        assert {m.family_size for m in results.metrics} == {10}
        ships += results.verdict == "ship"
    rate = ships / len(names)
    print(f"\nA/A 3x5 end to end: false-ship rate {rate:.3f} over {len(names)} experiments")
    assert rate <= 0.025 + 2 * math.sqrt(0.025 * 0.975 / len(names))


def test_primary_metrics_decide_and_the_rest_are_secondary(tmp_path: Path) -> None:
    log = converting_log(2000, {"Control": 0.10, "Red": 0.10})
    rng = random.Random(3)
    for i in range(2000):  # a big effect on a metric that is not primary
        if rng.random() < (0.5 if i % 2 else 0.2):
            log.log(f"button_color-{i}", "click", NOW - HOUR)
    metrics = {
        "signed_up": {**SIGNUP, "tags": ["primary"]},
        "clicked": {"event": "click", "kind": "conversion"},
        "errors": {"event": "signup", "kind": "count", "tags": ["guardrail"]},
    }
    results = compute_results(make_spec(metrics=metrics), "button_color", log.store(tmp_path))
    roles = {m.name: (m.role, m.correction, m.family_size) for m in results.metrics}
    assert roles == {
        "signed_up": ("decision", "bonferroni", 1),
        "clicked": ("secondary", "benjamini-hochberg", 1),
        "errors": ("guardrail", "none", 1),
    }
    clicked = results.metrics[1].results[0]
    assert clicked.significant and clicked.outcome == "better"
    assert results.verdict == "inconclusive"  # a secondary metric never ships on its own
    guardrail = results.metrics[2].results[0]
    assert guardrail.ci_alpha == results.alpha  # guardrails are tested uncorrected


def test_a_spec_metric_cannot_be_primary_and_guardrail() -> None:
    from flagware.spec import SpecError

    with pytest.raises(SpecError, match="primary"):
        make_spec(metrics={"m": {"event": "e", "tags": ["primary", "guardrail"]}})


@pytest.mark.parametrize(("crossovers", "blocked"), [(1, False), (25, True)])
def test_crossovers_are_counted_excluded_and_block_above_the_threshold(
    tmp_path: Path, crossovers: int, blocked: bool
) -> None:
    log = converting_log(1000, {"Control": 0.2, "Red": 0.2})
    for i in range(crossovers):  # re-exposed in the other group
        group = "Red" if i % 2 == 0 else "Control"
        log.expose(f"button_color-{i}", group, NOW - HOUR)
    results = compute_results(
        make_spec(metrics={"signed_up": SIGNUP}), "button_color", log.store(tmp_path)
    )
    assert results.crossover_units == crossovers
    assert sum(g.units for g in results.groups) == 1000 - crossovers
    assert (results.verdict == "blocked") is blocked
    text = " ".join(results.reasons + results.warnings)
    assert f"{crossovers} unit(s)" in text
    assert (crossovers / 1000 > CROSSOVER_BLOCK) is blocked


def test_until_ends_the_window_and_future_events_are_reported(tmp_path: Path) -> None:
    log = Log()
    for i in range(40):
        log.expose(i, "Control" if i % 2 else "Red", NOW - 10 * HOUR)
        log.log(i, "signup", NOW - 5 * HOUR)  # inside a window ending 4 hours ago
    log.expose(100, "Red", NOW - 2 * HOUR)  # after --until: not a unit
    log.log(1, "click", NOW - 2 * HOUR)
    log.log(2, "signup", NOW + 3 * HOUR)  # clock skew: stamped in the future
    log.expose(101, "Red", NOW + HOUR)
    spec = make_spec(metrics={"signed_up": SIGNUP, "clicks": {"event": "click", "kind": "count"}})
    store = log.store(tmp_path)
    now = compute_results(spec, "button_color", store, now=NOW)
    assert sum(g.units for g in now.groups) == 41
    assert now.future_events == 2
    assert any("stamped in the future" in w for w in now.warnings)
    earlier = compute_results(spec, "button_color", store, now=NOW, until=NOW - 4 * HOUR)
    assert sum(g.units for g in earlier.groups) == 40
    assert earlier.until == NOW - 4 * HOUR
    clicks = earlier.metrics[1]
    assert all(s.mean == 0 for s in clicks.samples.values())


def test_override_exposures_are_never_analysed(tmp_path: Path) -> None:
    log = converting_log(100, {"Control": 0.3, "Red": 0.3})
    for i in range(30):  # forced by a test fixture or a QA cookie
        log.events.append(
            Event(
                CONFIG_EXPOSURE,
                {"userID": f"forced{i}", "customIDs": {"stableID": f"forced{i}"}},
                metadata={"config": "button_color", "ruleID": "override"},
                time=NOW - HOUR,
                exposure="button_color",
                group="Red",
            )
        )
    results = compute_results(
        make_spec(metrics={"signed_up": SIGNUP}), "button_color", log.store(tmp_path)
    )
    assert sum(g.units for g in results.groups) == 100
    assert results.override_exposures == 30


def test_numeric_strings_are_numbers_and_other_strings_are_reported(tmp_path: Path) -> None:
    log = Log()
    for i in range(20):
        log.expose(i, "Control" if i % 2 else "Red", NOW - HOUR)
    log.log(0, "purchase", NOW - 10, "20.0")  # type: ignore[arg-type]
    log.log(0, "purchase", NOW - 10, 5)
    log.log(1, "purchase", NOW - 10, "pro")  # type: ignore[arg-type]
    revenue = {"event": "purchase", "kind": "sum", "cap_percentile": 100}
    spec = make_spec(metrics={"revenue": revenue})
    results = compute_results(spec, "button_color", log.store(tmp_path), now=NOW)
    red = results.metrics[0].samples["Red"]
    assert red.mean * red.n == pytest.approx(25.0)
    assert results.metrics[0].non_numeric_events == 1
    assert any("not a number" in w for w in results.warnings)


def test_values_far_from_zero_keep_their_variance_through_sql(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    log = Log()
    for i in range(4000):
        red = i % 2 == 0
        log.expose(i, "Red" if red else "Control", NOW - HOUR)
        log.log(i, "latency", NOW - 10, 1e9 + float(rng.normal(0.1 if red else 0.0, 1.0)))
    spec = make_spec(metrics={"latency": {"event": "latency", "kind": "mean"}})
    row = compute_results(spec, "button_color", log.store(tmp_path), now=NOW).metrics[0].results[0]
    assert row.ci is not None
    # The naive sum-of-squares variance gave [-3.5, +3.6] here.
    assert row.ci[1] - row.ci[0] < 0.2


def test_below_the_minimum_the_verdict_says_so(tmp_path: Path) -> None:
    log = converting_log(12, {"Control": 0.5, "Red": 0.5})
    results = compute_results(
        make_spec(metrics={"signed_up": SIGNUP}), "button_color", log.store(tmp_path)
    )
    assert results.verdict == "inconclusive"
    assert "not enough data" in results.reasons[0]
    row = results.metrics[0].results[0]
    assert row.ci is None and row.p_value is None and not row.significant


def test_results_are_sequential_unless_the_spec_says_otherwise() -> None:
    """Fixed-horizon by default, five looks at an A/A experiment shipped 6.7% of
    the time (a statistician's trial, alpha 0.05): the default is now the one
    that holds its rate however often it is read."""
    from flagware.spec import parse_spec

    groups = [{"name": "Control", "weight": 50}, {"name": "Red", "weight": 50}]
    plain = parse_spec({"experiments": {"e": {"groups": groups}}})
    fixed = parse_spec({"experiments": {"e": {"groups": groups, "sequential": False}}})
    assert plain.experiments["e"].sequential and not fixed.experiments["e"].sequential


def test_sequential_from_the_spec_or_the_command(tmp_path: Path, capsys: Any) -> None:
    log = converting_log(3000, {"Control": 0.10, "Red": 0.16})
    store = log.store(tmp_path)
    spec = make_spec(metrics={"signed_up": SIGNUP}, sequential=True)
    seq = compute_results(spec, "button_color", store)
    fixed = compute_results(spec, "button_color", store, sequential=False)
    assert seq.sequential and not fixed.sequential
    s_row, f_row = seq.metrics[0].results[0], fixed.metrics[0].results[0]
    assert (s_row.method, f_row.method) == ("sequential", "score")
    assert s_row.ci is not None and f_row.ci is not None
    assert s_row.ci[1] - s_row.ci[0] > f_row.ci[1] - f_row.ci[0]  # pays for every look
    assert s_row.p_value is not None and f_row.p_value is not None
    assert s_row.p_value > f_row.p_value
    # Each group's own interval is always valid too (a statistician's trial
    # found them fixed-horizon under sequential results), and so wider.
    from flagware.results import sequential

    rho = sequential.rho(seq.alpha)
    for group, (low, high) in seq.metrics[0].group_intervals.items():  # type: ignore[misc]
        f_low, f_high = fixed.metrics[0].group_intervals[group]  # type: ignore[misc]
        sample = seq.metrics[0].samples[group]
        k = sequential.critical(seq.alpha, sample.n, rho)
        assert (high - low) / 2 == pytest.approx(k * math.sqrt(sample.variance / sample.n))
        assert high - low > f_high - f_low
    assert not [w for w in seq.warnings if "fixed horizon" in w]
    # At a few dozen units the sequence is wider than a rate can be: cut to [0, 1].
    small = compute_results(
        spec,
        "button_color",
        converting_log(60, {"Control": 0.1, "Red": 0.1}).store(tmp_path, "small.db"),
    )
    for low, high in filter(None, small.metrics[0].group_intervals.values()):
        assert 0.0 <= low < high <= 1.0
    assert 0.0 in {low for low, _ in filter(None, small.metrics[0].group_intervals.values())}
    assert [w for w in fixed.warnings if "fixed horizon" in w]  # said with every such verdict

    spec_path = write_spec_file(tmp_path)
    code = run(namespace(spec_path, store, fmt="json", sequential=True))
    out = json.loads(capsys.readouterr().out)
    assert code in (0, 3)
    assert out["sequential"] is True
    assert {r["method"] for m in out["metrics"] for r in m["results"]} <= {"sequential", None}
    # Through the command line as typed: --no-sequential over the spec's setting.
    from flagware.cli import main

    spec_path.write_text(spec_path.read_text().replace("sequential = false\n", ""))
    for flag, expected in (([], True), (["--no-sequential"], False), (["--sequential"], True)):
        argv = ["results", "button_color", "--spec", str(spec_path), "--store", str(store)]
        assert main([*argv, "--format", "json", *flag]) in (0, 3)
        assert json.loads(capsys.readouterr().out)["sequential"] is expected, flag


def test_sequential_tuning_from_the_spec(tmp_path: Path, capsys: Any) -> None:
    """``sequential_tuning`` moves where the sequence is tightest: every
    interval is the sequence tuned there, and the output says where."""
    from flagware.results import sequential

    store = converting_log(3000, {"Control": 0.10, "Red": 0.13}).store(tmp_path)
    default = compute_results(make_spec(sequential=True), "button_color", store)
    tuned = make_spec(sequential=True, sequential_tuning=200_000)
    wide = compute_results(tuned, "button_color", store)
    assert (default.sequential_tuning, wide.sequential_tuning) == (5000, 200_000)
    d_row, w_row = default.metrics[0].results[0], wide.metrics[0].results[0]
    assert d_row.ci is not None and w_row.ci is not None
    assert w_row.ci[1] - w_row.ci[0] > d_row.ci[1] - d_row.ci[0]  # tuned far above these units
    for results in (default, wide):
        rho = sequential.rho(results.alpha, results.sequential_tuning or 0)
        for group, (low, high) in results.metrics[0].group_intervals.items():  # type: ignore[misc]
            sample = results.metrics[0].samples[group]
            k = sequential.critical(results.alpha, sample.n, rho)
            assert (high - low) / 2 == pytest.approx(k * math.sqrt(sample.variance / sample.n))
    assert "tightest at 200,000 units" in render_text(wide)
    fixed = compute_results(tuned, "button_color", store, sequential=False)
    assert fixed.sequential_tuning is None and "tightest" not in render_text(fixed)

    spec_path = write_spec_file(tmp_path)
    text = spec_path.read_text().replace("sequential = false\n", "sequential_tuning = 20000\n")
    spec_path.write_text(text)
    from flagware.cli import main

    argv = ["results", "button_color", "--spec", str(spec_path), "--store", str(store)]
    assert main([*argv, "--format", "json"]) in (0, 3)
    assert json.loads(capsys.readouterr().out)["sequential_tuning"] == 20000


def test_command_until_and_bad_time(tmp_path: Path, capsys: Any) -> None:
    log = converting_log(200, {"Control": 0.2, "Red": 0.2})
    store = log.store(tmp_path)
    spec_path = write_spec_file(tmp_path)
    assert run(namespace(spec_path, store, fmt="json", until="2001-01-01")) in (0, 3)
    out = json.loads(capsys.readouterr().out)
    assert out["until"] == 978307200000
    assert sum(g["units"] for g in out["groups"]) == 0
    assert out["crossover_units"] == 0 and out["future_events"] == 0
    assert run(namespace(spec_path, store, until="yesterday")) == 2
    assert "--until must be an ISO 8601" in capsys.readouterr().err
