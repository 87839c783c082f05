"""Experiments cannot change once started.

The first stored exposure of an experiment records what decides who lands in
which group and what they see (the spec's ``fingerprint_fields()``: unit, salt,
groups, weights, params) in the store's ``meta`` table under
``experiment:<name>``. Changing any of it mid-flight would mix units that saw
different treatments in one group and make the results meaningless, so loading
a spec that changes it serves the experiment as it started instead (the rest
of the spec as written), and the change is refused, naming the two ways out
(``flagware check`` and ``flagware results`` fail on it):

- a new experiment name (a fresh experiment, a fresh analysis), or
- ``restart = true``: the new definition is recorded and a new analysis window
  starts; results count only exposures from the window start on.

Allocation may grow freely (units already in keep their group); shrinking it
takes units out of a running experiment, so it is treated like a change. So
is adding or changing its targeting gate, for the same reason (a new user's
trial: 47% of the units in groups were then served the defaults, and results
counted them in their groups, silently); removing it may be done, as growing
the allocation may.

The record (JSON in ``meta.value``)::

    {"fingerprint": "...", "fields": {...}, "allocation": 50.0, "targeting_gate": null,
     "started": <ms of the first record>, "window_start": <ms>, "restarts": 0}

(Records made before ``targeting_gate`` was kept lack it, and their targeting
gate is not checked.)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flagware.events.model import now_ms
from flagware.events.store import (
    EventStore,
    Store,
    connect,
    is_postgres_url,
    open_store,
    store_exists,
)
from flagware.spec import ExperimentSpec, Group, Spec, SpecError
from flagware.spec.diff import differences, show

__all__ = [
    "StartRecord",
    "as_started",
    "changed_since_start",
    "check_unchanged",
    "meta_key",
    "read_started",
    "record_started",
    "recorded_experiment",
    "reset_key",
    "served_spec",
]

log = logging.getLogger("flagware")

StoreRef = sqlite3.Connection | Store | str | os.PathLike[str]
_Raw = (sqlite3.Connection, str, os.PathLike)  # not a store object: SQLite directly


def meta_key(experiment: str) -> str:
    return f"experiment:{experiment}"


def reset_key(experiment: str) -> str:
    """When ``flagware reset`` last forgot ``experiment`` (ms, in ``meta``): the
    analysis window of the start recorded after it opens there."""
    return f"reset:{experiment}"


@dataclass(frozen=True)
class StartRecord:
    fingerprint: str
    fields: dict[str, Any]
    allocation: float  # the largest allocation seen so far
    started: int  # ms: the first exposure ever recorded
    window_start: int  # ms: the start of the current analysis window
    restarts: int
    reset_at: int | None = None  # ms: the `flagware reset` before this record, if any
    targeting_gate: str | None = None  # the experiment's targeting gate when it started
    targeting_known: bool = False  # False for records made before it was kept

    @classmethod
    def from_json(cls, text: str) -> StartRecord:
        data = json.loads(text)
        return cls(
            fingerprint=str(data["fingerprint"]),
            fields=dict(data["fields"]),
            allocation=float(data.get("allocation", 0.0)),
            started=int(data["started"]),
            window_start=int(data.get("window_start", data["started"])),
            restarts=int(data.get("restarts", 0)),
            targeting_gate=None
            if data.get("targeting_gate") is None
            else str(data["targeting_gate"]),
            targeting_known="targeting_gate" in data,
        )

    @classmethod
    def stored(cls, record: str | None, reset: str | None) -> StartRecord | None:
        """From the ``meta`` values under :func:`meta_key` and :func:`reset_key`."""
        if record is None:
            return None
        started = cls.from_json(record)
        return started if reset is None else replace(started, reset_at=int(reset))


# The upsert that records a start, in each backend's dialect (events/store/*.sql).
_UPSERT = EventStore.queries["record_start"]


def record_started(
    store: StoreRef, experiment: ExperimentSpec, *, time_ms: int | None = None
) -> None:
    """Record that ``experiment`` has started (call it when its exposures are stored).

    Cheap and idempotent: a single upsert that changes nothing once the
    experiment is recorded with this definition. ``time_ms`` is when the
    exposure happened (default now); it becomes the window start of a restart.
    """
    at = now_ms() if time_ms is None else int(time_ms)
    fingerprint = experiment.fingerprint()
    record = {
        "fingerprint": fingerprint,
        "fields": experiment.fingerprint_fields(),
        "allocation": float(experiment.allocation),
        "targeting_gate": experiment.targeting_gate,
        "started": at,
        "window_start": at,
        "restarts": 0,
    }
    params = {
        "key": meta_key(experiment.name),
        "value": json.dumps(record, sort_keys=True, separators=(",", ":"), default=str),
        "restart": 1 if experiment.restart else 0,
        "fingerprint": fingerprint,
        "allocation": float(experiment.allocation),
        "targeting_gate": experiment.targeting_gate,
    }
    if is_postgres_url(store):
        with open_store(str(store)) as opened:
            opened.run("record_start", params)
        return
    if not isinstance(store, _Raw):  # a store: either backend, in its own dialect
        store.run("record_start", params)
        return
    with _connection(store) as conn:
        was_in_transaction = conn.in_transaction
        conn.execute(_UPSERT, params)
        # Commit only a transaction this call opened (legacy isolation levels
        # open one implicitly); never the caller's.
        if conn.in_transaction and not was_in_transaction:
            conn.commit()


def read_started(store: StoreRef, experiment: str) -> StartRecord | None:
    """The stored start record of ``experiment``, or None if it never started."""
    if is_postgres_url(store):
        with open_store(str(store)) as opened:
            return read_started(opened, experiment)
    if not isinstance(store, _Raw):
        text, reset = store.get_meta(meta_key(experiment)), store.get_meta(reset_key(experiment))
    else:
        with _connection(store) as conn:
            rows = conn.execute(
                "SELECT key, value FROM meta WHERE key IN (?, ?)",
                (meta_key(experiment), reset_key(experiment)),
            )
            found = {str(key): str(value) for key, value in rows}
        text, reset = found.get(meta_key(experiment)), found.get(reset_key(experiment))
    return StartRecord.stored(text, reset)


def check_unchanged(
    spec: Spec, store_path: str | os.PathLike[str], *, time_ms: int | None = None
) -> None:
    """Raise SpecError if a started experiment's definition changed in ``spec``.

    Experiments marked ``restart = true`` whose definition changed get a new
    analysis window starting now instead. A store that does not exist yet has
    nothing started, so there is nothing to check.
    """
    _, refused = served_spec(spec, store_path, time_ms=time_ms)
    if refused:
        raise _refusal(spec, refused)


def _refusal(spec: Spec, messages: list[str]) -> SpecError:
    where = f"{spec.source}: " if spec.source else ""
    return SpecError(where + "\n".join(messages))


def served_spec(
    spec: Spec, store_path: str | os.PathLike[str], *, time_ms: int | None = None
) -> tuple[Spec, list[str]]:
    """The spec an app serves, and the edits of started experiments it refused.

    A started experiment whose definition changed is served as its start
    record defines it, and the change is refused (one message each); the
    rest of the spec is served as written, so a gate edited beside such a
    change still takes. A gate is a yes/no to change at any time, and a
    refused experiment edit held back every gate change with it (a new
    user's trial: a kill switch at ``rollout = 0`` kept serving true). One
    marked ``restart = true`` gets a new analysis window instead.
    """
    if is_postgres_url(store_path):
        if store_exists(store_path):
            with open_store(store_path) as store:
                return _served(spec, store, time_ms)
        return spec, []
    if not Path(store_path).exists():
        return spec, []
    with _connection(store_path) as conn:
        return _served(spec, conn, time_ms)


def _served(spec: Spec, conn: StoreRef, time_ms: int | None) -> tuple[Spec, list[str]]:
    refused: list[str] = []
    served = dict(spec.experiments)
    for experiment in spec.experiments.values():
        record = read_started(conn, experiment.name)
        if record is None:
            continue
        changes = describe_changes(record, experiment)
        if not changes:
            if record.allocation < experiment.allocation:
                record_started(conn, experiment, time_ms=time_ms)
            continue
        if experiment.restart:
            record_started(conn, experiment, time_ms=time_ms)
            # A warning, naming the change: at INFO, under a server's default
            # logging, a restart left set took the next edit unseen (a trial).
            log.warning(
                "flagware: experiments.%s restarted (restart = true; %s): results count its"
                " exposures from 7 s after this restart, not the window open since %s UTC;"
                " remove `restart` from the spec, or its next change restarts it again",
                experiment.name,
                "; ".join(changes),
                f"{datetime.fromtimestamp(record.window_start / 1000, tz=UTC):%Y-%m-%d %H:%M}",
            )
            continue
        started = as_started(record, experiment)
        if started is None:  # a record this version cannot rebuild: the whole spec is refused
            raise _refusal(spec, [_message(experiment.name, changes, record)])
        served[experiment.name] = started
        refused.append(_message(experiment.name, changes, record))
    if not refused:
        return spec, []
    return replace(spec, experiments=served), refused


def as_started(record: StartRecord, experiment: ExperimentSpec) -> ExperimentSpec | None:
    """``experiment`` as it started: unit, salts, groups, weights and params from
    its start record, the larger allocation, its targeting gate unless the spec
    removed it, the rest (results settings) from the spec. None if the record
    does not rebuild it exactly."""
    try:
        fields = record.fields
        groups = tuple(
            Group(str(g["name"]), float(g["weight"]), dict(g["params"])) for g in fields["groups"]
        )
        started = replace(
            experiment,
            unit=str(fields["unit"]),
            salt=str(fields["salt"]),
            allocation_salt=str(fields["allocation_salt"]),
            groups=groups,
            allocation=max(experiment.allocation, record.allocation),
            targeting_gate=_served_targeting(record, experiment),
            restart=False,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return started if started.fingerprint() == record.fingerprint else None


def _served_targeting(record: StartRecord, experiment: ExperimentSpec) -> str | None:
    if not record.targeting_known or experiment.targeting_gate in (None, record.targeting_gate):
        return experiment.targeting_gate
    return record.targeting_gate


def recorded_experiment(name: str, record: StartRecord) -> ExperimentSpec | None:
    """An experiment no longer in the spec, as its start record defines it
    (results of an experiment removed once it ended); None if the record does
    not rebuild it. Nothing records its targeting gate or ``sequential``: it
    is read without the one and with the default of the other."""
    blank = ExperimentSpec(name=name, unit="userID", allocation=0.0, salt="", groups=())
    return as_started(record, blank)


def describe_changes(record: StartRecord, experiment: ExperimentSpec) -> list[str]:
    """Human-readable changes between the recorded definition and ``experiment``."""
    if record.fingerprint == experiment.fingerprint():
        changes: list[str] = []
    else:
        # A JSON round trip gives the current fields the stored fields' types.
        current = json.loads(json.dumps(experiment.fingerprint_fields(), default=str))
        changes = _reordered(record.fields, current) or list(differences(record.fields, current))
        if not changes:  # same fields, different hash: the fingerprint recipe changed
            changes = ["the fingerprint changed"]
    if experiment.allocation < record.allocation:
        changes.append(
            f"allocation shrank from {show(record.allocation)} to {show(experiment.allocation)}"
            " (allocation may only grow)"
        )
    if _served_targeting(record, experiment) != experiment.targeting_gate:
        was = record.targeting_gate
        change = "added" if was is None else f"changed from {was!r} to"
        changes.append(
            f"targeting gate {change} {experiment.targeting_gate!r} (it may only be removed:"
            " units in the groups would leave them)"
        )
    return changes


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


def _message(name: str, changes: list[str], record: StartRecord) -> str:
    started = datetime.fromtimestamp(record.window_start / 1000, tz=UTC)
    return (
        f"experiments.{name}: {'; '.join(changes)} after the experiment started"
        f" ({started:%Y-%m-%d %H:%M} UTC). Experiments cannot change once started:"
        f" either give the changed experiment a new name, or set `restart = true` in"
        f" [experiments.{name}] to start a new analysis window from now (results then"
        f" count only exposures from the restart on); or, in development, forget its"
        f" start with `flagware reset {name}`."
    )


def changed_since_start(record: StartRecord, experiment: ExperimentSpec) -> str | None:
    """Why results cannot read ``experiment``'s stored exposures with this definition.

    The stored units were assigned by the recorded definition; tested against
    other groups or weights they fail the sample-ratio check and fill groups
    that never ran. The app refuses such a spec at startup; so do results.
    """
    changes = describe_changes(record, experiment)
    if not changes:
        return None
    started = datetime.fromtimestamp(record.window_start / 1000, tz=UTC)
    since = "its restart" if record.restarts else "the experiment started"
    ran = "the definition its restart recorded" if record.restarts else "the recorded definition"
    if experiment.restart:
        then = (
            "`restart = true` opens a new analysis window when the app loads this spec;"
            f" until then the window's exposures were assigned by {ran}: read them with"
            " a spec that still has it."
        )
    else:
        then = (
            f"The window's exposures were assigned by {ran}: read them with a spec that"
            " still has it. To change the experiment, rename it, or set `restart = true`"
            " (results then count exposures from the restart on); or, in development,"
            f" forget its start with `flagware reset {experiment.name}`."
        )
    return (
        f"experiments.{experiment.name}: {'; '.join(changes)} since {since}"
        f" ({started:%Y-%m-%d %H:%M} UTC). {then}"
    )


class _connection:
    """Use the caller's connection as is, or open (and close) one for a path."""

    def __init__(self, store: sqlite3.Connection | str | os.PathLike[str]) -> None:
        self._owned: sqlite3.Connection | None = None
        if isinstance(store, sqlite3.Connection):
            self._conn = store
        else:
            self._owned = self._conn = connect(store)

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, *exc: object) -> None:
        if self._owned is not None:
            self._owned.close()
