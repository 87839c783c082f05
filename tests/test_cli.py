"""The flagware command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from flagware import FlagwareMiddleware, current_flags
from flagware.cli import main


def events_shown(store: list[str], capsys: Any) -> Any:
    """``flagware events`` with ``--store`` and options: its JSON lines, parsed."""

    def shown(*options: str) -> list[dict[str, Any]]:
        assert main(["events", *store, *options]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    return shown


def test_events_jsonl_prints_every_stored_event(client: Any, capsys: Any) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        flags.gate("new_signup")
        flags.experiment("button_color")
        flags.log_event("clicked", value=1, metadata={"plan": "pro"})
        start_response("200 OK", [])
        return [b""]

    Client(FlagwareMiddleware(app, client)).get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"})
    client.flush()
    assert main(["events", "--store", str(client.event_store_path), "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == [
        "statsig::gate_exposure",
        "statsig::config_exposure",
        "clicked",
    ]
    for line in lines:
        assert {"event", "user_id", "stable_id", "value", "metadata", "time"} <= line.keys()
        assert line["user_id"] == lines[0]["user_id"] and isinstance(line["time"], int)
    assert lines[2]["value"] == 1 and lines[2]["metadata"] == {"plan": "pro"}
    assert lines[1]["metadata"]["config"] == "button_color"


def test_events_table_has_a_header_utc_times_and_both_ids(client: Any, capsys: Any) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        flags.gate("new_signup")
        flags.experiment("button_color")
        flags.log_event("clicked", value=2.5)
        start_response("200 OK", [])
        return [b""]

    Client(FlagwareMiddleware(app, client)).get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"})
    client.flush()
    store = str(client.event_store_path)
    assert main(["events", "--store", store, "--format", "jsonl"]) == 0
    gate, exposure, clicked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["events", "--store", store, "--format", "table"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "time",
        "(UTC)",
        "event",
        "user_id",
        "stable_id",
        "custom_ids",
        "flag",
        "value",
        "metadata",
    ]
    assert not any(line.endswith(" ") for line in (header, *rows))
    moment = datetime.fromtimestamp(clicked["time"] / 1000, tz=UTC)
    assert rows[2].split() == [
        f"{moment:%Y-%m-%d}",
        f"{moment:%H:%M:%S}.{clicked['time'] % 1000:03d}",
        "clicked",
        clicked["user_id"],
        clicked["stable_id"],  # told apart when every visitor shares one address
        "2.5",
    ]
    assert rows[0].split()[-1] == f"new_signup={gate['metadata']['gateValue']}"
    assert rows[1].split()[2:] == [
        "statsig::config_exposure",
        exposure["user_id"],
        exposure["stable_id"],
        f"button_color:{exposure['group'] or '-'}",
    ]


def test_events_filters_by_name_flag_user_time_and_keeps_the_newest(
    client: Any, capsys: Any
) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        flags.experiment("button_color")
        flags.log_event("clicked", value=1, metadata={"plan": environ["QUERY_STRING"]})
        start_response("200 OK", [])
        return [b""]

    for n in range(3):  # three browsers, three addresses
        browser = Client(FlagwareMiddleware(app, client))
        browser.get(f"/?p{n}", environ_base={"REMOTE_ADDR": f"192.0.2.{n + 1}"})
    client.flush()
    store = ["--store", str(client.event_store_path)]
    shown = events_shown(store, capsys)

    every = shown()
    assert [e["event"] for e in every] == ["statsig::config_exposure", "clicked"] * 3
    assert shown("--event", "clicked") == every[1::2]
    assert shown("--event", "button_color") == every[0::2]  # the experiment's exposures
    assert shown("--event", "clicked", "--tail", "2") == every[3::2]
    second = every[2]["user_id"]
    assert shown("--user", second) == every[2:4]
    assert shown("--user", every[5]["stable_id"], "--user", second) == every[2:6]
    moment = datetime.fromtimestamp(every[4]["time"] / 1000, tz=UTC).isoformat()
    assert shown("--since", moment) == [e for e in every if e["time"] >= every[4]["time"]]
    assert main(["events", *store, "--format", "table", "--event", "clicked", "--tail", "1"]) == 0
    [_, row] = capsys.readouterr().out.splitlines()
    assert row.endswith('1        {"plan": "p2"}')  # a custom event's metadata, last
    assert main(["events", *store, "--since", "yesterday"]) == 2
    assert "--since must be an ISO 8601 date or time" in capsys.readouterr().err
    assert main(["events", *store, "--tail", "0"]) == 2


def test_events_show_and_find_custom_ids(make_client: Any, tmp_path: Path, capsys: Any) -> None:
    """A companyID experiment could not be audited from the command line: no
    custom IDs shown, and ``--user`` did not match them (a new user's trial)."""
    spec = tmp_path / "company.toml"
    spec.write_text(
        '[flagware]\ncustom_ids = ["companyID", "orgID"]\n\n[experiments.pricing]\n'
        'unit = "companyID"\ngroups = [{ name = "Control", weight = 100 }]\n'
    )
    client = make_client(spec=spec)
    for user, ids in (("u-1", {"companyID": "acme"}), ("u-2", {"companyID": "bolt", "orgID": 7})):
        flags = client.flags_for(user_id=user, custom_ids=ids)
        flags.experiment("pricing")
        flags.log_event("clicked")
    client.flags_for(user_id="u-3").log_event("clicked")
    client.flush()
    store = ["--store", str(client.event_store_path)]
    shown = events_shown(store, capsys)

    every = shown()
    assert [(e["user_id"], e["custom_ids"]) for e in every] == [
        ("u-1", {"companyID": "acme"}),
        ("u-1", {"companyID": "acme"}),
        ("u-2", {"companyID": "bolt", "orgID": "7"}),  # stored as text
        ("u-2", {"companyID": "bolt", "orgID": "7"}),  # stored as text
        ("u-3", None),
    ]
    assert shown("--user", "acme") == every[:2]
    assert shown("--user", "companyID=acme") == every[:2]  # as the table shows it
    assert shown("--user", "7", "--user", "u-3") == every[2:]
    assert main(["events", *store, "--format", "table", "--user", "bolt"]) == 0
    header, exposure, clicked = capsys.readouterr().out.splitlines()
    assert header.split()[4:6] == ["stable_id", "custom_ids"]
    assert exposure.split()[5:7] == ["companyID=bolt,orgID=7", "pricing:Control"]
    assert clicked.split()[2:] == ["clicked", "u-2", "-", "companyID=bolt,orgID=7"]


def test_events_quote_custom_ids_the_table_would_make_ambiguous(
    make_client: Any, tmp_path: Path, capsys: Any
) -> None:
    """``companyID=Smith, Jones,orgID=a=b`` could be read as three IDs (a new
    user's trial): a value with a comma, an equals sign, a quote or a space
    is shown as a JSON string, and ``--user`` takes it as shown."""
    spec = tmp_path / "company.toml"
    spec.write_text('[flagware]\ncustom_ids = ["companyID", "orgID"]\n')
    client = make_client(spec=spec)
    ids = {"companyID": "Smith, Jones", "orgID": "a=b"}
    client.flags_for(user_id="u-1", custom_ids=ids).log_event("clicked")
    client.flush()
    store = ["--store", str(client.event_store_path)]
    assert main(["events", *store, "--format", "table"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert 'companyID="Smith, Jones",orgID="a=b"' in row
    shown = events_shown(store, capsys)
    assert len(shown("--user", 'companyID="Smith, Jones"')) == 1
    assert len(shown("--user", "Smith, Jones")) == 1


def test_events_on_a_missing_store_is_a_clear_error(tmp_path: Any, capsys: Any) -> None:
    assert main(["events", "--store", str(tmp_path / "none.db")]) == 2
    assert "no event store" in capsys.readouterr().err


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flagware.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "events" in out.stdout and "demo" in out.stdout


def test_a_reader_that_stops_early_gets_no_traceback(client: Any) -> None:
    """`flagware status | head`: a closed pipe ends any command quietly, not with
    a BrokenPipeError traceback and exit status 1."""
    import os

    from flagware.events.model import Event

    for i in range(3):
        client.log(Event("clicked", {"userID": str(i)}))
    client.flush()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "flagware.cli",
                "status",
                "--store",
                str(client.event_store_path),
            ],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


# -- one CLI --------------------------------------------------------------------


def flagware_cmd(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagware.cli", *args], capture_output=True, text=True, **kwargs
    )


def test_version() -> None:
    from flagware import __version__

    assert flagware_cmd("--version").stdout == f"flagware {__version__}\n"


def test_every_option_of_every_command_has_help() -> None:
    from flagware.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    assert set(sub.choices) >= {"events", "check", "reset", "demo", "status", "results"}
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, f"flagware {name} {action.option_strings or action.dest}"
        options = {s for a in command._actions for s in a.option_strings}
        if name != "demo":  # the demo runs its own app, spec and temporary store
            assert {"--spec", "--store"} <= options, name


def test_store_and_spec_default_to_the_environment_as_the_client_does(
    client: Any, spec_file: Any, monkeypatch: Any, capsys: Any
) -> None:
    Client(FlagwareMiddleware(_exposing_app, client)).get("/")
    client.flush()
    monkeypatch.setenv("FLAGWARE_EVENT_STORE", str(client.event_store_path))
    monkeypatch.setenv("FLAGWARE_SPEC", str(spec_file))
    for command in (["events"], ["status"], ["check"], ["results", "button_color"]):
        assert main(command) == 0, command
    out = capsys.readouterr().out
    assert "statsig::config_exposure" in out and "is valid" in out and "Verdict" in out


def _exposing_app(environ: Any, start_response: Any) -> Any:
    current_flags().experiment("button_color")
    start_response("200 OK", [])
    return [b""]


def test_check_lists_every_problem(tmp_path: Any, capsys: Any) -> None:
    spec = tmp_path / "flagware.toml"
    spec.write_text('[gates.a]\nrolout = 5\n[gates.b]\nunit = "stableId"\n[metric.m]\n')
    assert main(["check", "--spec", str(spec), "--store", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{spec}: metric: unknown section (did you mean 'metrics'?)"
        " (expected gates, experiments, metrics or flagware)",
        f"{spec}: gates.a.rolout: unknown key (did you mean 'rollout'?)"
        " (expected one of: conditions, enabled, overrides, rollout, salt, unit)",
        f"{spec}: gates.b.unit: unknown ID type 'stableId' (did you mean 'stableID'?)"
        ' (ID types are case-sensitive: "userID", "stableID", or a custom ID type declared in'
        " [flagware] custom_ids)",
        f"flagware check: 3 problems in {spec}",
    ]
    spec.write_text("[gates.a]\nrollout = 5\n")
    assert main(["check", "--spec", str(spec), "--store", str(tmp_path / "none.db")]) == 0
    assert capsys.readouterr().out == (
        f"flagware check: {spec} is valid (1 gate, 0 experiments, 0 metrics)\n"
    )


def test_check_and_reset_a_started_experiment(
    make_client: Any, spec_file: Any, tmp_path: Any, capsys: Any
) -> None:
    client = make_client()
    Client(FlagwareMiddleware(_exposing_app, client)).get("/")
    client.close()  # records the start
    store = str(client.event_store_path)
    good = spec_file.read_text()
    spec_file.write_text(good.replace('"red"', '"crimson"'))
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 2
    err = capsys.readouterr().err
    assert "experiments.button_color: groups[1].params.color changed from" in err
    assert "flagware reset button_color" in err
    assert err.endswith(f"flagware check: 1 problem in {spec_file}\n")  # as for any problem
    # A file that does not parse cannot be compared: "every problem" says so (a trial).
    spec_file.write_text(good.replace('"red"', '"crimson"').replace("[gates.", "[gate."))
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 2
    err = capsys.readouterr().err
    assert "changed from" not in err
    assert err.endswith(
        f"flagware check: its started experiments are compared with {store} once the file is"
        " valid\n"
    )
    spec_file.write_text(good.replace('"red"', '"crimson"'))

    assert main(["reset", "button_colour", "--store", store, "--yes"]) == 2
    assert "did you mean 'button_color'?" in capsys.readouterr().err
    no_tty = flagware_cmd("reset", "button_color", "--store", store, stdin=subprocess.DEVNULL)
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    assert main(["reset", "button_color", "--store", store, "--yes"]) == 0
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 0
    assert make_client()  # the app starts on the changed spec


def test_check_reminds_to_remove_restart_once_the_restart_is_recorded(
    make_client: Any, spec_file: Any, capsys: Any
) -> None:
    client = make_client()
    Client(FlagwareMiddleware(_exposing_app, client)).get("/")
    client.close()  # records the start
    store = str(client.event_store_path)
    started = spec_file.read_text()
    # Set with nothing changed (after a reset, say): no restart to speak of (a re-check).
    spec_file.write_text(
        started.replace('unit = "stableID"', 'unit = "stableID"\nrestart = true', 1)
    )
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 0
    assert "experiments.button_color: nothing to restart; remove" in capsys.readouterr().err
    spec_file.write_text(
        started.replace('"red"', '"crimson"').replace(
            'unit = "stableID"', 'unit = "stableID"\nrestart = true', 1
        )
    )
    # Not loaded yet: what loading it will do, said before the deploy.
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 0
    pending = capsys.readouterr().err
    assert pending.startswith(
        f"{spec_file}: warning: experiments.button_color: restart = true and"
        ' groups[1].params.color changed from "red" to "crimson" since the experiment started:'
        " the app restarts it when it loads this spec, and results then count only exposures from"
        " then on; the analysis window open since "
    )
    assert pending.endswith(
        " UTC is no longer read (read it first: until the app loads this spec, `flagware"
        " results button_color` reads it as it started)\n"
    )
    make_client().close()  # the app loads it: the restart is recorded
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 0
    assert capsys.readouterr().err == (
        f"{spec_file}: warning: experiments.button_color: its restart is recorded; remove"
        " `restart = true`, or the next change restarts it (said here, and at WARNING by the"
        " app)\n"
    )
    # Left set, the next edit is another restart: said as one (a trial saw "valid").
    spec_file.write_text(spec_file.read_text().replace('"crimson"', '"darkred"'))
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 0
    assert 'changed from "crimson" to "darkred" since its restart: the app restarts it' in (
        capsys.readouterr().err
    )


def test_an_experiment_removed_once_it_ended_is_noted_and_its_results_still_read(
    make_client: Any, spec_file: Any, capsys: Any
) -> None:
    """Removing an ended experiment from the spec left its start record unsaid
    (re-added with a change, it is refused) and its results unreadable
    ("unknown experiment")."""
    from flagware import identity

    client = make_client()
    app = FlagwareMiddleware(_exposing_app, client)
    identity.seed_ids("removed-once-ended")  # random IDs failed the SRM check once in a while
    try:
        for i in range(60):  # a browser each: the experiment's unit is the stableID cookie
            Client(app).get("/", environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"})
    finally:
        identity.seed_ids(None)
    client.close()  # records the start
    store = str(client.event_store_path)
    spec_file.write_text(spec_file.read_text() + '\n[metrics.signups]\nevent = "signup"\n')
    results = [
        "results",
        "button_color",
        "--spec",
        str(spec_file),
        "--store",
        store,
        "--format",
        "json",
    ]
    assert main(results) == 0
    before = json.loads(capsys.readouterr().out)

    written = spec_file.read_text()
    spec_file.write_text(
        written[: written.index("[experiments.button_color]")]
        + written[written.index("[metrics.signups]") :]
    )
    assert main(["check", "--spec", str(spec_file), "--store", store]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"{spec_file}: note: experiments.button_color has a start record in {store} and is not"
        " in the spec: reads of it serve empty params; `flagware results button_color` reads"
        " it as recorded; re-added, it must be unchanged (or renamed)\n"
    )
    assert "is valid" in out
    assert main(results) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["warnings"][0] == (
        f"button_color is not in {spec_file}: read as its start record defines it"
        " (groups Control, Red, unit stableID, sequential)"
    )
    assert [g["units"] for g in after["groups"]] == [g["units"] for g in before["groups"]]
    assert sum(g["units"] for g in after["groups"]) == 60
    assert after["metrics"] == before["metrics"] and after["verdict"] == before["verdict"]
    assert main([*results[:1], "button_colour", *results[2:]]) == 2
    assert capsys.readouterr().err.endswith(
        "unknown experiment 'button_colour' (did you mean 'button_color'?) (the spec"
        " defines: none; started in the store: button_color)\n"
    )


def test_how_results_are_read_is_recorded_at_the_start_and_its_change_warned(
    make_client: Any, spec_file: Any, capsys: Any
) -> None:
    """`sequential = false` added mid-run was taken without a word (an
    operator's trial): chosen after sequential looks, a fixed horizon's error
    rate is not alpha. The start record keeps how results were to be read."""
    spec_file.write_text(
        spec_file.read_text().replace(
            'unit = "stableID"', 'unit = "stableID"\nsequential_tuning = 20000', 1
        )
    )
    client = make_client()
    app = FlagwareMiddleware(_exposing_app, client)
    for i in range(30):
        Client(app).get("/", environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"})
    client.close()  # records the start
    store = str(client.event_store_path)
    check = ["check", "--spec", str(spec_file), "--store", store]
    assert main(check) == 0
    assert capsys.readouterr().err == ""
    started = spec_file.read_text()
    spec_file.write_text(started.replace("sequential_tuning = 20000", "sequential = false"))
    assert main(check) == 0  # a warning: nothing served changes
    assert capsys.readouterr().err == (
        f"{spec_file}: warning: experiments.button_color: sequential changed from true to"
        " false since the experiment started: a fixed horizon holds its error rate read once at"
        " a size planned before the start; chosen after sequential looks, it does not\n"
    )
    spec_file.write_text(started.replace("sequential_tuning = 20000", "sequential_tuning = 90000"))
    assert main(check) == 0
    assert "sequential_tuning changed from 20000 to 90000 since the experiment started" in (
        capsys.readouterr().err
    )
    results = ["results", "button_color", "--spec", str(spec_file), "--store", store]
    assert main([*results, "--format", "json"]) in (0, 3)
    out = json.loads(capsys.readouterr().out)
    assert [w for w in out["warnings"] if "sequential_tuning changed from 20000" in w]
    # Removed once it ended, it is read as it started: tuned at 20,000.
    written = spec_file.read_text()
    spec_file.write_text(written[: written.index("[experiments.button_color]")])
    assert main([*results, "--format", "json"]) in (0, 3)
    out = json.loads(capsys.readouterr().out)
    assert (out["sequential"], out["sequential_tuning"]) == (True, 20000)


def test_read_commands_never_touch_a_database_that_is_not_a_store(
    tmp_path: Any, capsys: Any
) -> None:
    import hashlib
    import sqlite3

    other = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, " * 100)
    for command in ("events", "status"):
        assert main([command, "--store", str(other)]) == 2
        assert main([command, "--store", str(text)]) == 2
        assert main([command, "--store", str(tmp_path / "missing.db")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        f"flagware events: {other} is not a flagware event store (an SQLite database without"
        " its tables)",
        f"flagware events: {text} is not a flagware event store (not an SQLite database)",
        f"flagware events: no event store at {tmp_path / 'missing.db'}",
    ]
    # check too: a started experiment cannot be compared with what is not a store.
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC_WITH_EXPERIMENT)
    assert main(["check", "--spec", str(spec), "--store", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"flagware check: {other} is not a flagware event store (an SQLite database without"
        " its tables)\n"
    )
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    spec.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite3", "notes.txt"]


SPEC_WITH_EXPERIMENT = """
[experiments.button_color]
groups = [{ name = "Control", weight = 50 }, { name = "Red", weight = 50 }]
"""


def test_check_says_when_no_store_was_there_to_compare(tmp_path: Any, capsys: Any) -> None:
    """A CI job pointing at the wrong store passed a changed experiment as "valid"."""
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC_WITH_EXPERIMENT)
    missing = tmp_path / "var" / "events.db"
    assert main(["check", "--spec", str(spec), "--store", str(missing)]) == 0
    assert capsys.readouterr().out == (
        f"flagware check: {spec} is valid (0 gates, 1 experiment, 0 metrics); no event store"
        f" at {missing}, so no started experiment was compared with it\n"
    )
    assert not missing.parent.exists()  # nothing created


def test_reading_a_store_does_not_migrate_or_write_it(client: Any, capsys: Any) -> None:
    import hashlib

    Client(FlagwareMiddleware(_exposing_app, client)).get("/")
    client.close()
    path = client.event_store_path
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for command in (["events"], ["status"]):
        assert main([*command, "--store", str(path)]) == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_demo_is_reproducible_to_the_byte(tmp_path: Any) -> None:
    # The demo keeps its store and report for the user to read: in tmp_path
    # here, not one folder more in /tmp at every run of the suite.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    demo = ("demo", "--visitors", "150", "--seed")
    runs = [flagware_cmd(*demo, "11", cwd=tmp_path, env=env, check=True) for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout and "Verdict" in runs[0].stdout
    other = flagware_cmd(*demo, "12", cwd=tmp_path, env=env, check=True)
    assert other.stdout != runs[0].stdout
    assert len(list(tmp_path.glob("flagware-demo-*/events.db"))) == 3
    # How to read it again, as typed (a trial's own spec was refused against it).
    again = other.stderr.splitlines()[-1]
    assert again.startswith("Read it again: flagware results button_color")
    argv = shlex.split(again.removeprefix("Read it again: flagware ").split("  (")[0])
    assert main(argv) in (0, 3)


def test_check_warns_of_metrics_whose_events_the_store_never_held(
    client: Any, tmp_path: Any, capsys: Any
) -> None:
    """A misspelled metric event passed check and read as "no effect" in results."""

    def app(environ: Any, start_response: Any) -> Any:
        current_flags().log_event("purchase", value=10)
        start_response("200 OK", [])
        return [b""]

    store = str(client.event_store_path)
    spec = tmp_path / "catalog.toml"
    spec.write_text(
        SPEC_WITH_EXPERIMENT
        + '[metrics.purchased]\nevent = "purchased"\nkind = "conversion"\n'
        + '[metrics.errors]\nevent = "eror"\nkind = "count"\ntags = ["guardrail"]\n'
        + '[metrics.revenue]\nevent = "purchase"\nkind = "sum"\n'
        # Not logged yet, and no misspelling of the event that is (a trial was
        # asked "did you mean 'visited_signup'?" for 'clicked_signup').
        + '[metrics.re_purchased]\nevent = "repurchase_due"\nkind = "count"\n'
    )
    # An empty store: every name is missing, none misspelled, nothing said.
    client.flush()
    assert main(["check", "--spec", str(spec), "--store", store]) == 0
    assert capsys.readouterr().err == ""
    Client(FlagwareMiddleware(app, client)).get("/")
    client.flush()
    assert main(["check", "--spec", str(spec), "--store", store]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"{spec}: warning: metrics.purchased: no 'purchased' events stored (did you mean"
        " 'purchase'?), so it is 0 for every unit",
        f"{spec}: warning: metrics.errors: no 'eror' events stored, so the guardrail cannot"
        " be checked and blocks the launch",
        f"{spec}: warning: metrics.re_purchased: no 'repurchase_due' events stored, so it is 0"
        " for every unit",
    ]
    assert "is valid (0 gates, 1 experiment, 4 metrics)" in out.out
    # With an error beside them, they are said too: "every problem" left them
    # for the run after its fix (a new user's trial).
    from flagware.results.lock import record_started
    from flagware.spec import load_spec

    record_started(store, load_spec(spec).experiments["button_color"])
    spec.write_text(spec.read_text().replace("weight = 50 }, {", "weight = 40 }, {"))
    spec.write_text(spec.read_text().replace('"Red", weight = 50', '"Red", weight = 60'))
    assert main(["check", "--spec", str(spec), "--store", store]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{spec}: experiments.button_color: groups[0].weight changed")
    assert err[1:4] == out.err.splitlines()
    assert err[4:] == [f"flagware check: 1 problem in {spec}"]


def test_results_on_statsig_with_no_spec_file_says_where_results_are(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    """`flagware results` in an app on Statsig said "spec file not found" (a new
    user's trial), where `check` and the diagnostics page say Statsig's console."""
    (tmp_path / "app").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    for name in ("FLAGWARE_SPEC", "FLAGWARE_EVENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-abc")
    assert main(["results", "button_color"]) == 2
    assert capsys.readouterr().err == (
        "flagware results: STATSIG_SERVER_SECRET is set, so the app reads its flags from"
        " Statsig, whose console has its results: this command reads a local spec's"
        " experiments and metrics (no flagware.toml; --spec PATH names one)\n"
    )
    assert main(["results", "button_color", "--spec", "flagware.toml"]) == 2  # named: read
    assert "spec file not found" in capsys.readouterr().err


def test_check_on_statsig_with_no_spec_file_says_there_is_none_to_check(
    tmp_path: Any, spec_file: Any, monkeypatch: Any, capsys: Any
) -> None:
    """As Django's check (E002 only without a secret): `flagware check` exited 2,
    "spec file not found", for an app that reads its flags from Statsig."""
    (tmp_path / "app").mkdir()
    monkeypatch.chdir(tmp_path / "app")  # no flagware.toml here
    for name in ("FLAGWARE_SPEC", "FLAGWARE_EVENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-abc")
    assert main(["check"]) == 0
    assert capsys.readouterr().out == (
        "flagware check: STATSIG_SERVER_SECRET is set, so the app reads its flags from"
        " Statsig: there is no local spec to check (no flagware.toml; --spec PATH checks one);"
        " the event store at .flagware/events.db is not written yet\n"
    )
    # The store is still checked: a file that is no store is bad input.
    (tmp_path / "app" / "notes.txt").write_text("not a database")
    assert main(["check", "--store", "notes.txt"]) == 2
    assert "notes.txt is not a flagware event store" in capsys.readouterr().err
    # Named, a spec is checked as before, and so is one that is there.
    assert main(["check", "--spec", "flagware.toml"]) == 2
    assert "spec file not found" in capsys.readouterr().err
    monkeypatch.setenv("FLAGWARE_SPEC", str(spec_file))
    assert main(["check"]) == 0
    assert "is valid" in capsys.readouterr().out
    # Without a secret (an empty one is none), a missing spec is an error.
    monkeypatch.delenv("FLAGWARE_SPEC")
    monkeypatch.setenv("STATSIG_SERVER_SECRET", " ")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "spec file not found" in err
    assert "STATSIG_SERVER_SECRET is set but empty, so it is ignored" in err  # as the app says
    monkeypatch.delenv("STATSIG_SERVER_SECRET")
    assert main(["check"]) == 2
    assert "STATSIG_SERVER_SECRET" not in capsys.readouterr().err


def test_check_on_statsig_says_a_database_that_refuses_the_url(
    postgres: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The README has `flagware check` run before a deploy for a URL the
    database refuses: on Statsig, with no spec, it exited 0 without reading
    the store (a multi-host trial)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLAGWARE_SPEC", raising=False)
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-abc")
    base, _, query = postgres.admin_url.partition("?")
    refused = f"{base.rpartition('/')[0]}/flagware_no_such_database?{query}"
    assert main(["check", "--store", refused]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flagware check: cannot open {refused}")
    assert "check its user, password and database name" in err
    assert main(["check", "--store", postgres.database()]) == 0  # answers, nothing written yet
    assert capsys.readouterr().out.endswith(" is not written yet\n")


def test_a_database_out_of_reach_has_its_own_exit_code(
    tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user's trial stopped PostgreSQL under load: every command exited 2,
    as for bad input, so a CI job could not tell "try again" from "fix it"."""
    pytest.importorskip("psycopg")
    from flagware.cli import EXIT_UNAVAILABLE

    url = f"postgresql://nobody@/nothing?host={tmp_path}&connect_timeout=1"  # no server there
    commands = (
        ["status"],
        ["events"],
        ["check", "--spec", str(spec_file)],
        ["results", "button_color", "--spec", str(spec_file)],
        ["reset", "button_color", "--yes", "--spec", str(spec_file)],
    )
    for command in commands:
        assert main([*command, "--store", url]) == EXIT_UNAVAILABLE == 4, command
        said = capsys.readouterr().err
        assert f"flagware {command[0]}: cannot reach postgresql://nobody@" in said, said
        assert said.rstrip().endswith("try again once it is reachable") and said.count("\n") == 1
    # A server that answers and refuses the URL is a mistake in it, not an outage.
    from flagware.outages import is_refusal

    refused = 'connection failed: ... failed: FATAL:  database "polls_db" does not exist'
    assert is_refusal(Exception(refused))
    assert not is_refusal(Exception("FATAL:  the database system is starting up"))


def test_a_spec_in_the_app_package_is_pointed_at(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app factory keeps its spec in its package, which the command did not
    look in (a new user's trial): the error now names the one it found."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLAGWARE_SPEC", raising=False)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "flagware.toml").write_text("[gates.beta]\nrollout = 100\n")
    (tmp_path / ".venv").mkdir()  # hidden folders are not looked in
    (tmp_path / ".venv" / "flagware.toml").write_text("")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "spec file not found" in err
    assert err.rstrip().endswith(
        "flagware check: found shop/flagware.toml: pass --spec shop/flagware.toml"
    )
    assert main(["check", "--spec", "shop/flagware.toml"]) == 0


def test_check_warns_of_a_sequential_tuning_no_fixed_horizon_reads(
    tmp_path: Any, capsys: Any
) -> None:
    """Accepted without a word: a fixed-horizon experiment tuned (a trial)."""
    spec = tmp_path / "flagware.toml"
    store = tmp_path / "events.db"
    spec.write_text(SPEC_WITH_EXPERIMENT + "sequential = false\nsequential_tuning = 200000\n")
    assert main(["check", "--spec", str(spec), "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    assert "is valid" in out
    assert err == (
        f"{spec}: warning: experiments.button_color.sequential_tuning is not used: the"
        " experiment sets sequential = false, so its results are read once, at the planned"
        " size, with no confidence sequence to tune\n"
    )
    # Sequential, the tuning is read: nothing to say.
    spec.write_text(SPEC_WITH_EXPERIMENT + "sequential_tuning = 200000\n")
    assert main(["check", "--spec", str(spec), "--store", str(store)]) == 0
    assert capsys.readouterr().err == ""
