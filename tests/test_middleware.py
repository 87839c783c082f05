"""FlagwareMiddleware and Flags, end to end through werkzeug's test client and the real SDK."""

from __future__ import annotations

import gc
import json
import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Request, Response

from flagware import FlagwareMiddleware, current_flags
from flagware.flags import NoRequestError, _current
from flagware.identity import hash_ip


def flags_app(reads: bool = True) -> Any:
    """A WSGI app that reports what its request's flags are."""

    @Request.application  # type: ignore[misc]
    def app(request: Request) -> Response:
        if not reads:
            return Response("plain")
        flags = current_flags()
        assert request.environ["flagware.flags"] is flags
        exp = flags.experiment("button_color")
        body = {
            "user_id": flags.user_id,
            "stable_id": flags.stable_id,
            "gate": flags.gate("new_signup"),
            "group": exp.group,
            "color": exp.get("color", "none"),
        }
        return Response(json.dumps(body), mimetype="application/json")

    return app


def stored(client: Any) -> list[dict[str, Any]]:
    client.flush()
    return list(client.store.iter_events())


def test_request_that_reads_no_flags_gets_no_cookie_and_no_events(client: Any) -> None:
    http = Client(FlagwareMiddleware(flags_app(reads=False), client))
    response = http.get("/")
    assert response.text == "plain"
    assert "Set-Cookie" not in response.headers
    assert stored(client) == []


def test_first_use_mints_a_cookie_visible_to_the_same_request(client: Any) -> None:
    http = Client(FlagwareMiddleware(flags_app(), client))
    first = http.get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    body = first.json
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"flagware_id={body['stable_id']};")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    # The browser sends it back: same IDs, same group, no new cookie.
    second = http.get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert second.json == body
    assert "Set-Cookie" not in second.headers


def test_cookie_is_secure_on_https(client: Any) -> None:
    http = Client(FlagwareMiddleware(flags_app(), client))
    response = http.get("/", base_url="https://example.test/")
    assert "Secure" in response.headers["Set-Cookie"]


def test_user_id_is_the_hmac_of_the_ip_and_stable_across_clients(
    make_client: Any, tmp_path: Any
) -> None:
    a = make_client()
    b = make_client(event_store=tmp_path / "other.db")  # another process, same key
    ids = [
        Client(FlagwareMiddleware(flags_app(), c))
        .get("/", environ_base={"REMOTE_ADDR": "198.51.100.4"})
        .json["user_id"]
        for c in (a, b)
    ]
    from flagware.identity import hash_ip

    assert ids[0] == ids[1] == hash_ip(b"test-key", "198.51.100.4")
    assert "198.51.100.4" not in json.dumps(stored(a))


def test_user_id_resolver_wins_and_its_failure_falls_back(make_client: Any) -> None:
    ok = make_client(user_id=lambda environ: environ.get("HTTP_X_USER"))
    http = Client(FlagwareMiddleware(flags_app(), ok))
    assert http.get("/", headers={"X-User": "42"}).json["user_id"] == "42"
    assert http.get("/").json["user_id"] != "42"  # None: falls back to the IP hash

    def broken(environ: Any) -> str:
        raise RuntimeError("db down")

    bad = make_client(user_id=broken, event_store=ok.event_store_path.with_name("b.db"))
    response = Client(FlagwareMiddleware(flags_app(), bad)).get(
        "/", environ_base={"REMOTE_ADDR": "203.0.113.1"}
    )
    assert response.status_code == 200 and len(response.json["user_id"]) == 32
    assert bad.errors["user_id resolver"] == 1


def test_each_evaluation_is_memoised_with_one_exposure_per_name(client: Any) -> None:
    @Request.application  # type: ignore[misc]
    def app(request: Request) -> Response:
        flags = current_flags()
        values = {flags.gate("new_signup") for _ in range(5)}
        groups = {flags.experiment("button_color").group for _ in range(5)}
        assert len(values) == 1 and len(groups) == 1
        flags.log_event("clicked", value=1, metadata={"plan": "pro"})
        return Response("ok")

    Client(FlagwareMiddleware(app, client)).get("/")
    events = stored(client)
    names = sorted(e["event"] for e in events)
    assert names == ["clicked", "statsig::config_exposure", "statsig::gate_exposure"]
    clicked = next(e for e in events if e["event"] == "clicked")
    assert clicked["value"] == 1 and clicked["metadata"] == {"plan": "pro"}
    exposure = next(e for e in events if e["event"] == "statsig::config_exposure")
    assert exposure["metadata"]["config"] == "button_color"
    assert exposure["group"] in ("Control", "Red")
    assert len({e["stable_id"] for e in events}) == 1


def test_experiment_params_match_the_group(client: Any) -> None:
    http = Client(FlagwareMiddleware(flags_app(), client))
    seen = {}
    for i in range(60):
        body = (
            Client(FlagwareMiddleware(flags_app(), client))
            .get("/", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"})
            .json
        )
        seen[body["group"]] = body["color"]
    assert seen == {"Control": "blue", "Red": "red"}
    assert http is not None


def test_random_override_only_when_allowed(make_client: Any, tmp_path: Any) -> None:
    strict = make_client()
    http = Client(FlagwareMiddleware(flags_app(), strict))
    first = http.get("/?random=1").json
    assert http.get("/?random=1").json["stable_id"] == first["stable_id"]

    lab = make_client(allow_random_override=True, event_store=tmp_path / "lab.db")
    http = Client(FlagwareMiddleware(flags_app(), lab))
    base = http.get("/").json
    rolled = [http.get("/?random=1") for _ in range(30)]
    assert len({r.json["stable_id"] for r in rolled}) == 30
    assert all("Set-Cookie" not in r.headers for r in rolled)  # the browser keeps its identity
    assert {r.json["group"] for r in rolled} == {"Control", "Red"}
    assert http.get("/").json == base


def test_response_iterable_is_untouched_and_closed_exactly_once(client: Any) -> None:
    closes = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            yield b"b"

        def close(self) -> None:
            closes.append(1)

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        current_flags().gate("new_signup")
        return Body()

    response = Client(FlagwareMiddleware(app, client)).get("/")
    assert response.get_data() == b"ab"
    response.close()
    assert closes == [1]


def test_contextvar_is_reset_after_the_request_even_when_the_app_raises(client: Any) -> None:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        current_flags()
        raise ValueError("view bug")

    with pytest.raises(ValueError):
        Client(FlagwareMiddleware(app, client)).get("/")
    assert _current.get() is None
    with pytest.raises(NoRequestError, match="FlagwareMiddleware"):
        current_flags()


def test_engine_failure_serves_defaults_logs_once_and_counts(client: Any, caplog: Any) -> None:
    def explode(*args: Any) -> Any:
        raise RuntimeError("engine broke")

    client.engine.gate = explode
    client.engine.config = explode
    http = Client(FlagwareMiddleware(flags_app(), client))
    for _ in range(3):
        body = http.get("/").json
        assert body["gate"] is False and body["group"] is None and body["color"] == "none"
    assert client.errors["gate"] == 3 and client.errors["experiment"] == 3
    assert sum("gate failed" in r.getMessage() for r in caplog.records) == 1


def test_proxy_hops_trust_exactly_the_configured_forwarding(
    make_client: Any, tmp_path: Any
) -> None:
    direct = make_client()
    spoofed = {"REMOTE_ADDR": "10.0.0.1"}
    headers = {"X-Forwarded-For": "8.8.8.8"}
    a = Client(FlagwareMiddleware(flags_app(), direct)).get(
        "/", environ_base=spoofed, headers=headers
    )
    b = Client(FlagwareMiddleware(flags_app(), direct)).get("/", environ_base=spoofed)
    assert a.json["user_id"] == b.json["user_id"]  # the header is ignored without proxy_hops

    proxied = make_client(proxy_hops=1, event_store=tmp_path / "p.db")
    from flagware.identity import hash_ip

    c = Client(FlagwareMiddleware(flags_app(), proxied)).get(
        "/", environ_base=spoofed, headers={"X-Forwarded-For": "6.6.6.6, 8.8.8.8"}
    )
    assert c.json["user_id"] == hash_ip(b"test-key", "8.8.8.8")  # only the last hop is trusted


def test_a_response_that_read_flags_varies_by_cookie(make_client: Any) -> None:
    """A shared cache keyed on the URL served one visitor's group to the next,
    and a first visit's response carries the new stableID cookie (a Flask
    trial): Vary: Cookie when a flag was read, private when a flag was read
    or a cookie set and the app said nothing of caching (a cache that ignores
    Vary served one visitor's page to the next); the app's own are kept."""
    client = make_client()
    http = Client(FlagwareMiddleware(flags_app(), client))
    first = http.get("/")
    assert first.headers["Vary"] == "Cookie" and first.headers["Cache-Control"] == "private"
    again = http.get("/")  # the cookie comes back: still this visitor's page
    assert again.headers["Vary"] == "Cookie" and again.headers["Cache-Control"] == "private"
    plain = Client(FlagwareMiddleware(flags_app(reads=False), client)).get("/")
    assert "Vary" not in plain.headers and "Cache-Control" not in plain.headers

    def logs(environ: Any, start_response: Any) -> list[bytes]:
        current_flags().log_event("clicked")  # a new visitor's stableID, no flag read
        start_response("200 OK", [])
        return [b"logged"]

    logged = Client(FlagwareMiddleware(logs, client)).get("/")
    assert "flagware_id=" in logged.headers["Set-Cookie"] and "Vary" not in logged.headers
    assert logged.headers["Cache-Control"] == "private"

    def own(environ: Any, start_response: Any) -> list[bytes]:
        current_flags().gate("new_signup")
        lines = [("Vary", line) for line in environ["HTTP_X_VARY"].split("|")]
        start_response("200 OK", [*lines, ("Cache-Control", "no-store")])
        return [b"own"]

    for given, sent in (
        ("Accept-Encoding", ["Accept-Encoding, Cookie"]),
        ("accept-encoding, cookie", ["accept-encoding, cookie"]),
        ("*", ["*"]),
        # Several Vary lines: Cookie once, on the first, unless one names it.
        ("Accept-Encoding|Cookie", ["Accept-Encoding", "Cookie"]),
        ("Accept-Encoding|Origin", ["Accept-Encoding, Cookie", "Origin"]),
    ):
        response = Client(FlagwareMiddleware(own, client)).get("/", headers={"X-Vary": given})
        assert response.headers.getlist("Vary") == sent
        assert response.headers.getlist("Cache-Control") == ["no-store"]


def test_a_resolver_keeps_a_labs_sha256_user_ids_behind_a_proxy(
    make_client: Any, tmp_path: Any
) -> None:
    """The README's resolver for moving a course lab that hashed addresses
    with plain SHA-256: the resolver reads the address proxy_hops rewrote."""
    import hashlib

    def lab_user_id(environ: Any) -> str | None:
        address = environ.get("REMOTE_ADDR")
        return hashlib.sha256(address.encode()).hexdigest() if address else None

    proxied = make_client(proxy_hops=1, user_id=lab_user_id)
    seen = Client(FlagwareMiddleware(flags_app(), proxied)).get(
        "/", environ_base={"REMOTE_ADDR": "10.0.0.1"}, headers={"X-Forwarded-For": "8.8.8.8"}
    )
    assert seen.json["user_id"] == hashlib.sha256(b"8.8.8.8").hexdigest()


def test_the_proxy_check_stops_once_the_server_applies_the_header(
    make_client: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """Under uvicorn's proxy headers the address that connected is the header's
    last item: that server handles its proxies, so the check (on the hot path
    of every visitor's userID) stops, and a trailing comma is no proxy."""
    from flagware import identity

    monkeypatch.setattr(identity, "_check_unproxied", True)
    app = Client(FlagwareMiddleware(flags_app(), make_client()))
    with caplog.at_level(logging.WARNING, "flagware"):
        app.get("/", environ_base={"REMOTE_ADDR": "8.8.8.8"})  # no header: nothing learnt
        assert identity._check_unproxied
        app.get(
            "/", environ_base={"REMOTE_ADDR": "8.8.8.8"}, headers={"X-Forwarded-For": "8.8.8.8, "}
        )
        assert not identity._check_unproxied
        app.get(
            "/", environ_base={"REMOTE_ADDR": "10.0.0.1"}, headers={"X-Forwarded-For": "9.9.9.9"}
        )
    assert caplog.messages == []


def test_a_wrong_proxy_hops_is_said_once(
    make_client: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """Silent before (a new user's trial): with proxy_hops 0 behind a proxy, or
    more hops than proxies, every visitor had the proxy's userID."""
    from flagware import identity, proxies

    monkeypatch.setattr(identity, "_check_unproxied", True)
    monkeypatch.setattr(proxies, "_said_too_few", False)
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    unset = Client(FlagwareMiddleware(flags_app(), make_client()))
    with caplog.at_level(logging.WARNING, "flagware"):
        unset.get(
            "/", environ_base={"REMOTE_ADDR": "8.8.8.8"}, headers={"X-Forwarded-For": "8.8.8.8"}
        )
        assert caplog.messages == []  # the server applied the header itself (uvicorn's rule)
        monkeypatch.setattr(identity, "_check_unproxied", True)  # a new process
        for visitor in ("8.8.8.8", "9.9.9.9"):
            unset.get("/", environ_base=proxy, headers={"X-Forwarded-For": visitor})
    [said] = caplog.messages
    assert said.startswith("flagware: a request came through a proxy (X-Forwarded-For) while")
    caplog.clear()
    two = make_client(proxy_hops=2, event_store=tmp_path / "p.db")
    with caplog.at_level(logging.WARNING, "flagware"):
        for visitor in ("8.8.8.8", "9.9.9.9"):
            body = Client(FlagwareMiddleware(flags_app(), two)).get(
                "/", environ_base=proxy, headers={"X-Forwarded-For": visitor}
            )
    [said] = caplog.messages
    assert said.startswith("flagware: proxy_hops = 2, but a request came with 1 X-Forwarded-For")
    from flagware.identity import hash_ip

    assert body.json["user_id"] == hash_ip(b"test-key", "10.0.0.1")  # the proxy's, as said


def test_proxy_hops_rewrite_what_the_app_sees_and_secure_the_cookie(
    make_client: Any, tmp_path: Any
) -> None:
    seen: dict[str, Any] = {}

    @Request.application  # type: ignore[misc]
    def app(request: Request) -> Response:
        seen.update(addr=request.remote_addr, scheme=request.scheme, id=current_flags().user_id)
        return Response("ok")

    proxied = make_client(proxy_hops=1, event_store=tmp_path / "p.db")
    response = Client(FlagwareMiddleware(app, proxied)).get(
        "/",
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
        headers={"X-Forwarded-For": "6.6.6.6, 8.8.8.8", "X-Forwarded-Proto": "https"},
    )
    from flagware.identity import hash_ip

    assert seen == {"addr": "8.8.8.8", "scheme": "https", "id": hash_ip(b"test-key", "8.8.8.8")}
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize("hops", [1, 2])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_X_FORWARDED_FOR": "8.8.8.8"},
        {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 8.8.8.8"},
        {"HTTP_X_FORWARDED_FOR": " 1.1.1.1 ,, 2.2.2.2 , "},
        {"HTTP_X_FORWARDED_FOR": '"9.9.9.9", "a,b", 7.7.7.7'},
        {"HTTP_X_FORWARDED_FOR": ","},
        {"HTTP_X_FORWARDED_FOR": "1.1.1.1,2.2.2.2"},
        {"HTTP_X_FORWARDED_FOR": "\t3.3.3.3 "},
        {"HTTP_X_FORWARDED_FOR": "4.4.4.4, "},
        {"HTTP_X_FORWARDED_FOR": "4.4.4.4,6.6.6.6,"},
        {"HTTP_X_FORWARDED_FOR": "2001:db8::1", "HTTP_X_FORWARDED_PROTO": "https"},
        {"HTTP_X_FORWARDED_PROTO": "http, https", "HTTP_X_FORWARDED_HOST": "evil.example"},
        {"HTTP_X_FORWARDED_FOR": "5.5.5.5", "HTTP_X_FORWARDED_PROTO": ""},
    ],
)
@pytest.mark.parametrize("missing", [None, "HTTP_HOST", "SCRIPT_NAME", "REMOTE_ADDR"])
def test_proxy_fix_rewrites_the_environ_as_werkzeugs_proxyfix(
    hops: int, headers: dict[str, str], missing: str | None
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    from flagware.proxies import proxy_fix

    base = {
        "REMOTE_ADDR": "10.0.0.1",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "app.example",
        "SERVER_NAME": "app.example",
        "SERVER_PORT": "80",
        "SCRIPT_NAME": "",
        **headers,
    }
    base.pop(missing or "", None)  # servers may leave out an empty or unknown value
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(dict(environ))
        return []

    ProxyFix(app, x_for=hops)(dict(base), lambda *a: None)  # type: ignore[arg-type]
    ours = dict(base)
    proxy_fix(ours, hops)
    assert ours == seen[0]


@pytest.mark.parametrize(
    "environ",
    [
        {"REMOTE_ADDR": ""},
        {"REMOTE_ADDR": "not-an-ip"},
        {"REMOTE_ADDR": "2001:db8::7"},
        {"REMOTE_ADDR": "::ffff:198.51.100.4"},
        {"QUERY_STRING": "x=\xff\xfe&random=1"},
        {"HTTP_COOKIE": 'flagware_id="\\\xff; ; =='},
        {"HTTP_USER_AGENT": "\x00\xff garbage"},
    ],
)
def test_bad_input_never_breaks_the_request(client: Any, environ: dict[str, str]) -> None:
    response = Client(FlagwareMiddleware(flags_app(), client)).get("/", environ_overrides=environ)
    assert response.status_code == 200
    body = response.json
    assert len(body["stable_id"]) == 32 and body["user_id"]
    assert sum(client.errors.values()) == 0


def test_missing_remote_addr_falls_back_to_the_stable_id(client: Any) -> None:
    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        environ.pop("REMOTE_ADDR", None)
        flags = current_flags()
        start_response("200 OK", [])
        return [f"{flags.user_id} {flags.stable_id}".encode()]

    user_id, stable_id = Client(FlagwareMiddleware(app, client)).get("/").text.split()
    assert user_id == "s-" + stable_id


def test_raw_ip_never_stored_country_is(client: Any) -> None:
    Client(FlagwareMiddleware(flags_app(), client)).get(
        "/", environ_base={"REMOTE_ADDR": "8.8.8.8"}
    )
    client.flush()
    payloads = [row[0] for row in client.store._conn().execute("SELECT payload FROM events")]
    assert payloads and all("8.8.8.8" not in p for p in payloads)
    assert all(json.loads(p)["user"]["country"] == "US" for p in payloads)


def test_a_request_that_read_no_flag_is_freed_without_the_collector(client: Any) -> None:
    # No read, so the Flags still needs the environ when the app returns; it
    # then reads a copy, and the environ keeps its key without a cycle.
    refs: list[weakref.ref[Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        refs.append(weakref.ref(environ["flagware.flags"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"no flags read"]

    environ = EnvironBuilder("/", environ_base={"REMOTE_ADDR": "198.51.100.9"}).get_environ()
    gc.collect()
    gc.disable()
    try:
        body = FlagwareMiddleware(app, client)(environ, lambda s, h, e=None: None)
        assert b"".join(body) == b"no flags read"
        assert environ["flagware.flags"] is refs[0]()
        del environ, body
        assert refs[0]() is None
    finally:
        gc.enable()
    # Read late (as a streamed body would), the Flags sees the same visitor.
    environ = EnvironBuilder("/", environ_base={"REMOTE_ADDR": "198.51.100.9"}).get_environ()
    FlagwareMiddleware(app, client)(environ, lambda s, h, e=None: None)
    flags = environ["flagware.flags"]
    assert flags.user_id == hash_ip(client.hash_key, "198.51.100.9")
    assert flags.gate("new_signup") in (True, False)
    assert client.skipped_exposures == {} and "flagware.flags" in environ


@pytest.mark.parametrize("reads", ["gate", "experiment", "both"])
def test_a_request_that_read_flags_is_freed_without_the_collector(client: Any, reads: str) -> None:
    # environ["flagware.flags"] is the Flags; once its reads are done the Flags
    # lets go of the environ, so no cycle keeps the request alive.
    refs: list[weakref.ref[Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        flags = current_flags()
        if reads in ("gate", "both"):
            flags.gate("new_signup")
        if reads in ("experiment", "both"):
            flags.experiment("button_color")
        flags.log_event("after_the_reads")  # still the same user, with no environ
        assert environ["flagware.flags"] is flags
        refs.append(weakref.ref(flags))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [flags.user_id.encode()]

    environ = EnvironBuilder("/", environ_base={"REMOTE_ADDR": "198.51.100.9"}).get_environ()
    gc.collect()
    gc.disable()
    try:
        statuses: list[str] = []
        body = FlagwareMiddleware(app, client)(environ, lambda s, h, e=None: statuses.append(s))
        user_id = b"".join(body).decode()
        assert statuses == ["200 OK"] and refs[0]() is not None
        del environ, body
        assert refs[0]() is None
    finally:
        gc.enable()
    events = stored(client)
    assert {e["user_id"] for e in events} == {user_id}
    assert events[-1]["event"] == "after_the_reads"


WAITRESS_APP = """
import json, logging, os, sys
from flagware import Flagware, FlagwareMiddleware, current_flags

logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
fw = Flagware(spec=os.environ["SPEC"], event_store=os.environ["STORE"], hash_key="test-key",
              proxy_hops=int(os.environ["HOPS"]))

def app(environ, start_response):
    body = json.dumps({"user_id": current_flags().user_id}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

application = FlagwareMiddleware(app, fw)
"""


def test_proxy_hops_under_waitress_is_said_and_its_own_rule_works(
    spec_file: Any, tmp_path: Any
) -> None:
    """waitress removes X-Forwarded-For unless the request came from its
    trusted_proxy: proxy_hops read nothing, and 300 visitors of a new user's
    trial had one userID, without a word. Said now; waitress's own rule
    (trusted_proxy, proxy_hops 0) gives each visitor theirs."""
    import http.client
    import os
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("waitress")
    (tmp_path / "wapp.py").write_text(WAITRESS_APP)

    def users(hops: int, *options: str) -> tuple[list[str], str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SPEC": str(spec_file), "STORE": str(tmp_path / f"{hops}.db")}
        env["HOPS"] = str(hops)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
        cmd = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", *options]
        server = subprocess.Popen(
            [*cmd, "wapp:application"], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 30
            for visitor in ("8.8.8.8", "9.9.9.9"):
                while True:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    try:
                        conn.request("GET", "/", headers={"X-Forwarded-For": visitor})
                        seen.append(json.loads(conn.getresponse().read())["user_id"])
                        break
                    except ConnectionRefusedError:  # not listening yet
                        assert time.monotonic() < deadline, "waitress did not start"
                        time.sleep(0.1)
                    finally:
                        conn.close()
        finally:
            server.terminate()
            _, err = server.communicate(timeout=30)
        return seen, err

    seen, err = users(1)
    assert seen[0] == seen[1]  # the proxy's address for both, as the warning says
    assert err.count("flagware: proxy_hops = 1, but waitress passed a request without") == 1
    trusted = ("--trusted-proxy=127.0.0.1", "--trusted-proxy-headers=x-forwarded-for")
    seen, err = users(0, *trusted)
    assert seen == [hash_ip(b"test-key", "8.8.8.8"), hash_ip(b"test-key", "9.9.9.9")]
    assert "flagware:" not in err
