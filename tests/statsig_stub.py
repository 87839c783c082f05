"""A loopback Statsig API for tests and benchmarks, with fault injection.

Serves what the SDK and flagware call:

- ``POST /v1/log_event``: records every event (gzip or plain JSON) and answers
  202 ``{"success": true}``;
- ``GET /v1/download_config_specs/<key>.json``: the DCS document given to it;
- ``GET /v2/download_config_specs/<key>.json``: the same in the v2 shape Statsig's
  Core SDK reads (``flagware.engine.core_dcs.to_v2``), or, as Statsig's API
  answers, ``{"has_updates": false}`` when ``sinceTime`` is the document's time;
- ``POST /v1/get_id_lists`` -> ``{}``; ``POST /v1/sdk_exception`` -> ``{}``;
- ``GET /_stub/stats``: counts, for a stub running in another process.

Faults (all thread-safe, all may be combined):

- ``latency``: seconds each ``log_event`` takes before it answers;
- ``fail_for(seconds, status)`` / ``fail_next(n, status)``: answer ``status``
  without recording;
- ``refuse_for(seconds)``: close the listening socket and every open
  connection, re-open on the same port later (connections are refused);
- ``drop_next_responses(n)``: record the batch, then close the connection
  without answering (the one case that can make a client send twice);
- ``blackhole_for(seconds)``: read the request, never record or answer, close
  after ``seconds`` (a request lost on the way);
- ``specs_status``: answer every specs request (v1 and v2) with this status;
- ``specs_body``: answer every specs request with 200 and these bytes (not JSON).

Use it as a context manager (the tests' ``stub`` fixtures do), or as a
separate process: ``python tests/statsig_stub.py`` prints its base URL.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    """One ``log_event`` request the stub accepted."""

    headers: dict[str, str]
    events: list[dict[str, Any]]
    metadata: dict[str, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads: nothing outlives stop()
    block_on_close = True
    stub: StatsigStub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.stub._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.stub._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests assert on counts, not on access logs

    def do_GET(self) -> None:
        stub = self.server.stub
        if "/download_config_specs/" in self.path:
            stub.spec_requests += 1
        if "/download_config_specs/" in self.path and stub.specs_status is not None:
            stub.spec_failures += 1
            self._reply(stub.specs_status, {"error": "injected failure"})
        elif "/download_config_specs/" in self.path and stub.specs_body is not None:
            self._reply(200, stub.specs_body)
        elif self.path.startswith("/v1/download_config_specs/"):
            if stub.secret is not None and f"/{stub.secret}.json" not in self.path:
                self._reply(401, {"message": "Invalid key provided"})
                return
            self._reply(200, stub.dcs)
        elif self.path.startswith("/v2/download_config_specs/"):
            from flagware.engine.core_dcs import to_v2

            stub.spec_downloads.append(self.path)
            if stub.secret is not None and f"/{stub.secret}.json" not in self.path:
                self._reply(401, {"message": "Invalid key provided"})
                return
            if stub.specs_latency:
                stub._stopping.wait(stub.specs_latency)
            since = parse_qs(urlsplit(self.path).query).get("sinceTime", ["0"])[0]
            if stub.since_time and since.isdigit() and int(since) >= stub.dcs.get("time", 0) > 0:
                self._reply(200, {"has_updates": False, "time": int(since)})  # as Statsig's API
            else:
                self._reply(200, to_v2(stub.dcs))
        elif self.path == "/_stub/stats":
            self._reply(200, stub.counts())
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/log_event":
            self._log_event(body)
        elif self.path in ("/v1/get_id_lists", "/v1/sdk_exception"):
            self._reply(200, {})
        else:
            self._reply(404, {"error": "not found"})

    def _log_event(self, body: bytes) -> None:
        stub = self.server.stub
        if stub._blackholed():
            stub._hold()
            self.close_connection = True
            return
        if stub.latency:
            stub._stopping.wait(stub.latency)
        status = stub._failure()
        if status is not None:
            self._reply(status, {"error": "injected failure"})
            return
        if stub.secret is not None and self.headers.get("STATSIG-API-KEY") != stub.secret:
            self._reply(401, {"message": "Invalid key provided"})
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        document = json.loads(body)
        stub._record(Received(dict(self.headers), document["events"], document["statsigMetadata"]))
        if stub._drop_response():
            self.close_connection = True
            return
        self._reply(202, {"success": True})

    def _reply(self, status: int, document: Any) -> None:
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            # Say so, as real servers do: a pooled client (requests/urllib3)
            # would otherwise reuse the socket and fail with RemoteDisconnected.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class StatsigStub:
    def __init__(
        self, *, dcs: dict[str, Any] | None = None, port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.tls = tls  # a server context: serve https
        self.dcs: dict[str, Any] = dcs if dcs is not None else _empty_dcs()
        self.latency = 0.0
        self.specs_latency = 0.0  # seconds before a v2 specs answer
        self.specs_status: int | None = None  # set: every specs request (v1, v2) gets it
        self.specs_body: bytes | None = None  # set: every specs request gets it, with 200
        self.spec_failures = 0  # specs requests answered with specs_status
        self.received: list[Received] = []
        self.requests = 0  # log_event requests, whatever the answer
        self.spec_downloads: list[str] = []  # paths of v2 specs requests (Core's)
        self.spec_requests = 0  # specs requests of either version, whatever the answer
        self.since_time = True  # False: answer every specs request in full, as some proxies do
        self.secret: str | None = None  # set: log_event and specs answer 401 to other keys
        self._port = port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._fail_until = 0.0
        self._fail_count = 0
        self._fail_status = 500
        self._drop_count = 0
        self._blackhole_until = 0.0
        self._blackholed_count = 0
        self._stopping = threading.Event()
        self._reopen: threading.Timer | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The base URL to pass as ``api``/``statsig_api``."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}/v1"

    def start(self) -> StatsigStub:
        self._stopping.clear()
        self._open()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            timer, self._reopen = self._reopen, None
        if timer is not None:
            timer.cancel()
            if timer.is_alive():
                timer.join()
        self._shut()

    def __enter__(self) -> StatsigStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _open(self) -> None:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.stub = self
        self._port = server.server_address[1]
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        with self._lock:
            self._server, self._thread = server, thread
        thread.start()

    def _shut(self) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            connections = list(self._connections)
        if server is None or thread is None:
            return
        server.shutdown()
        for conn in connections:  # keep-alive clients must see the outage too
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join()

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- faults --------------------------------------------------------------------

    def fail_for(self, seconds: float, status: int = 500) -> None:
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_status = status

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._fail_count = count
            self._fail_status = status

    def refuse_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (also usable before ``start``-ed traffic)."""
        self._shut()
        timer = threading.Timer(seconds, self._open)
        timer.daemon = True
        with self._lock:
            self._reopen = timer
        timer.start()

    def drop_next_responses(self, count: int) -> None:
        with self._lock:
            self._drop_count = count

    def blackhole_for(self, seconds: float) -> None:
        with self._lock:
            self._blackhole_until = time.monotonic() + seconds

    def _failure(self) -> int | None:
        with self._lock:
            self.requests += 1
            if self._fail_count > 0:
                self._fail_count -= 1
                return self._fail_status
            if time.monotonic() < self._fail_until:
                return self._fail_status
            return None

    def _drop_response(self) -> bool:
        with self._lock:
            if self._drop_count > 0:
                self._drop_count -= 1
                return True
            return False

    def _blackholed(self) -> bool:
        with self._lock:
            if time.monotonic() < self._blackhole_until:
                self.requests += 1
                self._blackholed_count += 1
                return True
            return False

    def _hold(self) -> None:
        while not self._stopping.is_set():
            remaining = self._blackhole_until - time.monotonic()
            if remaining <= 0:
                return
            self._stopping.wait(min(remaining, 0.1))

    # -- what was received ---------------------------------------------------------

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [event for batch in self.received for event in batch.events]

    @property
    def blackholed(self) -> int:
        return self._blackholed_count

    def ids(self, key: str = "uid") -> Counter[Any]:
        """How often each ``metadata[key]`` arrived: duplicates show as counts > 1."""
        return Counter((event.get("metadata") or {}).get(key) for event in self.events)

    def counts(self) -> dict[str, int]:
        """Duplicates among the events that carry a ``metadata["uid"]`` (a
        driver's own ID); flagware's events carry none, and counted as one ID
        they read as all duplicates but one (a trial)."""
        ids = self.ids()
        without = ids.pop(None, 0)
        return {
            "requests": self.requests,
            "batches": len(self.received),
            "events": sum(ids.values()) + without,
            "without_uid": without,
            "unique": len(ids),
            "duplicates": sum(n - 1 for n in ids.values()),
        }

    def wait_for_events(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                have = sum(len(batch.events) for batch in self.received)
            if have >= count:
                return True
            time.sleep(0.02)
        return False


def _empty_dcs() -> dict[str, Any]:
    return {
        "time": int(time.time() * 1000),
        "has_updates": True,
        "feature_gates": [],
        "dynamic_configs": [],
        "layer_configs": [],
        "layers": {},
        "id_lists": {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    stub = StatsigStub(port=args.port).start()
    stub.latency = args.latency
    print(stub.url, flush=True)
    try:
        sys.stdin.read()  # serve until the parent closes our stdin
    finally:
        stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
