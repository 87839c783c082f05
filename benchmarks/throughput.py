"""End-to-end throughput under real servers: gunicorn (sync) and uvicorn, 2 workers, wrk.

Six apps are served at once by each server, each app by its own server with
2 workers (WSGI apps in benchmarks/throughput_app.py under gunicorn's sync
workers; their ASGI twins on Starlette in benchmarks/throughput_asgi_app.py
under uvicorn), and all are measured alternately in one run, round after
round, so machine noise hits them alike:

- a bare app (Flask; Starlette), and the same app wrapped with flagware's
  middleware reading no flag;
- the seed lab (one gate, one experiment, one event) written by hand on the
  ``statsig`` SDK, its event logger live against the loopback Statsig stub,
  and the same written by hand on ``statsig-python-core`` (Core's own logger
  live against the stub): what Core itself gives;
- the seed lab through flagware on the legacy engine and on Core, storing
  every event and every exposure that is no repeat in SQLite (a returning
  visitor's repeats are deduped, as both SDKs dedupe theirs).

Each is driven by wrk (Debian's ``wrk``) with new visitors (no cookie: a
stableID is minted and set) and returning ones (a valid cookie), all with a
browser's User-Agent. Every app behind a proxy trusts one ``X-Forwarded-For``
hop, and each new visitor comes from its own address, as real visitors do:
the seed lab hashes that address into its userID, so its SDK logs every new
visitor's exposures (from one loopback address it would log one user's,
once). Every request comes on a new connection unless ``--keep-alive``. The
report gives the median req/s over rounds, wrk's p50/p99 latency (median over
rounds), the workers' CPU time per request (every thread, the event writer's
included, read from /proc: it does not depend on how the load lands on the
workers) and the ratios the issue sets goals for. Each ratio comes with the
lowest and highest of its per-round values (the two apps ran back to back in
each round) and with the same ratio by CPU per request; with six rounds or
more, also a 95% interval for the median of the per-round ratios and, for
the ratios the issue sets goals for, whether the goal is met, missed or
undecided at that level (``paired.py``).

    python benchmarks/throughput.py [--rounds 5] [--seconds 3] [--connections 4]
        [--workers 2] [--servers gunicorn,uvicorn] [--apps bare,wrapped,hand,corehand,legacy,core]
        [--keep-alive] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paired import median_interval, verdict  # noqa: E402

from flagware.spec import compile_dcs, load_spec  # noqa: E402
from tests.statsig_stub import StatsigStub  # noqa: E402

SPEC = ROOT / "flagware" / "demo" / "flagware.toml"
APPS = {
    "bare": "bare app",
    "wrapped": "bare + flagware, no flag read",
    "hand": "seed lab by hand on the statsig SDK",
    "corehand": "seed lab by hand on statsig-python-core",
    "legacy": "seed lab through flagware (legacy)",
    "core": "seed lab through flagware (core)",
}
PROFILES = ("new", "returning")
# The ratios the issue sets goals for (numerator, denominator); above 1 is faster.
RATIOS = {
    "wrapped/bare (goal >= 0.97)": ("wrapped", "bare"),
    "legacy/hand (goal >= 1.0)": ("legacy", "hand"),
    "core/hand (goal >= 1.2)": ("core", "hand"),
    "hand/bare": ("hand", "bare"),
    # What Core itself gives when written by hand, and flagware against that.
    "by hand, Core/legacy": ("corehand", "hand"),
    "core/by hand on Core": ("core", "corehand"),
}
# The least each goal allows; the verdict needs the whole interval on one side.
GOALS = {
    "wrapped/bare (goal >= 0.97)": 0.97,
    "legacy/hand (goal >= 1.0)": 1.0,
    "core/hand (goal >= 1.2)": 1.2,
}
SERVERS = {
    "gunicorn": "gunicorn (sync workers), Flask",
    "uvicorn": "uvicorn (worker processes), Starlette",
}
# Every request says it is a browser, as real visitors' do (wrk reads it as BENCH_AGENT).
AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
# wrk prints one JSON line at the end: requests/s and latency percentiles (us).
LUA = """
local profile = os.getenv("BENCH_PROFILE")
local connection = os.getenv("BENCH_CONNECTION")
local agent = os.getenv("BENCH_AGENT")
-- A new visitor comes from an address of its own (never the same sequence twice);
-- a returning one from the address it had.
math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
function request()
  if profile == "returning" then
    return wrk.format("GET", "/", {["User-Agent"] = agent, ["X-Forwarded-For"] = "203.0.113.7",
      ["Cookie"] = "flagware_id=0123456789abcdef0123456789abcdef", ["Connection"] = connection})
  end
  local ip = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255),
    math.random(1, 254))
  return wrk.format("GET", "/", {["User-Agent"] = agent, ["X-Forwarded-For"] = ip,
    ["Connection"] = connection})
end
function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"rps": %.1f, "p50": %d, "p99": %d, "errors": %d, "requests": %d}\\n',
    summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def server_command(server: str, port: int, workers: int = 2) -> list[str]:
    if server == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "sync", "-b"]
        return [*cmd, f"127.0.0.1:{port}", "--log-level", "warning", "throughput_app:app"]
    cmd = [sys.executable, "-m", "uvicorn", "throughput_asgi_app:app", "--workers", str(workers)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return [*cmd, "--no-access-log"]


Target = tuple[str, str]  # (server, app kind)


def start_servers(
    tmp: Path, stub_url: str, targets: list[Target], workers: int = 2
) -> dict[Target, tuple[subprocess.Popen[bytes], int]]:
    servers: dict[Target, tuple[subprocess.Popen[bytes], int]] = {}
    for server, kind in targets:
        port = free_port()
        env = {
            **os.environ,
            "BENCH_APP": kind,
            "BENCH_STUB": stub_url,
            "BENCH_STORE": str(tmp / f"{server}-{kind}.db"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), *sys.path]),
        }
        with (tmp / f"{server}-{kind}.log").open("wb") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                server_command(server, port, workers), env=env, stdout=log, stderr=log
            )
            servers[server, kind] = (process, port)
    for _, port in servers.values():
        wait_up(f"http://127.0.0.1:{port}/")
    return servers


def worker_cpu_ns(master: int) -> int:
    """CPU time so far of the server's worker processes, every thread (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != master:
                continue
            for task in (stat.parent / "task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a process or thread that ended meanwhile
    return total


def run_wrk(
    wrk: str,
    script: Path,
    port: int,
    profile: str,
    seconds: int,
    connections: int,
    keep_alive: bool = False,
) -> dict[str, Any]:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    done = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/"],
        env={
            **os.environ,
            "BENCH_PROFILE": profile,
            "BENCH_AGENT": AGENT,
            "BENCH_CONNECTION": "keep-alive" if keep_alive else "close",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes per server (the goals: 2)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated subset")
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="reuse connections (uvicorn's workers then split wrk's few connections unevenly)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("throughput.py needs wrk: apt-get install wrk")
    kinds = args.apps.split(",")
    targets = [(server, kind) for server in args.servers.split(",") for kind in kinds]

    with tempfile.TemporaryDirectory(prefix="flagware-throughput-") as directory:
        return _run(args, wrk, targets, Path(directory))


def _run(args: argparse.Namespace, wrk: str, targets: list[Target], tmp: Path) -> dict[str, Any]:
    script = tmp / "bench.lua"
    script.write_text(LUA)
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {
        (*t, p): [] for t in targets for p in PROFILES
    }
    with StatsigStub(dcs=compile_dcs(load_spec(SPEC))) as stub:
        servers = start_servers(tmp, stub.url, targets, args.workers)
        try:
            for target in targets:  # warm up: imports, SDK start in each worker, caches
                for profile in PROFILES:
                    run_wrk(
                        wrk,
                        script,
                        servers[target][1],
                        profile,
                        1,
                        args.connections,
                        args.keep_alive,
                    )
            for round_ in range(args.rounds):
                shift = round_ % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    process, port = servers[target]
                    for profile in PROFILES:
                        before = worker_cpu_ns(process.pid)
                        result = run_wrk(
                            wrk,
                            script,
                            port,
                            profile,
                            args.seconds,
                            args.connections,
                            args.keep_alive,
                        )
                        time.sleep(0.3)  # the writer's last flush (every 0.2 s) is this run's
                        used = worker_cpu_ns(process.pid) - before
                        if used > 0 and result["requests"]:
                            result["cpu_us"] = used / 1000 / result["requests"]
                        else:  # a worker died or hung: no figure, and its rounds' pairs go
                            result["cpu_us"] = None
                            print(
                                f"round {round_ + 1}: {'/'.join(target)} {profile}: "
                                f"{result['requests']} requests, {used / 1e6:.0f} ms of worker"
                                " CPU: left out",
                                file=sys.stderr,
                            )
                        samples[(*target, profile)].append(result)
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                process.wait(timeout=60)
        delivered = len(stub.events)

    figures: dict[str, Any] = {"servers": {}, "stub_events": delivered}
    for (server, kind, profile), results in samples.items():
        apps = figures["servers"].setdefault(server, {"apps": {}, "ratios": {}})["apps"]
        apps.setdefault(kind, {})[profile] = {
            "rps": round(statistics.median(r["rps"] for r in results), 1),
            "p50_ms": round(statistics.median(r["p50"] for r in results) / 1000, 3),
            "p99_ms": round(statistics.median(r["p99"] for r in results) / 1000, 3),
            "cpu_us": _median([r["cpu_us"] for r in results if r["cpu_us"] is not None]),
            "errors": sum(r["errors"] for r in results),
        }
    for server, figure in figures["servers"].items():
        figure["spread"] = {}
        for profile in PROFILES:
            figure["ratios"][profile] = _ratios(figure["apps"], profile)
            rounds = {kind: samples[server, kind, profile] for kind in figure["apps"]}
            figure["spread"][profile] = _spread(rounds)
    figures["settings"] = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "workers": args.workers,
        "keep_alive": args.keep_alive,
        "servers": {server: SERVERS[server] for server in figures["servers"]},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(args, figures)
    return figures


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _ratios(apps: dict[str, Any], profile: str) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        if a not in apps or b not in apps or not apps[b][profile]["rps"]:
            return None
        return round(apps[a][profile]["rps"] / apps[b][profile]["rps"], 3)

    return {name: ratio(a, b) for name, (a, b) in RATIOS.items()}


def _spread(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any] | None]:
    """How far each ratio moved between rounds, and the same ratio by CPU per request.

    Both apps of a ratio ran back to back in every round, so a round's ratio is
    a paired comparison; the lowest and highest of them say how much one run's
    ratio can be trusted, and (from six rounds) the order-statistic interval
    for their median decides a goal (``paired.py``). The CPU ratio (the
    denominator's CPU per request over the numerator's, so that above 1 still
    means faster) is the median over rounds: it does not depend on how the
    load landed on the workers.
    """
    found: dict[str, dict[str, Any] | None] = {}
    for name, (a, b) in RATIOS.items():
        if a not in rounds or b not in rounds:
            found[name] = None
            continue
        # Rounds where either app failed to serve (see _run) are no comparison.
        pairs = [
            (x, y)
            for x, y in zip(rounds[a], rounds[b], strict=True)
            if x["cpu_us"] is not None and y["cpu_us"] is not None and x["rps"] and y["rps"]
        ]
        if not pairs:
            found[name] = None
            continue
        by_rps = [x["rps"] / y["rps"] for x, y in pairs]
        by_cpu = [y["cpu_us"] / x["cpu_us"] for x, y in pairs]
        figure: dict[str, Any] = {
            "min": round(min(by_rps), 3),
            "max": round(max(by_rps), 3),
            "cpu": round(statistics.median(by_cpu), 3),
        }
        for measure, ratios in (("rps", by_rps), ("cpu", by_cpu)):
            interval = median_interval(ratios)
            figure[f"{measure}_interval"] = (
                None if interval is None else [round(interval.low, 3), round(interval.high, 3)]
            )
            if name in GOALS:
                figure[f"{measure}_verdict"] = verdict(interval, GOALS[name])
        found[name] = figure
    return found


def _print(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    print(
        f"wrk -t1 -c{args.connections}, {args.workers} workers per server, median of "
        f"{args.rounds} rounds of {args.seconds:g} s, "
        "all apps alternating, "
        + ("connections kept alive" if args.keep_alive else "a new connection per request")
    )
    for server, figure in figures["servers"].items():
        for profile in PROFILES:
            print(
                f"\n{SERVERS[server]}: {profile} visitors      req/s    p50 ms   p99 ms  CPU us/req"
            )
            for kind, row in figure["apps"].items():
                row = row[profile]
                print(
                    f"  {APPS[kind]:<38} {row['rps']:>8.0f} {row['p50_ms']:>8.2f} "
                    f"{row['p99_ms']:>8.2f} {_cpu(row['cpu_us']):>10}"
                )
            for name, value in figure["ratios"][profile].items():
                spread = figure["spread"][profile][name]
                if value is not None and spread is not None:
                    print(
                        f"  {name:<38} {value:.3f}x   rounds {spread['min']:.2f}-"
                        f"{spread['max']:.2f}{_decided(spread, 'rps')}, "
                        f"by CPU {spread['cpu']:.3f}x{_decided(spread, 'cpu')}"
                    )


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _decided(spread: dict[str, Any], measure: str) -> str:
    """The 95% interval of a ratio's median and the goal's verdict, when there are enough rounds."""
    interval = spread[f"{measure}_interval"]
    if interval is None:
        return ""
    found = spread.get(f"{measure}_verdict")
    return f" (95% {interval[0]:.2f}-{interval[1]:.2f}" + (f": {found})" if found else ")")


if __name__ == "__main__":
    main()
