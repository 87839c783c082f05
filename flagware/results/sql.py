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

The same SQL runs on SQLite and PostgreSQL through the store's ``Reader``
(``?`` placeholders); the few fragments that differ come from its ``Dialect``.
"""

from __future__ import annotations

from flagware.events.model import CONFIG_EXPOSURE
from flagware.events.store.reader import Dialect, Reader, database_errors
from flagware.results.lock import StartRecord, meta_key
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


def _not_override(d: Dialect) -> str:
    return f"coalesce({d.json_text('e.metadata', 'ruleID')}, '') <> 'override'"


def unit_column(unit: str, dialect: Dialect) -> str:
    """The SQL expression (over table alias ``e``) that yields the unit ID."""
    if unit == "userID":
        return "e.user_id"
    if unit == "stableID":
        return "e.stable_id"
    # Custom ID types live only in the stored wire payload (quoted by json_text).
    return dialect.json_text("e.payload", "user", "customIDs", unit)


def window_start(conn: Reader, experiment: str) -> int | None:
    try:
        row = conn.execute(
            "SELECT value FROM meta WHERE key = ?", (meta_key(experiment),)
        ).fetchone()
    except database_errors():  # a store without the meta table: never restarted
        return None
    record = None if row is None else StartRecord.from_json(str(row[0]))
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


def load_units(conn: Reader, experiment: str, unit: str, start: int, until: int) -> Units:
    """Fill ``temp.fw_first`` (unit, group, first exposure time) and count what was left out."""
    d = conn.dialect
    not_override = _not_override(d)
    conn.execute(f"DROP TABLE IF EXISTS {d.temp}.fw_first")
    conn.execute(
        "CREATE TEMP TABLE fw_first (unit TEXT PRIMARY KEY, grp TEXT NOT NULL, t0 BIGINT NOT NULL)"
        + d.without_rowid
    )
    window = "e.exposure = ? AND e.event = ? AND e.time >= ? AND e.time <= ?"
    args = (experiment, CONFIG_EXPOSURE, start, until)
    # A unit with exposures in two groups is a crossover: its outcome belongs
    # to neither group, so it is set aside first and counted.
    # (Created, then filled: PostgreSQL takes no parameters in CREATE TABLE AS.)
    conn.execute(f"DROP TABLE IF EXISTS {d.temp}.fw_cross")
    conn.execute("CREATE TEMP TABLE fw_cross (unit TEXT PRIMARY KEY)" + d.without_rowid)
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_cross (unit)
        SELECT {unit} AS unit FROM events AS e
        WHERE {window} AND {unit} IS NOT NULL AND e.group_name IS NOT NULL AND {not_override}
        GROUP BY {unit} HAVING min(e.group_name) <> max(e.group_name)
        """,
        args,
    )
    # ROW_NUMBER picks each unit's first exposure (ties broken by storage order);
    # only then are units without a group dropped, so they stay out.
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_first (unit, grp, t0)
        SELECT unit, group_name, time FROM (
            SELECT {unit} AS unit, e.group_name, e.time,
                   ROW_NUMBER() OVER (PARTITION BY {unit} ORDER BY e.time, e.id) AS rn
            FROM events AS e
            WHERE {window} AND {unit} IS NOT NULL AND {not_override}
        ) AS ranked
        WHERE rn = 1 AND group_name IS NOT NULL AND unit NOT IN (SELECT unit FROM {d.temp}.fw_cross)
        """,
        args,
    )
    conn.analyze("fw_first")
    crossovers = conn.execute(f"SELECT count(*) FROM {d.temp}.fw_cross").fetchone()[0]
    overrides = conn.execute(
        f"SELECT count(*) FROM events AS e WHERE {window} AND NOT ({not_override})", args
    ).fetchone()[0]
    per_group = {
        str(g): int(n)
        for g, n in conn.execute(f"SELECT grp, count(*) FROM {d.temp}.fw_first GROUP BY grp")
    }
    first, last = conn.execute(f"SELECT min(t0), max(t0) FROM {d.temp}.fw_first").fetchone()
    return Units(per_group, int(crossovers), int(overrides), first, last)


def load_unit_events(conn: Reader, unit: str, events: list[str], until: int) -> None:
    """Fill ``temp.fw_unit_events``: per unit and event name, count, value sum and valued count."""
    d = conn.dialect
    conn.execute(f"DROP TABLE IF EXISTS {d.temp}.fw_unit_events")
    conn.execute(
        "CREATE TEMP TABLE fw_unit_events (event TEXT NOT NULL, unit TEXT NOT NULL,"
        f" c INTEGER NOT NULL, s {d.real} NOT NULL, vn INTEGER NOT NULL,"
        " PRIMARY KEY (event, unit))" + d.without_rowid
    )
    if not events:
        return
    marks = ", ".join("?" * len(events))
    # CROSS JOIN pins the loop order: scan the metric events once (through the
    # event-name index) and probe the small first-exposure table by unit,
    # rather than re-scanning events for every unit.
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_unit_events (event, unit, c, s, vn)
        SELECT e.event, f.unit, count(*), {d.total("e.value_num")}, count(e.value_num)
        FROM events AS e CROSS JOIN {d.temp}.fw_first AS f
        WHERE e.event IN ({marks}) AND f.unit = {unit} AND e.time >= f.t0 AND e.time <= ?
        GROUP BY e.event, f.unit
        """,
        [*events, until],
    )
    conn.analyze("fw_unit_events")


# Per-unit value of each metric kind, over fw_unit_events aliased p. Units
# without a row get 0 (LEFT JOIN) except for `mean`, whose sample is only the
# units with at least one valued event (inner join, vn > 0).
_VALUE = {
    "conversion": "CASE WHEN p.c > 0 THEN 1.0 ELSE 0.0 END",
    "count": "coalesce(p.c, 0)",
    "sum": "coalesce(p.s, 0.0)",
    "mean": "p.s / p.vn",
}


def group_samples(conn: Reader, kind: str, event: str) -> dict[str, Sample]:
    """n, mean and sum of squared deviations of the per-unit values, per group."""
    d = conn.dialect
    # Double precision whatever the kind: PostgreSQL would otherwise average
    # integers and decimal literals in exact (slow) numeric arithmetic.
    value = f"CAST({_VALUE[kind]} AS {d.real})"
    if kind == "mean":
        join = f"JOIN {d.temp}.fw_unit_events AS p ON p.unit = f.unit AND p.event = ? AND p.vn > 0"
    else:
        join = f"LEFT JOIN {d.temp}.fw_unit_events AS p ON p.unit = f.unit AND p.event = ?"
    rows = conn.execute(
        f"""
        WITH v AS (SELECT f.grp AS grp, {value} AS v FROM {d.temp}.fw_first AS f {join}),
             m AS (SELECT grp, avg(v) AS mu FROM v GROUP BY grp)
        SELECT v.grp, count(*), m.mu, {d.total("(v.v - m.mu) * (v.v - m.mu)")}
        FROM v JOIN m ON m.grp = v.grp GROUP BY v.grp, m.mu
        """,
        (event,),
    )
    return {str(g): Sample(int(n), float(mu), float(m2)) for g, n, mu, m2 in rows}


def newest_event(conn: Reader, event: str, until: int) -> int | None:
    row = conn.execute(
        "SELECT max(time) FROM events WHERE event = ? AND time <= ?", (event, until)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def count_future(conn: Reader, experiment: str, events: list[str], now: int) -> int:
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


def non_numeric_events(conn: Reader, event: str) -> int:
    """Stored events named ``event`` whose value is not a number (sums count them as 0)."""
    row = conn.execute(
        """
        SELECT count(*) FROM events AS e
        WHERE e.event = ? AND e.value IS NOT NULL AND e.value_num IS NULL
        """,
        (event,),
    ).fetchone()
    return int(row[0])
