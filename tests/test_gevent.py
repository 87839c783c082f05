"""gunicorn's gevent worker with ``--preload``: every first request of a worker is answered.

The master imports the app (and builds the Flagware client) before forking;
gunicorn's gevent worker monkey-patches ``threading`` only after the fork.
A lock flagware made before the patch was the operating system's: the first
request's greenlet took it to start the SDK, yielded to the hub inside that
start, and the next request's greenlet then blocked the whole worker thread
on the lock. Every worker hung on its first concurrent requests on the Core
engine (and in 2 of 6 runs on the legacy engine) until gunicorn killed it.
The requests here all arrive at once, before the worker has served any.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flagware.events.store import open_store
from tests.servers import fetch

pytest.importorskip("gevent")
pytest.importorskip("gunicorn")

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT = 16

APP = """
import os

from flagware import Flagware, FlagwareMiddleware, current_flags

fw = Flagware(
    spec=os.environ["SPEC"],
    engine=os.environ["ENGINE"],
    event_store=os.environ["EVENT_STORE"],
    hash_key="gevent",
)


def view(environ, start_response):
    flags = current_flags()
    color = flags.experiment("button_color").get("color", "blue")
    flags.gate("new_signup")
    flags.log_event("visited_signup")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [color.encode()]


app = FlagwareMiddleware(view, fw)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_bound(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the master listens: connections then wait in its backlog for a worker,
    so no request is sent (a request would start the SDK before the burst)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gunicorn exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("gunicorn did not listen")


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_preloaded_gevent_worker_answers_its_first_concurrent_requests(
    tmp_path: Path, engine: str
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    store = str(tmp_path / "events.db")
    port = free_port()
    env = {
        **os.environ,
        "SPEC": str(ROOT / "flagware" / "demo" / "flagware.toml"),
        "ENGINE": engine,
        "EVENT_STORE": store,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    gunicorn = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "--preload"]
    proc = subprocess.Popen(
        [*gunicorn, "--timeout", "60", "-b", f"127.0.0.1:{port}", "app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_bound(port, proc)
        browser = {"User-Agent": "Mozilla/5.0 Firefox/121"}
        with ThreadPoolExecutor(CONCURRENT) as pool:
            replies = list(pool.map(lambda _: fetch(port, "/", headers=browser), range(CONCURRENT)))
        assert [r.status for r in replies] == [200] * CONCURRENT
        assert all(r.minted() for r in replies)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    with open_store(store) as events:
        names = [row["event"] for row in events.iter_events()]
    assert names.count("visited_signup") == CONCURRENT
    assert names.count("statsig::config_exposure") == CONCURRENT  # one stableID each


EXITING = """
import os

from gevent import monkey

monkey.patch_all()  # as a gunicorn.conf.py does for --preload, before anything else

from flagware import Flagware

# The store holds undelivered events; this process logs nothing and exits: its
# exit handler's drain sends them. Python 3.12 starts no thread at exit, so the
# drain sends from the exiting thread, where gevent's resolver needed one.
Flagware(
    statsig_secret="secret-gevent",
    statsig_api=os.environ["STUB_URL"],
    hash_key="gevent",
    event_store=os.environ["EVENT_STORE"],
)
"""


def test_an_exiting_gevent_patched_process_delivers_the_stored_backlog(tmp_path: Path) -> None:
    from flagware.events.model import Event
    from tests.statsig_stub import StatsigStub

    store = str(tmp_path / "events.db")
    with open_store(store) as events:  # a backlog another process stored, undelivered
        events.append(
            [Event("left_over", {"userID": f"u{i}"}, metadata={"uid": str(i)}) for i in range(20)],
            deliver=True,
        )
    (tmp_path / "exiting.py").write_text(textwrap.dedent(EXITING))
    with StatsigStub() as stub:
        env = {**os.environ, "STUB_URL": stub.url, "EVENT_STORE": store, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "exiting.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert sorted(int(e["metadata"]["uid"]) for e in stub.events) == list(range(20))
