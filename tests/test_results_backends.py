"""``flagware results`` on both store backends: the aggregation runs in SQLite or in
PostgreSQL (the same SQL through the store's reader), and the numbers are the
same, checked against the independent computation of ``test_results``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_results import HOUR, METRICS, NOW, Log, check_against_scipy, make_spec, random_log

from flagware.cli import main
from flagware.events.model import CONFIG_EXPOSURE, Event
from flagware.events.store import open_store
from flagware.results import ResultsError, compute_results
from flagware.results.lock import read_started, record_started
from flagware.results.render import to_dict
from flagware.results.sql import SETTLE_MS


def stored(log: Log, location: str) -> str:
    with open_store(location) as store:
        store.append(log.events)
    return location


@pytest.mark.parametrize("seed", [1, 2])
def test_numbers_match_an_independent_computation(store_location: str, seed: int) -> None:
    log = random_log(seed, effect=0.1)
    location = stored(log, store_location)
    # Unadjusted, as test_results checks it; CUPED runs in the comparison below.
    results = compute_results(make_spec(), "button_color", location, now=NOW, cuped=False)
    assert check_against_scipy(results, log) == len(METRICS)


def messy_log() -> Log:
    """Everything the SQL has a rule for, in a few hundred events."""
    log = random_log(7, units=200, effect=0.05)
    # Crossovers, an override, a unit first exposed without a group, a future
    # event, values that are not numbers, a custom unit type with odd characters.
    for i in range(3):
        log.expose(f"x{i}", "Control", NOW - 3 * HOUR)
        log.expose(f"x{i}", "Red", NOW - 2 * HOUR)
    forced = Event(
        CONFIG_EXPOSURE,
        {"userID": "qa", "customIDs": {"stableID": "qa", "companyID": "q'"}},
        metadata={"ruleID": "override"},
        time=NOW - HOUR,
        exposure="button_color",
        group="Red",
    )
    log.events.append(forced)
    log.log(5, "purchase", NOW - HOUR, "not a number")  # type: ignore[arg-type]
    log.log(6, "click", NOW + HOUR)
    for i, group in enumerate(["Control", "Red", "Red", "Control"]):
        user = {"userID": f"c{i}", "customIDs": {"stableID": f"c{i}", "companyID": f"k{i % 3}"}}
        log.events.append(
            Event(CONFIG_EXPOSURE, user, time=NOW - HOUR - i, exposure="button_color", group=group)
        )
    return log


def comparable(results: Any) -> dict[str, Any]:
    data = to_dict(results)
    data.pop("computed_at", None)
    return data


RATIO = {  # clicks per signup: a ratio metric (the delta method), both events summed per unit
    "clicks_per_signup": {
        "kind": "ratio",
        "numerator": {"event": "click", "aggregate": "count"},
        "denominator": {"event": "signup", "aggregate": "count"},
    }
}


@pytest.mark.parametrize("unit", ["stableID", "userID", "companyID"])
def test_postgresql_and_sqlite_agree(tmp_path: Path, postgres_url: str, unit: str) -> None:
    log = messy_log()
    spec = make_spec(unit=unit, metrics={**METRICS, **RATIO})
    sqlite = stored(log, str(tmp_path / "events.db"))
    postgres = stored(log, postgres_url)
    one = compute_results(spec, "button_color", sqlite, now=NOW)
    two = compute_results(spec, "button_color", postgres, now=NOW)
    assert one.crossover_units >= 1
    assert_close(comparable(one), comparable(two))


def assert_close(a: Any, b: Any, path: str = "") -> None:
    """Equal, floats to 1e-9 relative (the backends sum in different orders)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_a_restart_window_is_read_from_either_store(store_location: str) -> None:
    log = random_log(3)
    for i in range(5):  # in one group before the restart, in the other after it
        log.expose(f"moved{i}", "Control", NOW - 40 * HOUR)
        log.expose(f"moved{i}", "Red" if i else "Control", NOW - 20 * HOUR)
    location = stored(log, store_location)
    before = compute_results(make_spec(), "button_color", location, now=NOW)
    first = make_spec().experiments["button_color"]
    record_started(location, first, time_ms=NOW - 72 * HOUR)
    restarted = make_spec((("Control", 40), ("Red", 60)), restart=True)
    changed = restarted.experiments["button_color"]
    record_started(location, changed, time_ms=NOW - 30 * HOUR)  # a new window, mid-data
    after = compute_results(restarted, "button_color", location, now=NOW)
    assert after.window_start == NOW - 30 * HOUR + SETTLE_MS
    assert sum(g.units for g in after.groups) < sum(g.units for g in before.groups)
    # Units of the window exposed to another group before it, replayed in Python.
    assert after.units_switched_groups == _switched(log, after.window_start) > 0


def _switched(log: Log, start: int) -> int:
    exposures = [
        e
        for e in log.events
        if e.name == CONFIG_EXPOSURE and (e.metadata or {}).get("ruleID") != "override"
    ]
    window = sorted((e for e in exposures if start <= e.time <= NOW), key=lambda e: e.time)
    first: dict[str, str | None] = {}
    groups: dict[str, set[str]] = {}
    for e in window:
        unit = e.user["customIDs"]["stableID"]
        first.setdefault(unit, e.group)
        groups.setdefault(unit, set()).update([e.group] if e.group else [])
    return sum(
        1
        for unit, group in first.items()
        if group is not None
        and len(groups[unit]) == 1
        and any(
            e.time < start and e.group not in (None, group)
            for e in exposures
            if e.user["customIDs"]["stableID"] == unit
        )
    )


def test_results_command_reads_a_postgresql_store(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "flagware.toml"
    spec.write_text(
        '[experiments.button_color]\nunit = "stableID"\ngroups = [\n'
        '  { name = "Control", weight = 50 },\n  { name = "Red", weight = 50 },\n]\n'
        '[metrics.signed_up]\nevent = "signup"\nkind = "conversion"\n'
    )
    stored(random_log(4), postgres_url)
    code = main(
        [
            "results",
            "button_color",
            "--spec",
            str(spec),
            "--store",
            postgres_url,
            "--format",
            "json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code in (0, 1, 3) and data["experiment"] == "button_color"
    assert sum(g["units"] for g in data["groups"]) > 0
    missing = postgres_url.replace("flagware_test_", "nothing_here_")
    assert main(["results", "button_color", "--spec", str(spec), "--store", missing]) == 2


def test_diagnostics_page_reads_a_postgresql_store(make_client: Any, postgres_url: str) -> None:
    from test_diagnostics import http, page

    client = make_client(event_store=postgres_url, diagnostics=True)
    browser = http(client)
    for note in ("a", "b"):
        assert browser.get(f"/?note={note}").status_code == 200
    client.flush()
    events = page(browser, "/_flagware/events.json").json["events"]
    notes = [e["metadata"]["note"] for e in events if e["event"] == "clicked"]
    assert notes == ["a", "b"]
    assert "flagware diagnostics" in page(browser).text


def test_check_and_reset_read_either_store(
    store_location: str, spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flagware.spec import load_spec

    spec = load_spec(spec_file)
    record_started(store_location, spec.experiments["button_color"], time_ms=NOW - HOUR)
    changed = spec_file.parent / "changed.toml"
    changed.write_text(spec_file.read_text().replace('color = "red"', 'color = "pink"'))
    assert main(["check", "--spec", str(spec_file), "--store", store_location]) == 0
    assert main(["check", "--spec", str(changed), "--store", store_location]) == 2
    assert "since the experiment started" in capsys.readouterr().err
    assert main(["reset", "button_color", "--yes", "--store", store_location]) == 0
    assert main(["check", "--spec", str(changed), "--store", store_location]) == 0
    # The next start opens the analysis window at the reset, on either backend.
    changed_spec = load_spec(changed)
    record_started(store_location, changed_spec.experiments["button_color"])
    record = read_started(store_location, "button_color")
    assert record is not None and record.reset_at is not None and record.restarts == 0
    results = compute_results(changed_spec, "button_color", store_location)
    assert results.window_start == record.reset_at + SETTLE_MS
    assert results.window_opened_by == "reset"  # said as such, not "a restart or a reset"


def test_an_experiment_removed_from_the_spec_is_read_from_either_store(
    store_location: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = random_log(5)
    location = stored(log, store_location)
    spec = make_spec()
    record_started(location, spec.experiments["button_color"], time_ms=NOW - 72 * HOUR)
    before = compute_results(spec, "button_color", location, now=NOW)
    without = make_spec(experiments=())
    after = compute_results(without, "button_color", location, now=NOW)
    assert not after.sequential  # as its record says (make_spec: a fixed horizon)
    assert after.warnings[0].startswith("button_color is not in <spec>: read as its start record")
    assert to_dict(after)["metrics"] == to_dict(before)["metrics"]
    assert after.verdict == before.verdict and after.groups == before.groups
    with pytest.raises(ResultsError, match=r"started in the store: button_color\)$"):
        compute_results(without, "button_colour", location, now=NOW)
    file = tmp_path / "ended.toml"
    file.write_text('[gates.a]\nrollout = 5\n[metrics.signed_up]\nevent = "signup"\n')
    assert main(["check", "--spec", str(file), "--store", location]) == 0
    assert "experiments.button_color has a start record" in capsys.readouterr().err


EXPOSURES = {  # an event that only exposures carry: read without the metric-event index
    "exposures": {"event": CONFIG_EXPOSURE, "kind": "count", "cap_percentile": 100},
}


def test_the_indexed_and_scanned_unit_paths_agree(store_location: str) -> None:
    """userID experiments read each unit's events as a run of the ``events_by_user`` index;
    stableID ones scan the event and probe units. Every unit here has the same
    number in both IDs, so both analyses must give the same numbers."""
    log = messy_log()
    location = stored(log, store_location)
    metrics = {**METRICS, **RATIO, **EXPOSURES}
    by_user = compute_results(
        make_spec(unit="userID", metrics=metrics), "button_color", location, now=NOW
    )
    by_stable = compute_results(
        make_spec(unit="stableID", metrics=metrics), "button_color", location, now=NOW
    )
    one, two = comparable(by_user), comparable(by_stable)
    assert (one.pop("unit"), two.pop("unit")) == ("userID", "stableID")
    assert_close(one, two)
    counts = {m.name: m for m in by_user.metrics}
    assert counts["exposures"].samples["Control"].mean > 0  # repeat exposures after the first


def test_an_old_postgresql_store_gains_the_results_indexes(postgres_url: str) -> None:
    """A store made by 0.1.0 (an index on the name only) is brought up to date by
    the first writer of this version, and results read it the same before and after."""
    import psycopg

    log = messy_log()
    stored(log, postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "DROP INDEX flagware.events_by_user; DROP INDEX flagware.events_non_numeric;"
            " CREATE INDEX events_by_name ON flagware.events (event)"
        )
    spec = make_spec(unit="userID", metrics={**METRICS, **RATIO})
    before = compute_results(spec, "button_color", postgres_url, now=NOW)
    with open_store(postgres_url) as store:
        assert store.count() == len(log.events)  # a writer connects: the schema is updated
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'flagware'"
            )
        }
    assert {"events_by_user", "events_non_numeric"} <= indexes
    assert "events_by_name" not in indexes
    after = compute_results(spec, "button_color", postgres_url, now=NOW)
    assert_close(comparable(before), comparable(after))


def test_events_never_stored_are_found_on_either_store(store_location: str) -> None:
    """The skip scan over stored names (a recursive query) runs on both backends."""
    metrics = {
        "signed_up": {"event": "signups", "kind": "conversion"},
        "errors": {"event": "eror", "kind": "count", "tags": ["guardrail"]},
    }
    location = stored(random_log(3), store_location)
    results = compute_results(make_spec(metrics=metrics), "button_color", location, now=NOW)
    assert [w for w in results.warnings if "events stored" in w] == [
        "signed_up: no 'signups' events stored (did you mean 'signup'?), so it is 0 for every unit"
    ]
    (guardrail,) = results.guardrails
    assert "no 'eror' events stored (did you mean 'error'?)" in guardrail.reason


def test_browsers_exposed_under_two_user_ids_are_said(store_location: str) -> None:
    """A login changes the userID: in a userID experiment a signed-up browser
    was two units, half of them in both groups, without a word (a new user's
    trial: 939 of 3,000 visitors)."""
    log = random_log(3, units=120)

    def expose(user_id: str, stable_id: str, group: str, t: int, **metadata: str) -> None:
        who = {"userID": user_id, "customIDs": {"stableID": stable_id}}
        log.events.append(
            Event(
                CONFIG_EXPOSURE,
                who,
                metadata=metadata or None,
                time=t,
                exposure="button_color",
                group=group,
            )
        )

    for n, (before, after) in enumerate([("Control", "Red"), ("Red", "Red"), ("Red", "Control")]):
        expose(f"anon-{n}", f"browser-{n}", before, NOW - 3 * HOUR)
        expose(f"user-{n}", f"browser-{n}", after, NOW - 2 * HOUR)  # after the login
    expose("anon-qa", "browser-qa", "Red", NOW - 3 * HOUR, ruleID="override")  # forced: not it
    expose("user-qa", "browser-qa", "Control", NOW - 2 * HOUR, ruleID="override")
    location = stored(log, store_location)
    by_user = compute_results(make_spec(unit="userID"), "button_color", location, now=NOW)
    assert by_user.shared_browsers == 3
    [said] = [w for w in by_user.warnings if "browser(s)" in w]
    assert said.startswith("3 browser(s) (stableIDs) were exposed under two or more userIDs")
    assert "and 2 of those browsers were in different groups" in said
    by_browser = compute_results(make_spec(unit="stableID"), "button_color", location, now=NOW)
    assert by_browser.shared_browsers == 0  # one unit each, crossovers checked as usual
    assert not [w for w in by_browser.warnings if "browser(s)" in w]


def test_check_before_the_app_wrote_the_store_says_where_it_looked(
    store_location: str, spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty database read "no event store at postgresql://...", as if the
    URL were wrong (an operator's trial): it says the app has not written it."""
    from flagware.events.store import redact

    assert main(["check", "--spec", str(spec_file), "--store", store_location]) == 0
    out = capsys.readouterr().out
    if store_location.startswith("postgresql"):
        where = f"in the database at {redact(store_location)} yet (the app creates it on its"
    else:
        where = f"at {store_location}"
    assert f"; no event store {where}" in out
