"""Instructions per request under a real server, counted by callgrind: no noise.

throughput.py measures what users feel, but on a shared machine its
per-round ratios wander by more than the few percent a goal like "a wrapped
app that reads no flag keeps 0.97 of bare" is about. This counts instead: each
app is served by one worker of a real server (gunicorn's sync worker with
throughput_app.py, uvicorn with throughput_asgi_app.py) running under
``valgrind --tool=callgrind``, and sent requests over loopback with the same
headers wrk sends (new or returning visitors). The worker's instructions, all
its threads, are counted twice: after a warm-up alone, and after the warm-up
and ``--requests`` more; the difference over ``--requests`` is what one
request costs, the server's own work (accepting, parsing, the environ or
scope) included.

The garbage collector's share is counted apart (``gc_collect_main``,
inclusive) and printed beside each figure, because one full collection (tens
of millions of instructions in a process that imported the SDK, once, some
hundreds of requests after start) lands in the measured requests of one run
and not of another: a one-off that a long-running worker amortises to
nothing. The ratio is given with it and without the collector.

Instruction counts are not time: cache misses, system calls and GIL
hand-offs cost time without instructions. Use it for what it is good at, the
cost of the code the apps run, every thread's. Threads that wake on timers
(flagware's writer, the SDKs' spec downloads) would fire about 40 times as
often per request under valgrind's slowdown: ``--timer-scale`` (default 40,
the slowdown measured here: 18.6 ms a request under valgrind against about
0.5 under load) stretches each timer by that much (``BENCH_TIMER_SCALE``, see
throughput_core.py), so a flush stores as many events as under load. With
the seed-lab apps, the goal ratios of throughput.py are printed too, by
instructions.

    python benchmarks/instructions.py [--servers gunicorn,uvicorn] [--apps bare,wrapped]
        [--requests 1000] [--warmup 200] [--profile new] [--timer-scale 40] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import (
    AGENT,
    APPS,
    GOALS,
    RATIOS,
    ROOT,
    SERVERS,
    SPEC,
    StatsigStub,
    compile_dcs,
    free_port,
    load_spec,
    server_command,
    wait_up,
)


def send(port: int, i: int, profile: str) -> None:
    """One request on a new connection, with the headers throughput.py's wrk script sends."""
    headers = {"User-Agent": AGENT, "Connection": "close"}
    if profile == "new":
        headers["X-Forwarded-For"] = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    else:
        headers["X-Forwarded-For"] = "203.0.113.7"
        headers["Cookie"] = "flagware_id=0123456789abcdef0123456789abcdef"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET / answered {response.status}")
    finally:
        connection.close()


def count(
    server: str, app: str, requests: int, args: argparse.Namespace, tmp: Path
) -> tuple[int, int]:
    """Instructions the worker executed, from its start to its end, serving ``requests``;
    and of those, the garbage collector's."""
    port = free_port()
    out = tmp / f"{server}-{app}-{requests}"
    out.mkdir()
    env = {
        **os.environ,
        "BENCH_APP": app,
        "BENCH_STUB": args.stub_url,
        "BENCH_STORE": str(out / "events.db"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), *sys.path]),
        "PYTHONHASHSEED": "0",  # the same dict layouts in every run
        "BENCH_TIMER_SCALE": str(args.timer_scale),
    }
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p"]
    with (out / "server.log").open("wb") as log:
        process = subprocess.Popen(
            valgrind + server_command(server, port, workers=1), env=env, stdout=log, stderr=log
        )
    try:
        wait_up(f"http://127.0.0.1:{port}/", timeout=300)
        for i in range(args.warmup + requests):
            send(port, i, args.profile)
    finally:
        # gunicorn's worker and uvicorn's process both finish cleanly, and
        # callgrind writes its counts at exit.
        process.send_signal(signal.SIGTERM if server == "gunicorn" else signal.SIGINT)
        process.wait(timeout=300)
    # gunicorn's master writes a file too; the worker is the one that counted most.
    worker = max(out.glob("callgrind.*"), key=_total)
    return _total(worker), _collector(worker)


def _total(path: Path) -> int:
    with path.open() as lines:
        for line in lines:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return 0


def _collector(path: Path) -> int:
    """Instructions spent in the garbage collector (``gc_collect_main``, inclusive)."""
    annotate = shutil.which("callgrind_annotate")
    if annotate is None:
        return 0
    report = subprocess.run(
        [annotate, "--inclusive=yes", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in report.splitlines():
        if ":gc_collect_main " in line:
            return int(line.split()[0].replace(",", ""))
    return 0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--apps", default="bare,wrapped")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--profile", choices=("new", "returning"), default="new")
    parser.add_argument("--timer-scale", type=float, default=40.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind (apt-get install valgrind)")
    servers, apps = args.servers.split(","), args.apps.split(",")
    for name in apps:
        if name not in APPS:
            parser.error(f"unknown app {name!r}; choose from {', '.join(APPS)}")
    figures: dict[str, Any] = {"settings": vars(args).copy(), "servers": {}, "collector": {}}
    stub = StatsigStub(dcs=compile_dcs(load_spec(SPEC)))
    # The two runs of an app at once, one a core: counts do not depend on speed.
    with tempfile.TemporaryDirectory() as tmp, stub, ThreadPoolExecutor(2) as pool:
        args.stub_url = stub.url
        for server in servers:
            per_request, collector = {}, {}
            for app in apps:
                alone, served = pool.map(
                    lambda n: count(server, app, n, args, Path(tmp)),  # noqa: B023 (waited for)
                    (0, args.requests),
                )
                per_request[app] = round((served[0] - alone[0]) / args.requests)
                collector[app] = round((served[1] - alone[1]) / args.requests)
            figures["servers"][server] = per_request
            figures["collector"][server] = collector
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(figures, apps)
    return figures


def _print(figures: dict[str, Any], apps: list[str]) -> None:
    print(f"instructions per request ({figures['settings']['profile']} visitors), one worker:")
    for server, per_request in figures["servers"].items():
        collector = figures["collector"][server]
        row = ", ".join(
            f"{app} {per_request[app]:,} (collector {collector[app]:,})" for app in apps
        )
        print(f"  {server}: {row}")
        if "bare" in per_request and per_request["bare"] > 0:
            bare = per_request["bare"] - collector["bare"]
            for app in apps:
                if app != "bare":
                    ratio = per_request["bare"] / per_request[app]
                    steady = bare / (per_request[app] - collector[app])
                    print(
                        f"    bare/{app} = {ratio:.3f} (as a throughput ratio {app}/bare); "
                        f"{steady:.3f} without the collector"
                    )
        for name, (faster, slower) in RATIOS.items():
            if faster in per_request and slower in per_request:
                ratio = per_request[slower] / per_request[faster]
                goal = GOALS.get(name)
                verdict = "" if goal is None else f": {'met' if ratio >= goal else 'missed'}"
                print(f"    {name}, by instructions: {ratio:.3f}{verdict}")


if __name__ == "__main__":
    main()
