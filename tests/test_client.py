"""Flagware configuration: engine choice, environment, hash keys, lifecycle."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from flagware import ConfigurationError, Flagware
from flagware.spec import SpecError


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
    with pytest.raises(ConfigurationError, match="FLAGWARE_HASH_KEY"):
        Flagware(statsig_secret="secret-x", event_store=tmp_path / "e.db")


def test_statsig_secret_must_be_a_server_secret(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"starts with 'secret-'"):
        Flagware(statsig_secret="client-x", hash_key="k", event_store=tmp_path / "e.db")


def test_spec_and_secret_together_is_an_error(spec_file: Any) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        Flagware(spec=spec_file, statsig_secret="secret-x")


def test_local_engine_creates_a_hash_key_once_beside_the_store(
    tmp_path: Any, spec_file: Any, caplog: Any
) -> None:
    store = tmp_path / "data" / "events.db"
    with Flagware(spec=spec_file, event_store=store) as first:
        key = first.hash_key
    path = tmp_path / "data" / "hash_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert any("created a hash key" in r.getMessage() for r in caplog.records)
    with Flagware(spec=spec_file, event_store=store) as second:
        assert second.hash_key == key and len(key) == 64


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
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch
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
    assert client.engine.gate(user, "nobody").value is True
    spec_file.write_text("not = [valid")
    os.utime(spec_file, (2, 2))
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


def test_a_started_experiment_cannot_change(
    make_client: Any, spec_file: Any, tmp_path: Any
) -> None:
    client = make_client()
    _expose(client)
    client.close()
    from flagware.results.lock import read_started

    record = read_started(client.event_store_path, "button_color")
    assert record is not None

    changed = spec_file.read_text().replace(
        'weight = 50, params = { color = "red"', 'weight = 50, params = { color = "green"'
    )
    spec_file.write_text(changed)
    with pytest.raises(SpecError, match=r"button_color.*params.*new name.*restart = true"):
        make_client()
    spec_file.write_text(changed.replace('unit = "stableID"', 'unit = "stableID"\nrestart = true'))
    assert make_client().engine_name == "local"  # a new analysis window instead


def test_allocation_may_grow_after_the_start(make_client: Any, spec_file: Any) -> None:
    spec_file.write_text(spec_file.read_text().replace("allocation = 100", "allocation = 50"))
    client = make_client()
    _expose(client)
    client.close()
    spec_file.write_text(spec_file.read_text().replace("allocation = 50", "allocation = 80"))
    assert make_client().engine_name == "local"


def test_a_changed_started_experiment_on_reload_keeps_the_running_spec(
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    client = make_client()
    _expose(client)
    client.flush()
    client._record_starts()
    spec_file.write_text(spec_file.read_text().replace('color = "red"', 'color = "green"'))
    os.utime(spec_file, (5, 5))
    user = client.engine.user({"userID": "u", "customIDs": {"stableID": "s"}})
    colors = {
        client.engine.config(
            client.engine.user({"userID": "u", "customIDs": {"stableID": str(i)}}), "button_color"
        ).params["color"]
        for i in range(40)
    }
    assert colors == {"blue", "red"}
    assert client.engine.gate(user, "everyone").value is True
    assert any("keeping the previous spec" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_engine_restarts_in_a_forked_child(make_client: Any) -> None:
    """Pre-fork servers: the parent's SDK threads do not survive a fork, so the
    child must build its own SDK on first use instead of using the parent's."""
    client = make_client()
    user = client.engine.user({"userID": "u", "customIDs": {"stableID": "s"}})
    parent_server = client.engine.server()
    assert client.engine.gate(user, "everyone").value is True
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's atexit
        ok = client.engine.server() is not parent_server
        ok = ok and client.engine.gate(user, "everyone").value is True
        os.write(write, b"ok" if ok else b"no")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and status == 0
    os.close(read)
    assert client.engine.server() is parent_server
