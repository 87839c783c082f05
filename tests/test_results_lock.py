"""Experiments cannot change once started: record_started and check_unchanged,
on both store backends."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flagware.events.store import EventStore, connect, open_store
from flagware.results import ResultsError, compute_results, render_html, render_text
from flagware.results.lock import (
    check_unchanged,
    meta_key,
    read_started,
    record_started,
    served_spec,
)
from flagware.results.sql import SETTLE_MS
from flagware.spec import ExperimentSpec, Spec, SpecError, parse_spec

T0 = 1_790_000_000_000


def make_spec(
    weights: tuple[float, float] = (50, 50),
    *,
    red_color: str = "red",
    control_color: str = "blue",
    extra_group: bool = False,
    **experiment: Any,
) -> Spec:
    groups = [
        {"name": "Control", "weight": weights[0], "params": {"color": control_color}},
        {"name": "Red", "weight": weights[1], "params": {"color": red_color}},
    ]
    if extra_group:
        groups[1]["weight"] = weights[1] - 10
        groups.append({"name": "Green", "weight": 10, "params": {"color": "green"}})
    body = {"unit": "stableID", "salt": "s1", "groups": groups, **experiment}
    return parse_spec({"experiments": {"button_color": body}}, source="flagware.toml")


def exp(spec: Spec) -> ExperimentSpec:
    return spec.experiments["button_color"]


def _meta(location: str) -> str | None:
    with open_store(location) as events:
        return events.get_meta(meta_key("button_color"))


@pytest.fixture
def store(store_location: str) -> str:
    """An empty store: a SQLite path, then a PostgreSQL URL (parametrised)."""
    open_store(store_location).close()
    return store_location


def test_record_started_stores_fingerprint_fields_and_time(store: str) -> None:
    spec = make_spec()
    record_started(store, exp(spec), time_ms=T0)
    record = read_started(store, "button_color")
    assert record is not None
    assert record.fingerprint == exp(spec).fingerprint()
    assert record.fields == json.loads(json.dumps(exp(spec).fingerprint_fields()))
    assert (record.started, record.window_start, record.restarts) == (T0, T0, 0)
    assert record.allocation == 100.0
    raw = _meta(store)
    assert raw is not None and json.loads(raw)["fingerprint"] == exp(spec).fingerprint()


def test_record_started_is_idempotent(store: str) -> None:
    spec = make_spec()
    record_started(store, exp(spec), time_ms=T0)
    first = _meta(store)
    record_started(store, exp(spec), time_ms=T0 + 5000)
    record_started(store, exp(make_spec((40, 60))), time_ms=T0 + 9000)  # not restart: ignored
    assert _meta(store) == first


def test_record_started_accepts_connections_and_event_stores(tmp_path: Path) -> None:
    spec = make_spec()
    event_store = EventStore(tmp_path / "a.db")
    record_started(event_store, exp(spec), time_ms=T0)
    assert read_started(event_store, "button_color") is not None
    event_store.close()

    connect(tmp_path / "b.db").close()
    legacy = sqlite3.connect(tmp_path / "b.db")  # default isolation: implicit transactions
    record_started(legacy, exp(spec), time_ms=T0)
    assert not legacy.in_transaction  # committed what it opened
    legacy.close()
    assert read_started(tmp_path / "b.db", "button_color") is not None

    caller = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    caller.execute("BEGIN")
    record_started(caller, exp(make_spec(allocation=100)), time_ms=T0)
    assert caller.in_transaction  # the caller's transaction is the caller's to end
    caller.execute("ROLLBACK")
    caller.close()


def test_record_started_is_cheap(store: str) -> None:
    opened = open_store(store)
    experiment = exp(make_spec())
    record_started(opened, experiment)  # connected
    rounds = []
    for _ in range(3):  # the best of three: this machine is shared, and other work slows a round
        started = time.perf_counter()
        for _ in range(300):
            record_started(opened, experiment)
        rounds.append((time.perf_counter() - started) / 300)
    opened.close()
    assert min(rounds) < 0.001, f"{min(rounds) * 1e6:.0f} us per call"


def test_unchanged_spec_and_missing_store_pass(store: str, tmp_path: Path) -> None:
    check_unchanged(make_spec(), tmp_path / "nothing-here.db")
    assert not (tmp_path / "nothing-here.db").exists()  # checking never creates a store
    check_unchanged(make_spec(), store)  # nothing started yet
    record_started(store, exp(make_spec()), time_ms=T0)
    check_unchanged(make_spec(), store)


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (
            make_spec((40, 60)),
            "groups[0].weight changed from 50 to 40; groups[1].weight changed from 50 to 60",
        ),
        (make_spec(red_color="green"), 'groups[1].params.color changed from "red" to "green"'),
        (make_spec(salt="s2"), 'salt changed from "s1" to "s2"'),
        (make_spec(unit="userID"), 'unit changed from "stableID" to "userID"'),
        (
            make_spec(extra_group=True),
            "groups changed from [Control, Red] to [Control, Red, Green]",
        ),
    ],
)
def test_changes_after_start_fail_naming_the_change(
    store: Path, changed: Spec, expected: str
) -> None:
    record_started(store, exp(make_spec()), time_ms=T0)
    with pytest.raises(SpecError) as raised:
        check_unchanged(changed, store)
    message = str(raised.value)
    assert message.startswith("flagware.toml: experiments.button_color: ")
    assert expected in message
    assert "since the experiment started" in message
    assert "new name" in message and "restart = true" in message
    assert message.endswith(
        "or, in development, forget its start with `flagware reset button_color`."
    )


@pytest.mark.parametrize(
    "changed",
    [
        make_spec((40, 60), allocation=50),
        make_spec(red_color="green"),
        make_spec(salt="s2", unit="userID"),
        make_spec(extra_group=True, allocation=30),
    ],
)
def test_a_changed_experiment_is_served_as_it_started(store: str, changed: Spec) -> None:
    """What an app serves: the started definition, exactly (the same buckets),
    with the targeting gate it started with and the larger allocation; the
    change refused."""
    params = {"color": "red", "size": 1.5, "bold": True, "sizes": [1, 2], "font": {"w": 700}}
    started = parse_spec(
        {
            "gates": {"beta": {"rollout": 10}},
            "experiments": {
                "button_color": {
                    "unit": "stableID",
                    "salt": "s1",
                    "allocation": 40,
                    "groups": [
                        {"name": "Control", "weight": 50, "params": {**params, "color": "blue"}},
                        {"name": "Red", "weight": 50, "params": params},
                    ],
                }
            },
        },
        source="flagware.toml",
    )
    record_started(store, exp(started), time_ms=T0)
    edited = Spec(
        gates={"beta": started.gates["beta"]},
        experiments={"button_color": replace(exp(changed), targeting_gate="beta")},
        metrics={},
        source="flagware.toml",
    )
    served, refused = served_spec(edited, store)
    [message] = refused
    assert message.startswith("experiments.button_color: ") and "new name" in message
    assert "targeting gate added 'beta' (it may only be removed" in message
    assert exp(served).fingerprint() == exp(started).fingerprint()
    assert exp(served).groups == exp(started).groups
    assert exp(served).targeting_gate is None  # as it started: none
    assert exp(served).allocation == max(40, exp(changed).allocation)
    assert served.gates == edited.gates
    assert served_spec(served, store) == (served, [])  # served again: nothing to refuse


def test_a_targeting_gate_may_be_removed_but_not_added_or_changed(store: str) -> None:
    """A targeting gate added to a running experiment took units out of their
    groups (a new user's trial: 47% of them served the defaults), and results
    counted them in their groups, silently. Like allocation, it may only let
    more units in."""
    gates = {"beta": {"rollout": 50}, "staff": {"rollout": 10}}

    def spec(gate: str | None, restart: bool = False) -> Spec:
        body = exp(make_spec(restart=restart))
        return replace(
            make_spec(),
            gates=parse_spec({"gates": gates}).gates,
            experiments={"button_color": replace(body, targeting_gate=gate)},
        )

    record_started(store, exp(spec("beta")), time_ms=T0)
    with pytest.raises(SpecError, match="targeting gate changed from 'beta' to 'staff'"):
        check_unchanged(spec("staff"), store)
    served, _ = served_spec(spec("staff"), store)
    assert exp(served).targeting_gate == "beta"  # served as it started
    check_unchanged(spec(None), store)  # removed: more units come in, none leaves
    check_unchanged(spec("beta"), store)  # and back: the one it started with
    # Results read it as the app serves it, and say why.
    read = compute_results(spec("staff"), "button_color", store, now=T0 + 10)
    assert "targeting gate changed from 'beta' to 'staff'" in read.warnings[0]
    assert "serves the recorded definition" in read.warnings[0]
    # restart = true takes the change and records the new gate.
    check_unchanged(spec("staff", restart=True), store, time_ms=T0 + 1000)
    record = read_started(store, "button_color")
    assert record is not None and (record.targeting_gate, record.restarts) == ("staff", 1)
    check_unchanged(spec("staff"), store)
    with pytest.raises(SpecError, match="targeting gate changed from 'staff' to 'beta'"):
        check_unchanged(spec("beta"), store)
    # A record made before the gate was kept says nothing of it: not compared.
    with open_store(store) as events:
        old = json.loads(events.get_meta(meta_key("button_color")) or "{}")
        del old["targeting_gate"]
        events.set_meta(meta_key("button_color"), json.dumps(old))
    check_unchanged(spec("beta"), store)
    check_unchanged(spec("beta", restart=True), store, time_ms=T0 + 9000)  # no restart
    record = read_started(store, "button_color")
    assert record is not None and record.restarts == 1 and not record.targeting_known


def test_a_record_that_cannot_be_rebuilt_refuses_the_whole_spec(store: str) -> None:
    record_started(store, exp(make_spec()), time_ms=T0)
    with open_store(store) as events:  # a record written by a version with other fields
        record = json.loads(events.get_meta(meta_key("button_color")) or "{}")
        del record["fields"]["allocation_salt"]
        events.set_meta(meta_key("button_color"), json.dumps(record))
    with pytest.raises(SpecError, match="since the experiment started"):
        served_spec(make_spec(red_color="green"), store)


def test_groups_reordered_are_said_as_such(store: str) -> None:
    """It read as a rename and a param change for each group (a new user's trial)."""
    record_started(store, exp(make_spec()), time_ms=T0)
    started = exp(make_spec())
    reordered = replace(started, groups=tuple(reversed(started.groups)))
    spec = replace(make_spec(), experiments={"button_color": reordered})
    with pytest.raises(SpecError) as raised:
        check_unchanged(spec, store)
    assert "experiments.button_color: groups reordered to Red, Control (the order decides" in (
        str(raised.value)
    )
    assert "name changed" not in str(raised.value)


def test_a_number_that_changes_type_is_named(store: str) -> None:
    """1 and 1.0 are equal in Python but not to the SDK's params or the
    fingerprint: the message said only "the fingerprint changed" (a trial)."""
    numbers: Any = {"control_color": 0, "red_color": 1}  # every group's param of one type
    record_started(store, exp(make_spec(**numbers)), time_ms=T0)
    with pytest.raises(SpecError, match=r"params\.color changed from 1 to 1\.0 \(its type\)"):
        check_unchanged(make_spec(**{**numbers, "red_color": 1.0}), store)


def test_an_allocation_salt_that_follows_its_salt_is_said_as_that(store: str) -> None:
    """Changing only `salt` listed an `allocation_salt` change the trial never
    made (its default is derived from the salt)."""
    record_started(store, exp(make_spec()), time_ms=T0)
    with pytest.raises(SpecError) as raised:
        check_unchanged(make_spec(salt="s2"), store)
    assert 'salt changed from "s1" to "s2"; allocation_salt, derived from salt, changed with' in (
        str(raised.value)
    )
    with pytest.raises(SpecError, match=r'allocation_salt changed from "[0-9a-f-]+" to "own"'):
        check_unchanged(make_spec(allocation_salt="own"), store)  # set: said as set


def test_allocation_may_grow_but_not_shrink(store: str) -> None:
    record_started(store, exp(make_spec(allocation=20)), time_ms=T0)
    check_unchanged(make_spec(allocation=50), store)
    record = read_started(store, "button_color")
    assert record is not None and record.allocation == 50.0  # the high-water mark moved
    assert record.window_start == T0  # growing is not a restart
    check_unchanged(make_spec(allocation=100), store)
    with pytest.raises(SpecError, match="allocation shrank from 100 to 30"):
        check_unchanged(make_spec(allocation=30), store)


def test_restart_starts_a_new_window(store: str, caplog: pytest.LogCaptureFixture) -> None:
    record_started(store, exp(make_spec()), time_ms=T0)
    restarted = make_spec((40, 60), restart=True)
    with caplog.at_level(logging.INFO, "flagware"):
        check_unchanged(restarted, store, time_ms=T0 + 1000)
        check_unchanged(restarted, store, time_ms=T0 + 2000)  # recorded: not said again
    [said] = [r for r in caplog.records if "restarted" in r.getMessage()]
    assert said.getMessage().startswith(
        "flagware: experiments.button_color restarted (restart = true;"
        " groups[0].weight changed from 50 to 40; groups[1].weight changed from 50 to 60)"
    )
    assert said.levelno == logging.WARNING  # shown under a server's default logging
    record = read_started(store, "button_color")
    assert record is not None
    assert record.fingerprint == exp(restarted).fingerprint()
    assert (record.started, record.window_start, record.restarts) == (T0, T0 + 1000, 1)
    # Loading it again, or more exposures of it, keep the window.
    check_unchanged(restarted, store, time_ms=T0 + 5000)
    record_started(store, exp(restarted), time_ms=T0 + 6000)
    # An old process still running the old spec cannot undo the restart.
    record_started(store, exp(make_spec()), time_ms=T0 + 7000)
    again = read_started(store, "button_color")
    assert again == record
    # Without restart, going back is a change like any other.
    with pytest.raises(SpecError, match="weight changed from 40 to 50"):
        check_unchanged(make_spec(), store)


def test_results_read_a_definition_changed_since_start_as_it_started(store: str) -> None:
    """Read with other groups or weights, the stored units would fail the
    sample-ratio check and fill groups that never ran (a new user's trial).
    They refused, and an operator kept old specs to read an experiment at all:
    they read it as the app serves it, as it started, and say so."""
    record_started(store, exp(make_spec()), time_ms=T0)
    assert compute_results(make_spec(), "button_color", store, now=T0 + 10).window_start is None
    edited = compute_results(make_spec(extra_group=True), "button_color", store, now=T0 + 10)
    assert [g.name for g in edited.groups] == ["Control", "Red"]  # as it started
    message = edited.warnings[0]
    assert message.startswith(
        "experiments.button_color: groups changed from [Control, Red] to [Control, Red, Green]"
        " since the experiment started (2026-09-21 14:13 UTC). The app refuses the edit and"
        " serves the recorded definition, and results read the window with it."
    )
    assert "rename it" in message
    assert message.endswith("forget its start with `flagware reset button_color`.")
    assert message in render_text(edited)
    # restart = true takes effect when the app loads the spec, not before.
    restarted = make_spec(extra_group=True, restart=True)
    pending = compute_results(restarted, "button_color", store, now=T0 + 10)
    assert "opens a new analysis window when the app loads" in pending.warnings[0]
    assert pending.window_start is None
    check_unchanged(restarted, store, time_ms=T0 + 1000)  # the app loads it
    results = compute_results(restarted, "button_color", store, now=T0 + 2000)
    assert results.window_start == T0 + 1000 + SETTLE_MS
    # Said in every format, not only JSON's window_start: units before it are left out.
    said = (
        "Analysis window from 2026-09-21 14:13:28 UTC (7 s after a restart (restart = true),"
        " once every process serves the new definition): exposures before it are not counted"
        " (0 unit(s) in its groups then were not exposed again since; those that were count"
        " from their first exposure in the window)"
    )
    assert said in render_text(results) and said in render_html(results)
    assert results.window_opened_by == "restart"
    # An --until before the window: said, not "no units exposed yet" (a new user's trial).
    with pytest.raises(
        ResultsError,
        match=r"--until is before the analysis window: a restart or `flagware reset` at"
        r" 2026-09-21T14:13:21.000\+00:00 opened it, counting exposures from"
        r" 2026-09-21T14:13:28.000\+00:00 on",
    ):
        compute_results(restarted, "button_color", store, now=T0 + 2000, until=T0 + 500)
    assert [g.name for g in results.groups] == ["Control", "Red", "Green"]
    # After the restart, the original spec no longer describes the window: read
    # with the restart's definition, as the app serves it, and said.
    old = compute_results(make_spec(), "button_color", store, now=T0 + 2000)
    assert [g.name for g in old.groups] == ["Control", "Red", "Green"]
    assert "since its restart (2026-09-21 14:13 UTC)" in old.warnings[0]
    assert "serves the definition its restart recorded" in old.warnings[0]
    # Growing the allocation is no change: results read on.
    compute_results(
        make_spec(extra_group=True, restart=True, allocation=100), "button_color", store
    )


def test_restart_on_first_exposure_without_check(store: str) -> None:
    record_started(store, exp(make_spec()), time_ms=T0)
    record_started(store, exp(make_spec(red_color="pink", restart=True)), time_ms=T0 + 42)
    record = read_started(store, "button_color")
    assert record is not None and (record.window_start, record.restarts) == (T0 + 42, 1)


def test_all_changed_experiments_are_reported(store: str) -> None:
    def two(weights: tuple[float, float]) -> Spec:
        body = {
            "unit": "stableID",
            "groups": [
                {"name": "Control", "weight": weights[0]},
                {"name": "B", "weight": weights[1]},
            ],
        }
        return parse_spec({"experiments": {"one": body, "two": body}})

    original = two((50, 50))
    for experiment in original.experiments.values():
        record_started(store, experiment, time_ms=T0)
    with pytest.raises(SpecError) as raised:
        check_unchanged(two((30, 70)), store)
    assert "experiments.one:" in str(raised.value) and "experiments.two:" in str(raised.value)
