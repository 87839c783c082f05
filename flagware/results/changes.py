"""How a spec differs from a started experiment's record, in an operator's words.

``describe_changes`` lists what the running app refuses (groups, weights,
params, salts, unit, a shrunk allocation, a new targeting gate);
``reading_changes`` what it only warns of (how results are read);
``changed_since_start`` what results say as they read such a spec's
experiment as it started, and ``refusal_message`` the app's refusal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flagware.results.records import StartRecord, served_targeting
from flagware.spec import ExperimentSpec, derived_salt
from flagware.spec.diff import differences, show

__all__ = [
    "changed_since_start",
    "describe_changes",
    "reading_changes",
    "refusal_message",
    "shipped_message",
    "since_start",
]


def since_start(record: StartRecord) -> str:
    """What a record's window opened with, said the same in every message
    (they said "after the experiment started" of a restart's, a trial)."""
    return "its restart" if record.restarts else "the experiment started"


def reading_changes(record: StartRecord, experiment: ExperimentSpec) -> list[str]:
    """How the spec now reads a started experiment's results, where that
    differs from how it said when the experiment started (records made before
    it was kept: nothing). Warned, not refused: nothing served changes."""
    said = []
    if record.sequential is not None and record.sequential != experiment.sequential:
        was, now = (show(v) for v in (record.sequential, experiment.sequential))
        said.append(
            f"sequential changed from {was} to {now} since {since_start(record)}: a fixed"
            " horizon holds its error rate read once at a size planned before the start;"
            " chosen after sequential looks, it does not"
        )
    tuning = record.sequential_tuning
    if experiment.sequential and tuning is not None and tuning != experiment.sequential_tuning:
        said.append(
            f"sequential_tuning changed from {tuning} to {experiment.sequential_tuning} since"
            f" {since_start(record)}: any tuning fixed before the data keeps the guarantee;"
            " one chosen after looking at results is one more forking path"
        )
    return said


def describe_changes(record: StartRecord, experiment: ExperimentSpec) -> list[str]:
    """Human-readable changes between the recorded definition and ``experiment``."""
    if record.fingerprint == experiment.fingerprint():
        changes: list[str] = []
    else:
        # A JSON round trip gives the current fields the stored fields' types.
        current = json.loads(json.dumps(experiment.fingerprint_fields(), default=str))
        changes = _reordered(record.fields, current) or list(differences(record.fields, current))
        said = [_derived(line, record.fields, current) for line in changes]
        changes = sorted(said, key=lambda line: line.startswith("allocation_salt, derived"))
        if not changes:  # same fields, different hash: the fingerprint recipe changed
            changes = ["the fingerprint changed"]
    if experiment.allocation < record.allocation:
        changes.append(
            f"allocation shrank from {show(record.allocation)} to {show(experiment.allocation)}"
            " (allocation may only grow)"
        )
    if served_targeting(record, experiment) != experiment.targeting_gate:
        was = record.targeting_gate
        change = "added" if was is None else f"changed from {was!r} to"
        changes.append(
            f"targeting gate {change} {experiment.targeting_gate!r} (it may only be removed:"
            " units in the groups would leave them)"
        )
    return changes


def _derived(line: str, recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """An allocation salt that only followed its salt, said as that: a trial
    that changed ``salt`` was told of an ``allocation_salt`` change it never made."""
    if not line.startswith("allocation_salt changed"):
        return line
    follows = all(
        fields.get("allocation_salt") == derived_salt("allocation", str(fields.get("salt")))
        for fields in (recorded, current)
    )
    return "allocation_salt, derived from salt, changed with it" if follows else line


def _reordered(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The same groups in another order, said as that: it read as a rename and
    a param change for every group (a new user's trial)."""
    before, after = recorded.get("groups"), current.get("groups")
    if not isinstance(before, list) or not isinstance(after, list) or before == after:
        return []
    if {**recorded, "groups": None} != {**current, "groups": None}:
        return []

    def key(group: Any) -> str:
        return json.dumps(group, sort_keys=True)

    if sorted(map(key, before)) != sorted(map(key, after)):
        return []
    order = ", ".join(str(g.get("name")) for g in after)
    return [
        f"groups reordered to {order} (the order decides which units each group gets,"
        " so units would change groups)"
    ]


def refusal_message(name: str, changes: list[str], record: StartRecord) -> str:
    started = datetime.fromtimestamp(record.window_start / 1000, tz=UTC)
    return (
        f"experiments.{name}: {'; '.join(changes)} since {since_start(record)}"
        f" ({started:%Y-%m-%d %H:%M} UTC). Experiments cannot change once started:"
        f" either give the changed experiment a new name, or set `restart = true` in"
        f" [experiments.{name}] to start a new analysis window (results then count only"
        f" exposures from 7 s after the restart, once every process serves it); or, in"
        f" development, forget its start with `flagware reset {name}`."
    )


def shipped_message(experiment: ExperimentSpec, record: StartRecord) -> str:
    """A ship dropped or moved to another group, refused: ship is final."""
    assert record.shipped is not None and record.shipped_at is not None
    at = datetime.fromtimestamp(record.shipped_at / 1000, tz=UTC)
    now = "removed" if experiment.ship is None else f"changed to {experiment.ship!r}"
    return (
        f"experiments.{experiment.name}: ship = {record.shipped!r} (shipped {at:%Y-%m-%d %H:%M}"
        f" UTC) {now}: a ship is final, as on Statsig, so it is still served; to run the"
        f" experiment again, give it a new name (or, in development, `flagware reset"
        f" {experiment.name}`)."
    )


def changed_since_start(record: StartRecord, experiment: ExperimentSpec) -> str | None:
    """How ``experiment`` differs from the definition its window's exposures
    were assigned by, said for results, which read them with that definition.

    Tested against other groups or weights, the stored units would fail the
    sample-ratio check and fill groups that never ran; and the app, refusing
    the edit, serves the recorded definition meanwhile, so that is what ran.
    (Results refused such a spec, and an operator kept copies of old specs to
    read an experiment at all.)
    """
    changes = describe_changes(record, experiment)
    if not changes:
        return None
    started = datetime.fromtimestamp(record.window_start / 1000, tz=UTC)
    since = since_start(record)
    ran = "the definition its restart recorded" if record.restarts else "the recorded definition"
    if experiment.restart:
        then = (
            "`restart = true` opens a new analysis window when the app loads this spec;"
            f" until then it serves {ran}, and results read the window with it."
        )
    else:
        then = (
            f"The app refuses the edit and serves {ran}, and results read the window with"
            " it. To change the experiment, rename it, or set `restart = true` (results"
            " then count exposures from 7 s after the restart); or, in development, forget"
            f" its start with `flagware reset {experiment.name}`."
        )
    return (
        f"experiments.{experiment.name}: {'; '.join(changes)} since {since}"
        f" ({started:%Y-%m-%d %H:%M} UTC). {then}"
    )
