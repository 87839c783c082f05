"""The results as one self-contained HTML page, and each metric's SVG chart.

The page has no scripts and loads nothing: CSS and SVG are inline, so the file
can be attached to a CI run or mailed and still render the same.
:func:`render_chart_svg` draws one metric's chart and is shared with the
diagnostics page.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape
from typing import Any

from flagware.results.formatting import (
    COLOURS,
    PLANNING_HEADER,
    VERDICT_COLOURS,
    interval,
    level,
    method_line,
    metric_notes,
    num,
    p_phrase,
    pct,
    planning_rows,
    planning_test,
    pvalue,
    time_range,
    window_line,
)
from flagware.results.model import GroupResult, MetricResult, Results
from flagware.results.verdict import SRM_RULE

__all__ = ["render_chart_svg", "render_html"]


# --- SVG chart -------------------------------------------------------------------------

# Sized for the report's 1120 px column and read at 14 px: the chart fills the
# column, so labels are never smaller than the text around them.
_W, _LABEL_W, _VALUE_W, _ROW_H, _TOP, _BOTTOM = 920, 150, 250, 40, 30, 34


def _nice_step(extent: float) -> float:
    raw = extent / 2.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def render_chart_svg(metric: MetricResult, *, standalone: bool = False) -> str:
    """One metric's chart: per group, the interval of its delta against the control.

    Relative lift (percent) when every group has one, else the absolute delta.
    Each interval is a horizontal bar around a vertical zero line; a bar that
    crosses zero is no evidence. Green: significant in the metric's good
    direction; red: significant in its bad direction; grey: not significant.
    ``standalone`` adds the XML namespace for use as an ``.svg`` file.
    """
    results = metric.results
    relative = bool(results) and all(r.relative_ci is not None for r in results)
    spans = [_span(r, relative) for r in results]
    extent = max([abs(v) for s in spans if s for v in s] + [0.0]) * 1.15 or 1.0
    step = _nice_step(extent)
    extent = math.ceil(extent / step) * step
    plot_x0, plot_x1 = _LABEL_W, _W - _VALUE_W
    height = _TOP + _ROW_H * max(1, len(results)) + _BOTTOM

    def x(v: float) -> float:
        return plot_x0 + (v + extent) / (2 * extent) * (plot_x1 - plot_x0)

    unit = "relative lift" if relative else "delta"
    title = f"{metric.name}: {unit} vs {results[0].vs if results else 'control'}"
    ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    parts = [
        f'<svg{ns} class="chart" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}"'
        f' role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="14">',
        f"<title>{escape(title)}</title>",
        f'<text x="8" y="15" fill="#24292f"><tspan font-weight="bold">{escape(metric.name)}'
        f"{' (guardrail)' if metric.guardrail else ''}</tspan>: {escape(unit)} vs"
        f" {escape(results[0].vs if results else 'control')},"
        f" {level(_chart_alpha(metric))} interval</text>",
    ]
    parts += _axis(x, extent, step, relative, height)
    for i, (r, span) in enumerate(zip(results, spans, strict=True)):
        parts += _row(r, span, x, _TOP + i * _ROW_H, relative)
    if not results:
        parts.append(
            f'<text x="{plot_x0}" y="{_TOP + 20}" fill="#57606a">no groups to compare</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _chart_alpha(metric: MetricResult) -> float:
    """The level the chart's intervals are drawn at (after the correction)."""
    levels = [r.ci_alpha for r in metric.results if r.ci_alpha is not None]
    return levels[0] if levels else metric.alpha


def _span(r: GroupResult, relative: bool) -> tuple[float, float, float] | None:
    ci = r.relative_ci if relative else r.ci
    point = r.relative if relative else r.delta
    if ci is None or point is None:
        return None
    return ci[0], point, ci[1]


def _axis(x: Any, extent: float, step: float, relative: bool, height: int) -> list[str]:
    bottom = height - _BOTTOM
    parts = []
    ticks = round(extent / step)
    for k in range(-ticks, ticks + 1):
        v = k * step
        label = (
            f"{v:+.0%}" if relative and step >= 0.01 else (f"{v:+.2%}" if relative else f"{v:+.3g}")
        )
        if k == 0:
            label = "0"
        parts.append(
            f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{_TOP - 4}" y2="{bottom}"'
            f' stroke="{"#24292f" if k == 0 else "#d0d7de"}"'
            f' stroke-width="{1.5 if k == 0 else 1}"/>'
            f'<text x="{x(v):.1f}" y="{bottom + 16}" text-anchor="middle" fill="#57606a">'
            f"{escape(label)}</text>"
        )
    return parts


def _row(
    r: GroupResult, span: tuple[float, float, float] | None, x: Any, top: int, relative: bool
) -> list[str]:
    mid = top + _ROW_H / 2
    colour = COLOURS[r.outcome]
    parts = [
        f'<text x="{_LABEL_W - 8}" y="{mid + 4:.1f}" text-anchor="end" fill="#24292f">'
        f"{escape(r.group)}</text>"
    ]
    if span is None:
        # Why, as the tables say it ("no variance to test", "at least 10 units...").
        why = escape(r.note or "not enough data")
        parts.append(f'<text x="{x(0) + 6:.1f}" y="{mid + 4:.1f}" fill="#57606a">{why}</text>')
        return parts
    lo, point, hi = span
    parts.append(
        f"<g><title>{escape(_row_title(r, relative))}</title>"
        f'<rect x="{x(lo):.1f}" y="{mid - 7:.1f}" width="{max(x(hi) - x(lo), 1.5):.1f}"'
        f' height="14" rx="3" fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>'
        f'<line x1="{x(point):.1f}" x2="{x(point):.1f}" y1="{mid - 9:.1f}" y2="{mid + 9:.1f}"'
        f' stroke="{colour}" stroke-width="3"/></g>'
    )
    value = pct(point) if relative else f"{point:+.4g}"
    ci = interval((lo, hi), "pct" if relative else "num")
    parts.append(
        f'<text x="{_W - _VALUE_W + 10}" y="{mid + 4:.1f}" fill="{colour}">'
        f"{escape(value)} {escape(ci)}</text>"
    )
    return parts


def _row_title(r: GroupResult, relative: bool) -> str:
    what = "lift" if relative else "delta"
    return (
        f"{r.group} vs {r.vs}: {what} {r.outcome}, {_p(r.p_value, 'p')},"
        f" {_p(r.p_value_adjusted, 'adjusted p')}"
    )


def _p(p: float | None, name: str) -> str:
    return f"{name} n/a" if p is None else p_phrase(p, name)


# --- HTML ------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#24292f;max-width:1120px;margin:2em auto;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
.verdict{display:inline-block;padding:.25em .8em;border-radius:6px;color:#fff;font-weight:700;
letter-spacing:.05em}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .6em;border-bottom:1px solid #d0d7de;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#1a7f37}.warning{color:#9a6700}.failed,.blocked{color:#cf222e;font-weight:700}
.untested{color:#57606a}.muted{color:#57606a}.legend span{margin-right:1.2em}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;
margin-right:.3em}
"""


def render_html(results: Results) -> str:
    colour = VERDICT_COLOURS[results.verdict]
    when = datetime.fromtimestamp(results.computed_at / 1000, tz=UTC)
    body = [
        f"<h1>Experiment {escape(results.experiment)}</h1>",
        f'<p class="muted">unit {escape(results.unit)} · control {escape(results.control)} ·'
        f" alpha {results.alpha:g} · computed {when:%Y-%m-%d %H:%M} UTC</p>",
        f'<p class="muted">{escape(_time_range(results))}</p>',
        f'<p class="muted">{escape(method_line(results))}</p>',
        f'<p><span class="verdict" style="background:{colour}">'
        f"{escape(results.verdict.upper())}</span></p>",
        "<ul>" + "".join(f"<li>{escape(r)}</li>" for r in results.reasons) + "</ul>",
    ]
    if results.warnings:
        body.append(
            '<ul class="warning">'
            + "".join(f"<li>{escape(w)}</li>" for w in results.warnings)
            + "</ul>"
        )
    body += _html_groups(results) + _html_guardrails(results) + _html_metrics(results)
    body += _html_planning(results)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(results.experiment)}: {escape(results.verdict)}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_groups(results: Results) -> list[str]:
    rows = "".join(
        f"<tr><td>{escape(g.name)}</td><td class=n>{g.units}</td><td class=n>{g.weight:g}%</td>"
        f"<td class=n>{'-' if g.expected is None else f'{g.expected:.1f}'}</td></tr>"
        for g in results.groups
    )
    srm = "p = -" if results.srm_p_value is None else p_phrase(results.srm_p_value)
    return [
        "<h2>Units and sample ratio</h2>",
        f"<table><tr><th>group</th><th>units</th><th>weight</th><th>expected</th></tr>{rows}</table>",
        # Worded as the text says it (a trial compared the two).
        f'<p>SRM chi-square {escape(srm)} (<span class="{results.srm_status}">'
        f"{escape(results.srm_status)}</span>; {SRM_RULE})</p>",
    ]


def _html_guardrails(results: Results) -> list[str]:
    if not results.guardrails:
        return ["<h2>Guardrails</h2>", '<p class="muted">no guardrail metrics</p>']
    rows = "".join(
        f'<tr><td>{escape(g.metric)}</td><td class="{g.status}">{escape(g.status)}</td>'
        f"<td>{escape(g.reason)}</td></tr>"
        for g in results.guardrails
    )
    return [
        "<h2>Guardrails</h2>",
        f"<table><tr><th>metric</th><th>status</th><th>reason</th></tr>{rows}</table>",
    ]


def _html_metrics(results: Results) -> list[str]:
    legend = "".join(
        f'<span><i class="swatch" style="background:{COLOURS[k]}"></i>{label}</span>'
        for k, label in (
            ("better", "significantly better"),
            ("worse", "significantly worse"),
            ("inconclusive", "inconclusive: no evidence either way"),
        )
    )
    parts = ["<h2>Metrics</h2>", f'<p class="legend">{legend}</p>']
    for m in results.metrics:
        tags = f" · tags: {escape(', '.join(m.tags))}" if m.tags else ""
        family = (
            f"{m.role} metric, tested at alpha, uncorrected"
            if m.correction == "none"  # "none over 1" read as a count of failures
            else f"{m.role} metric, {m.correction} over {m.family_size}"
        )
        notes = "".join(f" · {escape(n)}" for n in metric_notes(m))
        parts.append(
            f'<section class="metric"><h3>{escape(m.name)}</h3>'
            f'<p class="muted">{escape(m.kind)} of {escape(m.event)} · good direction:'
            f" {escape(m.direction)}{tags} · {escape(family)}{notes}</p>"
            f"{render_chart_svg(m)}{_html_metric_table(m)}{_html_group_intervals(m)}</section>"
        )
    return parts


def _time_range(results: Results) -> str:
    """Days running and the data's time range."""
    window = window_line(results)
    return f"{time_range(results)}{f' · {window}' if window else ''}"


def _html_group_intervals(m: MetricResult) -> str:
    """Each group's own estimate with its (uncorrected) interval, control included."""
    rows = "".join(
        f"<tr><td>{escape(g)}</td><td class=n>{escape(interval(ci, 'num'))}</td></tr>"
        for g, ci in m.group_intervals.items()
    )
    title = f"each group's {'ratio' if m.kind in ('ratio', 'mean') else 'mean'}"
    return (
        f'<table class="groups"><tr><th>group</th><th>{escape(title)},'
        f" {level(m.alpha)} interval</th></tr>{rows}</table>"
    )


def _html_planning(results: Results) -> list[str]:
    rows = planning_rows(results)
    if not rows:
        return []
    head = "".join(f"<th>{escape(h)}</th>" for h in PLANNING_HEADER)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(c)}</td>" if i < 2 else f"<td class=n>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return [
        "<h2>How long to run</h2>",
        f'<p class="muted">Minimum detectable effect (MDE) at 80% power with the units so far,'
        f" the units needed in the group and the control to detect a"
        f" {results.target_mde:.1%} lift, and the experiment's units for that in all groups,"
        f" for {escape(planning_test(results))}.</p>",
        f"<table><tr>{head}</tr>{body}</table>",
    ]


def _html_metric_table(m: MetricResult) -> str:
    rows = "".join(
        f"<tr><td>{escape(r.group)}</td><td class=n>{r.units}</td><td class=n>{num(r.mean)}</td>"
        f"<td class=n>{num(r.control_mean)}</td><td class=n>{num(r.delta)}</td>"
        f"<td class=n>{escape(interval(r.ci, 'num'))}</td><td class=n>{pct(r.relative)}</td>"
        f"<td class=n>{escape(interval(r.relative_ci, 'pct'))}</td>"
        f"<td class=n>{'-' if r.ci_alpha is None else level(r.ci_alpha)}</td>"
        f"<td class=n>{escape(pvalue(r.p_value))}</td>"
        f"<td class=n>{escape(pvalue(r.p_value_adjusted))}</td>"
        f"<td>{r.outcome}{escape(f' ({r.note})' if r.note else '')}</td></tr>"
        for r in m.results
    )
    return (
        "<table><tr><th>group</th><th>units</th><th>mean</th><th>control</th><th>delta</th>"
        "<th>CI</th><th>lift</th><th>lift CI</th><th>level</th><th>p</th><th>adj. p</th>"
        "<th>result</th></tr>"
        f"{rows}</table>"
    )
