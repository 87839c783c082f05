"""SIGTERM under real servers: every event of every 2xx response is stored.

Each server runs as a subprocess serving a small flagware-wrapped app (local
engine, ``flush_interval=60`` so nothing reaches the store on the writer's
own cadence). The test fires requests, sends SIGTERM to the server (the
master for gunicorn) as soon as the responses are back, waits for the
process to exit and counts the stored events: exactly three per 2xx request
(the gate's exposure, a custom event, a ``@log_event`` success event).

The servers differ in what SIGTERM does, which is the point. gunicorn's
workers and uvicorn install their own handler and shut down gracefully (the
requests in flight finish: one slow request is in flight at the signal);
gunicorn's workers then exit normally, while uvicorn puts back the handler it
replaced (flagware's) and raises SIGTERM again; uvicorn's worker processes
(``--workers 2``) load the app inside its signal handling, so they re-raise
SIGTERM with its default action and end without exit handlers: the slow
request's success event is stored only because events logged during a graceful
shutdown are stored at once. waitress and ``python app.py``
(wsgiref) install none. uWSGI loads the app in its master with SIGTERM
ignored, so flagware installs nothing there; its workers' exit handlers close
the client, whether ``die-on-term`` stops them at once or the master hook
``gracefully_kill_them_all`` lets the requests in flight finish. Granian's
workers are multiprocessing children that replace flagware's handler and end
with ``os._exit``, past atexit: multiprocessing's own exit finalizers close
the client there (they stored none of the events before). With
``handle_sigterm=False`` waitress, uvicorn (``--lifespan off``, alone or as
gunicorn's worker) and wsgiref store none of the events.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flagware.events.store import open_store
from tests.servers import fetch

ROOT = Path(__file__).resolve().parent.parent
THREADS = 4
PER_THREAD = 10
# A browser's agent: a bot's flag reads expose nothing.
BROWSER = {"User-Agent": "Mozilla/5.0 Firefox/121"}

APP = """
import asyncio
import os
import time
from pathlib import Path

from flagware import Flagware, FlagwareMiddleware, current_flags, log_event
from flagware.asgi import FlagwareMiddleware as AsgiMiddleware

fw = Flagware(
    spec=os.environ["SPEC"],
    event_store=os.environ["EVENT_STORE"],
    hash_key="k",
    flush_interval=60,  # only shutdown stores anything
    shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "5")),
)
Path(f"loaded-{os.getpid()}").touch()  # this process has loaded the app


@log_event("visited")
def work(uid, pause=True):
    flags = current_flags()
    flags.gate("everyone")
    flags.log_event("hit", metadata={"uid": uid})
    if uid.startswith("slow"):
        Path(os.environ["SLOW_MARK"]).write_text(uid)  # in flight now
        if pause:
            time.sleep(1.5)
    return "ok"


def view(environ, start_response):
    query = environ["QUERY_STRING"]
    body = b"pong" if query == "ping" else work(query).encode()  # a ping logs nothing
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = FlagwareMiddleware(view, fw)


async def asgi_view(scope, receive, send):
    # No lifespan support (uvicorn runs with --lifespan off; gunicorn's
    # uvicorn worker finds it unsupported): only the SIGTERM path can store
    # the events.
    if scope["type"] != "http":
        raise RuntimeError(f"{scope['type']} is not supported")
    query = scope["query_string"].decode()
    waits = query.startswith("slow") and os.environ.get("SLOW_ASYNC")  # the loop runs on
    body = b"pong" if query == "ping" else work(query, pause=not waits).encode()
    if waits:
        await asyncio.sleep(1.5)
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


asgi_app = AsgiMiddleware(asgi_view, fw)

if __name__ == "__main__":
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    make_server("127.0.0.1", int(os.environ["PORT"]), app, handler_class=Quiet).serve_forever()
"""

SERVERS: dict[str, tuple[str, bool]] = {
    # name: (command, with {port}; whether requests in flight at SIGTERM finish)
    "gunicorn-sync": ("-m gunicorn -w 2 -k sync -b 127.0.0.1:{port} sapp:app", True),
    "gunicorn-gthread": (
        "-m gunicorn -w 2 -k gthread --threads 4 -b 127.0.0.1:{port} sapp:app",
        True,
    ),
    "gunicorn-uvicorn": (
        "-m gunicorn -w 2 -k uvicorn.workers.UvicornWorker -b 127.0.0.1:{port} sapp:asgi_app",
        True,
    ),
    "waitress": ("-m waitress --listen=127.0.0.1:{port} sapp:app", False),
    "uvicorn": ("-m uvicorn --lifespan off --port {port} sapp:asgi_app", True),
    # Its supervisor passes SIGTERM on to each worker process.
    "uvicorn-workers": (
        "-m uvicorn --lifespan off --workers 2 --port {port} sapp:asgi_app",
        True,
    ),
    "wsgiref": ("sapp.py", False),
    # Granian's workers are multiprocessing children that replace flagware's
    # handler with their own and end with os._exit, past atexit.
    "granian-wsgi": (
        "-m granian --interface wsgi --workers 2 --host 127.0.0.1 --port {port} sapp:app",
        True,
    ),
    "granian-asginl": (  # ASGI without a lifespan
        "-m granian --interface asginl --workers 2 --host 127.0.0.1 --port {port} sapp:asgi_app",
        True,
    ),
    # Debian's uWSGI 2.0 with its plugin for this Python (uwsgi-plugin-python3).
    "uwsgi": (
        "--plugin {plugin} --http-socket 127.0.0.1:{port} --virtualenv {venv} --module sapp:app"
        " --master --processes 2 --enable-threads --die-on-term --disable-logging",
        False,  # die-on-term stops the workers at once
    ),
    # The app loaded in each worker after the fork instead of in the master.
    "uwsgi-lazy-apps": (
        "--plugin {plugin} --http-socket 127.0.0.1:{port} --virtualenv {venv} --module sapp:app"
        " --master --processes 2 --enable-threads --die-on-term --disable-logging --lazy-apps",
        False,
    ),
    "uwsgi-graceful": (
        "--plugin {plugin} --http-socket 127.0.0.1:{port} --virtualenv {venv} --module sapp:app"
        " --master --processes 2 --enable-threads --disable-logging"
        " --hook-master-start 'unix_signal:15 gracefully_kill_them_all'",
        True,
    ),
    # uWSGI's own default: Python threads disabled (not in the SIGTERM matrix).
    "uwsgi-no-threads": (
        "--plugin {plugin} --http-socket 127.0.0.1:{port} --virtualenv {venv} --module sapp:app"
        " --master --processes 2 --die-on-term --disable-logging",
        False,
    ),
}
NO_THREADS = "uWSGI runs this app with Python threads disabled"


PLUGIN = f"python{sys.version_info.major}{sys.version_info.minor}"


def uwsgi() -> str:
    """The uWSGI binary, when it has a plugin for this Python; else the test is skipped."""
    binary = shutil.which("uwsgi")
    if binary is None or not Path(f"/usr/lib/uwsgi/plugins/{PLUGIN}_plugin.so").exists():
        pytest.skip(f"uWSGI with its {PLUGIN} plugin is not installed (.ci/run installs it)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Poll the port, then ping the app (which logs nothing, so a ping may be retried
    freely) until it answers: the app is loaded in at least one worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            if fetch(port, "/?ping").body == b"pong":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the app on port {port} did not answer within {timeout} s")


def serve(
    name: str, tmp_path: Path, store: str, extra_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "sapp.py").write_text(textwrap.dedent(APP))
    port = free_port()
    program = [sys.executable]
    if name.startswith("uwsgi"):
        program = [uwsgi()]
    options = SERVERS[name][0].format(port=port, venv=sys.prefix, plugin=PLUGIN)
    command = [*program, *shlex.split(options)]
    env = {
        **os.environ,
        "SPEC": str(tmp_path / "flagware.toml"),
        "EVENT_STORE": store,
        "SLOW_MARK": str(tmp_path / "slow"),
        "PORT": str(port),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
        **extra_env,
    }
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, which every_process signals
    )
    try:
        wait_until_ready(port, proc)
        if "lazy-apps" in options or name.startswith("granian"):
            # Each worker loads the app itself. uWSGI orphans a worker that
            # gets die-on-term's signal while still loading it: its master
            # says goodbye and it serves on (the client's start made the
            # load about 0.5 s longer, and the window was hit). So stop only
            # once both have loaded it, as a server in service has.
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob("loaded-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            # Granian (2.8) loses a SIGTERM that comes while a worker is still
            # loading the app, and then waits for that worker forever (with or
            # without flagware): its handlers come after the app's import.
            if name.startswith("granian"):
                time.sleep(0.5)
    except BaseException:
        proc.kill()
        print(proc.communicate(timeout=30)[0].decode())
        raise
    return proc, port


def get(port: int, uid: str) -> int:
    """The status of one request; 0 when the server went away before answering."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return fetch(port, f"/?{uid}", headers=BROWSER).status
        except ConnectionRefusedError:  # nothing reached the app: safe to try again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        except OSError:
            return 0


def stored_hits(store: str) -> tuple[Counter[str], int]:
    """Stored events by kind, and the uids of the stored ``hit`` events."""
    with open_store(store) as s:
        rows = list(s.iter_events())
    kinds = Counter(r["event"] for r in rows)
    hits = sorted(r["metadata"]["uid"] for r in rows if r["event"] == "hit")
    assert len(hits) == len(set(hits)), "an event stored twice"
    return kinds, len(hits)


def run_and_terminate(
    name: str,
    tmp_path: Path,
    store: str,
    *,
    every_process: bool = False,
    around_signal: tuple[Callable[[], None], Callable[[], None]] | None = None,
    env: dict[str, str] | None = None,
    slow_answered: list[float] | None = None,
) -> tuple[set[str], int, float, str]:
    """Serve, fire requests, SIGTERM at once (to the server, or to every process
    of it as systemd and pkill do); the uids answered 2xx, the exit code, the
    seconds from the signal to the exit and the server's output.
    ``around_signal``: what to do just before the signal and just after it;
    ``slow_answered`` gets the seconds from the signal to the slow request's answer."""
    proc, port = serve(name, tmp_path, store, env or {})
    graceful = SERVERS[name][1]
    ok: set[str] = set()
    try:
        uids = [f"{t}-{i}" for t in range(THREADS) for i in range(PER_THREAD)]
        with ThreadPoolExecutor(THREADS) as pool:
            statuses = dict(zip(uids, pool.map(lambda uid: get(port, uid), uids), strict=True))
        assert set(statuses.values()) == {200}, statuses
        ok |= set(uids)
        slow: dict[str, int] = {}
        slow_thread = None
        if graceful:  # one request in flight at the signal: it finishes, its events count
            mark = tmp_path / "slow"

            def slow_request() -> None:
                slow["slow"] = get(port, "slow")
                answered.append(time.monotonic())

            answered: list[float] = []
            slow_thread = threading.Thread(target=slow_request)
            slow_thread.start()
            deadline = time.monotonic() + 30
            while not mark.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert mark.exists(), "the slow request never reached the app"
        if name.startswith("uwsgi") and not graceful:
            # uWSGI runs no exit handler in a worker still busy with a request
            # when die-on-term stops it (the README says what that loses): a
            # worker finishing its last request after the response went out
            # lost all it held (about 1 run in 30). Idle workers are tested.
            time.sleep(0.3)
        # Nothing stored yet: the writer's next flush is a minute away.
        assert stored_hits(store)[1] == 0
        if around_signal is not None:
            around_signal[0]()
        signalled = time.monotonic()
        if every_process:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        if around_signal is not None:
            around_signal[1]()
        if slow_thread is not None:
            slow_thread.join(30)
            assert slow == {"slow": 200}, "a graceful server must finish the request in flight"
            ok.add("slow")
            if slow_answered is not None:
                slow_answered.append(answered[0] - signalled)
        output = proc.communicate(timeout=60)[0].decode()
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert "Traceback" not in output, output
    return ok, proc.returncode, took, output


EXIT = {  # what SIGTERM makes of each server
    "gunicorn-sync": 0,
    "gunicorn-gthread": 0,
    "gunicorn-uvicorn": 0,
    "waitress": -signal.SIGTERM,  # no handler: flagware's stores, then SIGTERM kills as before
    "uvicorn": -signal.SIGTERM,  # raised again, to flagware's handler, after its shutdown
    "uvicorn-workers": 0,  # the supervisor exits normally once its workers have
    "wsgiref": -signal.SIGTERM,
    "granian-wsgi": 0,
    "granian-asginl": 0,
    "uwsgi": 0,
    "uwsgi-lazy-apps": 0,
    "uwsgi-graceful": 0,
}


@pytest.mark.parametrize("name", [name for name in SERVERS if name != "uwsgi-no-threads"])
def test_sigterm_stores_every_event_of_every_2xx_request(
    name: str, tmp_path: Path, spec_file: Any
) -> None:
    store = str(tmp_path / "events.db")
    ok, code, _, output = run_and_terminate(name, tmp_path, store)
    assert code == EXIT[name]
    assert NO_THREADS not in output
    kinds, hits = stored_hits(store)
    assert hits == len(ok)
    assert kinds == {"statsig::gate_exposure": len(ok), "hit": len(ok), "visited": len(ok)}


@pytest.mark.parametrize("name", ["gunicorn-sync", "uvicorn-workers"])
def test_sigterm_to_every_process_stores_all_without_a_stall(
    name: str, tmp_path: Path, spec_file: Any
) -> None:
    """systemd (KillMode=control-group) and pkill signal every process, and the
    server's master then signals each worker again: the second SIGTERM waited
    for the flush its own handler had interrupted, up to its 5 s bound (a new
    user's trial: gunicorn stopped in 5.4 s instead of 0.4 s)."""
    store = str(tmp_path / "events.db")
    ok, code, took, _ = run_and_terminate(name, tmp_path, store, every_process=True)
    assert code == EXIT[name]
    kinds, hits = stored_hits(store)
    assert hits == len(ok)
    assert kinds == {"statsig::gate_exposure": len(ok), "hit": len(ok), "visited": len(ok)}
    # The request in flight takes 1.5 s; the stall added 5 s on top of it.
    assert took < 5.0, f"stopping took {took:.1f} s"


def test_uwsgi_with_python_threads_disabled_stores_each_event_as_logged(
    tmp_path: Path, spec_file: Any
) -> None:
    """uWSGI's default: its workers keep the GIL while they wait for a request,
    so the writer runs only during requests; events logged before a quiet
    spell waited in memory, and a stop lost them (4 of 50, by hand), unsaid.
    Now said once, and each event is stored as it is logged."""
    store = str(tmp_path / "events.db")
    proc, port = serve("uwsgi-no-threads", tmp_path, store, {})
    try:
        for n in range(10):
            assert get(port, f"u{n}") == 200
        # Stored already, with the app's flush_interval of 60 s and no stop yet.
        kinds, hits = stored_hits(store)
        assert hits == 10 and kinds["visited"] == 10, kinds
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    # The master loads the app, and says it; its two workers inherit that it was said.
    assert output.count(NO_THREADS) == 1, output
    assert "Set enable-threads = true" in output


def test_sigterm_under_waitress_on_postgresql(
    tmp_path: Path, spec_file: Any, postgres_url: str
) -> None:
    ok, code, _, _ = run_and_terminate("waitress", tmp_path, postgres_url)
    assert code == -signal.SIGTERM
    kinds, _ = stored_hits(postgres_url)
    assert kinds == {"statsig::gate_exposure": len(ok), "hit": len(ok), "visited": len(ok)}


def test_a_uvicorn_worker_stopped_while_the_database_is_away_waits_for_it(
    tmp_path: Path, spec_file: Any, postgres: Any, postgres_url: str
) -> None:
    """uvicorn's worker processes end without exit handlers, so close(), which
    waits for a store that refuses writes, never ran: a new user's trial
    stopped one while PostgreSQL was down and lost all 990 queued events
    without a word, though the database was back 2.2 s after the SIGTERM."""
    if postgres.cluster is None:
        pytest.skip("stopping the database needs the suite's own cluster")
    cluster = postgres.cluster

    def start_soon() -> None:
        threading.Timer(1.5, cluster.pg_ctl, ("start",)).start()

    try:
        ok, code, took, _ = run_and_terminate(
            "uvicorn-workers",
            tmp_path,
            postgres_url,
            around_signal=(lambda: cluster.pg_ctl("stop"), start_soon),
        )
    finally:
        time.sleep(2)  # the timer's start, whatever happened
        with contextlib.suppress(RuntimeError):
            cluster.pg_ctl("start")  # already running unless the timer failed
    assert code == EXIT["uvicorn-workers"]
    kinds, hits = stored_hits(postgres_url)
    assert hits == len(ok)
    assert kinds == {"statsig::gate_exposure": len(ok), "hit": len(ok), "visited": len(ok)}

    # The event loop serves on while the events wait for the database: an
    # async request in flight at the signal answered after the wait (2.5 s).
    (tmp_path / "slow").unlink()
    answered: list[float] = []
    serving = postgres.database()
    try:
        ok, code, took, _ = run_and_terminate(
            "uvicorn-workers",
            tmp_path,
            serving,
            around_signal=(
                lambda: cluster.pg_ctl("stop"),
                lambda: threading.Timer(2.5, cluster.pg_ctl, ("start",)).start(),
            ),
            env={"SLOW_ASYNC": "1"},
            slow_answered=answered,
        )
    finally:
        time.sleep(3)
        with contextlib.suppress(RuntimeError):
            cluster.pg_ctl("start")
    assert code == EXIT["uvicorn-workers"]
    assert answered[0] < 2.0, f"the request in flight answered {answered[0]:.1f} s after SIGTERM"
    kinds, hits = stored_hits(serving)
    assert hits == len(ok)
    assert kinds == {"statsig::gate_exposure": len(ok), "hit": len(ok), "visited": len(ok)}

    # Away for longer than shutdown_timeout: what could not be stored is said.
    (tmp_path / "slow").unlink()
    other = postgres.database()
    try:
        ok, code, took, output = run_and_terminate(
            "uvicorn-workers",
            tmp_path,
            other,
            around_signal=(lambda: cluster.pg_ctl("stop"), lambda: None),
            env={"SHUTDOWN_TIMEOUT": "1"},
        )
    finally:
        with contextlib.suppress(RuntimeError):
            cluster.pg_ctl("start")
    assert code == EXIT["uvicorn-workers"]
    said = re.findall(r"(\d+) queued events could not be stored within 1 s of SIGTERM", output)
    assert said and sum(map(int, said)) >= 3 * len(ok) - 3, output  # the slow one may follow
    assert took < 8, f"stopping took {took:.1f} s"


CHILDREN = """
import multiprocessing
import os
import sys

from flagware import Flagware
from flagware.events.model import Event


def client():
    return Flagware(
        spec=sys.argv[1], event_store=sys.argv[2], hash_key="k", flush_interval=60,
        handle_sigterm=False,
    )


def log(fw, tag):
    for i in range(20):
        fw.log(Event("hit", {"userID": tag}, metadata={"uid": f"{tag}-{i}"}))
    # Returning ends the child with os._exit, past atexit: nothing stored it.


def own():
    log(client(), "own")


if __name__ == "__main__":
    inherited = client()  # made before the fork, first used in the child
    fork = multiprocessing.get_context("fork")
    for target, args in ((own, ()), (log, (inherited, "inherited"))):
        child = fork.Process(target=target, args=args)
        child.start()
        child.join(60)
        assert child.exitcode == 0, child.exitcode
    os._exit(0)  # the parent logged nothing, and stores nothing
"""


def test_a_multiprocessing_child_stores_its_queue_as_it_ends(
    tmp_path: Path, spec_file: Any
) -> None:
    """What Granian's workers are: multiprocessing children, which end with
    os._exit once their target returns. Both a client made in the child and
    one made before the fork store the child's events as it ends."""
    script = tmp_path / "children.py"
    script.write_text(CHILDREN)
    store = str(tmp_path / "events.db")
    done = subprocess.run(
        [sys.executable, str(script), str(spec_file), store],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with open_store(store) as s:
        uids = sorted(r["metadata"]["uid"] for r in s.iter_events())
    assert uids == sorted(f"{tag}-{i}" for tag in ("own", "inherited") for i in range(20))
