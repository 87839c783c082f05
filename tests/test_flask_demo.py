"""The seed lab as a Flask demo, and `flagware demo`."""

from __future__ import annotations

import io
from typing import Any

from examples.flask_demo.app import SPEC, create_app
from flagware.demo import simulate


def test_demo_pages(make_client: Any) -> None:
    client = make_client(spec=SPEC, allow_random_override=True)
    http = create_app(client).test_client()
    tasks = http.get("/tasks", environ_base={"REMOTE_ADDR": "192.0.2.8"}).json
    assert len(tasks["tasks"]) == 3 and tasks["button_color"] in ("blue", "red")
    rolled = {http.get("/tasks?random=1").json["button_color"] for _ in range(40)}
    assert rolled == {"blue", "red"}  # the demo opts in to ?random=1

    page = http.get("/signup")
    assert page.status_code == 200 and 'id="signup"' in page.text
    assert http.post("/signup/click").json == {"ok": True}
    client.flush()
    names = [e["event"] for e in client.store.iter_events()]
    assert names.count("visited_signup") == 1 and names.count("signup_clicked") == 1


def test_simulated_visitors_split_evenly_and_everything_is_logged(make_client: Any) -> None:
    client = make_client(spec=SPEC)
    app = create_app(client)
    out = io.StringIO()
    seen = simulate(app, 400, out=out)
    assert sum(seen["groups"].values()) == 400
    assert 150 < seen["groups"]["Control"] < 250 and 150 < seen["groups"]["Red"] < 250
    assert 150 < seen["banner"]["shown"] < 250
    assert "400/400 visitors" in out.getvalue()
    client.flush()
    names = [e["event"] for e in client.store.iter_events()]
    pages = seen["pages"]["signup"]
    assert 450 < pages < 550  # a fifth of the visitors open the page twice
    assert names.count("visited_signup") == pages  # every visit logged, none twice
    # One exposure per visitor: a second visit within the minute repeats it.
    assert names.count("statsig::config_exposure") == 400
    assert client.skipped_exposures["repeat"] == 2 * (pages - 400)  # gate and experiment


def test_demo_serve_answers_a_browser_over_http(tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "flagware.cli", "demo", "--serve", "--port", str(port)]
    cmd += ["--store", str(tmp_path / "events.db")]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/signup", timeout=2) as r:
                    page = r.read().decode()
                    cookie = r.headers["Set-Cookie"]
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        assert 'id="signup"' in page and cookie.startswith("flagware_id=")
        # The diagnostics page, for this machine (a trial found none on the demo).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_flagware/", timeout=5) as r:
            assert r.status == 200 and "button_color" in r.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=10)
        assert server.stdout is not None
        server.stdout.close()
