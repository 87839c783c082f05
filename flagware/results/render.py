"""Results as JSON or an aligned text table; the HTML page is in :mod:`.report`."""

from __future__ import annotations

import json
from typing import Any

from flagware.results.formatting import (
    PLANNING_HEADER,
    ROLE_MARK,
    days_running,
    interval,
    level,
    method_line,
    metric_notes,
    needed_in_all_groups,
    num,
    p_phrase,
    pct,
    planning_rows,
    planning_test,
    pvalue,
    relative_mde,
    table,
    time_range,
    window_line,
)
from flagware.results.model import MetricResult, Results
from flagware.results.report import render_chart_svg, render_html
from flagware.results.verdict import SRM_RULE

__all__ = ["render", "render_chart_svg", "render_html", "render_json", "render_text", "to_dict"]


def render(results: Results, fmt: str) -> str:
    renderers = {"json": render_json, "text": render_text, "html": render_html}
    return renderers[fmt](results)


# --- JSON ----------------------------------------------------------------------------


def to_dict(results: Results) -> dict[str, Any]:
    """The documented JSON shape: every result's interval is drawn at its ``ci_alpha``.

    ``significant`` is true exactly when ``ci`` excludes 0 (and then
    ``relative_ci`` excludes 0 on the same side), and exactly when
    ``p_value_adjusted`` is below ``alpha``.
    """
    return {
        "experiment": results.experiment,
        "unit": results.unit,
        "alpha": results.alpha,
        "control": results.control,
        "window_start": results.window_start,
        "window_opened_by": results.window_opened_by,
        "units_before_window": results.units_before_window,
        "shipped": results.shipped,
        "shipped_at": results.shipped_at,
        "until": results.until,
        "sequential": results.sequential,
        "sequential_tuning": results.sequential_tuning,
        "crossover_units": results.crossover_units,
        "ungrouped_units": results.ungrouped_units,
        "units_left_groups": results.units_left_groups,
        "units_switched_groups": results.units_switched_groups,
        "exposures_without_unit": results.exposures_without_unit,
        "shared_browsers": results.shared_browsers,
        "override_exposures": results.override_exposures,
        "future_events": results.future_events,
        "first_exposure": results.first_exposure,
        "last_exposure": results.last_exposure,
        "days_running": days_running(results),
        "cuped": results.cuped,
        "target_mde": results.target_mde,
        "groups": [
            {"name": g.name, "units": g.units, "weight": g.weight, "expected": g.expected}
            for g in results.groups
        ],
        "srm_p_value": results.srm_p_value,
        "srm_status": results.srm_status,
        "metrics": [_metric_dict(m, results) for m in results.metrics],
        "guardrails": [
            {
                "metric": g.metric,
                "status": g.status,
                "reason": g.reason,
                "newest_event": g.newest_event,
            }
            for g in results.guardrails
        ],
        "verdict": results.verdict,
        "best_group": results.best_group,
        "reasons": list(results.reasons),
        "warnings": list(results.warnings),
        "computed_at": results.computed_at,
    }


def _metric_dict(m: MetricResult, results: Results) -> dict[str, Any]:
    return {
        "name": m.name,
        "event": m.event,
        "kind": m.kind,
        "tags": list(m.tags),
        "direction": m.direction,
        "guardrail": m.guardrail,
        "role": m.role,
        "correction": m.correction,
        "family_size": m.family_size,
        "non_numeric_events": m.non_numeric_events,
        "cuped": m.cuped,
        "theta": m.theta,
        "variance_reduction": m.variance_reduction,
        "cuped_skipped_reduction": m.cuped_skipped,
        "cuped_without": m.cuped_without,
        "cap": m.cap,
        "capped_units": m.capped_units,
        "group_intervals": {g: list(ci) if ci else None for g, ci in m.group_intervals.items()},
        "results": [
            {
                "group": r.group,
                "vs": r.vs,
                "units": r.units,
                "control_units": r.control_units,
                "mean": r.mean,
                "control_mean": r.control_mean,
                "delta": r.delta,
                "ci": list(r.ci) if r.ci else None,
                "relative": r.relative,
                "relative_ci": list(r.relative_ci) if r.relative_ci else None,
                "p_value": r.p_value,
                "p_value_adjusted": r.p_value_adjusted,
                "ci_alpha": r.ci_alpha,
                "method": r.method,
                # The lift interval's own method (a statistician's trial: named
                # only in the README).
                "relative_method": None
                if r.relative_ci is None
                else ("score-ratio" if r.method == "score" else "fieller"),
                "significant": r.significant,
                "outcome": r.outcome,
                "note": r.note,
                "mde": r.mde,
                "mde_relative": relative_mde(r.mde, r.control_mean),
                "units_needed": r.units_needed,
                "units_remaining": None
                if r.units_needed is None
                else max(0, r.units_needed - r.units - r.control_units),
                "units_needed_all_groups": needed_in_all_groups(results, r),
            }
            for r in m.results
        ],
    }


def render_json(results: Results) -> str:
    # allow_nan=False: every non-finite number is already None, and JSON has no NaN.
    return json.dumps(to_dict(results), indent=2, allow_nan=False) + "\n"


def render_text(results: Results) -> str:
    out = [
        f"Experiment {results.experiment} (unit {results.unit}, control {results.control},"
        f" alpha {results.alpha:g})",
        method_line(results),
        f"Data: {time_range(results, '; ')}",
        *filter(None, [window_line(results)]),
        f"Verdict: {results.verdict.upper()}",
        *(f"  - {reason}" for reason in results.reasons),
        *(f"  ! {warning}" for warning in results.warnings),
        "",
    ]
    group_rows = [
        [g.name, str(g.units), f"{g.weight:g}%", "-" if g.expected is None else f"{g.expected:.1f}"]
        for g in results.groups
    ]
    out += table(["group", "units", "weight", "expected"], group_rows, {1, 2, 3})
    srm = "p = -" if results.srm_p_value is None else p_phrase(results.srm_p_value)
    out += [f"SRM chi-square {srm} ({results.srm_status}; {SRM_RULE})", ""]

    header = [
        "metric",
        "kind",
        "group",
        "units",
        "mean",
        "control",
        "delta",
        "CI",
        "lift",
        "lift CI",
        "level",
        "p",
        "adj. p",
        "result",
    ]
    rows = [
        [
            m.name + ROLE_MARK[m.role],
            m.kind,
            r.group,
            str(r.units),
            num(r.mean),
            num(r.control_mean),
            num(r.delta),
            interval(r.ci, "num"),
            pct(r.relative),
            interval(r.relative_ci, "pct"),
            "-" if r.ci_alpha is None else level(r.ci_alpha),
            pvalue(r.p_value),
            pvalue(r.p_value_adjusted),
            r.outcome if r.note is None else f"{r.outcome} ({r.note})",
        ]
        for m in results.metrics
        for r in m.results
    ]
    if rows:
        out += table(header, rows, {3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
        out.append("roles: * decision (Bonferroni), ~ secondary (Benjamini-Hochberg), ! guardrail")
        if results.sequential and any(r.p_value == 1.0 for m in results.metrics for r in m.results):
            # Read as "identical" beside lifts of -35% and +20% (a new user's trial).
            out.append(
                "p: always-valid (sequential), 1 until the data weigh against no effect:"
                ' p 1.0000 is no evidence either way, not "the groups are the same"'
            )
    else:
        out.append("(no metrics to compare)")
    out += _notes(results)
    if results.guardrails:
        out += ["", "Guardrails:"]
        out += [f"  {g.metric}: {g.status} ({g.reason})" for g in results.guardrails]
    out += _planning(results)
    return "\n".join(out) + "\n"


def _notes(results: Results) -> list[str]:
    lines = [
        f"  {m.name}: " + "; ".join(metric_notes(m)) for m in results.metrics if metric_notes(m)
    ]
    return ["", "Notes:", *lines] if lines else []


def _planning(results: Results) -> list[str]:
    rows = planning_rows(results)
    if not rows:
        return []
    days = days_running(results)
    return [
        "",
        f"Planning (80% power with {planning_test(results)}; needed: units in the group and"
        f" the control for a {results.target_mde:.1%} lift; all groups: the experiment's units"
        f" for that, at its weights; running {'-' if days is None else f'{days:g}'} days):",
        *table(PLANNING_HEADER, rows, {2, 3, 4, 5, 6, 7}),
    ]
