"""Number and interval formatting shared by the text, HTML and chart renderers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from flagware.results.cuped import MIN_CONVERSION_GAIN
from flagware.results.model import GroupResult, MetricResult, Results

# Colours by outcome: significant in the good direction, in the bad one, neither.
COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "inconclusive": "#8c959f"}
VERDICT_COLOURS = {
    "blocked": "#cf222e",
    "ship": "#1a7f37",
    "no-ship": "#bc4c00",
    "inconclusive": "#57606a",
}


def num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


# A lift bound past +-1000% says only that the control's mean is barely above
# 0 at the comparison's level: "+154670.9%" read as a finding (a trial).
HUGE_LIFT = 10.0


def interval(ci: tuple[float, float] | None, fmt: str) -> str:
    if ci is None:
        return "-"
    if fmt == "pct":
        return f"[{_lift_bound(ci[0])}, {_lift_bound(ci[1])}]"
    return f"[{ci[0]:+.4g}, {ci[1]:+.4g}]"


def _lift_bound(x: float) -> str:
    if abs(x) > HUGE_LIFT:
        return f"{'>' if x > 0 else '<'}{math.copysign(HUGE_LIFT, x):+.0%}"
    return f"{x:+.1%}"


def pvalue(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else _p(p)


def _p(p: float) -> str:
    # Two significant digits under 0.001, the sample-ratio block's threshold:
    # 0.000134 read "0.0001 (failed)", as if it sat on the line (a
    # statistician's trial).
    return f"{p:.2g}" if p < 1e-3 else f"{p:.4f}"


def p_phrase(p: float, name: str = "p") -> str:
    """``p = 0.0123`` or ``p < 0.0001``: in a sentence, as the tables show it."""
    return f"{name} < 0.0001" if p < 1e-4 else f"{name} = {_p(p)}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def level(alpha: float) -> str:
    """1 - alpha as a percentage with as many decimals as it needs (95%, 98.75%)."""
    for digits in range(4):
        text = f"{1 - alpha:.{digits}%}"
        if abs(float(text[:-1]) / 100 - (1 - alpha)) < 1e-9:
            return text
    return f"{1 - alpha:.3%}"


ROLE_MARK = {"decision": " *", "secondary": " ~", "guardrail": " !"}


# The fixed-horizon estimators (results.inference), as the line names those used.
_FIXED_HORIZON = {
    "score": "score for conversions",
    "welch": "Welch t",
    "pooled": "pooled t where its error is larger than Welch's",
    "delta": "delta method for means and ratios",
    "delta-pooled": "pooled delta method where its error is larger than the unpooled",
}


def method_line(results: Results) -> str:
    """How the intervals were made, in one line (the README explains each part)."""
    used = {(r.method or "").removesuffix("+cuped") for m in results.metrics for r in m.results}
    named = [text for method, text in _FIXED_HORIZON.items() if method in used]
    # The lift's method was named only in the README (a statistician's trial).
    if results.sequential:
        tuning = results.sequential_tuning
        tuned = f", tightest at {tuning:,} units" if tuning else ""
        tests = (
            f"always-valid confidence sequences (sequential{tuned}), lifts by Fieller's interval"
        )
    elif named:
        ratio = ", the score ratio interval for conversions" if "score" in used else ""
        tests = f"fixed-horizon tests ({', '.join(named)}), lifts by Fieller's interval{ratio}"
    else:  # it listed every estimator, as if each had been used
        tests = "fixed-horizon tests (none made yet: each result says why)"
    data = [f"{results.crossover_units} crossover unit(s) left out"]
    if results.ungrouped_units:
        data.append(f"{results.ungrouped_units} unit(s) exposed outside the groups left out")
    if results.override_exposures:
        data.append(f"{results.override_exposures} override exposure(s) ignored")
    return (
        f"Intervals: {tests}; decision metrics Bonferroni-corrected, secondary"
        f" Benjamini-Hochberg, guardrails uncorrected; {', '.join(data)}"
    )


def window_line(results: Results) -> str | None:
    """Where a restart opened the analysis window, or None (every exposure counts)."""
    if results.window_start is None:
        return None
    start = datetime.fromtimestamp(results.window_start / 1000, tz=UTC)
    # Which of the two, and what it left out: "a restart = true or `flagware
    # reset`" said neither (an operator's trial).
    by = {"restart": "a restart (restart = true)", "reset": "`flagware reset`"}.get(
        results.window_opened_by or "", "a restart = true or `flagware reset`"
    )
    return (
        f"Analysis window from {start:%Y-%m-%d %H:%M:%S} UTC (7 s after {by}, once every"
        f" process serves the new definition): exposures before it are not counted"
        f" ({results.units_before_window} unit(s) in its groups then were not exposed again"
        " since; those that were count from their first exposure in the window)"
    )


def time_range(results: Results, sep: str = " · ") -> str:
    """The data the results read: how long, which exposures, up to when (text and HTML).

    The text said nothing of it, so a date-only ``--until 2026-12-02`` (its
    midnight, UTC) that left out that whole day went unnoticed.
    """
    if results.first_exposure is None:
        if results.ungrouped_units:  # exposures there were, none in a group
            return f"no unit in a group yet ({results.ungrouped_units} exposed outside the groups)"
        if results.until is not None and results.until < results.computed_at:  # --until:
            # as of then, not "yet" (a new user's trial read it as "no traffic")
            cut = datetime.fromtimestamp(results.until / 1000, tz=UTC)
            return f"no exposures counted up to {cut:%Y-%m-%d %H:%M:%S} UTC (--until)"
        return "no exposures counted yet"

    def when(ms: int, form: str = "%Y-%m-%d %H:%M") -> str:
        return f"{datetime.fromtimestamp(ms / 1000, tz=UTC):{form}}"

    # The cut to the second (a statistician's trial: --until 02:12:12.401 read
    # as 02:12); to the ms in the JSON.
    until = results.until if results.until is not None else results.computed_at
    up_to = when(until, "%Y-%m-%d %H:%M:%S")
    return sep.join(
        (
            f"running {days_running(results):g} days",
            f"first exposures from {when(results.first_exposure)} to"
            f" {when(results.last_exposure or results.first_exposure)} UTC",
            f"data until {up_to} UTC",
        )
    )


def relative_mde(mde: float | None, control_mean: float | None) -> float | None:
    if mde is None or not control_mean or control_mean <= 0:
        return None
    return mde / control_mean


def days_running(results: Results) -> float | None:
    """Days from the first counted exposure to the end of the window."""
    if results.first_exposure is None or results.until is None:
        return None
    return round((results.until - results.first_exposure) / 86_400_000, 2)


def metric_notes(m: MetricResult) -> list[str]:
    """CUPED's variance reduction, the cap and a missing lift interval, in words
    (text and HTML)."""
    notes = []
    if m.cuped:
        # Not "-0%": a reduction a hair below zero is none.
        reduction = ", ".join(f"{g} {_share(r)}" for g, r in m.variance_reduction.items())
        # A group whose metric never varies has nothing to reduce and no entry.
        notes.append(
            f"CUPED variance reduction: {reduction}; means and intervals are CUPED-adjusted"
            " (--no-cuped: as observed)"
            if reduction
            else "CUPED variance reduction: none (the metric does not vary)"
        )
    elif m.cuped_skipped is not None:
        notes.append(
            f"CUPED not applied: it would reduce the variance by {m.cuped_skipped:.1%},"
            f" under {MIN_CONVERSION_GAIN:.0%}, so the metric is analysed as 0/1 values"
        )
    if m.cap is not None and m.capped_units:
        notes.append(f"capped at {num(m.cap, 8)} ({m.capped_units} unit(s) above)")
    # Fieller's interval for a ratio is unbounded when the control's mean is
    # not clearly above 0: no lift interval, only the absolute one. "Clearly"
    # is at each comparison's own level, which the sequential method widens
    # on fewer units: one group may get a (huge) interval and another none.
    unbounded = [r.group for r in m.results if r.ci is not None and r.relative_ci is None]
    huge = [
        r.group
        for r in m.results
        if r.relative_ci is not None and max(map(abs, r.relative_ci)) > HUGE_LIFT
    ]
    if unbounded or huge:
        said = [f"no lift CI for {', '.join(unbounded)}"] if unbounded else []
        said += [f"a lift CI past {HUGE_LIFT:+.0%} for {', '.join(huge)}"] if huge else []
        notes.append(
            f"{' and '.join(said)}: the control mean is not clearly above 0 at"
            f" {'that comparison' if len(unbounded + huge) == 1 else 'each comparison'}'s"
            " level, so the relative effect is barely bounded or not at all; read the delta"
            " and its CI"
        )
    if m.cuped_without is not None:  # last: it changes nothing read above
        before = (
            f"no {m.event!r} events before the units' first exposure"
            if m.cuped_without == "none"
            else f"every unit has the same {m.event!r} value before its first exposure"
        )
        notes.append(f"no CUPED: {before} (cuped_days), nothing to adjust by")
    return notes


def _share(reduction: float) -> str:
    """A variance reduction: whole percent, one decimal under 1% (0.19% read
    "0%" while CUPED was applied); a hair below zero is none, not "-0%"."""
    if abs(reduction) < 0.0005:
        return "0%"
    return f"{reduction:.1%}" if abs(reduction) < 0.01 else f"{reduction:.0%}"


def planning_test(results: Results) -> str:
    """Which test the planning figures are for: they differ by about 2.4x."""
    return "the sequential test" if results.sequential else "the fixed-horizon test, read once"


def needed_in_all_groups(results: Results, r: GroupResult) -> int | None:
    """The experiment's units (every group, at the weights) for ``r.units_needed``
    in its two groups: a 50/25/25 split needs a third more than the pair."""
    weights = {g.name: g.weight for g in results.groups}
    pair = weights.get(r.group, 0.0) + weights.get(r.vs, 0.0)
    total = sum(weights.values())
    if r.units_needed is None or pair <= 0 or total <= 0:
        return None
    return math.ceil(r.units_needed * total / pair - 1e-9)  # 200.00000000003 is 200


def planning_rows(results: Results) -> list[list[str]]:
    """Per decision comparison: MDE now, units for the target effect (in the
    two groups, then in all), units still to come."""
    rows = []
    for m in results.metrics:
        if m.role != "decision":
            continue
        for r in m.results:
            now = r.units + r.control_units
            remaining = None if r.units_needed is None else max(0, r.units_needed - now)
            everyone = needed_in_all_groups(results, r)
            rows.append(
                [
                    m.name,
                    r.group,
                    num(r.mde),
                    pct(relative_mde(r.mde, r.control_mean)),
                    str(now),
                    "-" if r.units_needed is None else str(r.units_needed),
                    "-" if remaining is None else str(remaining),
                    "-" if everyone is None else str(everyone),
                ]
            )
    return rows


PLANNING_HEADER = ["metric", "group", "MDE", "MDE lift", "units", "needed", "to go", "all groups"]
