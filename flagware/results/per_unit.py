"""Per unit and event: what each unit of the experiment did before and after exposure.

One table per event read (``fw_e0``, ``fw_e1``...), a row per unit of
``fw_first`` (zeros without events), keyed by (group, unit) so per-group passes
read them in order (``moments``):

- after the unit's first exposure, up to ``until``: count ``c``, value sum
  ``s`` and valued count ``vn``;
- in the lookback before it (CUPED's covariate): count ``pc``, value sum ``ps``;
- stamped after ``now`` (clock skew, never counted): ``fut``.

Only what some metric reads is aggregated: values only for events a sum, mean
or summed ratio side reads, the lookback only where CUPED wants it.

Speed: when the unit is the userID (the default), each unit's events are one
run of the store's ``events_by_user`` index (event, user_id, time, value): a
seek per unit, no sort, no table access. Other IDs are not indexed by unit:
every event read is scanned once, in storage order, and probed against the
units, which costs a sort of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from flagware.events.store.reader import Dialect, Reader
from flagware.results.sql import count_rows, named, unit_column

__all__ = ["EventRead", "EventTables", "load_unit_events"]

_COLUMNS = ("c", "s", "vn", "pc", "ps", "fut")


@dataclass(frozen=True)
class EventRead:
    """What the metrics need of one event: its lookback (ms, 0: none) and whether values."""

    lookback: int = 0
    valued: bool = False


class EventTables:
    """Where :func:`load_unit_events` put each event's per-unit table."""

    def __init__(self, events: list[str], units: int, future: int) -> None:
        self.names = {event: f"fw_e{k}" for k, event in enumerate(events)}
        self.units = units  # rows in every table: the experiment's units
        self.future = future  # events of those units stamped after now


def load_unit_events(
    conn: Reader, unit: str, reads: dict[str, EventRead], until: int, now: int
) -> EventTables:
    d = conn.dialect
    names = list(reads)
    units = count_rows(conn, f"{d.temp}.fw_first")
    tables = EventTables(names, units, 0)
    for table in tables.names.values():
        conn.execute(f"DROP TABLE IF EXISTS {d.temp}.{table}")
        conn.execute(
            f"CREATE TEMP TABLE {table} (grp TEXT NOT NULL, unit TEXT NOT NULL,"
            f" c INTEGER NOT NULL, s {d.real} NOT NULL, vn INTEGER NOT NULL,"
            f" pc INTEGER NOT NULL, ps {d.real} NOT NULL, fut INTEGER NOT NULL,"
            " PRIMARY KEY (grp, unit))" + d.without_rowid
        )
    into = "(grp, unit, " + ", ".join(_COLUMNS) + ")"
    indexed = [e for e in names if unit == "userID" and not e.startswith("statsig::")]
    for event in indexed:
        conn.execute(
            f"INSERT INTO {d.temp}.{tables.names[event]} {into} "
            + _seek_per_unit(d, event, reads[event], until, now),
            [event],
        )
    scanned = [e for e in names if e not in indexed]
    if scanned:
        _scan(conn, unit, {e: reads[e] for e in scanned}, tables, until, now)
    future = 0
    for table in tables.names.values():
        conn.analyze(table)
        (n,) = conn.execute(f"SELECT {d.total('fut')} FROM {d.temp}.{table}").fetchone()
        future += int(n)
    tables.future = future
    return tables


def _aggregates(d: Dialect, read: EventRead, until: int, now: int) -> list[str]:
    """The columns' aggregates over rows ``e`` in [t0 - lookback, ...) of unit ``f``.

    Times are integers from the analysis, written as literals so that each
    statement's parameters stay its event names.
    """
    after = f"e.time >= f.t0 AND e.time <= {int(until)}"
    before = "e.time < f.t0"
    zero = "0"
    return [
        f"count(CASE WHEN {after} THEN 1 END)",
        d.total(f"CASE WHEN {after} THEN e.value_num END") if read.valued else zero,
        f"count(CASE WHEN {after} THEN e.value_num END)" if read.valued else zero,
        f"count(CASE WHEN {before} THEN 1 END)" if read.lookback else zero,
        d.total(f"CASE WHEN {before} THEN e.value_num END")
        if read.lookback and read.valued
        else zero,
        f"count(CASE WHEN e.time > {int(now)} THEN 1 END)",
    ]


def _seek_per_unit(d: Dialect, event: str, read: EventRead, until: int, now: int) -> str:
    """Units in order, each unit's events of ``event`` one run of events_by_user."""
    return f"""
        SELECT f.grp, f.unit, {", ".join(_aggregates(d, read, until, now))}
        FROM {d.temp}.fw_first AS f LEFT JOIN events AS e
          ON {named(event, "e.")} AND e.user_id = f.unit AND e.time >= f.t0 - {int(read.lookback)}
        GROUP BY f.unit, f.grp
    """


def _scan(
    conn: Reader,
    unit: str,
    reads: dict[str, EventRead],
    tables: EventTables,
    until: int,
    now: int,
) -> None:
    """One pass over the events read, in storage order, then one table per event.

    The name test leaves ``exposure`` out on purpose: no index is usable, so
    SQLite reads the table in order instead of jumping to each row from
    events_by_user, which is ordered by user.
    """
    d = conn.dialect
    full = EventRead(lookback=1, valued=True)  # every column; lookbacks come from fw_lookback
    aggregates = _aggregates(d, full, until, now)
    for name in ("fw_lookback", "fw_unit_events"):
        conn.execute(f"DROP TABLE IF EXISTS {d.temp}.{name}")
    conn.execute("CREATE TEMP TABLE fw_lookback (event TEXT PRIMARY KEY, ms BIGINT NOT NULL)")
    conn.executemany(
        f"INSERT INTO {d.temp}.fw_lookback VALUES (?, ?)",
        [(e, r.lookback) for e, r in reads.items()],
    )
    conn.execute(
        "CREATE TEMP TABLE fw_unit_events (event TEXT NOT NULL, unit TEXT NOT NULL,"
        f" c INTEGER, s {d.real}, vn INTEGER, pc INTEGER, ps {d.real}, fut INTEGER,"
        " PRIMARY KEY (event, unit))" + d.without_rowid
    )
    marks = ", ".join("?" * len(reads))
    # CROSS JOIN pins SQLite's loop order: the events outside, the units probed.
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_unit_events (event, unit, {", ".join(_COLUMNS)})
        SELECT e.event, f.unit, {", ".join(aggregates)}
        FROM events AS e CROSS JOIN {d.temp}.fw_first AS f CROSS JOIN {d.temp}.fw_lookback AS l
        WHERE e.event IN ({marks}) AND f.unit = {unit_column(unit, d)} AND l.event = e.event
          AND e.time >= f.t0 - l.ms
        GROUP BY e.event, f.unit
        """,
        list(reads),
    )
    columns = ", ".join(f"coalesce(a.{c}, 0)" for c in _COLUMNS)
    for event in reads:
        conn.execute(
            f"""
            INSERT INTO {d.temp}.{tables.names[event]} (grp, unit, {", ".join(_COLUMNS)})
            SELECT f.grp, f.unit, {columns} FROM {d.temp}.fw_first AS f
            LEFT JOIN {d.temp}.fw_unit_events AS a ON a.event = ? AND a.unit = f.unit
            """,
            [event],
        )
