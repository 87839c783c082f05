"""Websocket connections through the ASGI middleware, under uvicorn, over loopback.

A new user's trial put the decorators on FastAPI websocket routes: the
connection had no Flags (``current_flags()`` raised), ``@log_event`` logged
nothing, and ``@feature_gate`` answered the handshake with a 500 and a
logged traceback even for a gate everyone passes.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from servers import uvicorn_server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from flagware import current_flags, feature_gate, log_event
from flagware.asgi import FlagwareMiddleware

UA = {"User-Agent": "Mozilla/5.0 Chrome/120"}


def socket_app(client: Any) -> FastAPI:
    app = FastAPI()

    @app.websocket("/open")
    @feature_gate("everyone")
    @log_event("chatted")
    async def open_socket(websocket: WebSocket) -> None:
        group = current_flags().experiment("button_color").group
        await websocket.accept()
        await websocket.send_text(f"{group} {current_flags().stable_id}")
        await websocket.close()

    @app.websocket("/closed")
    @feature_gate("nobody")
    async def closed_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("should not run")

    app.add_middleware(FlagwareMiddleware, client=client)
    return app


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
def test_a_websocket_gets_flags_a_cookie_events_and_a_clean_denial(
    make_client: Any, caplog: pytest.LogCaptureFixture, ws: str
) -> None:
    if ws == "wsproto":
        pytest.importorskip("wsproto")
    client = make_client()
    with uvicorn_server(socket_app(client), ws=ws) as port:
        base = f"ws://127.0.0.1:{port}"
        with connect(f"{base}/open", additional_headers=UA) as socket:
            group, stable_id = socket.recv(timeout=5).split()
            cookie = socket.response.headers.get("set-cookie", "")
        assert cookie.startswith(f"flagware_id={stable_id};")  # set on the accept
        # No caching headers on a 101: no cache keeps one.
        assert "cache-control" not in socket.response.headers
        assert "vary" not in socket.response.headers
        # A returning browser keeps its stableID, and so its group.
        with connect(
            f"{base}/open", additional_headers={**UA, "Cookie": f"flagware_id={stable_id}"}
        ) as socket:
            assert socket.recv(timeout=5) == f"{group} {stable_id}"
            assert "set-cookie" not in socket.response.headers
        with pytest.raises(InvalidStatus) as refused, connect(f"{base}/closed"):
            pass
        # Refused by flagware: 404 where the server has the denial-response
        # extension, a close (403) where it has not.
        assert refused.value.response.status_code in (403, 404)
    client.flush()
    events = list(client.store.iter_events())
    assert [e["event"] for e in events if e["event"] == "chatted"] == ["chatted", "chatted"]
    assert {e["stable_id"] for e in events if e["event"] == "chatted"} == {stable_id}
    assert {e["event"] for e in events} == {
        "chatted",
        "statsig::gate_exposure",
        "statsig::config_exposure",
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_flag_read_after_the_accept_still_sets_the_cookie(make_client: Any) -> None:
    """Litestar's handlers accept first (``websocket_listener`` before the view
    runs): in a new user's trial six connections got no cookie and counted as
    six units. A new visitor's stableID is now made at the accept."""
    litestar = pytest.importorskip("litestar")
    client = make_client()
    api = FastAPI()

    @api.websocket("/late")
    @log_event("chatted")  # reads no flag itself: the IDs are made as it logs
    async def late(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(current_flags().stable_id)
        await websocket.close()

    @litestar.websocket_listener("/listen")
    async def listen(data: str) -> str:
        return f"{data} {current_flags().stable_id}"

    # No logging_config: Litestar's default sets the root logger to INFO for later tests.
    apps = {"fastapi": api, "litestar": litestar.Litestar([listen], logging_config=None)}
    for name, app in apps.items():
        with uvicorn_server(FlagwareMiddleware(app, client), ws="websockets-sansio") as port:
            url = f"ws://127.0.0.1:{port}" + ("/late" if name == "fastapi" else "/listen")
            with connect(url, additional_headers=UA) as socket:
                if name == "litestar":
                    socket.send("hi")
                said = socket.recv(timeout=5).split()[-1]
                cookie = socket.response.headers.get("set-cookie", "")
            assert cookie.startswith(f"flagware_id={said};"), (name, cookie)
            returning = {**UA, "Cookie": f"flagware_id={said}"}
            with connect(url, additional_headers=returning) as socket:
                if name == "litestar":
                    socket.send("again")
                assert socket.recv(timeout=5).split()[-1] == said  # the same unit
                assert "set-cookie" not in socket.response.headers
    assert client.errors["stableID after response start"] == 0
    client.flush()
    chatted = [e for e in client.store.iter_events() if e["event"] == "chatted"]
    assert len(chatted) == 2 and len({e["stable_id"] for e in chatted}) == 1
