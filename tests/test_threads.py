"""Dozens of threads, thousands of requests: no request ever sees another's flags."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from flagware import FlagwareMiddleware, current_flags
from flagware.identity import hash_ip

THREADS = 32
REQUESTS = 3200


def test_no_request_sees_another_requests_flags(client: Any) -> None:
    barrier = threading.Barrier(THREADS)

    @Request.application  # type: ignore[misc]
    def app(request: Request) -> Response:
        flags = current_flags()
        mine = request.environ["flagware.flags"]
        user_id = flags.user_id
        group = flags.experiment("button_color").group
        flags.log_event("seen", metadata={"n": request.args["n"]})
        # Give other threads every chance to interleave, then check again.
        for _ in range(3):
            assert current_flags() is mine
        body = {"user_id": user_id, "group": group, "n": request.args["n"]}
        return Response(json.dumps(body), mimetype="application/json")

    wrapped = FlagwareMiddleware(app, client)

    def visit(n: int) -> tuple[int, dict[str, Any]]:
        if n < THREADS:
            barrier.wait()  # start all threads together
        ip = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        body = Client(wrapped).get(f"/?n={n}", environ_base={"REMOTE_ADDR": ip}).json
        return n, body

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(visit, range(REQUESTS)))

    for n, body in results:
        ip = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        assert body["n"] == str(n)
        assert body["user_id"] == hash_ip(b"test-key", ip)
    client.flush()
    seen = [e for e in client.store.iter_events() if e["event"] == "seen"]
    assert len(seen) == REQUESTS
    by_n = {e["metadata"]["n"]: e["user_id"] for e in seen}
    assert all(by_n[str(n)] == body["user_id"] for n, body in results)
    exposures = [e for e in client.store.iter_events() if e["event"] == "statsig::config_exposure"]
    assert len(exposures) == REQUESTS  # one per request, none lost or doubled
    assert sum(client.errors.values()) == 0
