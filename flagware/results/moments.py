"""Each metric's per-group moments, from the per-unit event tables of ``sql``.

A metric's per-unit value y and its x (the CUPED covariate: the same measure
in the ``cuped_days`` before the unit's first exposure, 0 without events there;
or a ratio's denominator) are expressions over one or two of those tables,
never materialised. Per group: n, the means, the squared deviations and the
co-deviation, in two passes (means first) so the variance does not cancel.
Sum and count metrics are capped at a percentile of the experiment's units,
found from the top of the distribution only (a bounded sort).
"""

from __future__ import annotations

import math

from flagware.events.store.reader import Reader
from flagware.results.per_unit import EventTables
from flagware.results.stats import Moments
from flagware.spec import MetricSpec

__all__ = ["metric_events", "metric_moments"]

# Over table rows p (the metric's event) and q (a ratio's denominator event).
_CONVERSION = "CASE WHEN {r}.{c} > 0 THEN 1 ELSE 0 END"
_AGGREGATE = {"count": "{r}.c", "sum": "{r}.s"}
_VALUES = {
    "conversion": (_CONVERSION.format(r="p", c="c"), _CONVERSION.format(r="p", c="pc")),
    "count": ("p.c", "p.pc"),
    "sum": ("p.s", "p.ps"),
    # The mean value per event: sum of values over the number of valued events,
    # analysed as a ratio of per-unit totals over every unit (the delta method:
    # a unit's several events are not independent), not as a mean over events.
    # The quantity is conditional on the event; `sum` is the per-unit value.
    "mean": ("p.s", "p.vn"),
}


def metric_events(metric: MetricSpec) -> tuple[str, str]:
    """The events a metric reads: (its event or numerator's, the denominator's or the same)."""
    if metric.numerator and metric.denominator:
        return metric.numerator.event, metric.denominator.event
    return metric.event, metric.event


def metric_moments(
    conn: Reader, tables: EventTables, metric: MetricSpec, cap_percentile: float = 100.0
) -> tuple[dict[str, Moments], float | None, int]:
    """Per group moments of (y, x), and the cap applied to y (None: none) with units capped."""
    first, second = metric_events(metric)
    d = conn.dialect
    p, q = tables.names[first], tables.names[second]
    denominator = "q" if q != p else "p"
    if metric.numerator and metric.denominator:
        y = _AGGREGATE[metric.numerator.aggregate].format(r="p")
        x = _AGGREGATE[metric.denominator.aggregate].format(r=denominator)
    else:
        y, x = _VALUES[metric.kind]
    # Double precision throughout: PostgreSQL would sum integers as exact (slow) numerics.
    y, x = f"CAST({y} AS {d.real})", f"CAST({x} AS {d.real})"
    source = f"{d.temp}.{p} AS p"
    if denominator == "q":
        source += f" JOIN {d.temp}.{q} AS q ON q.grp = p.grp AND q.unit = p.unit"

    cap = x_cap = None
    capped = 0
    if cap_percentile < 100.0 and tables.units:
        cap, capped = _top(conn, y, source, cap_percentile, tables.units)
        x_cap, _ = _top(conn, x, source, cap_percentile, tables.units)
    caps: list[object] = []
    if cap is not None and x_cap is not None:
        y, x = d.least(y, "?"), d.least(x, "?")
        caps = [cap, x_cap]
    values = f"SELECT p.grp AS grp, {y} AS y, {x} AS x FROM {source}"

    sums = conn.execute(
        f"SELECT v.grp, count(*), {d.total('v.y')}, {d.total('v.x')},"
        " count(CASE WHEN v.x > 0 THEN 1 END)"
        f" FROM ({values}) AS v GROUP BY v.grp",
        caps,
    ).fetchall()
    moments = {}
    for group, n, sum_y, sum_x, n_x in sums:
        my, mx = float(sum_y) / n, float(sum_x) / n
        # One group's rows at a time: they are one run of the table's (grp, unit) key.
        m2y, m2x, cxy = conn.execute(
            f"SELECT {d.total('(v.y - ?) * (v.y - ?)')}, {d.total('(v.x - ?) * (v.x - ?)')},"
            f" {d.total('(v.y - ?) * (v.x - ?)')} FROM ({values} WHERE p.grp = ?) AS v",
            [my, my, mx, mx, my, mx, *caps, group],
        ).fetchone()
        moments[str(group)] = Moments(int(n), my, float(m2y), mx, float(m2x), float(cxy), int(n_x))
    return moments, cap, capped


def _top(conn: Reader, expr: str, source: str, percentile: float, n: int) -> tuple[float, int]:
    """``expr``'s percentile over all units by nearest rank, and how many units exceed it.

    The smallest value with at least ``percentile`` % of the units at or below
    it (numpy's ``inverted_cdf``): below 1,000 units the 99.9th percentile is
    the maximum, so small experiments are never trimmed. Only the values from
    that rank up are read (``n - rank + 1`` of them, a bounded sort).
    """
    rank = max(math.ceil(percentile / 100.0 * n - 1e-9), 1)
    top = [
        float(v)
        for (v,) in conn.execute(
            f"SELECT {expr} AS v FROM {source} ORDER BY v DESC LIMIT ?", [n - rank + 1]
        )
    ]
    value = top[-1]
    return value, sum(1 for v in top if v > value)
