"""Experiment results from the event store: aggregation in SQL, decisions in Python.

:mod:`.sql` finds the units, :mod:`.per_unit` what each unit did and
:mod:`.moments` each metric's per-group summaries;
:mod:`.analysis` tests every group against the control and corrects each
family; :mod:`.coverage` finds metric events never stored or logged by no
exposed unit; :mod:`.verdict` runs the checks and says ship, no-ship,
inconclusive or blocked. This module opens the store and puts the pieces
together.

The analysis window: exposures and events from the window start (after a
``restart``) up to ``until`` (default: now). Events stamped later than now are
clock skew; they are not counted, and their number is reported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from flagware.events.model import now_ms
from flagware.events.store import not_a_store, redact
from flagware.events.store.reader import Reader, database_errors, open_reader
from flagware.results import sequential as seq
from flagware.results import sql
from flagware.results.analysis import MetricData, analyse_metrics
from flagware.results.changes import changed_since_start
from flagware.results.coverage import unattributed, unstored
from flagware.results.history import history
from flagware.results.lock import as_started, recorded_experiment
from flagware.results.model import (
    GroupResult,
    GroupUnits,
    GuardrailStatus,
    MetricResult,
    Results,
    ResultsError,
)
from flagware.results.moments import metric_events, metric_moments
from flagware.results.per_unit import EventRead, load_unit_events
from flagware.results.stats import srm_test
from flagware.results.verdict import (
    SRM_BLOCK_P,
    SRM_WARN_P,
    guardrail_status,
    srm_status,
    verdict,
)
from flagware.spec import ExperimentSpec, MetricSpec, Spec, did_you_mean

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
    cuped: bool = True,
    target_mde: float = 0.05,
) -> Results:
    """Analyse ``experiment`` on the events in ``store_path``.

    ``metrics`` limits the analysis to those catalog metrics (default: all).
    ``now`` (ms) is the reference time for guardrail freshness and for what
    counts as the future (default: now); ``until`` (ms, default ``now``) ends
    the analysis window. ``sequential`` overrides the experiment's
    ``sequential`` setting; ``cuped=False`` turns CUPED off for every metric.
    ``target_mde`` (relative) is the effect the planning figures are for.
    """
    if not 0.0 < alpha < 1.0:
        raise ResultsError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")
    if not target_mde > 0.0:
        raise ResultsError(f"the target effect must be positive, got {target_mde}")
    exp = spec.experiments.get(experiment)
    chosen = _choose_metrics(spec, metrics)
    problem = not_a_store(store_path)  # worded as every read command words it
    if problem is not None:
        if exp is None:
            raise _unknown(spec, experiment)
        raise ResultsError(problem)
    where = redact(os.fspath(store_path))
    reference = now_ms() if now is None else now
    end = reference if until is None else min(until, reference)
    # An experiment removed from the spec: as its start record says (below),
    # else the default (always valid, whenever it is read).
    declared = True if exp is None else exp.sequential
    use_sequential = declared if sequential is None else sequential
    tuning = seq.DEFAULT_TUNING if exp is None else exp.sequential_tuning
    options = _Options(alpha, reference, end, use_sequential, tuning, cuped, target_mde)
    try:
        with open_reader(store_path) as conn:
            if exp is None:
                results = _analyse_removed(conn, spec, experiment, chosen, options, sequential)
            else:
                results = _analyse(conn, exp, chosen, options)
    except database_errors() as exc:
        raise ResultsError(f"cannot read event store {where}: {exc}") from None
    if until is not None and until > reference:  # cut to now without a word (a trial)
        later = "--until is later than now: the results read up to now"
        results = replace(results, warnings=(*results.warnings, later))
    return results


def _unknown(spec: Spec, experiment: str, started: Sequence[str] = ()) -> ResultsError:
    known = ", ".join(sorted(spec.experiments)) or "none"
    hint = did_you_mean(experiment, [*spec.experiments, *started])
    if experiment in spec.gates:  # a new user's trial asked for its gate's results
        hint = (
            f": it is a gate, and results are an experiment's (its exposures:"
            f" `flagware events --event {experiment}`)"
        )
    also = f"; started in the store: {', '.join(started)}" if started else ""
    return ResultsError(
        f"unknown experiment {experiment!r}{hint} (the spec defines: {known}{also})"
    )


def _analyse_removed(
    conn: Reader,
    spec: Spec,
    experiment: str,
    metrics: list[MetricSpec],
    opt: _Options,
    sequential: bool | None,
) -> Results:
    """An experiment removed from the spec once it ended still has its stored
    exposures and its start record: read it as the record defines it (and,
    unless the command says, as sequentially as it says)."""
    record, _ = sql.start_record(conn, experiment)
    exp = None if record is None else recorded_experiment(experiment, record)
    if exp is None:
        raise _unknown(spec, experiment, sql.started_experiments(conn))
    chosen = exp.sequential if sequential is None else sequential
    opt = replace(opt, sequential=chosen, tuning=exp.sequential_tuning)
    results = _analyse(conn, exp, metrics, opt)
    note = (
        f"{experiment} is not in {spec.source}: read as its start record defines it"
        f" (groups {', '.join(g.name for g in exp.groups)}, unit {exp.unit},"
        f" {'sequential' if exp.sequential else 'fixed horizon'})"
    )
    return replace(results, warnings=(note, *results.warnings))


def _choose_metrics(spec: Spec, names: Sequence[str] | None) -> list[MetricSpec]:
    if names is None:
        return list(spec.metrics.values())
    unknown = [n for n in names if n not in spec.metrics]
    if unknown:
        raise ResultsError(f"unknown metric(s): {', '.join(unknown)}")
    return [spec.metrics[n] for n in names]


@dataclass(frozen=True)
class _Options:
    alpha: float
    now: int
    until: int
    sequential: bool
    tuning: int  # units where the confidence sequence is tightest
    cuped: bool
    target_mde: float


def _reads(metrics: list[MetricSpec], use_cuped: bool) -> dict[str, EventRead]:
    """Per event read: how far before a unit's exposure to look (ms; CUPED's
    covariate), and whether any metric sums its values."""
    days: dict[str, float] = {}
    valued: set[str] = set()
    for m in metrics:
        for event in metric_events(m):
            wanted = m.cuped_days if use_cuped and m.kind not in ("ratio", "mean") else 0.0
            days[event] = max(days.get(event, 0.0), wanted)
        valued.update(_summed(m))
    return {e: EventRead(int(d * 86_400_000), e in valued) for e, d in days.items()}


def _summed(metric: MetricSpec) -> list[str]:
    """The events whose values a metric adds up."""
    summed = [metric.event] if metric.kind in ("sum", "mean") else []
    for side in (metric.numerator, metric.denominator):
        if side is not None and side.aggregate == "sum":
            summed.append(side.event)
    return summed


def _analyse(
    conn: Reader, exp: ExperimentSpec, metrics: list[MetricSpec], opt: _Options
) -> Results:
    record, reset_at = sql.start_record(conn, exp.name)
    edited = None if record is None else changed_since_start(record, exp)
    if edited is not None:  # read with other groups or weights, the figures would lie
        assert record is not None
        served = as_started(record, exp)  # what the app serves meanwhile
        if served is None:  # a record this version cannot rebuild
            raise ResultsError(edited)
        exp = served
    if record is not None and record.shipped_at is not None and record.shipped_at < opt.until:
        # Shipped: every unit has been served one group since, outside the
        # experiment, so the experiment's data end there.
        opt = replace(opt, until=record.shipped_at)
    opened = sql.window_opened(record, reset_at)
    window_start = None if opened is None else opened + sql.SETTLE_MS
    # Read within the settling seconds, the window is only empty yet.
    if opened is not None and opt.until < opened:
        # Both times: the text names the window's start, 7 s after this one,
        # and a trial read the two as a contradiction.
        at, start = (
            datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
            for ms in (opened, opened + sql.SETTLE_MS)
        )
        raise ResultsError(
            f"--until is before the analysis window: a restart or `flagware reset` at {at}"
            f" opened it, counting exposures from {start} on (once every process serves the"
            " new definition); nothing before it is counted"
        )
    unit = sql.unit_column(exp.unit, conn.dialect)
    units = sql.load_units(conn, exp.name, unit, window_start or 0, opt.until)
    shared = sql.shared_browsers(conn) if exp.unit == "userID" else (0, 0)
    switched = before = 0
    if window_start is not None:
        before, switched = sql.before_window(conn, exp.name, unit, window_start)
    reads = _reads(metrics, opt.cuped)
    tables = load_unit_events(
        conn, exp.unit, sum(units.per_group.values()), reads, opt.until, opt.now
    )
    control = exp.control.name
    groups, srm_p = _group_units(exp, units.per_group)
    data = []
    for m in metrics:
        cap = m.cap if m.kind in ("sum", "count") else 100.0
        moments, cap_value, capped = metric_moments(conn, tables, m, cap)
        data.append(MetricData(moments, cap_value, capped))
    results = analyse_metrics(
        metrics,
        data,
        [g.name for g in groups],
        control,
        opt.alpha,
        sequential_rho=seq.rho(opt.alpha, opt.tuning) if opt.sequential else None,
        use_cuped=opt.cuped,
        target_mde=opt.target_mde,
    )
    bad = {e: sql.non_numeric_events(conn, e) for e, read in reads.items() if read.valued}
    results = tuple(
        replace(r, non_numeric_events=sum(bad[e] for e in set(_summed(m))))
        for r, m in zip(results, metrics, strict=True)
    )
    missing = sql.never_stored(conn, (e for m in metrics for e in metric_events(m)))
    # A guardrail's events must come from the experiment's window: ones logged
    # before it (before a restart, before the first exposure) vouch for nothing
    # the experiment did.
    since = units.first if units.first is not None else (window_start or 0)
    guardrails = tuple(
        guardrail_status(
            r,
            sql.newest_event(conn, m.event, since, opt.until),
            m.fresh_within,
            # Fresh at the window's end: a result read up to --until judges the
            # logging as it was then (from now, any past cut looked stale).
            opt.until,
            # Either side of a ratio: a missing denominator leaves nothing to check.
            next(((e, missing[e]) for e in metric_events(m) if e in missing), None),
            exposed=units.first is not None,
        )
        for r, m in zip(results, metrics, strict=True)
        if m.guardrail
    )
    future = sql.future_exposures(conn, exp.name, opt.now) + tables.future
    decision, reasons, warnings, best = verdict(
        srm_p,
        groups,
        results,
        guardrails,
        opt.alpha,
        crossover_units=units.crossovers,
        ungrouped_units=units.ungrouped,
        future_events=future,
        sequential=opt.sequential,
        # Said when the ship is what ended the data (an --until before it is not).
        shipped=record.shipped if record is not None and record.shipped_at == opt.until else None,
    )
    # A misspelled event reads as "no effect" unless said. (A guardrail's
    # blocks the launch and says so in its reason.)
    warnings += [
        unstored(m, e, missing[e])
        for m in metrics
        if not m.guardrail
        for e in dict.fromkeys(metric_events(m))
        if e in missing
    ]
    warnings += unattributed(conn, exp.unit, metrics, data, missing, units.first, opt.until)
    if shared[0]:
        warnings.append(
            f"{shared[0]} browser(s) (stableIDs) were exposed under two or more userIDs, as"
            f" a login changes the userID: each userID is its own unit, and {shared[1]} of"
            " those browsers were in different groups (no crossover check sees it). For an"
            " experiment that runs across a login, key it on stableID (README: Visitors who"
            " log in)"
        )
    first, later = history(exp, record, edited, switched, units)
    warnings = [*first, *warnings, *later]
    if units.without_unit:
        warnings.append(
            f"{units.without_unit} exposure(s) had no {exp.unit} and are left out: no unit to"
            f" count them for (give the {exp.unit} to every request or flags_for that reads"
            f" {exp.name})"
        )
    warnings += [
        f"{r.non_numeric_events} event(s) read by {r.name} have a value that is not a number"
        " and count as 0"
        for r in results
        if r.non_numeric_events
    ]
    return Results(
        experiment=exp.name,
        unit=exp.unit,
        alpha=opt.alpha,
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
        # Which opened it: a restart (restart = true) or `flagware reset`.
        window_opened_by=None
        if window_start is None
        else ("restart" if record is not None and record.restarts else "reset"),
        units_before_window=before,
        # Said when the ship is what ended the data (an --until before it is not).
        shipped=record.shipped if record is not None and record.shipped_at == opt.until else None,
        shipped_at=None if record is None else record.shipped_at,
        computed_at=opt.now,
        until=opt.until,
        sequential=opt.sequential,
        sequential_tuning=opt.tuning if opt.sequential else None,
        crossover_units=units.crossovers,
        ungrouped_units=units.ungrouped,
        units_left_groups=units.left,
        units_switched_groups=switched,
        exposures_without_unit=units.without_unit,
        shared_browsers=shared[0],
        override_exposures=units.overrides,
        future_events=future,
        first_exposure=units.first,
        last_exposure=units.last,
        cuped=opt.cuped,
        target_mde=opt.target_mde,
    )


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
