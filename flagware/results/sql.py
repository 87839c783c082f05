"""The aggregation in SQL: who is in the experiment, and each metric's per-group summaries.

Everything that touches the event table is here, so the statistics never see a
row and a million events never become a million Python objects.

1. **Units** (``temp.fw_first``). A unit (the experiment's ``unit`` ID) is in
   the experiment when its FIRST counted exposure has a group; it stays there
   whatever later exposures say. Counted: inside the analysis window
   (``window_start`` after a restart, up to ``until``), and not forced by an
   override (``ruleID`` ``"override"``: test fixtures and QA cookies). Units whose
   first exposure has no group (unallocated, or failing the targeting gate) are
   not in the experiment. Units exposed to two or more groups (crossovers) are
   counted and left out.
2. **Per unit and metric event** (``temp.fw_unit_events``): count, value sum and
   valued count of the events at or after the unit's first exposure and not
   after ``until``.
3. **Per metric** (``temp.fw_values``): each unit's value y and its x, the
   CUPED covariate (the same measure in the ``cuped_days`` before the unit's
   first exposure; 0 without events there) or a ratio's denominator; sum and
   count metrics capped at a percentile of the experiment's units.
4. **Per group**: n, means, squared deviations and the co-deviation of y and
   x, in two passes (means first) so the variance does not cancel.
"""

from __future__ import annotations

import math
import sqlite3

from flagware.events.model import CONFIG_EXPOSURE
from flagware.results.lock import read_started
from flagware.results.stats import Moments
from flagware.spec import MetricSpec

__all__ = [
    "count_future",
    "load_unit_events",
    "load_units",
    "metric_events",
    "metric_moments",
    "newest_event",
    "non_numeric_events",
    "unit_column",
    "window_start",
]

_NOT_OVERRIDE = "coalesce(json_extract(e.metadata, '$.ruleID'), '') <> 'override'"


def unit_column(unit: str) -> str:
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


def window_start(conn: sqlite3.Connection, experiment: str) -> int | None:
    try:
        record = read_started(conn, experiment)
    except sqlite3.OperationalError:  # a store without the meta table: never restarted
        return None
    # Before any restart every exposure counts; the first record's time is when
    # the writer stored the first exposure, a little after it happened.
    if record is None or record.restarts == 0:
        return None
    return record.window_start


class Units:
    """What :func:`load_units` found: units per group and what was left out."""

    def __init__(
        self,
        per_group: dict[str, int],
        crossovers: int,
        overrides: int,
        first: int | None,
        last: int | None,
    ) -> None:
        self.per_group = per_group
        self.crossovers = crossovers
        self.overrides = overrides
        self.first = first
        self.last = last


def load_units(
    conn: sqlite3.Connection, experiment: str, unit: str, start: int, until: int
) -> Units:
    """Fill ``temp.fw_first`` (unit, group, first exposure time) and count what was left out."""
    conn.execute("DROP TABLE IF EXISTS temp.fw_first")
    conn.execute(
        "CREATE TEMP TABLE fw_first (unit TEXT PRIMARY KEY, grp TEXT NOT NULL, t0 INTEGER NOT NULL)"
        " WITHOUT ROWID"
    )
    window = "e.exposure = ? AND e.event = ? AND e.time >= ? AND e.time <= ?"
    args = (experiment, CONFIG_EXPOSURE, start, until)
    # A unit with exposures in two groups is a crossover: its outcome belongs
    # to neither group, so it is set aside first and counted.
    conn.execute("DROP TABLE IF EXISTS temp.fw_cross")
    conn.execute(
        f"""
        CREATE TEMP TABLE fw_cross AS
        SELECT {unit} AS unit FROM events AS e
        WHERE {window} AND {unit} IS NOT NULL AND e.group_name IS NOT NULL AND {_NOT_OVERRIDE}
        GROUP BY {unit} HAVING min(e.group_name) <> max(e.group_name)
        """,
        args,
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
            WHERE {window} AND {unit} IS NOT NULL AND {_NOT_OVERRIDE}
        )
        WHERE rn = 1 AND group_name IS NOT NULL AND unit NOT IN (SELECT unit FROM temp.fw_cross)
        """,
        args,
    )
    crossovers = conn.execute("SELECT count(*) FROM temp.fw_cross").fetchone()[0]
    overrides = conn.execute(
        f"SELECT count(*) FROM events AS e WHERE {window} AND NOT ({_NOT_OVERRIDE})", args
    ).fetchone()[0]
    per_group = {
        str(g): int(n) for g, n in conn.execute("SELECT grp, count(*) FROM fw_first GROUP BY grp")
    }
    first, last = conn.execute("SELECT min(t0), max(t0) FROM temp.fw_first").fetchone()
    return Units(per_group, int(crossovers), int(overrides), first, last)


def load_unit_events(
    conn: sqlite3.Connection, unit: str, lookbacks: dict[str, int], until: int
) -> None:
    """Fill ``temp.fw_unit_events``: per unit and event name, after and before the exposure.

    After (from the unit's first exposure to ``until``): count ``c``, value sum
    ``s`` and valued count ``vn``. Before (the ``lookbacks[event]`` ms up to
    the exposure, CUPED's covariate): count ``pc`` and value sum ``ps``.
    """
    conn.execute("DROP TABLE IF EXISTS temp.fw_unit_events")
    conn.execute(
        "CREATE TEMP TABLE fw_unit_events (event TEXT NOT NULL, unit TEXT NOT NULL,"
        " c INTEGER NOT NULL, s REAL NOT NULL, vn INTEGER NOT NULL,"
        " pc INTEGER NOT NULL, ps REAL NOT NULL, PRIMARY KEY (event, unit)) WITHOUT ROWID"
    )
    conn.execute("DROP TABLE IF EXISTS temp.fw_lookback")
    conn.execute("CREATE TEMP TABLE fw_lookback (event TEXT PRIMARY KEY, ms INTEGER NOT NULL)")
    conn.executemany("INSERT INTO temp.fw_lookback VALUES (?, ?)", lookbacks.items())
    if not lookbacks:
        return
    marks = ", ".join("?" * len(lookbacks))
    after = "e.time >= f.t0"
    # CROSS JOIN pins the loop order: scan the metric events once (through the
    # event-name index) and probe the small first-exposure table by unit,
    # rather than re-scanning events for every unit.
    conn.execute(
        f"""
        INSERT INTO temp.fw_unit_events (event, unit, c, s, vn, pc, ps)
        SELECT e.event, f.unit,
               count(CASE WHEN {after} THEN 1 END),
               total(CASE WHEN {after} THEN e.value_num END),
               count(CASE WHEN {after} THEN e.value_num END),
               count(CASE WHEN NOT {after} THEN 1 END),
               total(CASE WHEN NOT {after} THEN e.value_num END)
        FROM events AS e CROSS JOIN temp.fw_first AS f CROSS JOIN temp.fw_lookback AS l
        WHERE e.event IN ({marks}) AND f.unit = {unit} AND l.event = e.event
          AND e.time >= f.t0 - l.ms AND e.time <= ?
        GROUP BY e.event, f.unit
        """,
        [*lookbacks, until],
    )


# Per-unit values over fw_unit_events rows p (the metric's event) and q (a
# ratio's denominator event); a unit without a row has no events (0). y is
# the metric, x its CUPED covariate (the same measure before exposure) or,
# for ratios, the denominator.
_CONVERSION = "CASE WHEN coalesce({r}.{c}, 0) > 0 THEN 1.0 ELSE 0.0 END"
_AGGREGATE = {"count": "coalesce({r}.c, 0)", "sum": "coalesce({r}.s, 0.0)"}
_VALUES = {
    "conversion": (_CONVERSION.format(r="p", c="c"), _CONVERSION.format(r="p", c="pc")),
    "count": ("coalesce(p.c, 0)", "coalesce(p.pc, 0)"),
    "sum": ("coalesce(p.s, 0.0)", "coalesce(p.ps, 0.0)"),
    # The mean value per event: sum of values over the number of valued events,
    # a ratio over every unit (not a mean over the units that had an event).
    "mean": ("coalesce(p.s, 0.0)", "coalesce(p.vn, 0)"),
}


def metric_events(metric: MetricSpec) -> tuple[str, str]:
    """The events a metric reads: (its event or numerator's, the denominator's or the same)."""
    if metric.numerator and metric.denominator:
        return metric.numerator.event, metric.denominator.event
    return metric.event, metric.event


def metric_moments(
    conn: sqlite3.Connection, metric: MetricSpec, cap_percentile: float = 100.0
) -> tuple[dict[str, Moments], float | None, int]:
    """Per group moments of (y, x), and the cap applied to y (None: none) with units capped."""
    if metric.numerator and metric.denominator:
        y = _AGGREGATE[metric.numerator.aggregate].format(r="p")
        x = _AGGREGATE[metric.denominator.aggregate].format(r="q")
    else:
        y, x = _VALUES[metric.kind]
    first, second = metric_events(metric)
    conn.execute("DROP TABLE IF EXISTS temp.fw_values")
    conn.execute(
        f"""
        CREATE TEMP TABLE fw_values AS
        SELECT f.grp AS grp, {y} AS y, {x} AS x FROM temp.fw_first AS f
        LEFT JOIN temp.fw_unit_events AS p ON p.unit = f.unit AND p.event = ?
        LEFT JOIN temp.fw_unit_events AS q ON q.unit = f.unit AND q.event = ?
        """,
        (first, second),
    )
    cap, capped = None, 0
    if cap_percentile < 100.0:
        cap = _percentile(conn, "y", cap_percentile)
        x_cap = _percentile(conn, "x", cap_percentile)
        if cap is not None and x_cap is not None:
            (capped,) = conn.execute(
                "SELECT count(*) FROM temp.fw_values WHERE y > ?", (cap,)
            ).fetchone()
            conn.execute("UPDATE temp.fw_values SET y = min(y, ?), x = min(x, ?)", (cap, x_cap))
    rows = conn.execute(
        """
        WITH m AS (SELECT grp, avg(y) AS my, avg(x) AS mx FROM temp.fw_values GROUP BY grp)
        SELECT v.grp, count(*), m.my, total((v.y - m.my) * (v.y - m.my)),
               m.mx, total((v.x - m.mx) * (v.x - m.mx)), total((v.y - m.my) * (v.x - m.mx))
        FROM temp.fw_values AS v JOIN m ON m.grp = v.grp GROUP BY v.grp
        """
    )
    moments = {
        str(g): Moments(int(n), float(my), float(m2y), float(mx), float(m2x), float(cxy))
        for g, n, my, m2y, mx, m2x, cxy in rows
    }
    return moments, cap, int(capped)


def _percentile(conn: sqlite3.Connection, column: str, percentile: float) -> float | None:
    """A fw_values column's percentile over all units, by nearest rank.

    The smallest value with at least ``percentile`` % of the units at or below
    it (numpy's ``inverted_cdf``): below 1,000 units the 99.9th percentile is
    the maximum, so small experiments are never trimmed.
    """
    n = int(conn.execute("SELECT count(*) FROM temp.fw_values").fetchone()[0])
    if not n:
        return None
    rank = max(math.ceil(percentile / 100.0 * n - 1e-9), 1)
    row = conn.execute(
        f"SELECT {column} FROM temp.fw_values ORDER BY {column} LIMIT 1 OFFSET ?", (rank - 1,)
    ).fetchone()
    return float(row[0])


def newest_event(conn: sqlite3.Connection, event: str, until: int) -> int | None:
    row = conn.execute(
        "SELECT max(time) FROM events WHERE event = ? AND time <= ?", (event, until)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def count_future(conn: sqlite3.Connection, experiment: str, events: list[str], now: int) -> int:
    """Exposures of the experiment and metric events stamped after ``now`` (clock skew)."""
    # Two queries, so each can use its index (by exposure, by event name).
    (exposures,) = conn.execute(
        "SELECT count(*) FROM events WHERE exposure = ? AND time > ?", (experiment, now)
    ).fetchone()
    marks = ", ".join("?" * len(events))
    metric_events = 0
    if events:
        (metric_events,) = conn.execute(
            f"SELECT count(*) FROM events WHERE event IN ({marks}) AND time > ?", [*events, now]
        ).fetchone()
    return int(exposures) + int(metric_events)


def non_numeric_events(conn: sqlite3.Connection, event: str) -> int:
    """Stored events named ``event`` whose value is not a number (sums count them as 0)."""
    row = conn.execute(
        """
        SELECT count(*) FROM events AS e
        WHERE e.event = ? AND e.value IS NOT NULL AND e.value_num IS NULL
        """,
        (event,),
    ).fetchone()
    return int(row[0])
