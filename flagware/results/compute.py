"""Experiment results from the local event store: aggregation in SQL, decisions in Python.

:mod:`.sql` finds the units and each metric's per-group summaries;
:mod:`.analysis` tests every group against the control and corrects each
family; :mod:`.verdict` runs the checks and says ship, no-ship, inconclusive or
blocked. This module opens the store and puts the pieces together.

The analysis window: exposures and events from the window start (after a
``restart``) up to ``until`` (default: now). Events stamped later than now are
clock skew; they are not counted, and their number is reported.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from flagware.events.model import now_ms
from flagware.events.store import connect
from flagware.results import sequential as seq
from flagware.results import sql
from flagware.results.analysis import analyse_metrics
from flagware.results.model import (
    GroupResult,
    GroupUnits,
    GuardrailStatus,
    MetricResult,
    Results,
    ResultsError,
)
from flagware.results.stats import srm_test
from flagware.results.verdict import (
    SRM_BLOCK_P,
    SRM_WARN_P,
    guardrail_status,
    srm_status,
    verdict,
)
from flagware.spec import ExperimentSpec, MetricSpec, Spec

__all__ = [
    "DEFAULT_ALPHA",
    "SRM_BLOCK_P",
    "SRM_WARN_P",
    "GroupResult",
    "GroupUnits",
    "GuardrailStatus",
    "MetricResult",
    "Results",
    "ResultsError",
    "compute_results",
]

#: Statsig's and GrowthBook's default.
DEFAULT_ALPHA = 0.05


def compute_results(
    spec: Spec,
    experiment: str,
    store_path: str | os.PathLike[str],
    *,
    alpha: float = DEFAULT_ALPHA,
    now: int | None = None,
    until: int | None = None,
    metrics: Sequence[str] | None = None,
    sequential: bool | None = None,
) -> Results:
    """Analyse ``experiment`` on the events in ``store_path``.

    ``metrics`` limits the analysis to those catalog metrics (default: all).
    ``now`` (ms) is the reference time for guardrail freshness and for what
    counts as the future (default: now); ``until`` (ms, default ``now``) ends
    the analysis window. ``sequential`` overrides the experiment's
    ``sequential`` setting.
    """
    if not 0.0 < alpha < 1.0:
        raise ResultsError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")
    exp = spec.experiments.get(experiment)
    if exp is None:
        known = ", ".join(sorted(spec.experiments)) or "none"
        raise ResultsError(f"unknown experiment {experiment!r} (the spec defines: {known})")
    chosen = _choose_metrics(spec, metrics)
    if not Path(store_path).is_file():
        raise ResultsError(f"event store not found: {os.fspath(store_path)}")
    reference = now_ms() if now is None else now
    end = reference if until is None else min(until, reference)
    use_sequential = exp.sequential if sequential is None else sequential
    conn = connect(store_path, readonly=True)
    try:
        return _analyse(conn, exp, chosen, alpha, reference, end, use_sequential)
    except sqlite3.DatabaseError as exc:
        raise ResultsError(f"cannot read event store {os.fspath(store_path)}: {exc}") from None
    finally:
        conn.close()


def _choose_metrics(spec: Spec, names: Sequence[str] | None) -> list[MetricSpec]:
    if names is None:
        return list(spec.metrics.values())
    unknown = [n for n in names if n not in spec.metrics]
    if unknown:
        raise ResultsError(f"unknown metric(s): {', '.join(unknown)}")
    return [spec.metrics[n] for n in names]


def _analyse(
    conn: sqlite3.Connection,
    exp: ExperimentSpec,
    metrics: list[MetricSpec],
    alpha: float,
    now: int,
    until: int,
    use_sequential: bool,
) -> Results:
    window_start = sql.window_start(conn, exp.name)
    unit = sql.unit_column(exp.unit)
    units = sql.load_units(conn, exp.name, unit, window_start or 0, until)
    events = sorted({m.event for m in metrics})
    sql.load_unit_events(conn, unit, events, until)
    control = exp.control.name
    groups, srm_p = _group_units(exp, units.per_group)
    samples = [sql.group_samples(conn, m.kind, m.event) for m in metrics]
    results = analyse_metrics(
        metrics,
        samples,
        [g.name for g in groups],
        control,
        alpha,
        sequential_rho=seq.rho(alpha) if use_sequential else None,
    )
    results = tuple(_with_data_checks(conn, r) for r in results)
    guardrails = tuple(
        guardrail_status(r, sql.newest_event(conn, m.event, until), m.fresh_within, now)
        for r, m in zip(results, metrics, strict=True)
        if m.guardrail
    )
    future = sql.count_future(conn, exp.name, events, now)
    decision, reasons, warnings, best = verdict(
        srm_p,
        groups,
        results,
        guardrails,
        alpha,
        crossover_units=units.crossovers,
        future_events=future,
        sequential=use_sequential,
    )
    warnings += [
        f"{r.non_numeric_events} {r.event!r} event(s) have a value that is not a number;"
        f" {r.name} counts them as 0"
        for r in results
        if r.non_numeric_events
    ]
    return Results(
        experiment=exp.name,
        unit=exp.unit,
        alpha=alpha,
        control=control,
        groups=groups,
        srm_p_value=srm_p,
        srm_status=srm_status(srm_p),
        metrics=results,
        guardrails=guardrails,
        verdict=decision,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        best_group=best,
        window_start=window_start,
        computed_at=now,
        until=until,
        sequential=use_sequential,
        crossover_units=units.crossovers,
        override_exposures=units.overrides,
        future_events=future,
        first_exposure=units.first,
        last_exposure=units.last,
    )


def _with_data_checks(conn: sqlite3.Connection, result: MetricResult) -> MetricResult:
    if result.kind not in ("sum", "mean"):
        return result
    bad = sql.non_numeric_events(conn, result.event)
    if not bad:
        return result
    return replace(result, non_numeric_events=bad)


def _group_units(
    exp: ExperimentSpec, units: dict[str, int]
) -> tuple[tuple[GroupUnits, ...], float | None]:
    """Units per group (spec groups first, then groups only the data knows) and SRM p."""
    names = [g.name for g in exp.groups] + sorted(set(units) - {g.name for g in exp.groups})
    weights = {g.name: g.weight for g in exp.groups}
    observed = [units.get(n, 0) for n in names]
    test = srm_test(observed, [weights.get(n, 0.0) for n in names])
    expected: Sequence[float | None] = test.expected if test else [None] * len(names)
    groups = tuple(
        GroupUnits(n, o, weights.get(n, 0.0), e)
        for n, o, e in zip(names, observed, expected, strict=True)
    )
    return groups, (test.p_value if test else None)
