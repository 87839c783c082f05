"""Django under ASGI: a real uvicorn server on 127.0.0.1, and ASGIHandler driven directly.

``current_flags()`` must be this request's flags inside async views, in code
they call (directly, across awaits, through ``sync_to_async``), and in sync
views that Django runs in a thread.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from conftest import SPEC
from django_settings import configure

configure()

import uvicorn  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from flagware import current_flags, log_event  # noqa: E402
from flagware.django import conf  # noqa: E402
from flagware.identity import hash_ip  # noqa: E402


def describe() -> dict[str, Any]:
    flags = current_flags()
    return {
        "stable_id": flags.stable_id,
        "user_id": flags.user_id,
        "gate": flags.gate("everyone"),
        "color": flags.experiment("button_color").get("color"),
    }


@log_event("async_visit")
async def async_view(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0.01)  # let other requests interleave on the loop
    body = describe()
    # Code run in a thread through sync_to_async sees the same flags.
    body["same_in_thread"] = await sync_to_async(lambda: current_flags() is request.flags)()  # type: ignore[attr-defined]
    return JsonResponse(body)


@log_event("sync_visit")
def sync_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(describe())


async def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("plain")


urlpatterns = [
    path("async", async_view),
    path("sync", sync_view),
    path("plain", plain),
]


@pytest.fixture(scope="module")
def settings_for_asgi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("asgi")
    spec = tmp / "flagware.toml"
    spec.write_text(SPEC)
    override = override_settings(
        ROOT_URLCONF=__name__,
        FLAGWARE={"spec": spec, "event_store": tmp / "events.db", "hash_key": "asgi-key"},
    )
    override.enable()
    try:
        yield tmp
    finally:
        override.disable()


@pytest.fixture(scope="module")
def server(settings_for_asgi: Path) -> Iterator[int]:
    """A real uvicorn server on a loopback port, running Django's ASGI application."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        get_asgi_application(),
        lifespan="off",
        log_level="warning",
        ws="none",
        http="h11",
        loop="asyncio",
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if uv.started:
            break
        thread.join(0.01)
    assert uv.started, "uvicorn did not start"
    try:
        yield port
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


def get(port: int, url: str, headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", url, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def minted(response: Any) -> str | None:
    cookie = SimpleCookie(response.getheader("Set-Cookie") or "")
    return cookie["flagware_id"].value if "flagware_id" in cookie else None


@pytest.mark.parametrize("url", ["/async", "/sync"])
def test_uvicorn_round_trip(server: int, url: str) -> None:
    first, body = get(server, url)
    data = json.loads(body)
    assert first.status == 200
    assert minted(first) == data["stable_id"]
    assert data["user_id"] == hash_ip(b"asgi-key", "127.0.0.1")
    assert data["gate"] is True and data["color"] in {"blue", "red"}
    assert data.get("same_in_thread", True) is True
    cookie = first.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    # The cookie comes back: same identity, no new cookie.
    second, body = get(server, url, {"Cookie": f"flagware_id={data['stable_id']}"})
    assert json.loads(body)["stable_id"] == data["stable_id"]
    assert minted(second) is None


def test_uvicorn_concurrent_async_requests_keep_their_own_flags(server: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get(server, "/async"), range(16)))
    ids = [json.loads(body)["stable_id"] for _, body in results]
    assert len(set(ids)) == 16
    assert ids == [minted(response) for response, _ in results]


def test_uvicorn_events_reach_the_store(server: int) -> None:
    get(server, "/plain")
    _, body = get(server, "/async")
    stable_id = json.loads(body)["stable_id"]
    client = conf.get_client()
    client.flush()
    mine = [e for e in client.store.iter_events() if e["stable_id"] == stable_id]
    assert sorted(e["event"] for e in mine) == [
        "async_visit",
        "statsig::config_exposure",
        "statsig::gate_exposure",
    ]


def asgi_get(app: Any, path: str, *, scheme: str = "http") -> tuple[int, dict[bytes, list[bytes]]]:
    """One request through an ASGI app, in-process."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("192.0.2.80", 50000),
        "server": ("testserver", 443 if scheme == "https" else 80),
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        requested = False
        disconnect = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        disconnect.set()

    asyncio.run(run())
    start = sent[0]
    headers: dict[bytes, list[bytes]] = {}
    for name, value in start["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return start["status"], headers


def test_asgi_handler_directly_sets_a_secure_cookie_on_https(settings_for_asgi: Path) -> None:
    app = get_asgi_application()
    status, headers = asgi_get(app, "/async", scheme="https")
    assert status == 200
    [cookie] = [c for c in headers[b"set-cookie"] if c.startswith(b"flagware_id=")]
    assert b"Secure" in cookie and b"HttpOnly" in cookie
    status, headers = asgi_get(app, "/plain")
    assert status == 200 and b"set-cookie" not in headers


def test_async_chain_starts_the_sdk_in_a_thread_before_the_view(
    tmp_path: Path, settings_for_asgi: Path
) -> None:
    """As the ASGI middleware does: the first flag read must not start the SDK on
    the event loop (it froze the process: 0.8 s, or init_timeout with Statsig)."""
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    fresh = {"spec": spec, "event_store": tmp_path / "events.db", "hash_key": "k"}
    with override_settings(FLAGWARE=fresh):
        app = get_asgi_application()
        client = conf.get_client()
        assert not client.engine.started()
        status, _ = asgi_get(app, "/plain")  # a view that reads no flag
        assert status == 200 and client.engine.started()
