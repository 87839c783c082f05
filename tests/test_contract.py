"""DESIGN.md's Contract example, run as written (only `app` and the stub are added)."""

from __future__ import annotations

import os
import textwrap
from typing import Any

import pytest
from flask import Flask

from flagware.client import _live_clients
from flagware.spec import compile_dcs, load_spec
from tests.conftest import SPEC
from tests.statsig_stub import StatsigStub

CONTRACT = """
from flagware import Flagware, FlagwareMiddleware, current_flags
from flagware import log_event, feature_gate, experiment

fw = Flagware(spec="flagware.toml")          # local engine, events in a SQLite file
fw = Flagware(statsig_secret="secret-...")   # Statsig; also from STATSIG_SERVER_SECRET
fw = Flagware.from_env()                     # secret set -> Statsig, else local spec

app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw)   # any WSGI app

@app.get("/signup")
@log_event("visited_signup")                 # logged server-side when the view succeeds
def signup():
    flags = current_flags()                  # this request's flags (contextvar)
    if flags.gate("new_signup"):             # -> bool, evaluated on first use
        ...
    color = flags.experiment("button_color").get("color", "blue")
    flags.log_event("clicked", value=1, metadata={"plan": "pro"})
"""


def run_contract(tmp_path: Any) -> tuple[Flask, Any]:
    app = Flask("contract")
    namespace: dict[str, Any] = {"app": app}
    exec(compile(textwrap.dedent(CONTRACT), "DESIGN.md", "exec"), namespace)
    return app, namespace


@pytest.fixture
def project(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "flagware.toml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLAGWARE_HASH_KEY", "contract-key")
    for name in ("STATSIG_SERVER_SECRET", "FLAGWARE_SPEC", "FLAGWARE_EVENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    before = set(_live_clients)
    yield tmp_path
    for client in set(_live_clients) - before:
        client.shutdown_timeout = 0
        client.close()


def test_contract_runs_on_the_local_engine(project: Any) -> None:
    app, ns = run_contract(project)
    fw = ns["fw"]
    assert fw.engine_name == "local"
    assert ns["Flagware"](spec="flagware.toml").engine_name == "local"
    # The example's view ends in `...` and returns None, which Flask turns into
    # a 500 after the view returned: success is the status the client got
    # (< 400), so "visited_signup" is not logged; what the view logged itself is.
    response = app.test_client().get("/signup", environ_base={"REMOTE_ADDR": "192.0.2.5"})
    assert response.status_code == 500
    fw.flush()
    names = [e["event"] for e in fw.store.iter_events()]
    assert names == ["statsig::gate_exposure", "statsig::config_exposure", "clicked"]
    assert (project / ".flagware" / "events.db").exists()


def test_contract_runs_on_statsig_when_the_secret_is_set(
    project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StatsigStub(dcs=compile_dcs(load_spec(project / "flagware.toml"))) as stub:
        monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-contract")
        monkeypatch.setenv("STATSIG_API", stub.url)
        app, ns = run_contract(project)
        fw = ns["fw"]
        assert fw.engine_name == "statsig"
        app.test_client().get("/signup")
        fw.close()
        names = [e["eventName"] for e in stub.events]
        assert "clicked" in names and "statsig::config_exposure" in names
    assert os.environ["FLAGWARE_HASH_KEY"] == "contract-key"
