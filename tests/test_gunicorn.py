"""A real `gunicorn --preload` with two workers and no hooks: nothing lost, nothing twice.

The app module creates its Flagware client and logs an event in the master,
before the fork; the workers serve requests that evaluate a gate and log an
event each. After a graceful stop, Statsig (the loopback stub) must have every
event exactly once: the master's buffered event once, not once per worker; a
returning browser's exposure once per worker that served it (deduped per process).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from typing import Any

import pytest

from flagware.events.store import EventStore
from tests.statsig_stub import StatsigStub

pytest.importorskip("gunicorn")

REQUESTS = 300
RETURNING = 100

APP = """
import os

from flagware import Flagware, FlagwareMiddleware, current_flags
from flagware.events.model import Event

fw = Flagware(
    statsig_secret="secret-gunicorn",
    statsig_api=os.environ["STUB_URL"],
    hash_key="k",
    event_store=os.environ["EVENT_STORE"],
)
# Logged in the master at import (--preload), so it is queued before the fork.
fw.log(Event("booted", {"userID": "master"}, metadata={"uid": "boot"}))


def view(environ, start_response):
    flags = current_flags()
    flags.gate("everyone")
    flags.log_event("hit", metadata={"uid": environ["QUERY_STRING"]})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


app = FlagwareMiddleware(view, fw)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, deadline: float, cookie: str | None = None) -> str:
    # A browser's agent: urllib's own is a bot's, whose flag reads expose nothing.
    headers = {"User-Agent": "Mozilla/5.0 Firefox/121"}
    if cookie is not None:
        headers["Cookie"] = cookie
    while True:
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_preloaded_gunicorn_delivers_every_event_exactly_once(tmp_path: Any) -> None:
    (tmp_path / "gapp.py").write_text(textwrap.dedent(APP))
    port = free_port()
    with StatsigStub() as stub:
        env = {
            **os.environ,
            "STUB_URL": stub.url,
            "EVENT_STORE": str(tmp_path / "events.db"),
            "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path]),
        }
        cmd = [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "--chdir", str(tmp_path)]
        cmd += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", "20", "gapp:app"]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            pids = {get(f"http://127.0.0.1:{port}/?{i}", deadline) for i in range(REQUESTS)}
            # One returning browser: its repeated exposure is deduped in each worker.
            cookie = "flagware_id=" + "ab" * 16
            for i in range(RETURNING):
                pids.add(get(f"http://127.0.0.1:{port}/?r{i}", deadline, cookie))
        finally:
            server.send_signal(signal.SIGTERM)  # graceful: workers finish and exit
            output = server.communicate(timeout=60)[0].decode()
        assert server.returncode == 0, output
        assert str(server.pid) not in pids  # served by the forked workers

        ids = stub.ids()
        exposures = [e for e in stub.events if e["eventName"] == "statsig::gate_exposure"]
        returning = [e for e in exposures if e["user"]["customIDs"]["stableID"] == "ab" * 16]
        # At most one a worker: a process remembers only its own exposures.
        assert 1 <= len(returning) <= 2
        assert len(exposures) == REQUESTS + len(returning)
        assert ids.pop(None) == len(exposures)  # the exposures, which carry no uid
        assert ids["boot"] == 1  # stored once, by the master, not by each worker
        assert {str(i) for i in range(REQUESTS)} | {f"r{i}" for i in range(RETURNING)} <= set(ids)
        assert all(count == 1 for count in ids.values()), ids.most_common(3)
        assert len(ids) == REQUESTS + RETURNING + 1
    with EventStore(tmp_path / "events.db") as store:
        stats = store.stats()
    assert (stats.backlog, stats.delivered) == (0, len(exposures) + REQUESTS + RETURNING + 1)
