"""Experiments cannot change once started.

The first stored exposure of an experiment records what decides who lands in
which group and what they see (the spec's ``fingerprint_fields()``: unit, salt,
groups, weights, params) in the store's ``meta`` table under
``experiment:<name>``. Changing any of it mid-flight would mix units that saw
different treatments in one group and make the results meaningless, so loading
a spec that changes it serves the experiment as it started instead (the rest
of the spec as written), and the change is refused, naming the two ways out
(``flagware check`` fails on it; ``flagware results`` reads the experiment
as it started, and says so):

- a new experiment name (a fresh experiment, a fresh analysis), or
- ``restart = true``: the new definition is recorded and a new analysis window
  starts; results count only exposures from the window start on.

Allocation may grow freely (units already in keep their group); shrinking it
takes units out of a running experiment, so it is treated like a change. So
is adding or changing its targeting gate, for the same reason (a new user's
trial: 47% of the units in groups were then served the defaults, and results
counted them in their groups, silently); removing it may be done, as growing
the allocation may.

The record is ``results.records.StartRecord``; how a spec differs from it is
said by ``results.changes``. Both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from flagware.events.model import now_ms
from flagware.events.store import (
    EventStore,
    Store,
    connect,
    is_postgres_url,
    open_store,
    store_exists,
)
from flagware.results.changes import (
    changed_since_start,
    describe_changes,
    reading_changes,
    refusal_message,
    shipped_message,
)
from flagware.results.records import (
    StartRecord,
    meta_key,
    record_keys,
    reset_key,
    served_targeting,
    shipped_key,
    stored_values,
)
from flagware.spec import ExperimentSpec, Group, Spec, SpecError

__all__ = [
    "StartRecord",
    "as_started",
    "changed_since_start",
    "check_unchanged",
    "describe_changes",
    "meta_key",
    "read_started",
    "reading_changes",
    "record_ship_if_new",
    "record_shipped",
    "record_started",
    "recorded_experiment",
    "reset_key",
    "served_spec",
    "shipped_key",
]

log = logging.getLogger("flagware")

StoreRef = sqlite3.Connection | Store | str | os.PathLike[str]
_Raw = (sqlite3.Connection, str, os.PathLike)  # not a store object: SQLite directly


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
        "sequential": experiment.sequential,
        "sequential_tuning": experiment.sequential_tuning,
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
    _write_sqlite(store, lambda conn: conn.execute(_UPSERT, params))


def read_started(store: StoreRef, experiment: str) -> StartRecord | None:
    """The stored start record of ``experiment``, or None if it never started."""
    if is_postgres_url(store):
        with open_store(str(store)) as opened:
            return read_started(opened, experiment)
    if not isinstance(store, _Raw):
        record, reset, shipped = (store.get_meta(key) for key in record_keys(experiment))
        return StartRecord.stored(record, reset, shipped)
    with _connection(store) as conn:
        return StartRecord.stored(*stored_values(conn.execute, experiment))


def record_shipped(
    store: StoreRef, experiment: ExperimentSpec, record: StartRecord, *, time_ms: int | None = None
) -> None:
    """Note when the app first served ``experiment``'s ``ship`` in this
    window: the first process to load it writes the time, the others keep it.
    A ship from before a restart or a reset is replaced (a trial's second ship
    after a reset was never recorded, and results kept counting)."""
    assert experiment.ship is not None
    key = shipped_key(experiment.name)
    at = now_ms() if time_ms is None else int(time_ms)
    value = json.dumps({"group": experiment.ship, "at": at}, separators=(",", ":"))
    if not isinstance(store, _Raw):
        stale = store.get_meta(key) is not None
        if stale:
            store.set_meta(key, value)
        else:
            store.init_meta(key, value)
    else:

        def upsert(conn: sqlite3.Connection) -> None:
            stale = conn.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is not None
            verb = "INSERT OR REPLACE" if stale else "INSERT OR IGNORE"
            conn.execute(f"{verb} INTO meta (key, value) VALUES (?, ?)", (key, value))

        _write_sqlite(store, upsert)
    # A warning: the decision ends the experiment's data for good, and INFO
    # lines are hidden under a server's default logging (a trial).
    log.warning(
        "flagware: experiments.%s shipped %s: every unit gets its params from now on, and"
        " results read the experiment's data up to now",
        experiment.name,
        experiment.ship,
    )


def record_ship_if_new(
    store: StoreRef, experiment: ExperimentSpec, record: StartRecord | None, *, time_ms: int | None
) -> None:
    """Record ``experiment``'s ``ship`` unless its start record has one: a ship
    added to a running experiment (the start check) and one in the spec as the
    experiment starts (a ship left across `flagware reset`, recorded with the
    start) alike. A moved or dropped ship is refused elsewhere, never replaced."""
    if experiment.ship is not None and record is not None and record.shipped is None:
        record_shipped(store, experiment, record, time_ms=time_ms)


def check_unchanged(
    spec: Spec, store_path: str | os.PathLike[str], *, time_ms: int | None = None
) -> None:
    """Raise SpecError if a started experiment's definition changed in ``spec``.

    Experiments marked ``restart = true`` whose definition changed get a new
    analysis window starting now instead. A store that does not exist yet has
    nothing started, so there is nothing to check.
    """
    _, refused = _served_spec(spec, store_path, time_ms)
    if refused:
        raise _refusal(spec, [message for message, _ in refused])


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
    marked ``restart = true`` gets a new analysis window instead. Each
    message ends with how the app serves it meanwhile.
    """
    served, refused = _served_spec(spec, store_path, time_ms)
    return served, [f"{message} {serving}" for message, serving in refused]


def _served_spec(
    spec: Spec, store_path: str | os.PathLike[str], time_ms: int | None
) -> tuple[Spec, list[tuple[str, str]]]:
    if is_postgres_url(store_path):
        if store_exists(store_path):
            with open_store(store_path) as store:
                return _served(spec, store, time_ms)
        return spec, []
    if not Path(store_path).exists():
        return spec, []
    with _connection(store_path) as conn:
        return _served(spec, conn, time_ms)


def _served(spec: Spec, conn: StoreRef, time_ms: int | None) -> tuple[Spec, list[tuple[str, str]]]:
    """The spec served, and each refusal with how the app serves it meanwhile
    (a moved ship was logged "served as it started", a trial)."""
    rest = "the rest of the spec is served as written."  # a gate edited beside takes
    refused: list[tuple[str, str]] = []
    served = dict(spec.experiments)
    for experiment in spec.experiments.values():
        record = read_started(conn, experiment.name)
        if record is None:
            continue
        if record.shipped is not None and experiment.ship != record.shipped:
            # Ship is final, as on Statsig: dropped or moved to another group,
            # the data after it would mix (a trial: clicks under Red counted
            # as Control's). Served as shipped, and refused.
            served[experiment.name] = replace(
                as_started(record, experiment) or experiment, ship=record.shipped
            )
            refused.append((shipped_message(experiment, record), rest.capitalize()))
            continue
        record_ship_if_new(conn, experiment, record, time_ms=time_ms)
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
            raise _refusal(spec, [refusal_message(experiment.name, changes, record)])
        served[experiment.name] = started
        message = refusal_message(experiment.name, changes, record)
        served_as = "as its restart recorded it" if record.restarts else "as it started"
        refused.append((message, f"Until then it is served {served_as}; {rest}"))
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
            targeting_gate=served_targeting(record, experiment),
            restart=False,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return started if started.fingerprint() == record.fingerprint else None


def recorded_experiment(name: str, record: StartRecord) -> ExperimentSpec | None:
    """An experiment no longer in the spec, as its start record defines it
    (results of an experiment removed once it ended); None if the record does
    not rebuild it. It is read without a targeting gate, and sequentially
    as its record says (records made before that was kept: the default)."""
    blank = ExperimentSpec(name=name, unit="userID", allocation=0.0, salt="", groups=())
    if record.sequential is not None:
        blank = replace(blank, sequential=record.sequential)
    if record.sequential_tuning is not None:
        blank = replace(blank, sequential_tuning=record.sequential_tuning)
    return as_started(record, blank)


def _write_sqlite(
    store: sqlite3.Connection | str | os.PathLike[str],
    write: Callable[[sqlite3.Connection], object],
) -> None:
    """Run ``write`` on the caller's SQLite connection (or one opened for a
    path), committing only a transaction it opened (legacy isolation levels
    open one implicitly); never the caller's."""
    with _connection(store) as conn:
        was_in_transaction = conn.in_transaction
        write(conn)
        if conn.in_transaction and not was_in_transaction:
            conn.commit()


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
