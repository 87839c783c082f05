"""The ASGI apps benchmarks/throughput.py serves with uvicorn (2 workers), one per server.

The twins of throughput_app.py's WSGI apps, on Starlette: ``BENCH_APP`` picks
``bare``, ``wrapped`` (flagware's ASGI middleware, no flag read), ``hand``
(the seed lab on the ``statsig`` SDK, its logger live against ``BENCH_STUB``),
``corehand`` (the same on ``statsig-python-core``) or ``legacy`` / ``core``
(the seed lab through flagware on that engine, every event and every
exposure that is no repeat stored in ``BENCH_STORE``). Every endpoint is ``async``, as
a FastAPI or Starlette app's usually is; the SDK's calls do no I/O, so they
run on the event loop as flagware's do.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "flagware" / "demo" / "flagware.toml"
KIND = os.environ.get("BENCH_APP", "bare")

if KIND in ("bare", "wrapped"):

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

elif KIND == "hand":
    from statsig import StatsigEvent, StatsigUser, statsig
    from throughput_core import legacy_options

    @cache  # lazily, once in each worker: uvicorn's workers are separate processes
    def _sdk() -> None:
        statsig.initialize("secret-bench", legacy_options(os.environ["BENCH_STUB"]))

    async def index(request: Request) -> PlainTextResponse:
        _sdk()
        host = request.client.host if request.client else None
        address = request.headers.get("x-forwarded-for", host)  # one proxy hop
        user = StatsigUser(user_id=str(hash(address)))
        banner = statsig.check_gate(user, "new_signup")
        color = statsig.get_experiment(user, "button_color").get("color", "blue")
        statsig.log_event(StatsigEvent(user, "visited_signup"))
        return PlainTextResponse(f"{banner} {color}")

elif KIND == "corehand":
    import statsig_python_core as core
    from throughput_core import core_options

    @cache  # lazily, once in each worker
    def _core() -> Any:
        sdk = core.Statsig("secret-bench", core_options(os.environ["BENCH_STUB"]))
        sdk.initialize().wait()
        return sdk

    async def index(request: Request) -> PlainTextResponse:
        sdk = _core()
        host = request.client.host if request.client else None
        address = request.headers.get("x-forwarded-for", host)  # one proxy hop
        user = core.StatsigUser(user_id=str(hash(address)))
        banner = sdk.check_gate(user, "new_signup")
        color = sdk.get_experiment(user, "button_color").get_string("color", "blue")
        sdk.log_event(user, "visited_signup")
        return PlainTextResponse(f"{banner} {color}")

else:
    from flagware import current_flags, log_event

    @log_event("visited_signup")
    async def index(request: Request) -> PlainTextResponse:
        flags = current_flags()
        banner = flags.gate("new_signup")
        color = flags.experiment("button_color").get("color", "blue")
        return PlainTextResponse(f"{banner} {color}")


app = Starlette(routes=[Route("/", index)])

if KIND not in ("bare", "hand", "corehand"):
    from throughput_core import stretch_flagware_timers

    from flagware import Flagware
    from flagware.asgi import FlagwareMiddleware

    fw = Flagware(
        spec=SPEC,
        engine="core" if KIND == "core" else "legacy",
        event_store=os.environ["BENCH_STORE"],
        hash_key="bench",
        proxy_hops=1,
        **stretch_flagware_timers(),
    )
    app.add_middleware(FlagwareMiddleware, client=fw)
