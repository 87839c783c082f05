"""Per-request overhead of flagware.asgi.FlagwareMiddleware against a bare ASGI app.

Three variants serve the same request through their ASGI callable, in-process
on one event loop (no server or socket, so the middleware's own cost is what
differs):

- bare: a pure ASGI app answering 200 "ok";
- wrapped: the same app under FlagwareMiddleware, reading no flag (the cost
  every request pays);
- wrapped + gate: the app reads one gate for a returning visitor (stableID
  cookie): identity, one evaluation, one exposure queued;
- starlette / starlette + flagware: a one-route Starlette app, bare and with
  ``app.add_middleware(FlagwareMiddleware, client=fw)``, reading no flag: the
  overhead as a real app sees it.

Variants alternate in rounds so machine noise hits all of them alike; the
report gives the median per-request time over rounds and the ratio to bare.

    python benchmarks/asgi_overhead.py [--rounds 15] [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from flagware import Flagware, current_flags  # noqa: E402
from flagware.asgi import FlagwareMiddleware  # noqa: E402

SPEC = ROOT / "examples" / "fastapi_demo" / "flagware.toml"
STABLE_ID = "0123456789abcdef0123456789abcdef"
HEADERS = [(b"content-type", b"text/plain")]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
BODY = {"type": "http.response.body", "body": b"ok"}


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


async def gated(scope: Any, receive: Any, send: Any) -> None:
    current_flags().gate("new_signup")
    await send(START)
    await send(BODY)


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app(client: Flagware | None) -> Starlette:
    app = Starlette(routes=[Route("/", index)])
    if client is not None:
        app.add_middleware(FlagwareMiddleware, client=client)
    return app


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Firefox/121.0"),
            (b"cookie", f"flagware_id={STABLE_ID}".encode()),
        ],
        "client": ("192.0.2.10", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def run(app: Any, requests: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    start = time.perf_counter()
    for _ in range(requests):
        await app(scope(), receive, send)
    return (time.perf_counter() - start) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client = Flagware(spec=SPEC, event_store=Path(tmp) / "events.db", hash_key="bench")
        variants = {
            "bare": bare,
            "wrapped": FlagwareMiddleware(bare, client),
            "wrapped + gate": FlagwareMiddleware(gated, client),
            "starlette": starlette_app(None),
            "starlette + flagware": starlette_app(client),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}

        async def bench() -> None:
            for app in variants.values():  # warm up: SDK start, caches
                await run(app, 200)
            for _ in range(args.rounds):
                for name, app in variants.items():
                    gc.collect()
                    times[name].append(await run(app, args.requests))

        asyncio.run(bench())
        client.close()
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.requests} requests")
    for name, samples in times.items():
        base = statistics.median(times["starlette" if name.startswith("starlette") else "bare"])
        median = statistics.median(samples)
        against = "starlette" if name.startswith("starlette") else "bare"
        print(f"{name:22} {median * 1e6:8.2f} us/request  {median / base:6.2f}x {against}")


if __name__ == "__main__":
    main()
