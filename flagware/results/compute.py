"""Experiment results from the local event store: per-group summaries in SQL, tests in Python.

The analysis, in the order it runs:

1. **Units.** A unit (the experiment's ``unit`` ID: ``user_id``, ``stable_id``
   or a custom ID from the stored payload) is in the experiment when its FIRST
   exposure to it (in the current analysis window, see :mod:`.lock`) has a
   group; it stays in that group for the analysis, whatever later exposures
   say. Units whose first exposure has no group (unallocated, or failing the
   targeting gate) are not in the experiment, even if allocation later grew and
   took them in: their history before that is not the treatment's.
2. **Metric values per unit**, counting only events at or after the unit's
   first exposure: ``conversion`` 1 if the unit logged the event at all, else
   0; ``count`` the number of events; ``sum`` the sum of numeric values (0 for
   units without events); ``mean`` the mean numeric value over that unit's
   valued events, and only units with at least one valued event are in the
   sample (a unit with no purchase has no average order value, not 0).
3. **Per group** the SQL returns n, the sum and the sum of squares of the
   per-unit values; every group is compared with the control by Welch's test
   (:mod:`.stats`). Groups are compared with the control independently, without
   a multiple-comparison correction (as Statsig's console does): with many
   groups, pick alpha accordingly.
4. **Checks** that block a launch: sample ratio mismatch (SRM, chi-square of
   units against the weights: p < 0.001 blocks, p < 0.01 warns), guardrail
   metrics whose newest event is older than ``fresh_within`` hours (or that have
   no events at all), and guardrails that moved significantly in their bad
   direction in any group.
5. **Verdict**: ``blocked`` (any check above), ``ship`` (a group where some
   non-guardrail metric is significantly better and nothing is significantly
   worse; the best such group is named), ``no-ship`` (a significant regression
   and no shippable group), else ``inconclusive``.

All aggregation runs in SQLite through two temporary tables (first exposures,
then events per unit and metric event), so a million events never become a
million Python objects.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flagware.events.model import CONFIG_EXPOSURE, now_ms
from flagware.events.store import connect
from flagware.results.lock import read_started
from flagware.results.stats import Sample, compare_means, srm_test
from flagware.spec import ExperimentSpec, MetricSpec, Spec

__all__ = [
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

SRM_WARN_P = 0.01
SRM_BLOCK_P = 0.001

Verdict = Literal["blocked", "ship", "no-ship", "inconclusive"]
Outcome = Literal["better", "worse", "neutral"]


class ResultsError(ValueError):
    """Results cannot be computed from these inputs (unknown experiment, no store, bad alpha)."""


@dataclass(frozen=True)
class GroupUnits:
    name: str
    units: int
    weight: float  # percent of allocated units the spec assigns; 0 for unknown groups
    expected: float | None  # units expected from the weights (None without an SRM test)


@dataclass(frozen=True)
class GroupResult:
    """One metric, one group against the control."""

    group: str
    vs: str
    units: int  # units in this metric's sample (for `mean`: units with a value)
    control_units: int
    mean: float | None
    control_mean: float | None
    delta: float | None
    ci: tuple[float, float] | None
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float | None
    significant: bool
    outcome: Outcome  # significant and in the metric's good direction, bad one, or neither


@dataclass(frozen=True)
class MetricResult:
    name: str
    event: str
    kind: str
    tags: tuple[str, ...]
    direction: str
    guardrail: bool
    alpha: float
    samples: dict[str, Sample]  # per group, control included
    results: tuple[GroupResult, ...]


@dataclass(frozen=True)
class GuardrailStatus:
    metric: str
    status: Literal["ok", "blocked"]
    reason: str
    newest_event: int | None  # ms


@dataclass(frozen=True)
class Results:
    experiment: str
    unit: str
    alpha: float
    control: str
    groups: tuple[GroupUnits, ...]
    srm_p_value: float | None
    srm_status: Literal["ok", "warning", "failed", "untested"]
    metrics: tuple[MetricResult, ...]
    guardrails: tuple[GuardrailStatus, ...]
    verdict: Verdict
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    best_group: str | None = None
    window_start: int | None = None  # ms, when a restart opened a new analysis window
    computed_at: int = field(default_factory=now_ms)

    @property
    def blocked(self) -> bool:
        return self.verdict == "blocked"


def compute_results(
    spec: Spec,
    experiment: str,
    store_path: str | os.PathLike[str],
    *,
    alpha: float = 0.1,
    now: int | None = None,
    metrics: Sequence[str] | None = None,
) -> Results:
    """Analyse ``experiment`` on the events in ``store_path``.

    ``metrics`` limits the analysis to those catalog metrics (default: all).
    ``now`` (ms) is the reference time for guardrail freshness (default: now).
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
    conn = connect(store_path, readonly=True)
    try:
        return _analyse(conn, exp, chosen, alpha, reference)
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
) -> Results:
    window_start = _window_start(conn, exp.name)
    unit = _unit_column(exp.unit)
    units = _load_first_exposures(conn, exp.name, unit, window_start or 0)
    _load_unit_events(conn, unit, sorted({m.event for m in metrics}))
    control = exp.control.name
    groups, srm_p = _group_units(exp, units)
    metric_results = tuple(
        _metric_result(conn, m, exp, list(units), control, alpha) for m in metrics
    )
    guardrails = tuple(
        _guardrail_status(conn, r, m, now) for r, m in zip(metric_results, metrics, strict=True)
    )
    verdict, reasons, warnings, best = _verdict(srm_p, groups, metric_results, guardrails, alpha)
    return Results(
        experiment=exp.name,
        unit=exp.unit,
        alpha=alpha,
        control=control,
        groups=groups,
        srm_p_value=srm_p,
        srm_status=_srm_status(srm_p),
        metrics=metric_results,
        guardrails=tuple(g for g in guardrails if g is not None),
        verdict=verdict,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        best_group=best,
        window_start=window_start,
        computed_at=now,
    )


# --- SQL -----------------------------------------------------------------------------


def _unit_column(unit: str) -> str:
    """The SQL expression (over table alias ``e``) that yields the unit ID."""
    if unit == "userID":
        return "e.user_id"
    if unit == "stableID":
        return "e.stable_id"
    # Custom ID types live only in the stored wire payload. Quote the name both
    # as a JSON path member and as an SQL string literal.
    member = unit.replace("\\", "\\\\").replace('"', '\\"')
    path = f'$.user.customIDs."{member}"'.replace("'", "''")
    return f"json_extract(e.payload, '{path}')"


def _window_start(conn: sqlite3.Connection, experiment: str) -> int | None:
    try:
        record = read_started(conn, experiment)
    except sqlite3.OperationalError:  # a store without the meta table: never restarted
        return None
    # Before any restart every exposure counts; the first record's time is when
    # the writer stored the first exposure, a little after it happened.
    if record is None or record.restarts == 0:
        return None
    return record.window_start


def _load_first_exposures(
    conn: sqlite3.Connection, experiment: str, unit: str, window_start: int
) -> dict[str, int]:
    """Fill ``temp.fw_first`` (unit, group, first exposure time); return units per group."""
    conn.execute("DROP TABLE IF EXISTS temp.fw_first")
    conn.execute(
        "CREATE TEMP TABLE fw_first (unit TEXT PRIMARY KEY, grp TEXT NOT NULL, t0 INTEGER NOT NULL)"
        " WITHOUT ROWID"
    )
    # ROW_NUMBER picks each unit's first exposure (ties broken by storage order);
    # only then are units without a group dropped, so they stay out.
    conn.execute(
        f"""
        INSERT INTO temp.fw_first (unit, grp, t0)
        SELECT unit, group_name, time FROM (
            SELECT {unit} AS unit, e.group_name, e.time,
                   ROW_NUMBER() OVER (PARTITION BY {unit} ORDER BY e.time, e.id) AS rn
            FROM events AS e
            WHERE e.exposure = ? AND e.event = ? AND e.time >= ? AND {unit} IS NOT NULL
        )
        WHERE rn = 1 AND group_name IS NOT NULL
        """,
        (experiment, CONFIG_EXPOSURE, window_start),
    )
    rows = conn.execute("SELECT grp, count(*) FROM temp.fw_first GROUP BY grp")
    return {str(g): int(n) for g, n in rows}


def _load_unit_events(conn: sqlite3.Connection, unit: str, events: list[str]) -> None:
    """Fill ``temp.fw_unit_events``: per unit and event name, count, value sum and valued count."""
    conn.execute("DROP TABLE IF EXISTS temp.fw_unit_events")
    conn.execute(
        "CREATE TEMP TABLE fw_unit_events (event TEXT NOT NULL, unit TEXT NOT NULL,"
        " c INTEGER NOT NULL, s REAL NOT NULL, vn INTEGER NOT NULL, PRIMARY KEY (event, unit))"
        " WITHOUT ROWID"
    )
    if not events:
        return
    marks = ", ".join("?" * len(events))
    # CROSS JOIN pins the loop order: scan the metric events once (through the
    # event-name index) and probe the small first-exposure table by unit,
    # rather than re-scanning events for every unit.
    conn.execute(
        f"""
        INSERT INTO temp.fw_unit_events (event, unit, c, s, vn)
        SELECT e.event, f.unit, count(*), total(e.value_num), count(e.value_num)
        FROM events AS e CROSS JOIN temp.fw_first AS f
        WHERE e.event IN ({marks}) AND f.unit = {unit} AND e.time >= f.t0
        GROUP BY e.event, f.unit
        """,
        events,
    )


# Per-unit value of each metric kind, over fw_unit_events aliased p. Units
# without a row get 0 (LEFT JOIN) except for `mean`, whose sample is only the
# units with at least one valued event (inner join, vn > 0).
_VALUE = {
    "conversion": "CASE WHEN p.c > 0 THEN 1.0 ELSE 0.0 END",
    "count": "coalesce(p.c, 0)",
    "sum": "coalesce(p.s, 0.0)",
    "mean": "p.s / p.vn",
}


def _group_samples(conn: sqlite3.Connection, metric: MetricSpec) -> dict[str, Sample]:
    value = _VALUE[metric.kind]
    if metric.kind == "mean":
        join = "JOIN temp.fw_unit_events AS p ON p.unit = f.unit AND p.event = ? AND p.vn > 0"
    else:
        join = "LEFT JOIN temp.fw_unit_events AS p ON p.unit = f.unit AND p.event = ?"
    rows = conn.execute(
        f"""
        SELECT f.grp, count(*), total(v), total(v * v) FROM (
            SELECT f.grp AS grp, {value} AS v FROM temp.fw_first AS f {join}
        ) AS f GROUP BY f.grp
        """,
        (metric.event,),
    )
    return {str(g): Sample(int(n), float(s), float(ss)) for g, n, s, ss in rows}


def _newest_event(conn: sqlite3.Connection, event: str) -> int | None:
    row = conn.execute("SELECT max(time) FROM events WHERE event = ?", (event,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


# --- statistics per metric -------------------------------------------------------------


def _metric_result(
    conn: sqlite3.Connection,
    metric: MetricSpec,
    exp: ExperimentSpec,
    groups: list[str],
    control: str,
    alpha: float,
) -> MetricResult:
    samples = _group_samples(conn, metric)
    empty = Sample(0, 0.0, 0.0)
    base = samples.get(control, empty)
    order = [g.name for g in exp.groups] + sorted(set(groups) - {g.name for g in exp.groups})
    results = tuple(
        _compare(metric, name, control, samples.get(name, empty), base, alpha)
        for name in order
        if name != control
    )
    return MetricResult(
        name=metric.name,
        event=metric.event,
        kind=metric.kind,
        tags=metric.tags,
        direction=metric.direction,
        guardrail=metric.guardrail,
        alpha=alpha,
        samples=samples,
        results=results,
    )


def _compare(
    metric: MetricSpec, group: str, control: str, sample: Sample, base: Sample, alpha: float
) -> GroupResult:
    cmp = compare_means(sample, base, alpha)
    significant = cmp.p_value is not None and cmp.p_value < alpha
    outcome: Outcome = "neutral"
    if significant:
        up = cmp.delta > 0
        outcome = "better" if up == (metric.direction == "increase") else "worse"
    return GroupResult(
        group=group,
        vs=control,
        units=sample.n,
        control_units=base.n,
        mean=_finite(sample.mean),
        control_mean=_finite(base.mean),
        delta=_finite(cmp.delta),
        ci=cmp.ci,
        relative=cmp.relative,
        relative_ci=cmp.relative_ci,
        p_value=cmp.p_value,
        significant=significant,
        outcome=outcome,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- checks and verdict ------------------------------------------------------------------


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


def _srm_status(p: float | None) -> Literal["ok", "warning", "failed", "untested"]:
    if p is None:
        return "untested"
    if p < SRM_BLOCK_P:
        return "failed"
    return "warning" if p < SRM_WARN_P else "ok"


def _guardrail_status(
    conn: sqlite3.Connection, result: MetricResult, metric: MetricSpec, now: int
) -> GuardrailStatus | None:
    if not metric.guardrail:
        return None
    newest = _newest_event(conn, metric.event)
    if newest is None:
        reason = f"stale: no {metric.event!r} events stored, so the guardrail cannot be checked"
        return GuardrailStatus(metric.name, "blocked", reason, None)
    if metric.fresh_within is not None:
        age_h = (now - newest) / 3_600_000
        if age_h > metric.fresh_within:
            reason = (
                f"stale: newest {metric.event!r} event is {age_h:.1f} h old"
                f" (fresh_within = {metric.fresh_within:g} h)"
            )
            return GuardrailStatus(metric.name, "blocked", reason, newest)
    worse = [r for r in result.results if r.outcome == "worse"]
    if worse:
        reason = "regressed: " + "; ".join(_describe(metric.name, r) for r in worse)
        return GuardrailStatus(metric.name, "blocked", reason, newest)
    return GuardrailStatus(metric.name, "ok", "no significant regression", newest)


def _describe(metric: str, r: GroupResult) -> str:
    change = f"{r.relative:+.1%}" if r.relative is not None else f"{r.delta:+.4g}"
    p = f"p = {r.p_value:.3g}" if r.p_value is not None else "p n/a"
    return f"{metric} {change} in {r.group} vs {r.vs} ({p})"


def _verdict(
    srm_p: float | None,
    groups: tuple[GroupUnits, ...],
    metrics: tuple[MetricResult, ...],
    guardrails: tuple[GuardrailStatus | None, ...],
    alpha: float,
) -> tuple[Verdict, list[str], list[str], str | None]:
    warnings: list[str] = []
    blockers: list[str] = []
    if srm_p is not None and srm_p < SRM_WARN_P:
        counts = ", ".join(f"{g.name} {g.units}" for g in groups)
        message = f"sample ratio mismatch: p = {srm_p:.3g} for units {counts} against the weights"
        (blockers if srm_p < SRM_BLOCK_P else warnings).append(message)
    blockers += [f"guardrail {g.metric}: {g.reason}" for g in guardrails if g and g.status != "ok"]

    wins: dict[str, list[str]] = {}
    losses: dict[str, list[str]] = {}
    for m in metrics:
        for r in m.results:
            if r.outcome == "better" and not m.guardrail:
                wins.setdefault(r.group, []).append(_describe(m.name, r))
            elif r.outcome == "worse":
                losses.setdefault(r.group, []).append(_describe(m.name, r))
    shippable = [g.name for g in groups if wins.get(g.name) and not losses.get(g.name)]
    # The best group: most significant wins; ties go to the spec's group order.
    best = max(shippable, key=lambda g: len(wins[g])) if shippable else None
    regressions = [text for items in losses.values() for text in items]

    if blockers:
        return "blocked", blockers, warnings, best
    if best is not None:
        warnings += [f"also: {text}" for text in regressions]
        return "ship", [f"ship {best}: " + "; ".join(wins[best])], warnings, best
    if regressions:
        return (
            "no-ship",
            [f"significant regression: {text}" for text in regressions],
            warnings,
            None,
        )
    if not any(g.units for g in groups):
        return "inconclusive", ["no units exposed to the experiment yet"], warnings, None
    reason = f"no metric moved significantly at alpha {alpha:g}"
    return "inconclusive", [reason], warnings, None
