"""The seed lab on FastAPI (examples/fastapi_demo), under a real uvicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servers import fetch, uvicorn_server

from examples.fastapi_demo.app import SPEC, create_app
from flagware.events.store import EventStore


def test_demo_pages_split_visitors_and_log_every_visit(make_client: Any) -> None:
    client = make_client(spec=SPEC, allow_random_override=True)
    with uvicorn_server(create_app(client)) as port:
        tasks = fetch(port, "/tasks").json()
        assert len(tasks["tasks"]) == 3 and tasks["button_color"] in ("blue", "red")
        groups: dict[str, int] = {}
        for _ in range(60):  # cookie-less visitors: a new stableID each
            page = fetch(port, "/signup")
            assert page.status == 200 and 'id="signup"' in page.text
            group = page.text.split('data-group="')[1].split('"')[0]
            groups[group] = groups.get(group, 0) + 1
            if group == "Red":
                cookie = {"Cookie": f"flagware_id={page.minted()}"}
                assert fetch(port, "/signup/click", method="POST", headers=cookie).json() == {
                    "ok": True
                }
    assert set(groups) == {"Control", "Red"} and sum(groups.values()) == 60
    client.flush()
    events = list(client.store.iter_events())
    names = [e["event"] for e in events]
    assert names.count("visited_signup") == 60
    assert names.count("statsig::config_exposure") == 61  # 60 pages and /tasks
    clicks = [e for e in events if e["event"] == "signup_clicked"]
    visitors = {e["stable_id"] for e in events if e["event"] == "visited_signup"}
    red = {e["stable_id"] for e in events if e["group"] == "Red"} & visitors
    assert len(clicks) == groups["Red"] and {e["stable_id"] for e in clicks} == red


def test_uvicorn_command_serves_the_demo_and_stores_events_on_shutdown(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "events.db"
    env = {**os.environ, "FLAGWARE_EVENT_STORE": str(store), "FLAGWARE_HASH_KEY": "demo-key"}
    env.pop("STATSIG_SERVER_SECRET", None)
    cmd = [sys.executable, "-m", "uvicorn", "examples.fastapi_demo.app:app"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = fetch(port, "/signup")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        assert page.status == 200 and page.minted() is not None
    finally:
        server.send_signal(signal.SIGINT)  # lifespan shutdown closes the client
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0, output
    with EventStore(store) as events:
        names = sorted(e["event"] for e in events.iter_events())
    assert names == ["statsig::config_exposure", "statsig::gate_exposure", "visited_signup"]
