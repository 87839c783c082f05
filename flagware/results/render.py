"""Results as JSON, an aligned text table, or one self-contained HTML page.

The HTML page has no scripts and loads nothing: CSS and SVG are inline, so the
file can be attached to a CI run or mailed and still render the same.
:func:`render_chart_svg` draws one metric's chart and is shared with the
diagnostics page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from flagware.results.compute import GroupResult, MetricResult, Results

__all__ = ["render", "render_chart_svg", "render_html", "render_json", "render_text", "to_dict"]

# Colours by outcome: significant in the good direction, in the bad one, neither.
COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "neutral": "#8c959f"}
VERDICT_COLOURS = {
    "blocked": "#cf222e",
    "ship": "#1a7f37",
    "no-ship": "#bc4c00",
    "inconclusive": "#57606a",
}


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
        "until": results.until,
        "sequential": results.sequential,
        "crossover_units": results.crossover_units,
        "override_exposures": results.override_exposures,
        "future_events": results.future_events,
        "first_exposure": results.first_exposure,
        "last_exposure": results.last_exposure,
        "groups": [
            {"name": g.name, "units": g.units, "weight": g.weight, "expected": g.expected}
            for g in results.groups
        ],
        "srm_p_value": results.srm_p_value,
        "srm_status": results.srm_status,
        "metrics": [_metric_dict(m) for m in results.metrics],
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


def _metric_dict(m: MetricResult) -> dict[str, Any]:
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
                "significant": r.significant,
                "outcome": r.outcome,
                "note": r.note,
            }
            for r in m.results
        ],
    }


def render_json(results: Results) -> str:
    # allow_nan=False: every non-finite number is already None, and JSON has no NaN.
    return json.dumps(to_dict(results), indent=2, allow_nan=False) + "\n"


# --- text ----------------------------------------------------------------------------


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _interval(ci: tuple[float, float] | None, fmt: str) -> str:
    if ci is None:
        return "-"
    if fmt == "pct":
        return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"
    return f"[{ci[0]:+.4g}, {ci[1]:+.4g}]"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _level(alpha: float) -> str:
    """1 - alpha as a percentage with as many decimals as it needs (95%, 98.75%)."""
    for digits in range(4):
        text = f"{1 - alpha:.{digits}%}"
        if abs(float(text[:-1]) / 100 - (1 - alpha)) < 1e-9:
            return text
    return f"{1 - alpha:.3%}"


_ROLE_MARK = {"decision": " *", "secondary": " ~", "guardrail": " !"}


def _method_line(results: Results) -> str:
    """How the intervals were made, in one line (the README explains each part)."""
    tests = (
        "always-valid confidence sequences (sequential)"
        if results.sequential
        else "fixed-horizon tests (score for conversions, Welch or pooled t otherwise)"
    )
    data = [f"{results.crossover_units} crossover unit(s) left out"]
    if results.override_exposures:
        data.append(f"{results.override_exposures} override exposure(s) ignored")
    return (
        f"Intervals: {tests}; decision metrics Bonferroni-corrected, secondary"
        f" Benjamini-Hochberg, guardrails uncorrected; {', '.join(data)}"
    )


def render_text(results: Results) -> str:
    out = [
        f"Experiment {results.experiment} (unit {results.unit}, control {results.control},"
        f" alpha {results.alpha:g})",
        _method_line(results),
        f"Verdict: {results.verdict.upper()}",
        *(f"  - {reason}" for reason in results.reasons),
        *(f"  ! {warning}" for warning in results.warnings),
        "",
    ]
    group_rows = [
        [g.name, str(g.units), f"{g.weight:g}%", "-" if g.expected is None else f"{g.expected:.1f}"]
        for g in results.groups
    ]
    out += _table(["group", "units", "weight", "expected"], group_rows, {1, 2, 3})
    srm = "-" if results.srm_p_value is None else f"{results.srm_p_value:.4g}"
    out += [f"SRM chi-square p = {srm} ({results.srm_status})", ""]

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
            m.name + _ROLE_MARK[m.role],
            m.kind,
            r.group,
            str(r.units),
            _num(r.mean),
            _num(r.control_mean),
            _num(r.delta),
            _interval(r.ci, "num"),
            _pct(r.relative),
            _interval(r.relative_ci, "pct"),
            "-" if r.ci_alpha is None else _level(r.ci_alpha),
            _p(r.p_value),
            _p(r.p_value_adjusted),
            r.outcome if r.note is None else f"{r.outcome} ({r.note})",
        ]
        for m in results.metrics
        for r in m.results
    ]
    if rows:
        out += _table(header, rows, {3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
        out.append("roles: * decision (Bonferroni), ~ secondary (Benjamini-Hochberg), ! guardrail")
    else:
        out.append("(no metrics to compare)")
    if results.guardrails:
        out += ["", "Guardrails:"]
        out += [f"  {g.metric}: {g.status} ({g.reason})" for g in results.guardrails]
    return "\n".join(out) + "\n"


# --- SVG chart -------------------------------------------------------------------------

_W, _LABEL_W, _VALUE_W, _ROW_H, _TOP, _BOTTOM = 680, 130, 190, 34, 26, 30


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
        f' role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="8" y="15" fill="#24292f"><tspan font-weight="bold">{escape(metric.name)}'
        f"{' (guardrail)' if metric.guardrail else ''}</tspan>: {escape(unit)} vs"
        f" {escape(results[0].vs if results else 'control')},"
        f" {_level(_chart_alpha(metric))} interval</text>",
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
        parts.append(
            f'<text x="{x(0) + 6:.1f}" y="{mid + 4:.1f}" fill="#57606a">not enough data</text>'
        )
        return parts
    lo, point, hi = span
    parts.append(
        f"<g><title>{escape(_row_title(r, relative))}</title>"
        f'<rect x="{x(lo):.1f}" y="{mid - 7:.1f}" width="{max(x(hi) - x(lo), 1.5):.1f}"'
        f' height="14" rx="3" fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>'
        f'<line x1="{x(point):.1f}" x2="{x(point):.1f}" y1="{mid - 9:.1f}" y2="{mid + 9:.1f}"'
        f' stroke="{colour}" stroke-width="3"/></g>'
    )
    value = _pct(point) if relative else f"{point:+.4g}"
    ci = _interval((lo, hi), "pct" if relative else "num")
    parts.append(
        f'<text x="{_W - _VALUE_W + 10}" y="{mid + 4:.1f}" fill="{colour}">'
        f"{escape(value)} {escape(ci)}</text>"
    )
    return parts


def _row_title(r: GroupResult, relative: bool) -> str:
    what = "lift" if relative else "delta"
    return (
        f"{r.group} vs {r.vs}: {what} {r.outcome}, p = {_p(r.p_value)},"
        f" adjusted p = {_p(r.p_value_adjusted)}"
    )


# --- HTML ------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#24292f;max-width:960px;margin:2em auto;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
.verdict{display:inline-block;padding:.25em .8em;border-radius:6px;color:#fff;font-weight:700;
letter-spacing:.05em}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .8em;border-bottom:1px solid #d0d7de;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
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
        f'<p class="muted">{escape(_method_line(results))}</p>',
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
    srm = "-" if results.srm_p_value is None else f"{results.srm_p_value:.4g}"
    return [
        "<h2>Units and sample ratio</h2>",
        f"<table><tr><th>group</th><th>units</th><th>weight</th><th>expected</th></tr>{rows}</table>",
        f'<p>SRM chi-square p = {srm}: <span class="{results.srm_status}">'
        f"{escape(results.srm_status)}</span> (warn below 0.01, block below 0.001)</p>",
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
            ("neutral", "not significant"),
        )
    )
    parts = ["<h2>Metrics</h2>", f'<p class="legend">{legend}</p>']
    for m in results.metrics:
        tags = f" · tags: {escape(', '.join(m.tags))}" if m.tags else ""
        family = f"{m.role} metric, {m.correction} over {m.family_size}"
        parts.append(
            f'<section class="metric"><h3>{escape(m.name)}</h3>'
            f'<p class="muted">{escape(m.kind)} of {escape(m.event)} · good direction:'
            f" {escape(m.direction)}{tags} · {escape(family)}</p>"
            f"{render_chart_svg(m)}{_html_metric_table(m)}</section>"
        )
    return parts


def _html_metric_table(m: MetricResult) -> str:
    rows = "".join(
        f"<tr><td>{escape(r.group)}</td><td class=n>{r.units}</td><td class=n>{_num(r.mean)}</td>"
        f"<td class=n>{_num(r.control_mean)}</td><td class=n>{_num(r.delta)}</td>"
        f"<td class=n>{escape(_interval(r.ci, 'num'))}</td><td class=n>{_pct(r.relative)}</td>"
        f"<td class=n>{escape(_interval(r.relative_ci, 'pct'))}</td>"
        f"<td class=n>{'-' if r.ci_alpha is None else _level(r.ci_alpha)}</td>"
        f"<td class=n>{escape(_p(r.p_value))}</td><td class=n>{escape(_p(r.p_value_adjusted))}</td>"
        f"<td>{r.outcome}{escape(f' ({r.note})' if r.note else '')}</td></tr>"
        for r in m.results
    )
    return (
        "<table><tr><th>group</th><th>units</th><th>mean</th><th>control</th><th>delta</th>"
        "<th>CI</th><th>lift</th><th>lift CI</th><th>level</th><th>p</th><th>adj. p</th>"
        "<th>result</th></tr>"
        f"{rows}</table>"
    )
