"""The WSGI apps benchmarks/throughput.py serves with gunicorn, one per process.

``BENCH_APP`` picks the app; every app answers ``GET /`` with a short body:

- ``bare``: Flask, no flags;
- ``wrapped``: the same app wrapped with flagware, reading no flag;
- ``hand``: the seed lab written by hand on the ``statsig`` SDK, its event
  logger live against the loopback stub at ``BENCH_STUB`` (started lazily in
  each worker, as it must be after gunicorn forks);
- ``corehand``: the same, written by hand on ``statsig-python-core``: what
  Core itself gives, the reference for flagware on Core;
- ``legacy`` / ``core``: the seed lab through flagware on that engine, every
  event and every exposure that is no repeat stored in ``BENCH_STORE``.

The seed lab's work: one gate, one experiment, one event per request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, request

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "flagware" / "demo" / "flagware.toml"
KIND = os.environ.get("BENCH_APP", "bare")
T = TypeVar("T")

app = Flask(f"bench_{KIND}")


def per_process(start: Callable[[], T]) -> Callable[[], T]:
    """``start()`` run once in each process, on first use: gunicorn forks its
    workers after importing the app, and an SDK started before the fork does
    not survive it."""
    lock = threading.Lock()
    started: list[tuple[int, T]] = []

    def get() -> T:
        if not started or started[0][0] != os.getpid():
            with lock:
                if not started or started[0][0] != os.getpid():
                    started[:] = [(os.getpid(), start())]
        return started[0][1]

    return get


if KIND in ("bare", "wrapped"):

    @app.get("/")
    def index() -> str:
        return "ok"

elif KIND == "hand":
    from statsig import StatsigEvent, StatsigUser, statsig
    from throughput_core import legacy_options

    @per_process
    def _sdk() -> None:
        statsig.initialize("secret-bench", legacy_options(os.environ["BENCH_STUB"]))

    @app.get("/")
    def index() -> str:
        _sdk()
        address = request.headers.get("X-Forwarded-For", request.remote_addr)  # one proxy hop
        user = StatsigUser(user_id=str(hash(address)))
        banner = statsig.check_gate(user, "new_signup")
        color = statsig.get_experiment(user, "button_color").get("color", "blue")
        statsig.log_event(StatsigEvent(user, "visited_signup"))
        return f"{banner} {color}"

elif KIND == "corehand":
    import statsig_python_core as core
    from throughput_core import core_options

    @per_process
    def _core() -> Any:
        sdk = core.Statsig("secret-bench", core_options(os.environ["BENCH_STUB"]))
        sdk.initialize().wait()
        return sdk

    @app.get("/")
    def index() -> str:
        sdk = _core()
        address = request.headers.get("X-Forwarded-For", request.remote_addr)  # one proxy hop
        user = core.StatsigUser(user_id=str(hash(address)))
        banner = sdk.check_gate(user, "new_signup")
        color = sdk.get_experiment(user, "button_color").get_string("color", "blue")
        sdk.log_event(user, "visited_signup")
        return f"{banner} {color}"

else:
    from flagware import current_flags, log_event

    @app.get("/")
    @log_event("visited_signup")
    def index() -> str:
        flags = current_flags()
        banner = flags.gate("new_signup")
        color = flags.experiment("button_color").get("color", "blue")
        return f"{banner} {color}"


if KIND not in ("bare", "hand", "corehand"):
    from throughput_core import stretch_flagware_timers

    from flagware import Flagware, FlagwareMiddleware

    fw = Flagware(
        spec=SPEC,
        engine="core" if KIND == "core" else "legacy",
        event_store=os.environ["BENCH_STORE"],
        hash_key="bench",
        proxy_hops=1,
        **stretch_flagware_timers(),
    )
    app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw)  # type: ignore[method-assign]
