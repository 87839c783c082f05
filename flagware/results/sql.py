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
3. **Per group**: n, mean and the sum of squared deviations of the per-unit
   values, in two passes (mean first) so the variance does not cancel.
"""

from __future__ import annotations

import sqlite3

from flagware.events.model import CONFIG_EXPOSURE
from flagware.results.lock import read_started
from flagware.results.stats import Sample

__all__ = [
    "count_future",
    "group_samples",
    "load_unit_events",
    "load_units",
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


def load_unit_events(conn: sqlite3.Connection, unit: str, events: list[str], until: int) -> None:
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
        WHERE e.event IN ({marks}) AND f.unit = {unit} AND e.time >= f.t0 AND e.time <= ?
        GROUP BY e.event, f.unit
        """,
        [*events, until],
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


def group_samples(conn: sqlite3.Connection, kind: str, event: str) -> dict[str, Sample]:
    """n, mean and sum of squared deviations of the per-unit values, per group."""
    value = _VALUE[kind]
    if kind == "mean":
        join = "JOIN temp.fw_unit_events AS p ON p.unit = f.unit AND p.event = ? AND p.vn > 0"
    else:
        join = "LEFT JOIN temp.fw_unit_events AS p ON p.unit = f.unit AND p.event = ?"
    rows = conn.execute(
        f"""
        WITH v AS (SELECT f.grp AS grp, {value} AS v FROM temp.fw_first AS f {join}),
             m AS (SELECT grp, avg(v) AS mu FROM v GROUP BY grp)
        SELECT v.grp, count(*), m.mu, total((v.v - m.mu) * (v.v - m.mu))
        FROM v JOIN m ON m.grp = v.grp GROUP BY v.grp
        """,
        (event,),
    )
    return {str(g): Sample(int(n), float(mu), float(m2)) for g, n, mu, m2 in rows}


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
