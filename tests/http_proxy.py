"""A forward HTTP proxy on loopback, as squid or a corporate proxy serves one:
``CONNECT`` tunnels (for https) and absolute-form requests (for http), with an
optional Basic login. It records what it was asked, so tests can check that
flagware's traffic went through it."""

from __future__ import annotations

import base64
import contextlib
import http.client
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: HttpProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _allowed(self) -> bool:
        proxy = self.server.proxy
        proxy.requests.append((self.command, self.path))
        if proxy.login is None:
            return True
        expected = "Basic " + base64.b64encode(proxy.login.encode()).decode()
        if self.headers.get("Proxy-Authorization") == expected:
            return True
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")  # the request's body is left unread
        self.end_headers()
        self.close_connection = True
        return False

    def do_CONNECT(self) -> None:
        if not self._allowed():
            return
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        with upstream, selectors.DefaultSelector() as sel:
            sel.register(self.connection, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, self.connection)
            while True:
                for key, _ in sel.select(timeout=30):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        self.close_connection = True
                        return
                    key.data.sendall(data)

    def _forward(self) -> None:
        if not self._allowed():
            return
        url = urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "absolute-form http:// URL expected")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        try:
            target = url.path + (f"?{url.query}" if url.query else "")
            upstream.request(self.command, target, body=body, headers=headers)
            response = upstream.getresponse()
            reply = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP | {"transfer-encoding", "content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _forward


class HttpProxy:
    def __init__(self, *, login: str | None = None) -> None:
        self.login = login  # "user:password", or None for an open proxy
        self.requests: list[tuple[str, str]] = []  # (method, target), 407s included
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HttpProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self._server = server
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            with contextlib.suppress(OSError):
                self._server.server_close()
            self._server = None
