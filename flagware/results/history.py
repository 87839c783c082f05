"""What happened to an experiment over time, said beside its results.

A refused edit the results read around, a launch (``ship``) that ended the
data, settings changed since the start, a restart's units that bring another
group's history, units a narrowed targeting gate took out of their groups:
none of it shows in a table of intervals, and each changes how to read one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flagware.results.changes import reading_changes, shipped_message
from flagware.results.records import StartRecord
from flagware.results.sql import Units
from flagware.spec import ExperimentSpec

__all__ = ["history"]


def history(
    exp: ExperimentSpec,
    record: StartRecord | None,
    edited: str | None,
    switched: int,
    units: Units,
) -> tuple[list[str], list[str]]:
    """(warnings to read first, warnings to read after the data's own)."""
    first: list[str] = []
    later: list[str] = []
    if record is not None and record.shipped_at is not None:
        shipped = datetime.fromtimestamp(record.shipped_at / 1000, tz=UTC)
        where = "`ship` in the spec" if exp.ship == record.shipped else "recorded"
        first.append(
            f"shipped {record.shipped} at {shipped:%Y-%m-%d %H:%M:%S} UTC ({where}):"
            " every unit has been served its params since, outside the experiment, so results"
            " read the exposures and events up to then"
        )
        if exp.ship != record.shipped:  # refused by the app and check: said here too (a trial)
            first.append(shipped_message(exp, record))
    if edited is not None:
        first.append(edited)
    if record is not None:  # how the spec reads it, changed since it started
        later += [f"experiments.{exp.name}: {said}" for said in reading_changes(record, exp)]
    if switched:
        later.append(
            f"{switched} unit(s) of the window were exposed to another group before it"
            " opened, and what they saw there carries over: with the salts kept, a restart"
            " that changes weights moves units from some groups into others, so the groups"
            " differ in their history; a restart that also changes `salt` spreads it evenly"
        )
    if units.left:
        ways = []
        if units.left_served_none:
            ways.append(
                f"{units.left_served_none} served the defaults, as a narrowed targeting gate does"
            )
        if units.left_forced:
            ways.append(f"{units.left_forced} forced into another group by an override")
        later.append(
            f"{units.left} unit(s) in the groups were later exposed outside them"
            f" ({'; '.join(ways)}): each is counted in its group (intention to treat), though it"
            " saw the group's treatment only until then"
        )
    return first, later
