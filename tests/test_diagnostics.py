"""The diagnostics page through FlagwareMiddleware and werkzeug's test client."""

from __future__ import annotations

import inspect
import logging
import os
import re
import sqlite3
import sys
import time
from contextlib import closing
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request, Response

from flagware import Flagware, FlagwareMiddleware, current_flags
from flagware.diagnostics import DiagnosticsApp

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "203.0.113.77"}
TOKEN = "s3cret-diagnostics-token-0123456789"

METRICS = """
[metrics.clicks]
event = "clicked"
kind = "conversion"
"""

_OPTIONS = set(inspect.signature(Flagware.__init__).parameters)


@pytest.fixture
def make_diag(make_client: Any) -> Any:
    """A diagnostics-enabled client; options the client does not take yet become attributes."""

    def make(**options: Any) -> Any:
        options.setdefault("diagnostics", True)
        later = {k: options.pop(k) for k in list(options) if k not in _OPTIONS}
        client = make_client(**options)
        for name, value in later.items():
            setattr(client, name, value)
        return client

    return make


@Request.application  # type: ignore[misc]
def app(request: Request) -> Response:
    """The app: "/" reads flags and logs an event; every other path is its own 404."""
    if request.path != "/":
        return Response("app: no such page", 404)
    flags = current_flags()
    flags.experiment("button_color")
    name = request.args.get("event", "clicked")
    flags.log_event(name, value=1, metadata={"note": request.args.get("note", "")})
    return Response("app")


def http(client: Any) -> Client:
    return Client(FlagwareMiddleware(app, client))


def page(browser: Client, path: str = "/_flagware/", **kwargs: Any) -> TestResponse:
    kwargs.setdefault("environ_base", LOCAL)
    kwargs.setdefault("headers", {"Host": "localhost:5000"})
    return browser.get(path, **kwargs)


def is_app_404(response: TestResponse) -> bool:
    return response.status_code == 404 and response.text == "app: no such page"


# -- access -------------------------------------------------------------------------


def test_off_by_default_the_path_is_the_apps(client: Any) -> None:
    assert client.diagnostics is False
    assert is_app_404(page(http(client)))


def test_loopback_without_a_token_sees_the_page(make_diag: Any) -> None:
    response = page(http(make_diag()))
    assert response.status_code == 200
    assert "flagware diagnostics" in response.text


@pytest.mark.parametrize(
    ("environ", "host"),
    [
        (REMOTE, "example.test"),  # another machine
        (LOCAL, "evil.example"),  # DNS rebinding: a page in the browser reading localhost
        ({**LOCAL, "HTTP_X_FORWARDED_FOR": "203.0.113.77"}, "localhost"),  # a local proxy
    ],
)
def test_without_a_token_only_this_machine_sees_it(
    make_diag: Any, environ: dict[str, str], host: str
) -> None:
    response = page(http(make_diag()), environ_base=environ, headers={"Host": host})
    assert is_app_404(response)  # exactly what the app says: nothing to probe


def test_ipv6_loopback_counts_as_local(make_diag: Any) -> None:
    response = page(
        http(make_diag()), environ_base={"REMOTE_ADDR": "::1"}, headers={"Host": "[::1]:8000"}
    )
    assert response.status_code == 200


def test_debug_serves_anyone_without_a_token(make_diag: Any) -> None:
    response = page(http(make_diag(diagnostics="debug")), environ_base=REMOTE)
    assert response.status_code == 200


def test_a_token_is_required_even_from_loopback_and_in_debug(make_diag: Any) -> None:
    browser = http(make_diag(diagnostics="debug", diagnostics_token=TOKEN))
    assert is_app_404(page(browser))
    assert is_app_404(page(browser, query_string={"token": "wrong"}))
    assert is_app_404(page(browser, headers={"Authorization": "Bearer wrong"}))


def test_token_once_then_a_strict_cookie(make_diag: Any) -> None:
    browser = http(make_diag(diagnostics_token=TOKEN))
    first = page(browser, "/_flagware/?token=" + TOKEN, environ_base=REMOTE)
    assert first.status_code == 200 and "history.replaceState" in first.text
    cookie = next(c for c in first.headers.getlist("Set-Cookie") if c.startswith("flagware_diag"))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/_flagware/" in cookie
    assert TOKEN not in cookie  # a digest of the token, not the token
    again = page(browser, environ_base=REMOTE)  # the test client sends the cookie back
    assert again.status_code == 200 and "flagware diagnostics" in again.text
    assert page(browser, "/_flagware/events.json", environ_base=REMOTE).status_code == 200


def test_bearer_token_and_token_from_the_environment(
    make_diag: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGWARE_DIAGNOSTICS_TOKEN", TOKEN)
    browser = http(make_diag())
    assert is_app_404(page(browser))  # loopback is not enough once a token exists
    ok = page(browser, environ_base=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_the_path_is_configurable(make_diag: Any) -> None:
    browser = http(make_diag(diagnostics_path="/ops/flags"))
    assert is_app_404(page(browser))
    bare = page(browser, "/ops/flags")
    assert bare.status_code == 303 and bare.headers["Location"] == "/ops/flags/"
    assert page(browser, "/ops/flags/").status_code == 200


def test_unknown_subpaths_and_other_methods(make_diag: Any) -> None:
    browser = http(make_diag())
    assert page(browser, "/_flagware/nope").status_code == 404
    post = browser.post("/_flagware/", environ_base=LOCAL, headers={"Host": "localhost"})
    assert post.status_code == 405


def test_mounted_alone_it_still_checks_access(make_diag: Any) -> None:
    response = Client(DiagnosticsApp(make_diag())).get("/_flagware/", environ_base=REMOTE)
    assert response.status_code == 404


# -- what the page shows ------------------------------------------------------------


def test_headers_lock_the_page_down(make_diag: Any) -> None:
    response = page(http(make_diag()))
    csp = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert f'<script nonce="{nonce.group(1)}">' in response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "http://" not in response.text and "https://" not in response.text  # nothing external


def test_shows_the_visitor_and_their_assignments_without_exposures(make_diag: Any) -> None:
    client = make_diag()
    browser = http(client)
    first = page(browser)
    stable_id = re.search(r"flagware_id=([0-9a-f]{32})", first.headers["Set-Cookie"])
    assert stable_id is not None  # a first visit mints the cookie on the page itself
    assert stable_id.group(1) in first.text
    assert re.search(r'specs of <span id="specs">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC<', first.text)
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td>(.*?)</td>", first.text))
    assert "pass" in rows["everyone"] and "fail" in rows["nobody"]
    # The app, asked with the same cookie, puts this visitor in the group the page shows.
    browser.get("/", environ_base=LOCAL)
    client.flush()
    exposure = next(e for e in client.store.iter_events() if e["exposure"] == "button_color")
    assert rows["button_color"] == exposure["group"]
    # Looking at the page logged nothing: only the app's request did.
    assert client.store.count() == 2
    assert "not shown (hashed into userID)" in first.text
    # Without the hash key (a shared store away at the start) nothing was hashed,
    # and the page says so rather than "hashed into userID".
    client.hash_key = b""
    assert "not hashed: the hash key is unread yet" in page(http(client)).text


def test_events_json_returns_what_came_after(make_diag: Any) -> None:
    client = make_diag()
    browser = http(client)
    for _ in range(3):
        browser.get("/", environ_base=REMOTE)
    client.flush()
    everything = page(browser, "/_flagware/events.json").json
    # One exposure (the browser's repeats within the minute are not logged), three events.
    assert [e["id"] for e in everything["events"]] == [1, 2, 3, 4]
    assert everything["last_id"] == 4
    later = page(browser, "/_flagware/events.json?after=2").json
    assert [e["id"] for e in later["events"]] == [3, 4] and later["last_id"] == 4
    assert {"event", "user_id", "value", "metadata", "time"} <= set(later["events"][0])
    assert page(browser, "/_flagware/events.json?after=9").json == {"events": [], "last_id": 9}
    assert page(browser, "/_flagware/events.json?after=x").status_code == 400


def test_user_controlled_text_is_escaped(make_diag: Any) -> None:
    client = make_diag()
    browser = http(client)
    evil = "<script>alert(1)</script>"
    browser.get(
        "/",
        query_string={"event": evil, "note": '<img src=x onerror="alert(2)">'},
        environ_base=REMOTE,
    )
    client.flush()
    html = page(browser, headers={"Host": "localhost", "User-Agent": "<b>agent</b>"}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "<b>agent" not in html and "alert(1)</script>" not in html
    body = page(browser, "/_flagware/events.json").get_data(as_text=True)
    assert "<" not in body and ">" not in body  # JSON never carries raw markup characters


def test_no_raw_ip_anywhere(make_diag: Any) -> None:
    client = make_diag(diagnostics="debug", send_ip=True)  # the payload holds the IP
    browser = http(client)
    browser.get("/", query_string={"note": "203.0.113.77"}, environ_base=REMOTE)
    client.flush()
    responses = [page(browser, environ_base=REMOTE), page(browser, "/_flagware/events.json")]
    for response in responses:
        assert response.status_code == 200
        assert "203.0.113.77" not in response.get_data(as_text=True)
    assert "[ip hidden]" in responses[1].get_data(as_text=True)


# -- results --------------------------------------------------------------------------


def test_results_chart_when_results_exist(make_diag: Any, spec_file: Any) -> None:
    spec_file.write_text(spec_file.read_text() + METRICS)
    client = make_diag()
    for i in range(40):  # forty visitors, each with their own cookie
        Client(FlagwareMiddleware(app, client)).get(
            "/", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}
        )
    client.flush()
    html = page(http(client)).text
    assert 'data-experiment="button_color"' in html
    assert '<svg class="chart"' in html and "clicks" in html
    assert "results unavailable" not in html


def test_the_page_says_when_the_store_cannot_be_read(make_diag: Any, tmp_path: Any) -> None:
    """It said "0 events stored" while a PostgreSQL store refused the password."""
    client = make_diag()
    browser = http(client)
    browser.get("/", environ_base=REMOTE)
    client.flush()
    assert "2 events stored" in page(browser).text  # an exposure and the event
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 300)
    client.event_store = str(garbage)  # what the page reads, as a store that went bad
    html = page(browser).text
    assert '<span class="off" id="stored">event store unreadable: file is not a database' in html
    assert "events stored" not in html
    # Not "no events yet", as it said through a PostgreSQL outage.
    assert "no events yet" not in html
    assert "the event store cannot be read now (see above)" in html
    # And what this process holds meanwhile, which the store cannot say.
    client.writer.dropped = 3
    client.errors["event store"] += 2
    html = page(browser).text
    held = re.search(r"this process holds (\d+) event\(s\) in memory \(at most (\d+)\)", html)
    assert held is not None and int(held[2]) == client.writer.max_queue
    assert "3 dropped; errors: event store 2" in html


def test_the_page_says_when_this_process_cannot_store(make_diag: Any) -> None:
    """A store that reads but refuses writes (a full disk, a read-only file):
    the page said "1398 events stored" while 13,500 events waited in memory."""
    client = make_diag()
    browser = http(client)
    browser.get("/", environ_base=REMOTE)
    client.flush()
    # closing(): sqlite3's own context manager commits but leaves the
    # connection open (Python 3.13 warns of it when collected).
    with closing(
        sqlite3.connect(client.event_store, isolation_level=None)
    ) as conn:  # inserts refused, as a full disk
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'full'); END"
        )
    browser.get("/", environ_base=REMOTE)
    client.flush()
    html = page(browser).text
    said = re.search(
        r'<span class="off" id="stored">2 events stored; this process cannot store for \d+ s:'
        r" this process holds (\d+) event\(s\) in memory \(at most \d+\), 0 dropped;"
        r" errors: event store (\d+)</span>",
        html,
    )
    assert said is not None, html
    assert int(said[1]) >= 1 and int(said[2]) >= 1
    with closing(sqlite3.connect(client.event_store, isolation_level=None)) as conn:
        conn.execute("DROP TRIGGER refuse")
    client.flush()
    html = page(browser).text
    assert re.search(r"\b\d+ events stored &middot;", html) and "cannot store" not in html


def test_the_page_says_when_the_store_cannot_be_made(make_diag: Any, tmp_path: Any) -> None:
    """A first deploy whose store's folder cannot be made (a re-check trial: a
    read-only folder): the page said "0 events stored" while each worker held
    hundreds of events it could not store."""
    (tmp_path / "var").write_text("")  # a file where the store's folder would be
    client = make_diag(event_store=tmp_path / "var" / "events.db", hash_key="k", shutdown_timeout=0)
    browser = http(client)
    browser.get("/", environ_base=REMOTE)
    client.flush()
    html = page(browser).text
    assert re.search(
        r'<span class="off" id="stored">0 events stored; this process cannot store for \d+ s:'
        r" this process holds [1-9]\d* event\(s\) in memory",
        html,
    ), html


def test_results_unavailable_before_any_event(make_diag: Any) -> None:
    html = page(http(make_diag())).text
    assert "results unavailable" in html and "<svg" not in html


def test_results_unavailable_when_results_break(
    make_diag: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_diag()
    browser = http(client)
    browser.get("/", environ_base=REMOTE)
    client.flush()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug in results")

    monkeypatch.setattr("flagware.results.compute.compute_results", broken)
    response = page(browser)
    assert response.status_code == 200 and "results unavailable" in response.text
    assert client.errors["diagnostics results"] == 1


def test_results_unavailable_without_the_results_package(
    make_diag: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "flagware.results.compute", None)  # import fails
    response = page(http(make_diag()))
    assert response.status_code == 200 and "results unavailable" in response.text


# -- the Statsig engine -------------------------------------------------------------


def test_statsig_engine_lists_what_its_specs_offer(tmp_path: Any) -> None:
    from flagware.spec import compile_dcs, parse_spec
    from tests.statsig_stub import StatsigStub

    spec = {
        "gates": {"everyone": {"rollout": 100}},
        "experiments": {
            "button_color": {"groups": [{"name": "Control", "weight": 100, "params": {"c": 1}}]}
        },
    }
    dcs = compile_dcs(parse_spec(spec))
    dcs["time"] = 1_796_000_000_000  # the specs' last change at Statsig
    with StatsigStub(dcs=dcs) as stub:
        client = Flagware(
            statsig_secret="secret-test",
            statsig_api=stub.url,
            hash_key="k",
            event_store=tmp_path / "outbox.db",
            diagnostics=True,
        )
        try:
            html = page(http(client)).text
        finally:
            client.close()
    assert '<span class="pill" id="engine">statsig</span>' in html
    sdk = os.environ.get("FLAGWARE_ENGINE", "legacy")
    assert f'<span class="pill" id="sdk">{sdk}</span> SDK' in html
    assert 'specs of <span id="specs">2026-11-30 00:53:20 UTC</span>' in html
    assert "From the Statsig specs this process has downloaded" in html
    assert re.search(r"<td>everyone</td><td><span class=\"on\">pass", html)
    assert re.search(r"<td>button_color</td><td>Control</td>", html)
    assert "results unavailable" in html and "Statsig console" in html
    assert not [e for e in stub.events if e["eventName"].startswith("statsig::")]  # no exposures


def test_the_page_says_when_the_statsig_specs_have_not_come(tmp_path: Any) -> None:
    """An unreachable API: the process serves defaults, and the page says so."""
    from tests.statsig_stub import StatsigStub

    with StatsigStub() as stub:
        url = stub.url  # nothing listens here once it stops
    client = Flagware(
        statsig_secret="secret-test",
        statsig_api=url,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
        diagnostics=True,
        init_timeout=0.2,
        shutdown_timeout=0.2,
    )
    try:
        html = page(http(client)).text
    finally:
        client.close()
    assert '<span class="off" id="specs">no specs yet: serving defaults</span>' in html
    # ...and that the downloads fail, as the log said (a trial's page said nothing).
    failing = re.search(r'<span class="off" id="specs-failing">(.*?)</span>', html)
    assert failing, html
    host = url.removesuffix("/v1")
    assert failing[1].startswith(f"downloads from {host}/")
    assert "/download_config_specs failing since " in failing[1]
    assert re.search(r"\((\d+) failed since; last: .+\)$", failing[1])


def test_the_page_says_which_edit_of_a_started_experiment_is_refused(
    make_diag: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page showed the recorded definition as if the file said it; only
    the log told of the refused edit (an operator's trial)."""
    from flagware.engine import local

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    client = make_diag()
    browser = http(client)
    browser.get("/")  # exposed: the experiment starts
    client.flush()
    assert "specs-refused" not in page(browser).text
    spec_file.write_text(spec_file.read_text().replace('"red"', '"crimson"'))
    os.utime(spec_file, (1, 1))
    html = page(browser).text
    [refused] = re.findall(r'<span class="off specs-refused">(.*?)</span>', html)
    assert refused.startswith("refused: ")
    assert refused.endswith(
        "Until then it is served as it started; the rest of the spec is served as written."
    )
    assert "groups[1].params.color changed from &quot;red&quot; to &quot;crimson&quot;" in refused


def on_statsig(stub: Any, tmp_path: Any, secret: str = "secret-test") -> Flagware:
    """A client with the page on, on Statsig at ``stub``."""
    return Flagware(
        statsig_secret=secret,
        statsig_api=stub.url,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
        diagnostics=True,
        init_timeout=0.5,
    )


def test_a_store_away_is_no_failure_of_the_page(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With the store away the page says delivery is unknown; it also logged
    "diagnostics failed" while it worked (a trial, PostgreSQL stopped)."""
    from tests.statsig_stub import StatsigStub

    with StatsigStub() as stub:
        client = on_statsig(stub, tmp_path)
        try:
            (tmp_path / "away").write_text("")  # a file where the store's folder would be
            client.event_store = str(tmp_path / "away" / "outbox.db")  # as a store away
            with caplog.at_level(logging.WARNING, logger="flagware"):
                html = page(http(client)).text
        finally:
            client.close()
    assert 'Statsig delivery <span class="off" id="delivery">unknown</span>' in html
    assert client.errors["diagnostics"] == 0
    assert not [m for m in caplog.messages if "diagnostics failed" in m]


def test_results_with_the_store_away_are_said_not_reported(
    make_diag: Any, spec_file: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A local-engine page on a PostgreSQL store that was stopped logged
    "diagnostics results failed ... (serving defaults)" and counted it (a
    re-check): the store is away, which the page says, and flags are served."""
    pytest.importorskip("psycopg")
    spec_file.write_text(spec_file.read_text() + METRICS)
    client = make_diag()
    client.event_store = f"postgresql://postgres@/db?host={tmp_path / 'no-server'}"
    with caplog.at_level(logging.WARNING, logger="flagware"):
        html = page(http(client)).text
    assert "cannot reach postgresql://" in html  # said on the page
    assert client.errors["diagnostics results"] == 0
    assert not [m for m in caplog.messages if "diagnostics results failed" in m]


def test_the_page_says_what_stops_delivery(tmp_path: Any) -> None:
    """A refused secret: events wait, and the page says how many and why."""
    from flagware.events.model import Event
    from tests.statsig_stub import StatsigStub

    with StatsigStub() as stub:
        stub.secret = "secret-right"
        client = on_statsig(stub, tmp_path, secret="secret-wrong")
        try:
            client.log(Event("clicked", {"userID": "u"}))
            client.flush()
            deadline = time.monotonic() + 10
            while client.delivery_stats().last_failure is None and time.monotonic() < deadline:
                time.sleep(0.05)
            html = page(http(client)).text
        finally:
            client.close()
    assert re.search(r'Statsig delivery: <span id="delivery">\d+ waiting</span>', html)
    found = re.search(r'<span class="off" id="delivery-failure">([^<]*)</span>', html)
    assert found and found.group(1).startswith("last failure: HTTP 401: check the server secret")
    assert "secret-wrong" not in html


def test_the_local_engine_page_has_no_delivery(make_diag: Any) -> None:
    text = page(http(make_diag())).text
    assert 'id="engine">local' in text and 'id="delivery"' not in text


def test_behind_a_proxy_the_visitor_is_the_one_the_app_sees(make_diag: Any) -> None:
    from flagware.identity import hash_ip

    client = make_diag(diagnostics_token=TOKEN, proxy_hops=1)
    proxied = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.4"}
    response = page(
        http(client), environ_base=proxied, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert hash_ip(b"test-key", "198.51.100.4") in response.text
    assert "198.51.100.4" not in response.text


def test_an_outage_counts_its_own_failed_downloads() -> None:
    """The page's count covered the whole process: "8 failed so far" for an
    outage of 2, after an earlier one (a re-check trial)."""
    from flagware.engine.specs_log import SpecsLog

    downloads = SpecsLog("http://127.0.0.1:9/v1/download_config_specs")
    for _ in range(6):
        downloads.failed("HTTP 503", have_specs=True)
    downloads.worked()
    assert downloads.failing_since is None
    downloads.failed("HTTP 500", have_specs=True)
    downloads.failed("HTTP 502", have_specs=True)
    assert (downloads.outage_failures, downloads.failures) == (2, 8)
    assert downloads.last_reason == "HTTP 502" and downloads.failing_since is not None
