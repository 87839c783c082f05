"""Per-request overhead of flagware, measured side by side in one run.

(a) A Flask view that reads no flags: bare app vs the app wrapped with
    FlagwareMiddleware. Goal: at most 1.05x.
(b) The seed lab's work (one gate, one experiment, one event): through
    flagware vs written by hand on the ``statsig`` SDK, as the seed lab does
    (``hash(ip)`` as the user ID, ``statsig.check_gate``, ``get_experiment``,
    ``log_event``). The hand-written SDK runs against a loopback Statsig API
    stub with its event logger live: in local mode it would silently drop
    every event, which is not the work being compared. Goal: at most 1.0x.

Each variant serves the same prebuilt WSGI environ through its WSGI callable.
Variants alternate in rounds so machine noise hits all of them alike; the
report gives the median per-request time over rounds and the ratio of
medians.

    python benchmarks/overhead.py [--rounds 25] [--requests 2000]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402
from statsig import StatsigEvent, StatsigOptions, StatsigUser, statsig  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from flagware import Flagware, FlagwareMiddleware, current_flags, log_event  # noqa: E402
from flagware.spec import compile_dcs, load_spec  # noqa: E402
from tests.statsig_stub import StatsigStub  # noqa: E402

SPEC = ROOT / "flagware" / "demo" / "flagware.toml"
STABLE_ID = "0123456789abcdef0123456789abcdef"  # a returning visitor: the common case


def bare_app() -> Flask:
    app = Flask("bare")

    @app.get("/")
    def index() -> str:
        return "ok"

    return app


def flagware_seed_app(client: Flagware) -> Flask:
    app = Flask("flagware_seed")

    @app.get("/")
    @log_event("visited_signup")
    def index() -> str:
        flags = current_flags()
        banner = flags.gate("new_signup")
        color = flags.experiment("button_color").get("color", "blue")
        return f"{banner} {color}"

    app.wsgi_app = FlagwareMiddleware(app.wsgi_app, client)  # type: ignore[method-assign]
    return app


def hand_written_seed_app() -> Flask:
    """The seed lab's handler, as teams write it by hand on the SDK."""
    from flask import request

    app = Flask("hand_written")

    @app.get("/")
    def index() -> str:
        user = StatsigUser(user_id=str(hash(request.remote_addr)))
        banner = statsig.check_gate(user, "new_signup")
        color = statsig.get_experiment(user, "button_color").get("color", "blue")
        statsig.log_event(StatsigEvent(user, "visited_signup"))
        return f"{banner} {color}"

    return app


def environ() -> dict[str, Any]:
    builder = EnvironBuilder(
        path="/",
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
        headers={
            "Cookie": f"flagware_id={STABLE_ID}",
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
        },
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def per_request_seconds(app: Callable[..., Any], base: dict[str, Any], requests: int) -> float:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        result = app(base.copy(), start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - started) / requests


def measure(
    variants: dict[str, Callable[..., Any]],
    rounds: int,
    requests: int,
    settle: Callable[[], None],
) -> dict[str, float]:
    """Median seconds per request of each variant.

    ``settle`` runs (untimed) after every batch: both flagware's writer and the
    SDK's logger do their I/O on background threads of this process, which
    would otherwise steal the GIL from whichever variant runs next.
    """
    base = environ()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for app in variants.values():  # warm up: imports, SDK start, caches
        per_request_seconds(app, base, 200)
        settle()
    gc.disable()  # collections land on whichever variant is running: keep them out
    try:
        for _ in range(rounds):
            for name, app in variants.items():
                samples[name].append(per_request_seconds(app, base, requests))
                settle()
            gc.collect()
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="flagware-bench-"))
    client = Flagware(spec=SPEC, event_store=tmp / "events.db", hash_key="bench")
    stub = StatsigStub(dcs=compile_dcs(load_spec(SPEC))).start()
    statsig.initialize("secret-bench", StatsigOptions(api=stub.url, disable_diagnostics=True))

    def settle() -> None:
        client.flush()  # flagware's events: into SQLite now
        statsig.flush()  # the SDK's events: posted to the stub now
        time.sleep(0.02)

    try:
        bare = bare_app()
        wrapped = bare_app()
        wrapped.wsgi_app = FlagwareMiddleware(wrapped.wsgi_app, client)  # type: ignore[method-assign]
        medians = measure(
            {
                "bare app": bare,
                "bare app + flagware (no flags read)": wrapped,
                "seed lab by hand on the statsig SDK": hand_written_seed_app(),
                "seed lab through flagware": flagware_seed_app(client),
            },
            args.rounds,
            args.requests,
            settle,
        )
    finally:
        statsig.shutdown()
        client.close()
        stub.stop()

    ratio_a = medians["bare app + flagware (no flags read)"] / medians["bare app"]
    ratio_b = medians["seed lab through flagware"] / medians["seed lab by hand on the statsig SDK"]
    figures = {
        "median_us": {name: round(value * 1e6, 2) for name, value in medians.items()},
        "ratio_a_wrapped_vs_bare": round(ratio_a, 3),
        "ratio_b_flagware_vs_hand_written": round(ratio_b, 3),
        "rounds": args.rounds,
        "requests_per_round": args.requests,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"median per request over {args.rounds} rounds of {args.requests} requests")
        for name, value in medians.items():
            print(f"  {name:<40} {value * 1e6:8.1f} us")
        print(f"(a) wrapped / bare app:            {ratio_a:.3f}x  (goal <= 1.05x)")
        print(f"(b) flagware / hand-written SDK:   {ratio_b:.3f}x  (goal <= 1.00x)")
    return figures


if __name__ == "__main__":
    main()
