"""``manage.py flagware COMMAND``: the flagware command with settings.FLAGWARE's spec and store."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django_settings import DEMO_SPEC, ROOT, configure, flagware_settings

configure()

from django.core.management import CommandError, call_command  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from flagware.cli import main  # noqa: E402

DEMO = ROOT / "examples" / "django_demo"


def visited_store(tmp_path: Path, visitors: int = 40) -> str:
    """A store the demo's Django views wrote: ``visitors`` visitors of /signup."""
    with contextlib.contextmanager(flagware_settings)(tmp_path, DEMO_SPEC) as client:
        for n in range(visitors):
            Client(REMOTE_ADDR=f"198.51.100.{n + 1}").get("/signup")
        client.flush()
        # Under the pytest plugin the client writes to a store of the test's own.
        store: str = client.event_store
    return store


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no spec and an environment naming no usable store."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("FLAGWARE_EVENT_STORE", str(cwd / "not-this.db"))
    monkeypatch.delenv("FLAGWARE_SPEC", raising=False)
    return cwd


def test_events_and_results_read_the_spec_and_store_of_the_settings(
    tmp_path: Path, elsewhere: Path, capsys: Any
) -> None:
    store = visited_store(tmp_path)
    capsys.readouterr()
    # What the plain command finds here: neither.
    assert main(["results", "button_color"]) == 2
    assert "spec file not found" in capsys.readouterr().err
    assert main(["events"]) == 2
    assert "no event store" in capsys.readouterr().err
    settings = {"spec": DEMO_SPEC, "event_store": Path(store), "hash_key": "test-key"}
    with override_settings(FLAGWARE=settings):
        call_command("flagware", "events", "--format", "jsonl")
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [row["event"] for row in rows].count("visited_signup") == 40
        assert len({row["user_id"] for row in rows}) == 40

        call_command("flagware", "results", "button_color", "--format", "json")
        report = json.loads(capsys.readouterr().out)
        units = sum(group["units"] for group in report["groups"])
        assert report["experiment"] == "button_color" and units == 40

        # An option given wins over the settings, as on the command line.
        with pytest.raises(CommandError) as raised:
            call_command("flagware", "events", "--store", str(elsewhere / "missing.db"))
        assert raised.value.returncode == 2
        assert "missing.db" in capsys.readouterr().err


def test_call_command_writes_to_the_streams_it_is_given(
    tmp_path: Path, elsewhere: Path, capsys: Any
) -> None:
    """As Django's own commands do: ``call_command(..., stdout=buffer)`` got
    nothing, everything went to the process's stdout (a new user's trial)."""
    import io

    store = visited_store(tmp_path, visitors=2)
    capsys.readouterr()
    out, err = io.StringIO(), io.StringIO()
    with override_settings(FLAGWARE={"spec": DEMO_SPEC, "event_store": store}):
        call_command("flagware", "events", "--format", "table", stdout=out, stderr=err)
        header, *rows = out.getvalue().split("\n")
        assert header.split()[:3] == ["time", "(UTC)", "event"] and rows[-1] == ""
        assert all(rows[:-1]) and len(rows) > 2  # one line a row, none doubled
        with pytest.raises(CommandError):
            call_command("flagware", "results", "button_colour", stdout=out, stderr=err)
    assert "button_color" in err.getvalue()  # did you mean
    assert capsys.readouterr() == ("", "")


def test_under_the_test_isolation_the_command_reads_the_projects_test_store(
    tmp_path: Path, elsewhere: Path, capsys: Any
) -> None:
    """A test that ran ``manage.py flagware events`` read the real store named
    in the settings, dev data and all, while the app wrote to its temporary
    one; the test passed on the dev rows (a new user's trial)."""
    from flagware.django import conf
    from flagware.testing import isolate

    real = visited_store(tmp_path, visitors=3)
    capsys.readouterr()
    settings = {"spec": DEMO_SPEC, "event_store": real, "hash_key": "test-key"}
    with isolate(), override_settings(FLAGWARE=settings):
        try:
            conf.get_client().log_event("in_the_test", user_id="u-1")  # not flushed yet
            call_command("flagware", "events")
            shown = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
            assert shown == ["in_the_test"]
            assert conf.get_client().event_store != real
        finally:
            conf.reset_client()
    call_command("flagware", "events", "--store", real)  # the real store, as it was
    assert capsys.readouterr().out.count('"visited_signup"') == 3


def test_a_key_left_out_of_the_settings_falls_back_as_the_client_does(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    store = visited_store(tmp_path, visitors=3)
    monkeypatch.setenv("FLAGWARE_EVENT_STORE", store)
    with override_settings(FLAGWARE={"spec": DEMO_SPEC, "hash_key": "test-key"}):
        call_command("flagware", "events")
    assert capsys.readouterr().out.count('"visited_signup"') == 3


def test_check_on_statsig_settings_with_no_spec_file_has_none_to_check(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """As the system check decides (E002 only without a secret)."""
    monkeypatch.delenv("STATSIG_SERVER_SECRET", raising=False)
    with override_settings(FLAGWARE={"statsig_secret": "secret-x", "hash_key": "k"}):
        call_command("flagware", "check")  # exit 0: no CommandError
    assert capsys.readouterr().out.startswith(
        "flagware check: settings.FLAGWARE['statsig_secret'] is set, so the app reads its"
        " flags from Statsig"
    )
    # A spec in the settings is what the app reads, secret or not: it is checked.
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-x")
    with (
        override_settings(FLAGWARE={"spec": elsewhere / "missing.toml"}),
        pytest.raises(CommandError) as raised,
    ):
        call_command("flagware", "check")
    assert raised.value.returncode == 2
    assert "spec file not found" in capsys.readouterr().err


def test_bad_input_keeps_the_commands_exit_code_and_message(
    tmp_path: Path, elsewhere: Path, capsys: Any
) -> None:
    store = visited_store(tmp_path, visitors=2)
    with override_settings(FLAGWARE={"spec": DEMO_SPEC, "event_store": store}):
        with pytest.raises(CommandError) as raised:
            call_command("flagware", "results", "button_colour")
        assert raised.value.returncode == 2
        assert "button_color" in capsys.readouterr().err  # did you mean
        with pytest.raises(CommandError) as raised:
            call_command("flagware")  # no command: argparse's usage error
        assert raised.value.returncode == 2
    # A misspelled key would otherwise read the default store, silently.
    misspelled = {"spec": DEMO_SPEC, "event_stor": store}
    with (
        override_settings(FLAGWARE=misspelled),
        pytest.raises(CommandError, match=r"event_stor \(did you mean 'event_store'\?\)"),
    ):
        call_command("flagware", "events")
    not_a_path = {"spec": DEMO_SPEC, "event_store": 5}
    with (
        override_settings(FLAGWARE=not_a_path),
        pytest.raises(CommandError, match=r"FLAGWARE\['event_store'\] must be a path"),
    ):
        call_command("flagware", "events")


def test_the_plain_command_in_a_django_project_points_to_manage_py(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAGWARE_EVENT_STORE", raising=False)
    monkeypatch.delenv("FLAGWARE_SPEC", raising=False)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["events"]) == 2
    assert "manage.py" not in capsys.readouterr().err  # not a Django project
    (tmp_path / "manage.py").write_text("")
    assert main(["events", "--store", "other.db"]) == 2
    assert "manage.py" not in capsys.readouterr().err  # a store was named
    assert main(["events"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"flagware events: no event store at .flagware/events.db (in the working directory,"
        f" {tmp_path})",
        "flagware events: in a Django project, `python manage.py flagware events ...` reads"
        " the spec and store settings.FLAGWARE names",
    ]


def test_help_names_the_settings_and_hides_a_password(capsys: Any) -> None:
    url = "postgresql://app:s3cret%21@db.internal/site"
    with override_settings(FLAGWARE={"spec": DEMO_SPEC, "event_store": url}):
        call_command("flagware", "results", "--help")  # exit 0: no CommandError
    # argparse wraps help at the terminal's width, cutting a long path anywhere.
    text = "".join(capsys.readouterr().out.split())
    assert f"default:{DEMO_SPEC},fromsettings.FLAGWARE" in text
    assert "postgresql://app:***@db.internal/site,fromsettings.FLAGWARE" in text
    assert "s3cret" not in text


def manage(*args: str, cwd: Path, store: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STATSIG_"))}
    env["FLAGWARE_EVENT_STORE"] = str(store)  # the demo's settings name no store
    env.pop("FLAGWARE_SPEC", None)
    return subprocess.run(
        [sys.executable, str(DEMO / "manage.py"), "flagware", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_flagware_on_the_demo_project(tmp_path: Path) -> None:
    store = tmp_path / "events.db"
    subprocess.run(
        [sys.executable, "-m", "flagware.cli", "demo", "--visitors", "300", "--store", str(store)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    # tmp_path holds no flagware.toml: the spec is the one the demo's settings name.
    settings = "--settings=demo.settings"  # Django's option: not passed on
    result = manage("results", "button_color", settings, cwd=tmp_path, store=store)
    assert result.returncode in (0, 3), result.stderr
    assert "Verdict" in result.stdout and "Traceback" not in result.stderr
    help_text = manage("results", "--help", cwd=tmp_path, store=store)
    assert help_text.returncode == 0
    assert "manage.py flagware results" in help_text.stdout
    assert "fromsettings.FLAGWARE" in "".join(help_text.stdout.split())
    unknown = manage("results", "nope", "--settings", "demo.settings", cwd=tmp_path, store=store)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    # Every manage.py command's options are taken, wherever they are, and mean nothing here.
    django_options = ("-v", "0", "--traceback", "check", "--skip-checks", "--no-color", "-v2")
    checked = manage(*django_options, cwd=tmp_path, store=store)
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout


def test_manage_py_flagware_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "mysite").mkdir(parents=True)
    (project / "mysite" / "__init__.py").write_text("")
    (project / "mysite" / "settings.py").write_text(
        "INSTALLED_APPS = ['flagware.django']\nSECRET_KEY = 'x'\n"
        "FLAGWARE = {'spec': 'flagware.toml', 'event_stor': 'var/events.db'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLAGWARE_"))}
    settings = ("--settings", "mysite.settings")
    command = [sys.executable, "-m", "django", "flagware", "events", *settings]
    result = subprocess.run(
        command,
        cwd=project,
        env={**env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "CommandError: settings.FLAGWARE has unknown keys: event_stor (did you mean 'event_store'?)"
    )
