"""The flagware command."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from werkzeug.test import Client

from flagware import FlagwareMiddleware, current_flags
from flagware.cli import main


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


def test_events_on_a_missing_store_is_a_clear_error(tmp_path: Any, capsys: Any) -> None:
    assert main(["events", "--store", str(tmp_path / "none.db")]) == 2
    assert "no event store" in capsys.readouterr().err


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flagware.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "events" in out.stdout and "demo" in out.stdout
