"""Flagware configuration: engine choice, environment, hash keys, lifecycle."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from flagware import ConfigurationError, Flagware
from flagware.events.model import Event
from flagware.results.lock import check_unchanged
from flagware.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "STATSIG_SERVER_SECRET",
        "STATSIG_API",
        "FLAGWARE_SPEC",
        "FLAGWARE_EVENT_STORE",
        "FLAGWARE_HASH_KEY",
        "FLAGWARE_TIER",
    ):
        monkeypatch.delenv(name, raising=False)


def test_explicit_spec_wins_over_the_statsig_secret_in_the_environment(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-abc")
    assert make_client().engine_name == "local"


def test_from_env_picks_statsig_when_the_secret_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-abc")
    monkeypatch.setenv("FLAGWARE_HASH_KEY", "k")
    monkeypatch.setenv("STATSIG_API", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("FLAGWARE_EVENT_STORE", str(tmp_path / "e.db"))
    with Flagware.from_env(shutdown_timeout=0) as fw:
        assert fw.engine_name == "statsig"
        assert fw.statsig_api == "http://127.0.0.1:9/v1"
        assert fw.event_store_path == tmp_path / "e.db"
        assert fw.hash_key == b"k"


def test_from_env_without_a_secret_uses_the_local_spec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, spec_file: Any
) -> None:
    monkeypatch.setenv("FLAGWARE_SPEC", str(spec_file))
    monkeypatch.setenv("FLAGWARE_EVENT_STORE", str(tmp_path / "e.db"))
    with Flagware.from_env() as fw:
        assert fw.engine_name == "local"


def test_statsig_without_a_hash_key_refuses_to_start(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="FLAGWARE_HASH_KEY") as raised:
        Flagware(statsig_secret="secret-x", event_store=tmp_path / "e.db")
    # A fresh key would give every visitor a new userID: the local engine's keeps them.
    assert '(FLAGWARE_HASH_KEY="$(cat .flagware/hash_key)")' in str(raised.value)


def test_statsig_secret_must_be_a_server_secret(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"starts with 'secret-'"):
        Flagware(statsig_secret="client-x", hash_key="k", event_store=tmp_path / "e.db")


def test_a_secret_read_from_a_file_loses_its_newline(tmp_path: Any) -> None:
    """A secret mounted as a file ends in a newline: http.client refused it in
    the header, and its error, with the secret in it, reached the log."""
    from tests.statsig_stub import StatsigStub

    secret_file = tmp_path / "statsig_secret"
    secret_file.write_text("secret-from-a-file\n")
    with StatsigStub() as stub:
        with Flagware(
            statsig_secret=secret_file.read_text(),
            statsig_api=stub.url,
            hash_key="k",
            event_store=tmp_path / "e.db",
        ) as fw:
            fw.log(Event("clicked", {"userID": "u"}))
        assert [batch.headers["STATSIG-API-KEY"] for batch in stub.received] == [
            "secret-from-a-file"
        ]


@pytest.mark.parametrize("secret", ["secret-a b", "secret-a\nb", "secret-a\x00"])
def test_a_secret_with_spaces_or_controls_inside_is_refused_unechoed(
    tmp_path: Any, secret: str
) -> None:
    with pytest.raises(ConfigurationError, match="copy the key again") as raised:
        Flagware(statsig_secret=secret, hash_key="k", event_store=tmp_path / "e.db")
    assert secret not in str(raised.value)


def test_spec_and_secret_together_is_an_error(spec_file: Any) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        Flagware(spec=spec_file, statsig_secret="secret-x")


def test_a_hash_key_that_cannot_be_made_is_a_configuration_error(
    tmp_path: Any, spec_file: Any
) -> None:
    """A folder the app may not write: a raw PermissionError on a temporary
    file's name told a new user's trial nothing. Said as what it is, with the
    ways out (here, a file where the store's folder would be)."""
    (tmp_path / "var").write_text("")
    with pytest.raises(ConfigurationError) as raised:
        Flagware(spec=spec_file, event_store=tmp_path / "var" / "events.db")
    message = str(raised.value)
    assert message.startswith(
        f"cannot read or make the hash key for visitor IDs at {tmp_path / 'var' / 'hash_key'}: "
    )
    assert f"Let the app write {tmp_path / 'var'}, or set FLAGWARE_HASH_KEY" in message


def test_local_engine_creates_a_hash_key_once_beside_the_store(
    tmp_path: Any, spec_file: Any, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = "data/events.db"  # relative: where the server starts decides, so the line
    with Flagware(spec=spec_file, event_store=store) as first:  # names the absolute path
        key = first.hash_key
    path = tmp_path / "data" / "hash_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    said = [r.getMessage() for r in caplog.records if "created a hash key" in r.getMessage()]
    assert len(said) == 1 and f" at {path} (a new store, in the working directory);" in said[0]
    with Flagware(spec=spec_file, event_store=store) as second:
        assert second.hash_key == key and len(key) == 64


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_workers_starting_together_all_get_the_one_complete_hash_key(tmp_path: Path) -> None:
    """The file was created, then written: a worker reading in between used ""
    as its key (a new user's trial: 7 of 200 starts of six processes), so one
    visitor had two IDs. Nor may the temporary file stay behind."""
    import multiprocessing

    from flagware.settings import local_hash_key

    def worker(location: str, go: Any, keys: Any) -> None:
        go.wait()
        try:
            keys.put(local_hash_key(location))
        except Exception as exc:
            keys.put(repr(exc))

    fork = multiprocessing.get_context("fork")
    for trial in range(40):
        location = str(tmp_path / str(trial) / "events.db")
        go, keys = fork.Event(), fork.Queue()
        procs = [fork.Process(target=worker, args=(location, go, keys)) for _ in range(6)]
        for proc in procs:
            proc.start()
        go.set()
        got = [keys.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert len(set(got)) == 1 and len(got[0]) == 64, (trial, got)
        assert os.listdir(tmp_path / str(trial)) == ["hash_key"]


def test_an_empty_hash_key_file_is_refused(tmp_path: Path, spec_file: Any) -> None:
    (tmp_path / "hash_key").write_text("\n")
    with pytest.raises(ConfigurationError, match=r"hash key file .* is empty; delete it"):
        Flagware(spec=spec_file, event_store=tmp_path / "events.db")


def test_environment_hash_key_is_used(monkeypatch: pytest.MonkeyPatch, make_client: Any) -> None:
    monkeypatch.setenv("FLAGWARE_HASH_KEY", "from-env")
    assert make_client(hash_key=None).hash_key == b"from-env"


def test_missing_spec_file_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(SpecError, match=r"nope\.toml"):
        Flagware(spec=tmp_path / "nope.toml", event_store=tmp_path / "e.db")


def test_broken_spec_file_names_the_problem(tmp_path: Any) -> None:
    spec = tmp_path / "flagware.toml"
    spec.write_text(
        "[experiments.button_color]\nunit = 'stableID'\ngroups = [\n"
        "{ name = 'Control', weight = 50, params = {} },\n"
        "{ name = 'Red', weight = 40, params = {} }]\n"
    )
    with pytest.raises(SpecError, match=r"experiments\.button_color\.groups.*90.*100"):
        Flagware(spec=spec, event_store=tmp_path / "e.db")


def test_close_stores_everything_and_is_idempotent(make_client: Any) -> None:
    from flagware.events.model import Event

    client = make_client(flush_interval=60)  # the writer would not run on its own
    for i in range(500):
        client.log(Event("e", {"userID": str(i)}))
    client.close()
    client.close()
    from flagware.events.store import EventStore

    with EventStore(client.event_store_path) as store:
        assert store.count() == 500


def test_spec_edits_reload_and_broken_edits_keep_the_last_good_spec(
    make_client: Any,
    spec_file: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    client = make_client()
    user = client.engine.user({"userID": "u1", "customIDs": {"stableID": "s1"}})
    assert client.engine.gate(user, "nobody").value is False
    spec_file.write_text(
        spec_file.read_text().replace(
            "[gates.nobody]\nrollout = 0", "[gates.nobody]\nrollout = 100"
        )
    )
    os.utime(spec_file, (1, 1))
    with caplog.at_level(logging.INFO, logger="flagware"):
        assert client.engine.gate(user, "nobody").value is True
    # The line says what the edit changed, so an operator sees that it took.
    assert caplog.messages == [
        f"flagware: reloaded {spec_file}: gates.nobody changed (rollout changed from 0 to 100)"
    ]
    good = spec_file.read_text()
    spec_file.write_text("not = [valid")
    os.utime(spec_file, (2, 2))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flagware"):
        assert client.engine.gate(user, "nobody").value is True
        assert caplog.messages[-1].startswith("flagware: keeping the previous spec:")
        # Mended as it was: its error is no longer the last word (a new user's trial).
        spec_file.write_text(good)
        os.utime(spec_file, (3, 3))
        assert client.engine.gate(user, "nobody").value is True
    assert caplog.messages[-1] == f"flagware: {spec_file} is valid again (nothing served changed)"


def test_narrowing_a_running_experiments_targeting_gate_is_warned(
    make_client: Any,
    spec_file: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gate may change at any time, but a targeting gate's narrowing takes
    units out of their groups: an operator's trial saw 51 of 74 returning
    units served the defaults, with nothing but an INFO line."""
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    spec_file.write_text(
        spec_file.read_text().replace(
            'unit = "stableID"', 'unit = "stableID"\ntargeting_gate = "everyone"'
        )
    )
    client = make_client()
    user = client.engine.user({"userID": "u1", "customIDs": {"stableID": "s1"}})
    edits = [
        ("[gates.nobody]\nrollout = 0", "[gates.nobody]\nrollout = 100", None),
        (
            "[gates.everyone]\nrollout = 100",
            "[gates.everyone]\nrollout = 30",
            "rollout lowered from 100 to 30",
        ),
        ("[gates.everyone]\nrollout = 30", "[gates.everyone]\nrollout = 60", None),  # widened
        (
            "[gates.everyone]\nrollout = 60",
            "[gates.everyone]\nrollout = 60\nenabled = false",
            "disabled",
        ),
    ]
    for at, (before, after, how) in enumerate(edits, start=1):
        spec_file.write_text(spec_file.read_text().replace(before, after))
        os.utime(spec_file, (at, at))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flagware"):
            client.engine.gate(user, "everyone")
        assert caplog.messages[0].startswith(f"flagware: reloaded {spec_file}: gates.")
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        if how is None:
            assert not warned, after
            continue
        [said] = warned
        assert said.getMessage() == (
            f"flagware: {spec_file}: gates.everyone ({how}) is the targeting gate of"
            " experiments.button_color: units that fail it now leave their groups and are"
            " served the defaults, while results count them in the groups they had; widen it"
            " back, or restart or rename the experiment"
        )


def test_a_spec_replaced_with_its_old_modification_time_is_reloaded(
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cp -p`` (or ``touch -r``, a deploy tool keeping times) put a new spec
    in place with the old one's modification time: no worker ever reloaded
    it (a new user's trial: 0 of 50 requests saw the new rollout)."""
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    before = spec_file.stat()
    client = make_client()
    user = client.engine.user({"userID": "u1", "customIDs": {"stableID": "s1"}})
    assert client.engine.gate(user, "nobody").value is False
    text = spec_file.read_text().replace(
        "[gates.nobody]\nrollout = 0", "[gates.nobody]\nrollout = 100"
    )
    spec_file.write_text(text.replace("rollout = 100", "rollout = 100.0", 1))  # not the same size
    os.utime(spec_file, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p leaves it
    assert spec_file.stat().st_mtime_ns == before.st_mtime_ns
    assert client.engine.gate(user, "nobody").value is True


def _expose(client: Any, visitors: int = 20) -> None:
    from werkzeug.test import Client

    from flagware import FlagwareMiddleware, current_flags

    def app(environ: Any, start_response: Any) -> Any:
        current_flags().experiment("button_color")
        start_response("200 OK", [])
        return [b""]

    http = Client(FlagwareMiddleware(app, client))
    for i in range(visitors):
        http.get("/", environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"})


def _assigned(client: Any, n: int) -> list[Any]:
    """button_color for ``n`` stableIDs, evaluated by the client's engine (a reload check first)."""
    engine = client.engine
    users = [engine.user({"userID": "u", "customIDs": {"stableID": str(i)}}) for i in range(n)]
    return [engine.config(u, "button_color") for u in users]


def _colors(client: Any, n: int = 40) -> set[str]:
    return {config.params["color"] for config in _assigned(client, n)}


def _share_in_red(client: Any, n: int = 400) -> float:
    return sum(config.group == "Red" for config in _assigned(client, n)) / n


def test_a_started_experiment_cannot_change(
    make_client: Any, spec_file: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A process started on a spec that changes a started experiment serves the
    experiment as it started, and the rest of the spec as written. It raised
    instead, and under uvicorn --workers 2 every worker died at import, again
    and again: gates went down with the experiment (a new user's trial)."""
    from flagware.results.lock import read_started
    from flagware.starts import REFUSED

    client = make_client()
    _expose(client)
    client.close()
    record = read_started(client.event_store_path, "button_color")
    assert record is not None

    changed = (
        spec_file.read_text()
        .replace('weight = 50, params = { color = "red"', 'weight = 50, params = { color = "green"')
        .replace("rollout = 100", "rollout = 0")  # a gate edited beside it
    )
    spec_file.write_text(changed)
    restarted = make_client()
    assert _colors(restarted) == {"blue", "red"}  # as it started
    user = restarted.engine.user({"userID": "u", "customIDs": {"stableID": "s"}})
    assert restarted.engine.gate(user, "everyone").value is False  # the gate edit took
    [said] = [r for r in caplog.records if "served as it started" in r.getMessage()]
    assert said.levelname == "ERROR"
    assert re.search(r"button_color.*params.*new name.*restart = true", said.getMessage())
    assert restarted.errors[REFUSED] == 1
    assert restarted.engine.refused and "green" in restarted.engine.refused[0]
    with pytest.raises(SpecError, match=r"button_color.*params.*new name.*restart = true"):
        check_unchanged(load_spec(spec_file), restarted.event_store_path)  # check/results refuse
    restarted.close()

    spec_file.write_text(changed.replace('unit = "stableID"', 'unit = "stableID"\nrestart = true'))
    fresh = make_client()  # a new analysis window instead
    assert _colors(fresh) == {"blue", "green"} and fresh.engine.refused == []


def test_allocation_may_grow_after_the_start(make_client: Any, spec_file: Any) -> None:
    spec_file.write_text(spec_file.read_text().replace("allocation = 100", "allocation = 50"))
    client = make_client()
    _expose(client)
    client.close()
    spec_file.write_text(spec_file.read_text().replace("allocation = 50", "allocation = 80"))
    assert make_client().engine_name == "local"


def test_a_changed_started_experiment_on_reload_keeps_it_and_takes_the_rest(
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A gate can change at any time, also beside a refused experiment edit:
    the whole edit was refused, and a kill switch (rollout 0) in the same file
    kept serving true (a new user's trial)."""
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    monkeypatch.setattr(local, "REFUSED_RETRY_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, "flagware")
    client = make_client()
    _expose(client)
    client.flush()
    client.starts.record()
    spec_file.write_text(
        spec_file.read_text()
        .replace('color = "red"', 'color = "green"')
        .replace("rollout = 100", "rollout = 0")
    )
    os.utime(spec_file, (5, 5))
    user = client.engine.user({"userID": "u", "customIDs": {"stableID": "s"}})
    assert _colors(client) == {"blue", "red"}
    assert client.engine.gate(user, "everyone").value is False
    refused = [r for r in caplog.records if "served as it started" in r.getMessage()]
    assert len(refused) == 1 and "green" in refused[0].getMessage()
    [reloaded] = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]
    assert reloaded.endswith(": gates.everyone changed (rollout changed from 100 to 0)")
    _colors(client)  # looked at again: the same spec, nothing reloaded or said again
    assert len([r for r in caplog.records if "reloaded" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "served as it started" in r.getMessage()]) == 1
    # An edit of the started experiment alone: refused, said, and no reload
    # said to have changed nothing (a re-check trial).
    spec_file.write_text(spec_file.read_text().replace('color = "green"', 'color = "purple"'))
    os.utime(spec_file, (9, 9))
    assert _colors(client) == {"blue", "red"}
    assert len([r for r in caplog.records if "served as it started" in r.getMessage()]) == 2
    assert len([r for r in caplog.records if "reloaded" in r.getMessage()]) == 1
    # Put back as it started: the refusal's end is said too (a trial heard nothing).
    spec_file.write_text(spec_file.read_text().replace('color = "purple"', 'color = "red"'))
    os.utime(spec_file, (12, 12))
    assert _colors(client) == {"blue", "red"} and client.engine.refused == []
    assert [r.getMessage() for r in caplog.records if "nothing refused" in r.getMessage()] == [
        f"flagware: {spec_file}: it changes no started experiment now: nothing refused"
    ]


def test_reset_while_serving_takes_the_refused_edit_and_opens_a_new_window(
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The README's development loop, on a running app: a refused edit, then
    `flagware reset`. The process kept the old spec (the file did not change
    again) and recorded no new start (it had recorded one already), so results
    counted both windows: a sample-ratio mismatch and crossovers."""
    from flagware.cli import main
    from flagware.engine import local
    from flagware.results import sql
    from flagware.results.lock import read_started

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    monkeypatch.setattr(local, "REFUSED_RETRY_INTERVAL", 0.0)
    monkeypatch.setattr(sql, "SETTLE_MS", 0)  # this process looks again at once
    client = make_client()
    _expose(client)
    client.flush()  # stores the exposures, then records the start
    store = str(client.event_store_path)
    first = read_started(store, "button_color")
    assert first is not None

    spec_file.write_text(
        spec_file.read_text()
        .replace("weight = 50", "weight = 25", 1)
        .replace("weight = 50", "weight = 75")
    )
    os.utime(spec_file, (7, 7))
    assert 0.4 < _share_in_red(client) < 0.6  # refused: still 50/50
    refusals = [r for r in caplog.records if "served as it started" in r.getMessage()]
    assert len(refusals) == 1
    _share_in_red(client)  # looked at again: still refused, and not said again
    assert len([r for r in caplog.records if "served as it started" in r.getMessage()]) == 1

    assert main(["reset", "button_color", "--store", store, "--yes"]) == 0
    assert _share_in_red(client) > 0.65  # the same file, accepted now: 25/75
    # Read before the next exposure, results open at the reset: they counted
    # the 20 units of the forgotten 50/50 spec against 25/75 (a new user's
    # trial: a sample-ratio block). None yet, so nothing to call.
    from flagware.results import compute_results
    from flagware.spec import load_spec

    between = compute_results(load_spec(spec_file), "button_color", store)
    assert between.window_start is not None and between.window_start > first.started
    assert sum(g.units for g in between.groups) == 0 and between.verdict == "inconclusive"
    _expose(client)
    client.flush()
    second = read_started(store, "button_color")
    assert second is not None and second.started > first.started  # a new window
    # ...that results open at the reset: the unit from before it (50/50, the
    # spec the reset forgot) is not counted. They counted it: the window stayed
    # closed, as for a first start (a trial on PostgreSQL: an SRM block).
    assert second.reset_at is not None and first.started < second.reset_at <= second.started
    results = compute_results(client.engine.spec, "button_color", store)
    assert results.window_start == second.reset_at
    assert sum(g.units for g in results.groups) == 1  # one visitor after the reset
    assert results.crossover_units == 0


def test_removing_restart_or_editing_a_metric_reloads_nothing_served(
    make_client: Any,
    spec_file: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Removing ``restart = true`` once the restart was taken, as the README
    asks, logged ``experiments.button_color changed`` and exposed every
    visitor anew, though nothing served had changed. A gate's exposures name
    its value, so a gate edit needs nobody exposed anew either."""
    from flagware import visitors
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    written = spec_file.read_text()
    spec_file.write_text(written.replace('unit = "stableID"', 'unit = "stableID"\nrestart = true'))
    client = make_client()
    _expose(client)
    server, generation = client.engine.server(), visitors._generation
    caplog.set_level(logging.INFO, logger="flagware")

    spec_file.write_text(written + '\n[metrics.signups]\nevent = "signup"\n')
    os.utime(spec_file, (5, 5))
    assert _colors(client) == {"blue", "red"}
    assert client.engine.spec.experiments["button_color"].restart is False
    assert "signups" in client.engine.spec.metrics
    [line] = [r.getMessage() for r in caplog.records if "re-read" in r.getMessage()]
    assert line.endswith(
        "experiments.button_color changed (restart changed from true to false);"
        " metrics.signups added (nothing served changed)"
    )
    assert client.engine.server() is server and visitors._generation == generation

    spec_file.write_text(written.replace("rollout = 50", "rollout = 60"))
    os.utime(spec_file, (6, 6))
    user = client.engine.user({"userID": "u", "customIDs": {"stableID": "s"}})
    client.engine.gate(user, "new_signup")
    assert client.engine.server() is not server  # the gate edit is served
    assert visitors._generation == generation  # and nobody exposed anew for it
    reloaded = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]
    assert reloaded[-1].endswith(
        "gates.new_signup changed (rollout changed from 50 to 60); metrics.signups removed"
    )

    spec_file.write_text(
        written + '\n[experiments.other]\ngroups = [{ name = "A", weight = 100 }]\n'
    )
    os.utime(spec_file, (7, 7))
    client.engine.gate(user, "new_signup")
    assert visitors._generation == generation + 1  # an experiment changed: everyone anew


def test_a_reset_with_the_spec_unchanged_records_the_start_again(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No edit, so no reload: the process recorded no new start, deduped its
    returning visitors, and a later edit was taken without a word (a new
    user's trial). It finds the reset at its next check of the records."""
    from werkzeug.test import Client

    from flagware import FlagwareMiddleware, current_flags, starts
    from flagware.cli import main
    from flagware.results.lock import read_started

    def app(environ: Any, start_response: Any) -> Any:
        current_flags().experiment("button_color")
        current_flags().log_event("page")
        start_response("200 OK", [])
        return [b""]

    client = make_client()
    browser = Client(FlagwareMiddleware(app, client))  # one returning visitor

    def exposures() -> int:
        client.flush()
        return sum(e["exposure"] == "button_color" for e in client.store.iter_events())

    browser.get("/")
    browser.get("/")
    assert exposures() == 1  # the repeat is deduped
    store = str(client.event_store_path)
    first = read_started(store, "button_color")
    assert first is not None
    assert main(["reset", "button_color", "--store", store, "--yes"]) == 0
    monkeypatch.setattr(starts, "VERIFY_INTERVAL", 0.0)
    client.starts._next_verify = 0.0
    browser.get("/")
    assert exposures() == 1  # a repeat still; its events stored, the records are checked
    browser.get("/")
    assert exposures() == 2  # exposed anew, and its start recorded
    second = read_started(store, "button_color")
    assert second is not None and second.reset_at is not None
    assert second.started >= second.reset_at > first.started


def test_a_process_whose_experiment_differs_from_the_start_record_says_so(
    make_client: Any,
    spec_file: Any,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two hosts on one store, started together with different weights for a
    new experiment: the first to expose recorded its definition, and the
    other served its own without a word (a new user's trial on PostgreSQL:
    Bold 500, Control 275 exposures, a third of the units in both groups)."""
    from flagware.engine import local
    from flagware.starts import DIFFERS, REFUSED

    caplog.set_level(logging.INFO, logger="flagware")
    other_spec = tmp_path / "other.toml"
    other_spec.write_text(
        spec_file.read_text()
        .replace("weight = 50", "weight = 25", 1)
        .replace("weight = 50", "weight = 75")
    )
    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    first = make_client()
    other = make_client(spec=other_spec)  # starts before anything is recorded: no refusal
    _expose(first)
    first.flush()  # records the 50/50 definition
    _expose(other)
    other.flush()
    differs = [r for r in caplog.records if "differs from its start record" in r.getMessage()]
    assert len(differs) == 1 and "weight changed from 50 to 25" in differs[0].getMessage()
    assert other.errors[DIFFERS] == 1 and first.errors[DIFFERS] == 0
    # From its next request on, the other serves the experiment as recorded
    # (50/50), as a process started now would: units see one definition.
    assert 0.4 < _share_in_red(other) < 0.6
    assert other.errors[REFUSED] == 1
    assert "weight changed from 50 to 25" in other.engine.refused[0]
    # Its log says what it now serves, not only that the experiment changed;
    # neither "reloaded" (its file is as it was) nor the advice for an edit
    # ("set restart = true" would restart it with this host's definition).
    assert not [r for r in caplog.records if "reloaded" in r.getMessage()]
    assert not [r for r in caplog.records if "restart = true" in r.getMessage()]
    [reloaded] = [r.getMessage() for r in caplog.records if "start records'" in r.getMessage()]
    assert reloaded.endswith(
        "experiments.button_color changed (groups[0].weight changed from 25 to 50,"
        " groups[1].weight changed from 75 to 50)"
    )
    _expose(other)
    other.flush()  # said once per record, and it now matches the record
    assert other.errors[DIFFERS] == 1


def test_close_keeps_storing_while_the_store_is_briefly_away(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGTERM during a database restart lost the whole queue at once (a new
    user's trial: 728 events, PostgreSQL back two seconds later). close() now
    tries again within shutdown_timeout."""
    import sqlite3

    from flagware.events.model import Event
    from flagware.events.store import open_store

    client = make_client(shutdown_timeout=3)
    for i in range(50):
        client.log(Event("clicked", {"userID": str(i)}))
    store, real = client.store, client.store.append_rows
    back_at = time.monotonic() + 0.8

    def away(rows: Any) -> Any:
        if time.monotonic() < back_at:
            raise sqlite3.OperationalError("disk I/O error")
        return real(rows)

    monkeypatch.setattr(store, "append_rows", away)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 3
    assert client.errors["event store"] >= 1
    assert "could not be stored" not in caplog.text
    with open_store(client.event_store) as check:
        assert check.count() == 50


def test_a_start_record_that_failed_is_written_after_the_next_flush(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed start record was dropped: this process never noted the start
    again, so it stayed unrecorded unless another process recorded it."""
    import sqlite3

    from flagware.results import lock

    real, calls = lock.record_started, []

    def locked_once(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        real(*args, **kwargs)

    monkeypatch.setattr(lock, "record_started", locked_once)
    client = make_client()
    store = str(client.event_store_path)
    _expose(client)
    client.flush()
    assert lock.read_started(store, "button_color") is None
    assert client.errors["experiment start record"] == 1
    _expose(client, visitors=1)
    client.flush()
    assert lock.read_started(store, "button_color") is not None
    assert len(calls) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_engine_restarts_in_a_forked_child(make_client: Any) -> None:
    """Pre-fork servers: the parent's SDK threads do not survive a fork, so the
    child must build its own SDK on first use instead of using the parent's."""
    client = make_client()
    user = client.engine.user({"userID": "u", "customIDs": {"stableID": "s"}})
    parent_server = client.engine.server()
    assert client.engine.gate(user, "everyone").value is True
    read, write = os.pipe()
    assert client.engine.ready  # what the ASGI middleware reads (started(), without a call)
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's atexit
        ok = not client.engine.ready and not client.engine.started()
        ok = ok and client.engine.server() is not parent_server and client.engine.ready
        ok = ok and client.engine.gate(user, "everyone").value is True
        os.write(write, b"ok" if ok else b"no")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and status == 0
    os.close(read)
    assert client.engine.server() is parent_server
    client.engine.close()
    assert not client.engine.ready and not client.engine.started()


# -- bounded inputs --------------------------------------------------------------


def test_user_agent_and_metadata_are_capped_and_counted(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from flagware.events.limits import MAX_METADATA_KEYS, MAX_METADATA_VALUE, MAX_USER_AGENT
    from flagware.events.model import Event

    fw = make_client()
    user = {"userID": "u", "userAgent": "A" * 1_000_000}
    with caplog.at_level(logging.WARNING, logger="flagware"):
        for i in range(3):
            fw.log(Event("big", user, metadata={"note": "x" * 100_000, "i": i}))
        fw.log(Event("wide", {"userID": "u"}, metadata={f"k{i}": i for i in range(500)}))
        fw.log(Event("nested", {"userID": "u"}, metadata={"list": list(range(10_000))}))
        fw.log(Event("small", {"userID": "u", "userAgent": "ok"}, metadata={"a": "b"}))
    fw.flush()
    rows = {r["event"]: r for r in fw.store.iter_events()}
    assert len(user["userAgent"]) == MAX_USER_AGENT
    assert len(rows["big"]["metadata"]["note"]) == MAX_METADATA_VALUE
    assert len(rows["wide"]["metadata"]) == MAX_METADATA_KEYS
    assert len(rows["nested"]["metadata"]["list"]) == MAX_METADATA_VALUE  # its JSON, cut
    assert rows["small"]["metadata"] == {"a": "b"}
    assert fw.truncated == {"user_agent": 1, "metadata": 5}  # once per shared user
    assert len([r for r in caplog.records if "truncated" in r.getMessage()]) == 2


def test_a_capped_user_is_stored_capped_even_when_it_came_encoded(make_client: Any) -> None:
    from flagware.events.limits import MAX_USER_AGENT
    from flagware.events.model import Event, compact_json

    fw = make_client()
    user = {"userID": "u", "userAgent": "A" * 10_000}
    fw.log(Event("big", user, user_json=compact_json(user)))  # the encoding of the uncapped user
    fw.flush()
    [payload] = [r[0] for r in fw.store._conn().execute("SELECT payload FROM events")]
    assert json.loads(payload)["user"] == {"userID": "u", "userAgent": "A" * MAX_USER_AGENT}


def test_a_requests_huge_user_agent_is_cut_once_for_all_its_events(make_client: Any) -> None:
    from flagware.events.limits import MAX_USER_AGENT
    from flagware.flags import Flags

    fw = make_client()
    agent = "Mozilla/5.0 " + "A" * 100_000
    flags = Flags(
        fw, {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1", "HTTP_USER_AGENT": agent}
    )
    flags.gate("new_signup")
    flags.experiment("button_color")
    flags.log_event("clicked")
    fw.flush()
    rows = list(fw.store.iter_events())
    assert [r["event"] for r in rows] == [
        "statsig::gate_exposure",
        "statsig::config_exposure",
        "clicked",
    ]
    assert fw.truncated == {"user_agent": 1}
    payloads = [r[0] for r in fw.store._conn().execute("SELECT payload FROM events")]
    assert all(json.loads(p)["user"]["userAgent"] == agent[:MAX_USER_AGENT] for p in payloads)


# -- SIGTERM ---------------------------------------------------------------------

SIGTERM_APP = """
import signal, sys, time
sys.path.insert(0, {root!r})
{before}
from flagware import Flagware
from flagware.events.model import Event
fw = Flagware(spec={spec!r}, event_store={store!r}, hash_key="k", flush_interval=60)
for i in range(51):
    fw.log(Event("queued", {{"userID": "u"}}, metadata={{"uid": i}}))
print("ready", flush=True)
time.sleep(30)
print("not reached", flush=True)
"""

APP_HANDLER = """
def app_handler(signum, frame):
    print("app handler", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, app_handler)
"""


@pytest.mark.parametrize(
    ("before", "code", "output"),
    [
        ("", -signal.SIGTERM, ""),  # no handler (waitress, python app.py): dies by SIGTERM
        (APP_HANDLER, 3, "app handler\n"),  # the app's own handler still runs, after ours
    ],
    ids=["no-handler", "chained"],
)
def test_sigterm_stores_the_queue(
    store_location: str, spec_file: Any, before: str, code: int, output: str
) -> None:
    from flagware.events.store import open_store

    script = SIGTERM_APP.format(
        root=str(ROOT), spec=str(spec_file), store=store_location, before=before
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == code
    assert proc.stdout.read() == output
    proc.stdout.close()
    with open_store(store_location) as store:
        stored = [r["metadata"]["uid"] for r in store.iter_events() if r["event"] == "queued"]
    assert stored == list(range(51))


GRACEFUL_APP = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
stopping = []
signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))  # a server's own
from flagware import Flagware
from flagware.events.model import Event
fw = Flagware(spec={spec!r}, event_store={store!r}, hash_key="k", flush_interval=60)
print("ready", flush=True)
while not stopping:
    time.sleep(0.01)
fw.log(Event("late", {{"userID": "u"}}))  # a request still in flight logs its event
os._exit(0)  # as uvicorn's workers end: no exit handlers, no flush
"""


def test_events_logged_during_a_graceful_shutdown_are_stored_at_once(
    store_location: str, spec_file: Any
) -> None:
    from flagware.events.store import open_store

    script = GRACEFUL_APP.format(root=str(ROOT), spec=str(spec_file), store=store_location)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    proc.stdout.close()
    with open_store(store_location) as store:
        assert [r["event"] for r in store.iter_events()] == ["late"]


def test_sigterm_handler_is_installed_only_from_the_main_thread(
    spec_file: Any, tmp_path: Any
) -> None:
    script = f"""
import signal, sys, threading
sys.path.insert(0, {str(ROOT)!r})
from flagware import Flagware
t = threading.Thread(target=lambda: Flagware(spec={str(spec_file)!r}, hash_key="k",
                     event_store={str(tmp_path / "e.db")!r}).close())
t.start(); t.join()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
Flagware(spec={str(spec_file)!r}, hash_key="k", event_store={str(tmp_path / "e.db")!r})
print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)  # ignored stays ignored
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.split() == ["True", "True"], proc.stderr


# -- a shared PostgreSQL store ------------------------------------------------------


def test_local_engine_on_a_shared_store_shares_one_hash_key(
    postgres_url: str, spec_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Flagware(spec=spec_file, event_store=postgres_url, handle_sigterm=False) as a:
        key = a.hash_key
    # Made in silence, it was nowhere in a multi-host trial's logs: said as a
    # key file beside a SQLite store is, by the process that made it only.
    [made] = [r.getMessage() for r in caplog.records if "created a hash key" in r.getMessage()]
    assert made.startswith("flagware: created a hash key for visitor IDs in postgresql://")
    caplog.clear()
    with Flagware(spec=spec_file, event_store=postgres_url, handle_sigterm=False) as b:
        assert b.hash_key == key and len(key) == 64
    assert "***" not in repr(b) and "postgresql://" in repr(b)
    assert "created a hash key" not in caplog.text


def test_first_exposures_record_the_start_on_either_backend(
    store_location: str, spec_file: Any
) -> None:
    from flagware.events.model import Event
    from flagware.results.lock import read_started

    with Flagware(spec=spec_file, event_store=store_location, hash_key="k") as fw:
        fw.starts.note("button_color", 1_790_000_000_000)
        fw.log(Event("statsig::config_exposure", {"userID": "u"}, exposure="button_color"))
        fw.flush()
        record = read_started(fw.store, "button_color")
    assert record is not None and record.started == 1_790_000_000_000


def test_an_unreachable_shared_store_serves_with_or_without_a_key(
    spec_file: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://nobody@/nothing?host={tmp_path}&connect_timeout=1"  # no server there
    with Flagware(spec=spec_file, event_store=url, hash_key="k", handle_sigterm=False) as fw:
        assert fw.errors["experiment start check"] == 1  # counted, logged once; serving
    # Without a key it starts too (it raised, and gunicorn stopped the host).
    with Flagware(spec=spec_file, event_store=url, handle_sigterm=False) as fw:
        assert fw.hash_key == b""
    [said] = [r.getMessage() for r in caplog.records if "shared hash key" in r.getMessage()]
    assert "Set FLAGWARE_HASH_KEY on every host" in said and "\n" not in said


def test_a_process_started_while_the_shared_store_was_away_reads_its_key_later(
    postgres: Any, postgres_url: str, spec_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started (or recycled) during a database outage serves stableID
    identities, keeps its events, and takes the shared key once it can."""
    import psycopg

    from flagware import shared_key
    from flagware.identity import hash_ip
    from flagware.middleware import FlagwareMiddleware

    monkeypatch.setattr(shared_key, "RETRY", 0.2)
    with Flagware(spec=spec_file, event_store=postgres_url, handle_sigterm=False) as first:
        key = first.hash_key
    database = postgres_url.partition("?")[0].rpartition("/")[2]

    def allow(connections: bool) -> None:
        with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {connections}')

    def app(environ: Any, start_response: Any) -> list[bytes]:
        flags = environ["flagware.flags"]
        flags.log_event("visited")
        start_response("200 OK", [])
        return [flags.user_id.encode()]

    def visit() -> str:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "203.0.113.9"}
        body = b"".join(wrapped(environ, lambda *args: None))
        return body.decode()

    allow(False)
    try:
        fw = Flagware(spec=spec_file, event_store=postgres_url, handle_sigterm=False)
        wrapped = FlagwareMiddleware(app, fw)
        assert fw.hash_key == b"" and visit().startswith("s-")
    finally:
        allow(True)
    deadline = time.monotonic() + 15
    while (seen := visit()).startswith("s-") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen == hash_ip(key, "203.0.113.9")  # the key every host uses
    assert fw.errors["hash key unavailable"] >= 1
    fw.close()
    users = [e["user_id"] for e in fw.store.iter_events() if e["event"] == "visited"]
    fw.close()  # the connection that read opened
    assert users[0].startswith("s-") and users[-1] == seen  # nothing logged was lost


def test_an_outage_is_one_line_and_a_bug_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import psycopg

    from flagware.events.store import StoreUnavailable
    from flagware.failures import Failures

    failures = Failures()
    away = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed:'
        " Connection refused\n\tIs the server running on that host?"
    )
    with caplog.at_level(logging.DEBUG, logger="flagware"):
        failures.report(away, "event store")
        failures.report(ConnectionResetError(104, "Connection reset by peer"), "statsig delivery")
        failures.report(KeyError("userID"), "user_id resolver")
        # Results on the diagnostics page, the store away: a traceback, in a trial.
        failures.report(StoreUnavailable("cannot reach postgresql://db/app"), "diagnostics results")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        errors[0]
        .getMessage()
        .startswith(
            "flagware: event store failed: psycopg.OperationalError: connection failed:"
            ' connection to server at "127.0.0.1", port 5432 failed: Connection refused'
            " Is the server running on that host? (flags are served as usual;"
        )
    )
    assert (
        errors[1]
        .getMessage()
        .startswith(
            "flagware: statsig delivery failed: ConnectionResetError: [Errno 104] Connection reset"
        )
    )
    assert [r.exc_info is not None for r in errors] == [False, False, True, False]  # the bug's
    assert (
        errors[3]
        .getMessage()
        .startswith(
            "flagware: diagnostics results failed: flagware.events.store.StoreUnavailable: cannot"
            " reach postgresql://db/app ("
        )
    )
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert [r.exc_info[1] if r.exc_info else None for r in debug][:1] == [away]  # for whoever asks
    assert failures.errors == {
        "event store": 1,
        "statsig delivery": 1,
        "user_id resolver": 1,
        "diagnostics results": 1,
    }


def test_one_outage_is_one_line_whatever_it_raises(caplog: pytest.LogCaptureFixture) -> None:
    """A PostgreSQL restart raises AdminShutdown on the open connection, then
    OperationalError on each new one: a trial's log read it as two outages."""
    import psycopg

    from flagware.failures import Failures

    failures = Failures()
    failures.report(psycopg.errors.AdminShutdown("terminating connection"), "event store")
    failures.report(psycopg.OperationalError("connection refused"), "event store")
    failures.report(ConnectionRefusedError(111, "Connection refused"), "event store")
    failures.report(KeyError("a"), "event store")  # a bug is its own kind, traceback and all
    lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 2 and "AdminShutdown" in lines[0].getMessage()
    assert lines[1].exc_info is not None
    assert failures.errors["event store"] == 4
    failures.recovered("event store")  # the next outage is a new one, said again
    failures.report(psycopg.OperationalError("connection refused"), "event store")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3


def test_a_store_outage_is_logged_at_its_start_and_end_and_says_what_flags_do(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """It logged "serving defaults" while every flag was served, and nothing at the end."""
    import sqlite3

    store = client.writer.store
    real = store.append_rows

    def refused(rows: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    def said() -> list[str]:
        messages = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return messages

    with caplog.at_level(logging.WARNING, logger="flagware"):
        store.append_rows = refused
        client.log(Event("clicked", {"userID": "u"}))
        client.flush()
        client.log(Event("clicked", {"userID": "u"}))
        client.flush()  # the same outage: counted, not logged again
        assert said() == [
            f"flagware: event store failed at {client.event_store}: sqlite3.OperationalError:"
            " database is locked (flags are served as usual; events wait in memory,"
            " up to max_queue, and are stored when it takes writes again; logged once, counted"
            " in Flagware.errors)"
        ]
        assert client.errors["event store"] == 2
        store.append_rows = real
        client.flush()
        [recovered] = said()
        assert recovered.startswith("flagware: the event store takes writes again after ")
        assert recovered.endswith(" s; the 2 events that waited or came meanwhile are stored")
        store.append_rows = refused  # a new outage is news again
        client.log(Event("clicked", {"userID": "u"}))
        client.flush()
        assert [m.split(":")[1] for m in said()] == [f" event store failed at {client.event_store}"]
        store.append_rows = real
    client.flush()
    assert client.writer.stored == 3  # nothing lost across the two outages


def test_a_new_client_builds_the_first_requests_tables_so_that_request_does_not(
    tmp_path: Path,
) -> None:
    """A worker's first request built the address table twice (flagware's and
    the SDK's) and compiled ua-parser's rules twice: 0.5 s idle, 0.8-1.9 s
    under load, in that request. Now the client builds them, once each, in a
    fresh process (as a worker is)."""
    spec = tmp_path / "flagware.toml"
    spec.write_text('[gates.us_only]\nconditions = [{ country = ["US"] }]\n')
    script = textwrap.dedent(
        f"""
        import sys
        import ua_parser
        from flagware import Flagware, identity

        fw = Flagware(spec={str(spec)!r}, event_store={str(tmp_path / "e.db")!r}, hash_key="k")
        built = identity._country_lookup is not None and "parser" in vars(ua_parser)
        legacy = fw.engine.sdk == "legacy"
        compiled = "ua_parser.user_agent_parser" in sys.modules
        print(built, compiled if legacy else "-")
        if legacy:  # the SDK's evaluator uses flagware's table, for users with an IP only
            evaluator = fw.engine.server()._evaluator
            print(evaluator._country_lookup is identity.country_table())
            user = fw.engine.user({{"userID": "u", "ip": "8.8.8.8"}})
            print(fw.engine.gate(user, "us_only").value)
        fw.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    if out[0] == "True -":  # Core: its own parsers are native
        return
    assert out[:3] == ["True True", "True", "True"]


def test_experiments_on_a_custom_unit_split_by_the_apps_ids(tmp_path: Path) -> None:
    """A spec could declare `custom_ids = ["companyID"]` and run an experiment on
    it, but nothing could give a request its companyID: every visitor got one
    group and results counted no unit (a new user's trial). user_custom_ids does."""
    from werkzeug.test import Client

    from flagware import FlagwareMiddleware, current_flags
    from flagware.results import compute_results
    from flagware.spec import load_spec

    spec = tmp_path / "flagware.toml"
    spec.write_text(
        '[flagware]\ncustom_ids = ["companyID"]\n\n[experiments.pricing]\nunit = "companyID"\n'
        'groups = [{ name = "Cheap", weight = 50 }, { name = "Dear", weight = 50 }]\n'
    )
    fw = Flagware(
        spec=spec,
        event_store=tmp_path / "events.db",
        hash_key="k",
        user_custom_ids=lambda environ: {"companyID": environ.get("HTTP_X_COMPANY")},
    )

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [str(current_flags().experiment("pricing").group).encode()]

    http = Client(FlagwareMiddleware(app, fw))
    seen: dict[str, set[bytes]] = {}
    for i in range(80):  # 40 companies, each from two addresses
        company = f"co-{i % 40}"
        body = http.get(
            "/", headers={"X-Company": company}, environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"}
        ).data
        seen.setdefault(company, set()).add(body)
    assert all(len(groups) == 1 for groups in seen.values())  # one group a company
    assert {g for groups in seen.values() for g in groups} == {b"Cheap", b"Dear"}
    # No companyID: the SDK evaluates an empty ID, as Statsig's do (all such
    # requests share one group), and results leave those exposures out.
    assert (
        len(
            {
                http.get("/", environ_base={"REMOTE_ADDR": f"198.51.100.{i}"}).data
                for i in range(1, 9)
            }
        )
        == 1
    )
    fw.close()
    results = compute_results(load_spec(spec), "pricing", tmp_path / "events.db")
    assert sum(g.units for g in results.groups) == 40


def test_close_again_closes_what_a_read_opened_since(make_client: Any) -> None:
    """A read after close() (a test counting stored events) opened a connection
    that the second close(), a no-op, left to the garbage collector: Python 3.13
    warns of it (ResourceWarning: unclosed database), failing that CI leg."""
    client = make_client()
    client.close()
    list(client.store.iter_events())
    assert client.store._all
    client.close()
    assert not client.store._all


def test_closing_with_the_store_away_says_no_start_will_be_recorded_later(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker stopped during a PostgreSQL outage said its events were lost,
    then "experiment start record failed ... the start is recorded after the
    next events are stored": not by a process that is exiting (a Django trial)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.ERROR, logger="flagware")
    client = make_client(
        event_store=f"postgresql://flagware@127.0.0.1:{port}/flagware", shutdown_timeout=0.3
    )
    _expose(client, visitors=3)
    assert client.starts.pending  # the experiment's start, noted and not stored
    client.close()
    said = [r.getMessage() for r in caplog.records]
    assert any("could not be stored" in line for line in said), said
    assert not any("experiment start record" in line for line in said), said


def test_id_overrides_in_the_spec_force_a_value_and_stay_out_of_results(
    make_client: Any, spec_file: Any
) -> None:
    """Statsig's console overrides, in the spec: an operator's trial could force
    a group only for a browser with the QA cookie, not for a userID or a
    customer's ID. Forced exposures stay out of results, as QA ones do."""
    from flagware.results import compute_results

    spec_file.write_text(
        spec_file.read_text()
        .replace(
            "[gates.nobody]\nrollout = 0",
            '[gates.nobody]\nrollout = 0\noverrides = { pass = ["vip"] }',
        )
        .replace(
            "[gates.everyone]\nrollout = 100",
            '[gates.everyone]\nrollout = 100\noverrides = { fail = ["blocked"] }',
        )
        .replace(
            'unit = "stableID"\nallocation = 100',
            'unit = "stableID"\nallocation = 100\noverrides = { Red = ["qa-browser"] }',
        )
    )
    client = make_client()
    assert client.flags_for(user_id="vip").gate("nobody") is True
    assert client.flags_for(user_id="someone").gate("nobody") is False
    assert client.flags_for(user_id="blocked").gate("everyone") is False
    forced = client.flags_for(user_id="u", stable_id="qa-browser").experiment("button_color")
    assert (forced.group, forced.get("color"), forced.rule_id) == ("Red", "red", "override")
    for i in range(40):
        client.flags_for(user_id=f"u{i}", stable_id=f"s{i}").experiment("button_color")
    client.close()
    results = compute_results(client.engine.spec, "button_color", client.event_store_path)
    assert results.override_exposures == 1
    assert sum(g.units for g in results.groups) == 40  # the forced browser is not a unit


def test_ship_serves_one_group_to_everyone_and_ends_the_results_there(
    make_client: Any, spec_file: Any
) -> None:
    """Statsig's "Make decision: ship": an operator's trial found only removing
    the experiment, which served the code's defaults, not the winner, and
    whose results kept counting the exposures that followed."""
    import time as clock

    from flagware.results import compute_results
    from flagware.results.lock import read_started

    half = spec_file.read_text().replace("allocation = 100", "allocation = 50")
    spec_file.write_text(half)
    client = make_client()
    groups = set()
    for i in range(40):
        config = client.flags_for(user_id=f"u{i}", stable_id=f"s{i}").experiment("button_color")
        groups.add(config.group)
    assert groups == {None, "Control", "Red"}  # half of them are not in it
    client.close()  # the start is recorded
    before = compute_results(client.engine.spec, "button_color", client.event_store_path)
    clock.sleep(0.01)
    spec_file.write_text(half.replace("allocation = 50", 'allocation = 50\nship = "Red"'))
    shipped = make_client()
    assert shipped.engine.refused == []  # a decision, not a change of the experiment
    record = read_started(shipped.event_store_path, "button_color")
    assert record is not None and record.shipped == "Red" and record.shipped_at is not None
    for i in range(60):  # everyone, allocated or not: Red's params, in no group
        config = shipped.flags_for(user_id=f"v{i}", stable_id=f"t{i}").experiment("button_color")
        assert (config.get("color"), config.group, config.rule_id) == ("red", None, "launchedGroup")
    shipped.close()
    again = make_client()  # another process: the first launch time stays
    again.close()
    record_again = read_started(again.event_store_path, "button_color")
    assert record_again is not None and record_again.shipped_at == record.shipped_at
    after = compute_results(again.engine.spec, "button_color", again.event_store_path)
    assert after.groups == before.groups  # the 60 exposures after the launch are not read
    assert (after.shipped, after.shipped_at, after.until) == (
        "Red",
        record.shipped_at,
        record.shipped_at,
    )
    assert after.warnings[0].startswith("shipped Red at ")


def test_a_ship_is_final_and_a_reset_lets_the_next_one_be_recorded(
    make_client: Any, spec_file: Any, capsys: Any, caplog: Any
) -> None:
    """Moved to another group, a ship counted clicks made under the first as the
    second group's; dropped, it served the groups again; after a reset, a new
    ship was never recorded (an operator's trial, each)."""
    import sqlite3
    from contextlib import closing

    from flagware.cli import main
    from flagware.results.lock import read_started

    client = make_client()
    client.flags_for(user_id="u", stable_id="s").experiment("button_color")
    client.close()
    store = str(client.event_store_path)
    started = spec_file.read_text()
    spec_file.write_text(started.replace('unit = "stableID"', 'unit = "stableID"\nship = "Red"'))
    make_client().close()
    first = read_started(store, "button_color")
    assert first is not None and first.shipped == "Red"
    for edit in ('unit = "stableID"\nship = "Control"', 'unit = "stableID"'):
        spec_file.write_text(started.replace('unit = "stableID"', edit))
        moved = make_client()
        config = moved.flags_for(user_id="v", stable_id="t").experiment("button_color")
        assert (config.get("color"), config.group) == ("red", None)  # still Red's, refused
        assert "a ship is final" in moved.engine.refused[0]
        # Logged as served: as shipped, not "as it started" (a trial).
        logged = [r.getMessage() for r in caplog.records if "a ship is final" in r.getMessage()]
        assert logged and "as it started" not in logged[-1]
        assert logged[-1].endswith(
            "`flagware reset button_color`). The rest of the spec is served as written."
        )
        moved.close()
        assert main(["check", "--spec", str(spec_file), "--store", store]) == 2
        assert "ship = 'Red' (shipped " in capsys.readouterr().err
        # Results read it as shipped, and say the spec no longer does (a trial:
        # "(`ship` in the spec)" and exit 0, with the spec saying otherwise).
        assert main(["results", "button_color", "--spec", str(spec_file), "--store", store]) in (
            0,
            3,
        )
        said = capsys.readouterr().out
        assert "shipped Red at " in said and "UTC (recorded):" in said
        assert "ship = 'Red' (shipped " in said and "a ship is final" in said
    again = read_started(store, "button_color")
    assert again is not None and (again.shipped, again.shipped_at) == ("Red", first.shipped_at)
    # A reset forgets it all: the experiment starts again, and a new ship is recorded.
    assert main(["reset", "button_color", "--store", store, "--yes"]) == 0
    with closing(sqlite3.connect(store)) as conn:  # no ship left (a trial read it there)
        shipped = conn.execute("SELECT key FROM meta WHERE key LIKE 'shipped:%'").fetchall()
    assert shipped == []
    spec_file.write_text(started)
    restarted = make_client()
    restarted.flags_for(user_id="w", stable_id="x").experiment("button_color")
    restarted.close()
    spec_file.write_text(
        started.replace('unit = "stableID"', 'unit = "stableID"\nship = "Control"')
    )
    make_client().close()
    new = read_started(store, "button_color")
    assert new is not None and new.shipped == "Control"
    assert new.shipped_at is not None and new.shipped_at > first.shipped_at  # type: ignore[operator]


def test_a_ship_in_the_spec_across_a_reset_is_recorded_with_the_start(
    make_client: Any, spec_file: Any
) -> None:
    """Moved (refused), then `flagware reset` as the refusal suggests: the
    moved ship was served from the next exposure and never recorded, and
    results said no unit was in a group (a trial, on both stores)."""
    from flagware.cli import main
    from flagware.results import compute_results
    from flagware.results.lock import read_started
    from flagware.spec import load_spec

    started = spec_file.read_text()
    spec_file.write_text(started.replace('unit = "stableID"', 'unit = "stableID"\nship = "Red"'))
    client = make_client()
    client.flags_for(user_id="u", stable_id="s").experiment("button_color")
    client.close()
    store = str(client.event_store_path)
    spec_file.write_text(
        started.replace('unit = "stableID"', 'unit = "stableID"\nship = "Control"')
    )
    assert main(["reset", "button_color", "--store", store, "--yes"]) == 0
    moved = make_client()
    config = moved.flags_for(user_id="v", stable_id="t").experiment("button_color")
    assert (config.get("color"), config.group) == ("blue", None)  # Control's, shipped
    moved.close()
    record = read_started(store, "button_color")
    assert record is not None and record.shipped == "Control"
    assert record.shipped_at == record.started  # shipped as it started: no data to read
    results = compute_results(load_spec(spec_file), "button_color", store)
    assert results.shipped == "Control"
    assert results.warnings[0].startswith("shipped Control at ")
    assert list(results.reasons) == [  # not "not allocated, or failing the targeting gate"
        "no unit is in a group: Control was shipped before any unit was, so every unit"
        " exposed was served its params outside the experiment"
    ]


def test_an_edit_after_a_restart_is_said_as_since_the_restart_and_served_as_it_recorded(
    make_client: Any, spec_file: Any
) -> None:
    """The refusal said "since its restart" and then "served as it started",
    and the diagnostics page "still served as started" (a trial)."""
    written = spec_file.read_text()
    first = make_client()
    _expose(first)
    first.close()
    crimson = written.replace('"red"', '"crimson"')
    spec_file.write_text(crimson.replace('unit = "stableID"', 'unit = "stableID"\nrestart = true'))
    make_client().close()  # the restart is recorded
    spec_file.write_text(crimson.replace('"crimson"', '"darkred"'))
    edited = make_client()
    assert _colors(edited) == {"blue", "crimson"}  # as its restart recorded it
    [message] = edited.engine.refused
    assert 'changed from "crimson" to "darkred" since its restart (' in message
    assert message.endswith(
        "Until then it is served as its restart recorded it; the rest of the spec is served as"
        " written."
    )
    edited.close()
