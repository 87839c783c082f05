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
seek per unit, no sort, no table access (or, for an event with fewer rows
than there are units, one walk along its rows probing each row's unit).
Other IDs are not indexed by unit: every event read is scanned once, in
storage order, and probed against the units, which costs a sort of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from flagware.events.store.reader import Dialect, Reader
from flagware.results.sql import named, unit_column

__all__ = ["EventRead", "EventTables", "load_unit_events"]

_COLUMNS = ("c", "s", "vn", "pc", "ps", "fut")


@dataclass(frozen=True)
class EventRead:
    """What the metrics need of one event: its lookback (ms, 0: none) and whether values."""

    lookback: int = 0
    valued: bool = False


@dataclass(frozen=True)
class EventTables:
    """Where :func:`load_unit_events` put each event's per-unit table."""

    names: dict[str, str]  # event -> its table
    units: int  # rows in every table: the experiment's units
    future: int  # events of those units stamped after now


def load_unit_events(
    conn: Reader, unit: str, units: int, reads: dict[str, EventRead], until: int, now: int
) -> EventTables:
    """Fill a table per event read for the ``units`` units of ``temp.fw_first``."""
    d = conn.dialect
    names = list(reads)
    tables = {event: f"fw_e{k}" for k, event in enumerate(names)}
    for table in tables.values():
        conn.execute(f"DROP TABLE IF EXISTS {d.temp}.{table}")
        conn.execute(
            f"CREATE TEMP TABLE {table} (grp TEXT NOT NULL, unit TEXT NOT NULL,"
            f" c INTEGER NOT NULL, s {d.real} NOT NULL, vn INTEGER NOT NULL,"
            f" pc INTEGER NOT NULL, ps {d.real} NOT NULL, fut INTEGER NOT NULL"
            + d.clustered("grp, unit")
        )
    into = "(grp, unit, " + ", ".join(_COLUMNS) + ")"
    indexed = [e for e in names if unit == "userID" and not e.startswith("statsig::")]
    for event in indexed:
        table = f"{d.temp}.{tables[event]}"
        if _fewer_rows_than(conn, event, units):
            # Sparse: walking the event's rows (probing each unit) beats a seek per unit.
            _walk_rows(conn, event, reads[event], table, until, now)
        else:
            conn.execute(
                f"INSERT INTO {table} {into} " + _seek_per_unit(d, event, reads[event], until, now),
                [event],
            )
    scanned = [e for e in names if e not in indexed]
    if scanned:
        _scan(conn, unit, {e: reads[e] for e in scanned}, tables, until, now)
    future = 0
    for table in tables.values():
        conn.analyze(table)
        (n,) = conn.execute(f"SELECT {d.total('fut')} FROM {d.temp}.{table}").fetchone()
        future += int(n)
    return EventTables(tables, units, future)


def _aggregates(d: Dialect, read: EventRead, until: int, now: int) -> list[str]:
    """The columns' aggregates over rows ``e`` in [t0 - lookback, ...) of unit ``f``.

    Times are integers from the analysis, written as literals so that each
    statement's parameters stay its event names. FILTER, not CASE, and the
    count after exposure by subtraction: each row is tested as few times as
    possible (both databases compute an aggregate written twice once).
    """
    before = "count(*) FILTER (WHERE e.time < f.t0)" if read.lookback else "0"
    late = f"count(*) FILTER (WHERE e.time > {int(until)})"
    future = late if until == now else f"count(*) FILTER (WHERE e.time > {int(now)})"
    after = f"e.time >= f.t0 AND e.time <= {int(until)}"
    zero = "0"
    return [
        f"count(e.time) - {before} - {late}",
        d.total_where("e.value_num", after) if read.valued else zero,
        f"count(e.value_num) FILTER (WHERE {after})" if read.valued else zero,
        before,
        d.total_where("e.value_num", "e.time < f.t0") if read.lookback and read.valued else zero,
        future,
    ]


def _seek_per_unit(d: Dialect, event: str, read: EventRead, until: int, now: int) -> str:
    """Units in order, each unit's events of ``event`` one run of events_by_user."""
    return f"""
        SELECT f.grp, f.unit, {", ".join(_aggregates(d, read, until, now))}
        FROM {d.temp}.fw_first AS f LEFT JOIN events AS e
          ON {named(event, "e.")} AND e.user_id = f.unit AND e.time >= f.t0 - {int(read.lookback)}
        GROUP BY f.unit, f.grp
    """


def _fewer_rows_than(conn: Reader, event: str, units: int) -> bool:
    """Whether ``event`` has fewer stored rows than there are units (counting at most that many)."""
    (n,) = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM events WHERE {named(event)} LIMIT ?) AS e",
        [event, units],
    ).fetchone()
    return int(n) < units


def _walk_rows(conn: Reader, event: str, read: EventRead, table: str, until: int, now: int) -> None:
    """The event's rows in (user, time) order, each probing its unit; then every unit's row."""
    d = conn.dialect
    conn.execute(f"DROP TABLE IF EXISTS {d.temp}.fw_sparse")
    conn.execute(
        f"CREATE TEMP TABLE fw_sparse (unit TEXT NOT NULL, c INTEGER, s {d.real},"
        f" vn INTEGER, pc INTEGER, ps {d.real}, fut INTEGER" + d.clustered("unit")
    )
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_sparse (unit, {", ".join(_COLUMNS)})
        SELECT e.user_id, {", ".join(_aggregates(d, read, until, now))}
        FROM events AS e CROSS JOIN {d.temp}.fw_first AS f
        WHERE {named(event, "e.")} AND f.unit = e.user_id AND e.time >= f.t0 - {int(read.lookback)}
        GROUP BY e.user_id
        """,
        [event],
    )
    _fill(conn, table, f"{d.temp}.fw_sparse AS a ON a.unit = f.unit", [])


def _fill(conn: Reader, table: str, join: str, args: list[object]) -> None:
    """Every unit's row of ``table`` from the rows ``a`` some units have (zeros for the rest)."""
    d = conn.dialect
    conn.execute(
        f"""
        INSERT INTO {table} (grp, unit, {", ".join(_COLUMNS)})
        SELECT f.grp, f.unit, {", ".join(f"coalesce(a.{c}, 0)" for c in _COLUMNS)}
        FROM {d.temp}.fw_first AS f LEFT JOIN {join}
        """,
        args,
    )


def _scan(
    conn: Reader,
    unit: str,
    reads: dict[str, EventRead],
    tables: dict[str, str],
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
        f" c INTEGER, s {d.real}, vn INTEGER, pc INTEGER, ps {d.real}, fut INTEGER"
        + d.clustered("event, unit")
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
    for event in reads:
        join = f"{d.temp}.fw_unit_events AS a ON a.event = ? AND a.unit = f.unit"
        _fill(conn, f"{d.temp}.{tables[event]}", join, [event])
