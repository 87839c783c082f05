"""flagware's own connections (event delivery; Core's specs, which flagware
downloads) go through the proxy the environment names, as the statsig SDK's
(requests) do: a server that reaches Statsig only through a proxy must not
lose its events, or its specs, to a direct connection that cannot leave."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import pytest

from flagware import Flagware
from flagware.events import endpoint
from flagware.events.endpoint import Endpoint, bypassed
from flagware.events.model import Event
from flagware.spec import compile_dcs, parse_spec
from tests.http_proxy import HttpProxy
from tests.statsig_stub import StatsigStub

SPEC = {"gates": {"everyone": {"rollout": 100}}}


def _specs_and_an_event_through(stub: StatsigStub, tmp_path: Path, engine: str) -> None:
    client = Flagware(
        statsig_secret="secret-test",
        statsig_api=stub.url,
        hash_key="k",
        engine=engine,
        event_store=tmp_path / "outbox.db",
        init_timeout=5.0,
    )
    flags = client.engine
    user = flags.user({"userID": "u", "customIDs": {"stableID": "s"}})
    assert flags.gate(user, "everyone").value is True  # the specs came through
    client.log(Event("visited_signup", {"userID": "u"}))
    client.close()


def test_http_goes_through_the_proxy_in_absolute_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StatsigStub(dcs=compile_dcs(parse_spec(SPEC))) as stub, HttpProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        client = Flagware(
            statsig_secret="secret-test",
            statsig_api=stub.url,
            hash_key="k",
            event_store=tmp_path / "outbox.db",
        )
        client.log(Event("visited_signup", {"userID": "u"}))
        client.close()
        assert [e["eventName"] for e in stub.events] == ["visited_signup"]
    assert ("POST", f"http://127.0.0.1:{stub.port}/v1/log_event") in proxy.requests


def _tls_stub_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context for a TLS stub that flagware (and requests) trust."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    monkeypatch.setattr(endpoint, "_ssl", client_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))  # the legacy SDK's requests
    return server_context


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_https_goes_through_a_connect_tunnel_with_the_proxys_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """Specs and events, on either engine: Core's specs by flagware's download,
    the legacy SDK's by requests (which reads the same variables)."""
    if engine == "core":
        pytest.importorskip("statsig_python_core")
    server_context = _tls_stub_trusted(tmp_path, monkeypatch)
    dcs = compile_dcs(parse_spec(SPEC))
    with StatsigStub(dcs=dcs, tls=server_context) as stub, HttpProxy(login="me:p@ss") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://me:p%40ss@"))
        _specs_and_an_event_through(stub, tmp_path, engine)
        assert [e["eventName"] for e in stub.events] == ["visited_signup"]
    tunnels = [target for method, target in proxy.requests if method == "CONNECT"]
    assert tunnels and set(tunnels) == {f"127.0.0.1:{stub.port}"}
    assert all(method == "CONNECT" for method, _ in proxy.requests)  # nothing in the clear


def test_no_proxy_connects_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with StatsigStub(dcs=compile_dcs(parse_spec(SPEC))) as stub, HttpProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        _specs_and_an_event_through(stub, tmp_path, os.environ.get("FLAGWARE_ENGINE", "legacy"))
        assert [e["eventName"] for e in stub.events] == ["visited_signup"]
    assert proxy.requests == []


def test_a_wrong_proxy_login_is_retried_and_keeps_the_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A 407 is the proxy's answer, not Statsig's: retried, and the log line says
    which proxy, so that nobody goes looking at Statsig."""
    with StatsigStub() as stub, HttpProxy(login="me:right") as proxy:
        where = proxy.url.removeprefix("http://")
        monkeypatch.setenv("HTTP_PROXY", f"http://me:Wr0ngPass@{where}")
        client = Flagware(
            statsig_secret="secret-test",
            statsig_api=stub.url,
            hash_key="k",
            event_store=tmp_path / "outbox.db",
            shutdown_timeout=0.5,
        )
        client.log(Event("visited_signup", {"userID": "u"}))
        client.close()
        assert stub.events == []
    assert proxy.requests  # it was asked, and said 407
    assert client.delivery_stats().backlog == 1  # kept for the next process
    failed = [r.getMessage() for r in caplog.records if "delivery failed" in r.getMessage()]
    assert failed and f"HTTP 407 through the proxy {where}" in failed[0]
    assert "Wr0ngPass" not in failed[0]  # the login stays out of logs


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_an_https_proxy_refusing_its_login_says_so_and_close_does_not_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    """Through CONNECT, http.client reports the proxy's 407 as an OSError, not a
    response: it still gets the 407's hint, and close() stops at it rather
    than retrying for all of shutdown_timeout. Core's specs download says the
    same."""
    if engine == "core":
        pytest.importorskip("statsig_python_core")
    server_context = _tls_stub_trusted(tmp_path, monkeypatch)
    with StatsigStub(tls=server_context) as stub, HttpProxy(login="me:right") as proxy:
        where = proxy.url.removeprefix("http://")
        monkeypatch.setenv("HTTPS_PROXY", f"http://me:Wr0ngPass@{where}")
        client = Flagware(
            statsig_secret="secret-test",
            statsig_api=stub.url,
            hash_key="k",
            engine=engine,
            event_store=tmp_path / "outbox.db",
            shutdown_timeout=20,
            init_timeout=1,
        )
        engine = client.engine
        assert engine.gate(engine.user({"userID": "u"}), "new_signup").value is False  # defaults
        client.log(Event("visited_signup", {"userID": "u"}))
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 5
        assert stub.events == []
    assert client.delivery_stats().backlog == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "flagware"]
    [failed] = [line for line in lines if "delivery failed" in line]
    assert f"HTTP 407 through the proxy {where}: the proxy wants a login" in failed
    assert not any("Wr0ngPass" in line for line in lines)
    if engine == "core":
        assert any("could not download" in line and "HTTP 407" in line for line in lines)


def test_a_proxy_named_without_a_scheme_and_an_http_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "proxy.internal:3128")  # as many hosts set it
    endpoint = Endpoint("http://api.internal:8080/v1/log_event")
    assert endpoint.proxy is not None
    assert (endpoint.proxy.hostname, endpoint.proxy.port) == ("proxy.internal", 3128)
    assert endpoint.path == "http://api.internal:8080/v1/log_event"  # absolute form
    direct = Endpoint("https://statsigapi.net/v1/log_event")  # no https_proxy
    assert (direct.proxy, direct.path, direct.headers) == (None, "/v1/log_event", {})


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("*", "statsigapi.net", 443, True),
        ("localhost, *", "statsigapi.net", 443, False),  # "*" only alone, as curl reads it
        ("statsigapi.net", "statsigapi.net", 443, True),
        (".statsigapi.net", "api.statsigapi.net", 443, True),  # and its subdomains
        ("statsigapi.net", "notstatsigapi.net", 443, False),
        ("10.0.0.0/8", "10.1.2.3", 8000, True),  # CIDR, as on Kubernetes
        ("10.0.0.0/8", "11.1.2.3", 8000, False),
        ("2.3", "10.1.2.3", 8000, False),  # an address is no domain: no suffix match
        ("stub.internal:8443", "stub.internal", 8443, True),
        ("stub.internal:8443", "stub.internal", 443, False),
        ("[::1]:8443, other", "::1", 8443, True),
        ("::1", "::1", 443, True),
        ("", "statsigapi.net", 443, False),
    ],
)
def test_no_proxy_forms(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert bypassed(host, port, no_proxy) is direct


def _start(tmp_path: Path, api: str = "https://statsigapi.net/v1") -> Flagware:
    return Flagware(
        statsig_secret="secret-test",
        statsig_api=api,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        # TLS to the proxy, then TLS inside it: http.client cannot.
        ("https://proxy.example:443", "http:// proxies only; HTTPS_PROXY is not one"),
        # A "/" in the password not percent-encoded cuts the URL there: the rest
        # would be read as the proxy's host and port, and every send would fail.
        ("http://svc:S3cr3t/Pw@127.0.0.1:3128", "HTTPS_PROXY is not a proxy URL"),
        ("http://proxy.example:99999", "HTTPS_PROXY is not a proxy URL"),
    ],
)
def test_a_proxy_flagware_cannot_use_is_an_error_at_startup_naming_only_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, error: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ValueError, match=error) as raised:
        _start(tmp_path)
    assert "S3cr3t" not in str(raised.value) and "proxy.example" not in str(raised.value)


def test_a_statsig_api_with_a_query_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without \\? or #"):
        _start(tmp_path, "https://proxy.internal/statsig/v1?team=web")
