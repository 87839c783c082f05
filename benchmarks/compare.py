"""One app from two checkouts under a real server, alternating rounds: did a change help?

    git worktree add /tmp/base <commit>
    .venv/bin/python benchmarks/compare.py --baseline /tmp/base [--app core]
        [--server gunicorn] [--profile new] [--rounds 6] [--seconds 3] [--gc]

throughput.py compares different apps in one run; a change to flagware
itself needs the same app before and after it, and on a shared machine the
two must run side by side, not an hour apart. This starts the app
(``throughput_app.py`` under gunicorn, ``throughput_asgi_app.py`` under
uvicorn, 2 workers) once from ``--baseline`` and once from this checkout, each
importing its own flagware, and drives them with wrk in alternating rounds
(the order swapped every round). It prints each side's median CPU time per
request (the workers' every thread, from /proc, as throughput.py reads it),
req/s, and the per-round ratio baseline / this checkout: above 1, this
checkout is cheaper. From six rounds it also gives the 95% interval for the
median of those ratios (``paired.py``): a change is shown to help only when
the whole interval is above 1.

``--gc`` also counts the full garbage collections (generation 2) each side's
processes ran during its rounds, and their total time: each one stalls the
request it lands in for tens of milliseconds. Both sides load
``benchmarks/gc_probe/sitecustomize.py`` from this checkout, which logs them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import median_interval
from throughput import (
    APPS,
    LUA,
    ROOT,
    SERVERS,
    SPEC,
    StatsigStub,
    compile_dcs,
    free_port,
    load_spec,
    run_wrk,
    server_command,
    wait_up,
    worker_cpu_ns,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path, help="another checkout")
    parser.add_argument("--app", default="core", choices=list(APPS))
    parser.add_argument("--server", default="gunicorn", choices=list(SERVERS))
    parser.add_argument("--profile", default="new", choices=("new", "returning"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--gc", action="store_true", help="count full garbage collections")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("compare.py needs wrk: apt-get install wrk")
    roots = {"baseline": args.baseline.resolve(), "this": ROOT}
    cpu: dict[str, list[float]] = {name: [] for name in roots}
    rps: dict[str, list[float]] = {name: [] for name in roots}
    windows: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
    errors = 0
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        StatsigStub(dcs=compile_dcs(load_spec(SPEC))) as stub,
    ):
        tmp = Path(tmp_name)
        script = tmp / "bench.lua"
        script.write_text(LUA)
        servers = {}
        for name, root in roots.items():
            port = free_port()
            # Each side imports its own checkout's flagware and apps.
            path = [str(root), str(root / "benchmarks")]
            if args.gc:
                path.append(str(ROOT / "benchmarks" / "gc_probe"))
            env = {
                **os.environ,
                "BENCH_APP": args.app,
                "BENCH_STUB": stub.url,
                "BENCH_STORE": str(tmp / f"{name}.db"),
                "PYTHONPATH": os.pathsep.join(path),
            }
            if args.gc:
                env["BENCH_GC_LOG"] = str(tmp / f"gc-{name}.log")
            process = subprocess.Popen(
                server_command(args.server, port),
                env=env,
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            servers[name] = (process, port)
        try:
            for _, port in servers.values():
                wait_up(f"http://127.0.0.1:{port}/")
                run_wrk(wrk, script, port, args.profile, 2, 4)  # warm up
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
                for name in order:
                    process, port = servers[name]
                    before = worker_cpu_ns(process.pid)
                    started = time.time()
                    result = run_wrk(wrk, script, port, args.profile, args.seconds, 4)
                    time.sleep(0.3)  # the writer's last flush belongs to this round
                    used = worker_cpu_ns(process.pid) - before
                    windows[name].append((started, time.time()))
                    cpu[name].append(used / 1000 / max(1, result["requests"]))
                    rps[name].append(result["rps"])
                    errors += result["errors"]
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                process.wait(timeout=60)
        collections = {name: _collections(tmp / f"gc-{name}.log", windows[name]) for name in roots}
    print(f"{args.app} under {args.server}, {args.profile} visitors, {args.rounds} rounds:")
    for name in roots:
        print(
            f"  {name:>8}: {statistics.median(cpu[name]):6.1f} us CPU/request,"
            f" {statistics.median(rps[name]):7.0f} req/s"
        )
    ratios = [b / t for b, t in zip(cpu["baseline"], cpu["this"], strict=True)]
    interval = median_interval(ratios)
    within = "" if interval is None else f", 95% {interval.low:.3f}-{interval.high:.3f}"
    print(
        f"  baseline / this by CPU: median {statistics.median(ratios):.3f}"
        f" (rounds {min(ratios):.3f}-{max(ratios):.3f}{within}); {errors} failed requests"
    )
    if args.gc:
        for name in roots:
            count, total = collections[name]
            print(f"  {name:>8}: {count} full collections during its rounds, {total:.0f} ms")
    return {
        "cpu_us": {name: statistics.median(cpu[name]) for name in roots},
        "rps": {name: statistics.median(rps[name]) for name in roots},
        "ratios": ratios,
        "interval": None if interval is None else [interval.low, interval.high],
        "errors": errors,
        "full_collections": {name: collections[name][0] for name in roots} if args.gc else None,
    }


def _collections(log: Path, windows: list[tuple[float, float]]) -> tuple[int, float]:
    """Full collections logged by gc_probe inside the rounds' windows: count and milliseconds."""
    count, total = 0, 0.0
    if log.exists():
        for line in log.read_text().splitlines():
            at, took = (float(part) for part in line.split())
            if any(start <= at <= end for start, end in windows):
                count += 1
                total += took
    return count, total


if __name__ == "__main__":
    main()
