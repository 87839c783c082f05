"""Real servers on a loopback port (uvicorn; werkzeug's for WSGI), and a small HTTP client."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import uvicorn


@contextmanager
def uvicorn_server(app: Any, *, lifespan: str = "off", **options: Any) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 in a thread; yields the port; stops it on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    options.setdefault("proxy_headers", False)  # flagware's proxy_hops decides, not uvicorn
    options.setdefault("ws", "none")
    config = uvicorn.Config(
        app, lifespan=lifespan, log_level="warning", http="h11", loop="asyncio", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        thread.join(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextmanager
def wsgi_server(app: Any) -> Iterator[int]:
    """Serve the WSGI ``app`` with werkzeug's threaded server on 127.0.0.1; yields the port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(15)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def minted(self, name: str = "flagware_id") -> str | None:
        for value in self.cookies():
            cookie = SimpleCookie(value)
            if name in cookie:
                return cookie[name].value
        return None

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()
