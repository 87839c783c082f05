"""The aggregation in SQL, part one: who is in the experiment, and the store-wide checks.

Everything that touches the event table is here and in ``per_unit`` (each
unit's events) and ``moments`` (each metric's per-group summaries), so the
statistics never see a row and a million events never become a million Python
objects. The same SQL runs on SQLite and PostgreSQL through the store's
``Reader`` (``?`` placeholders); the few fragments that differ come from its
``Dialect``.

**Units** (``temp.fw_first``). A unit (the experiment's ``unit`` ID) is in the
experiment when its FIRST counted exposure has a group; it stays there whatever
later exposures say. Counted: inside the analysis window (``window_start``
after a restart, up to ``until``), and not forced by an override (``ruleID``
``"override"``: test fixtures and QA cookies). Units whose first exposure has
no group (unallocated, or failing the targeting gate) are not in the
experiment. Units exposed to two or more groups (crossovers) are counted and
left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flagware.events.model import CONFIG_EXPOSURE, GATE_EXPOSURE
from flagware.events.store.reader import Dialect, Reader, database_errors
from flagware.results.records import StartRecord, stored_values
from flagware.spec import did_you_mean

__all__ = [
    "SETTLE_MS",
    "Units",
    "before_window",
    "future_exposures",
    "load_units",
    "named",
    "never_stored",
    "newest_event",
    "non_numeric_events",
    "shared_browsers",
    "start_record",
    "stored_names",
    "unit_column",
    "window_opened",
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


def start_record(conn: Reader, experiment: str) -> tuple[StartRecord | None, int | None]:
    """What the experiment's first exposure recorded (``results.lock``), if any,
    and when ``flagware reset`` last forgot it (ms), if ever."""
    try:
        record, reset, shipped = stored_values(conn.execute, experiment)
    except database_errors():  # a store without the meta table: never started
        return None, None
    return StartRecord.stored(record, reset, shipped), None if reset is None else int(reset)


def started_experiments(conn: Reader) -> list[str]:
    """The experiments with a start record, whether or not the spec still has them."""
    # The store's own query, as `flagware reset` lists them: written here with
    # a literal %, it failed under psycopg and listed none on PostgreSQL.
    try:
        rows = conn.run("started_experiments")
    except database_errors():  # a store without the meta table: none started
        return []
    return [str(name) for (name,) in rows]


#: How long after a restart or a ``flagware reset`` the analysis window opens.
#: Until each process looks at its spec again it serves the definition it had,
#: and its exposures, counted in the new window, failed the sample-ratio check
#: with a group the spec no longer had (a new user's trial: 21 of 51 units, a
#: reset under 20 new visitors a second). A process takes a file's edit at its
#: first request a second after its last look (``RELOAD_CHECK_INTERVAL``) and
#: looks again at an edit it refused 5 s after (``REFUSED_RETRY_INTERVAL``), so
#: 7 s is past both: a few seconds of an experiment's data, for none mixed in.
SETTLE_MS = 7_000


def window_opened(record: StartRecord | None, reset_at: int | None = None) -> int | None:
    """When a restart or a ``flagware reset`` opened the analysis window: None
    (every exposure counts) until one does. It counts from :data:`SETTLE_MS` on.

    The first record's time is when the writer stored the first exposure, a
    little after it happened, so it is no window start; a reset's own time is
    (it counted every exposure from before the reset too, with the groups and
    weights the reset was meant to forget). Between a reset and the next
    exposure there is no record, and the window opens at the reset all the
    same: results read then mixed every window and tested them against the
    new spec (a new user's trial: a sample-ratio block, 50/50 units against
    70/30 weights).
    """
    if record is not None and record.restarts:
        return record.window_start
    return record.reset_at if record is not None else reset_at


class Units:
    """What :func:`load_units` found: units per group and what was left out."""

    def __init__(
        self,
        per_group: dict[str, int],
        crossovers: int,
        overrides: int,
        first: int | None,
        last: int | None,
        ungrouped: int = 0,
        without_unit: int = 0,
        left: int = 0,
        left_served_none: int = 0,
        left_forced: int = 0,
    ) -> None:
        self.per_group = per_group
        self.crossovers = crossovers
        self.ungrouped = ungrouped  # first exposed with no group: not allocated, or targeted out
        self.without_unit = without_unit  # exposures without the unit's ID: no unit to count
        self.left = left  # in a group, later served none or forced into another (an override)
        self.left_served_none = left_served_none  # of those, served none (targeted out)
        self.left_forced = left_forced  # of those, forced into another group
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
        + d.without_rowid  # both databases: per-unit loops run in its key order
    )
    window = "e.exposure = ? AND e.event = ? AND e.time >= ? AND e.time <= ?"
    # The window's exposures, read once (with the one JSON check), in unit
    # then time order, so what follows needs no sort. (Created, then filled:
    # PostgreSQL takes no parameters in CREATE TABLE AS.)
    conn.execute(f"DROP TABLE IF EXISTS {d.temp}.fw_exposures")
    conn.execute(
        "CREATE TEMP TABLE fw_exposures (unit TEXT NOT NULL, t BIGINT NOT NULL, id BIGINT NOT NULL,"
        " grp TEXT, forced INTEGER NOT NULL, browser TEXT" + d.clustered("unit, t, id")
    )
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_exposures (unit, t, id, grp, forced, browser)
        SELECT {unit}, e.time, e.id, e.group_name, CASE WHEN {not_override} THEN 0 ELSE 1 END,
               e.stable_id
        FROM events AS e WHERE {window} AND {unit} IS NOT NULL
        """,
        (experiment, CONFIG_EXPOSURE, start, until),
    )
    exposures = f"{d.temp}.fw_exposures"
    # A unit with exposures in two groups is a crossover: its outcome belongs
    # to neither group, so it is set aside first and counted.
    conn.execute(f"DROP TABLE IF EXISTS {d.temp}.fw_cross")
    conn.execute("CREATE TEMP TABLE fw_cross (unit TEXT NOT NULL" + d.clustered("unit"))
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_cross (unit)
        SELECT unit FROM {exposures} WHERE forced = 0 AND grp IS NOT NULL
        GROUP BY unit HAVING min(grp) <> max(grp)
        """
    )
    # ROW_NUMBER picks each unit's first exposure (ties broken by storage order);
    # only then are units without a group dropped, so they stay out.
    conn.execute(
        f"""
        INSERT INTO {d.temp}.fw_first (unit, grp, t0)
        SELECT unit, grp, t FROM (
            SELECT unit, grp, t, ROW_NUMBER() OVER (PARTITION BY unit ORDER BY t, id) AS rn
            FROM {exposures} WHERE forced = 0
        ) AS ranked
        WHERE rn = 1 AND grp IS NOT NULL AND unit NOT IN (SELECT unit FROM {d.temp}.fw_cross)
        """
    )
    conn.analyze("fw_first")
    crossovers = _count_rows(conn, f"{d.temp}.fw_cross")
    (overrides,) = conn.execute(f"SELECT count(*) FROM {exposures} WHERE forced = 1").fetchone()
    per_group = {
        str(g): int(n)
        for g, n in conn.execute(f"SELECT grp, count(*) FROM {d.temp}.fw_first GROUP BY grp")
    }
    first, last = conn.execute(f"SELECT min(t0), max(t0) FROM {d.temp}.fw_first").fetchone()
    # Every other unit's first exposure had no group (not allocated, targeted
    # out): counted so that results say why, when none is in a group (a trial's
    # spec targeted every visitor out, and results read "no units exposed to
    # the experiment yet" over 50 stored exposures).
    (exposed,) = conn.execute(
        f"SELECT count(DISTINCT unit) FROM {exposures} WHERE forced = 0"
    ).fetchone()
    ungrouped = int(exposed) - sum(per_group.values()) - int(crossovers)
    # Exposures without the unit's ID (a companyID experiment read for a
    # request whose company was unknown): counted, not silently left out (a
    # new user's trial). Every exposure in the window, less those read above.
    (window_total,) = conn.execute(
        f"SELECT count(*) FROM events AS e WHERE {window}",
        (experiment, CONFIG_EXPOSURE, start, until),
    ).fetchone()
    without_unit = int(window_total) - _count_rows(conn, exposures)
    # Units in a group later served none (a narrowed targeting gate took them
    # out) or forced into another (an ID override added while it ran): still
    # counted in their group, having seen something else since (trials).
    # Both counted, and each way (a unit may have done both): a statistician's
    # trial could not tell which of the two the warning meant.
    left, served_none, forced = conn.execute(
        f"""
        SELECT count(DISTINCT f.unit),
               count(DISTINCT CASE WHEN x.forced = 0 THEN f.unit END),
               count(DISTINCT CASE WHEN x.forced = 1 THEN f.unit END)
        FROM {d.temp}.fw_first AS f
        JOIN {exposures} AS x ON x.unit = f.unit
        WHERE x.t > f.t0 AND (
            (x.forced = 0 AND x.grp IS NULL)
            OR (x.forced = 1 AND x.grp IS NOT NULL AND x.grp <> f.grp)
        )
        """
    ).fetchone()
    return Units(
        per_group,
        int(crossovers),
        int(overrides),
        first,
        last,
        int(ungrouped),
        without_unit,
        int(left),
        int(served_none),
        int(forced),
    )


def shared_browsers(conn: Reader) -> tuple[int, int]:
    """(browsers exposed under two or more units, of those in two or more groups),
    from the exposures :func:`load_units` read.

    A login changes the userID: in a userID experiment the browser is then
    two units, often in two groups (a new user's trial: 939 of 3,000
    visitors, half in both groups), and no crossover check sees it, since
    each userID stayed in its group. Counted from the stableID every
    exposure carries, so results can say so.
    """
    row = conn.execute(
        f"""
        SELECT count(*), coalesce(sum(CASE WHEN lo <> hi THEN 1 ELSE 0 END), 0) FROM (
            SELECT min(grp) AS lo, max(grp) AS hi FROM {conn.dialect.temp}.fw_exposures
            WHERE forced = 0 AND grp IS NOT NULL AND browser IS NOT NULL
            GROUP BY browser HAVING count(DISTINCT unit) > 1
        ) AS shared
        """
    ).fetchone()
    return int(row[0]), int(row[1])


def _count_rows(conn: Reader, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def named(event: str, e: str = "") -> str:
    """Rows of the event named by the next parameter, through ``events_by_user`` where it can.

    Only exposures have ``exposure`` set, and their names are ``statsig::...``;
    saying so for every other name lets the store use its index of metric events.
    """
    return f"{e}event = ?" + ("" if event.startswith("statsig::") else f" AND {e}exposure IS NULL")


def never_stored(
    conn: Reader, events: Iterable[str], names: Sequence[str] | None = None
) -> dict[str, str]:
    """Of ``events``, those the store has never held, each with a did-you-mean
    among the names it holds (a misspelled metric event reads as all zeros).

    Both reads go through ``events_by_user`` (metric events only): one seek a
    name, and the stored names by a skip scan, a seek a distinct name (a
    plain DISTINCT read every row: 0.8 s on 2 million events). A caller that
    has read ``names`` already passes them, and no seek is made. Exposures'
    names are Statsig's fixed two, checked by name, not in the store (no
    index finds one by its name).
    """
    exposures = (GATE_EXPOSURE, CONFIG_EXPOSURE)

    def held(e: str) -> bool:
        if e.startswith("statsig::"):
            return False
        if names is not None:
            return e in names
        query = f"SELECT 1 FROM events WHERE {named(e)} LIMIT 1"
        return conn.execute(query, (e,)).fetchone() is not None

    missing = [e for e in dict.fromkeys(events) if e not in exposures and not held(e)]
    if not missing:
        return {}
    known = stored_names(conn) if names is None else names
    # Only a near miss: an event not logged yet was "did you mean" another
    # real event ('clicked_signup' for 'visited_signup', a new user's trial).
    return {e: did_you_mean(e, [*known, *exposures], cutoff=0.8) for e in missing}


def stored_names(conn: Reader) -> list[str]:
    """The names of the metric events the store holds (exposures aside)."""
    return [row[0] for row in conn.execute(_NAMES).fetchall()]


# The distinct metric event names, by a recursive skip scan of events_by_user.
_NAMES = """
WITH RECURSIVE names(event) AS (
    SELECT min(event) FROM events WHERE exposure IS NULL
    UNION ALL
    SELECT (SELECT min(event) FROM events WHERE exposure IS NULL AND event > names.event)
    FROM names WHERE names.event IS NOT NULL
)
SELECT event FROM names WHERE event IS NOT NULL
"""


def newest_event(conn: Reader, event: str, since: int, until: int) -> int | None:
    """The newest ``event`` logged in ``[since, until]`` (ms), by anyone: whether
    the app still logs it, which is what a guardrail's freshness is about."""
    row = conn.execute(
        f"SELECT max(time) FROM events WHERE {named(event)} AND time >= ? AND time <= ?",
        (event, since, until),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def before_window(conn: Reader, experiment: str, unit: str, window_start: int) -> tuple[int, int]:
    """What a restart or a reset left out, from one scan of the exposures
    before the analysis window opened: (units in a group then and not in the
    window since, ``temp.fw_first``, said beside the window, a trial; units of
    the window exposed to another group then). Units back in the window are
    not left out (a re-check read them as counted twice); visitors never in a
    group (unallocated, targeted out, served a ship) and overrides are not
    the experiment's (an operator's trial). A restart keeps the salts, so a
    unit whose hash the new weights put elsewhere brings what it saw before
    into another group (a trial: 96 of 299 returning units after a weights
    restart, said nowhere)."""
    d = conn.dialect
    (before, switched) = conn.execute(
        f"""
        SELECT count(DISTINCT CASE WHEN b.counted = 1 AND b.grp IS NOT NULL AND f.unit IS NULL
                                   THEN b.unit END),
               count(DISTINCT CASE WHEN b.counted = 1 AND b.grp <> f.grp THEN b.unit END)
        FROM (
            SELECT {unit} AS unit, e.group_name AS grp,
                   CASE WHEN {_not_override(d)} THEN 1 ELSE 0 END AS counted
            FROM events AS e
            WHERE e.exposure = ? AND e.event = ? AND e.time < ? AND {unit} IS NOT NULL
        ) AS b
        LEFT JOIN {d.temp}.fw_first AS f ON f.unit = b.unit
        """,
        (experiment, CONFIG_EXPOSURE, window_start),
    ).fetchone()
    return int(before), int(switched)


def future_exposures(conn: Reader, experiment: str, now: int) -> int:
    """The experiment's exposures stamped after ``now`` (clock skew; not counted)."""
    (n,) = conn.execute(
        "SELECT count(*) FROM events WHERE exposure = ? AND time > ?", (experiment, now)
    ).fetchone()
    return int(n)


def non_numeric_events(conn: Reader, event: str) -> int:
    """Stored events named ``event`` whose value is not a number (sums count them as 0)."""
    # Exactly the condition of the store's small events_non_numeric index.
    row = conn.execute(
        "SELECT count(*) FROM events WHERE event = ? AND value IS NOT NULL AND value_num IS NULL",
        (event,),
    ).fetchone()
    return int(row[0])
