"""End-to-end throughput under a real server: gunicorn (sync, 2 workers) and wrk over loopback.

Five apps (benchmarks/throughput_app.py) are served at once, each by its own
gunicorn, and measured alternately in one run, round after round, so machine
noise hits them alike:

- bare Flask, and the same app wrapped with flagware reading no flag;
- the seed lab (one gate, one experiment, one event) written by hand on the
  ``statsig`` SDK, its event logger live against the loopback Statsig stub;
- the seed lab through flagware on the legacy engine and on Core, storing
  every exposure and event in SQLite.

Each is driven by wrk (Debian's ``wrk``) with new visitors (no cookie: a
stableID is minted and set) and returning ones (a valid cookie), all with a
browser's User-Agent. The report
gives the median req/s over rounds, wrk's p50/p99 latency (median over rounds)
and the ratios the issue sets goals for.

    python benchmarks/throughput.py [--rounds 5] [--seconds 3] [--connections 4] [--json]
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

from flagware.spec import compile_dcs, load_spec  # noqa: E402
from tests.statsig_stub import StatsigStub  # noqa: E402

SPEC = ROOT / "flagware" / "demo" / "flagware.toml"
APPS = {
    "bare": "bare Flask",
    "wrapped": "bare + flagware, no flag read",
    "hand": "seed lab by hand on the statsig SDK",
    "legacy": "seed lab through flagware (legacy)",
    "core": "seed lab through flagware (core)",
}
PROFILES = ("new", "returning")
# wrk prints one JSON line at the end: requests/s and latency percentiles (us).
LUA = """
local profile = os.getenv("BENCH_PROFILE")
local agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
  .. "Chrome/126.0.0.0 Safari/537.36"
function request()
  if profile == "returning" then
    return wrk.format("GET", "/", {["User-Agent"] = agent,
      ["Cookie"] = "flagware_id=0123456789abcdef0123456789abcdef"})
  end
  return wrk.format("GET", "/", {["User-Agent"] = agent})
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


def start_servers(tmp: Path, stub_url: str) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for kind in APPS:
        port = free_port()
        env = {
            **os.environ,
            "BENCH_APP": kind,
            "BENCH_STUB": stub_url,
            "BENCH_STORE": str(tmp / f"{kind}.db"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), *sys.path]),
        }
        cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b"]
        cmd += [f"127.0.0.1:{port}", "--log-level", "warning", "throughput_app:app"]
        with (tmp / f"{kind}.log").open("wb") as log:  # the child keeps its own copy
            servers[kind] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=log), port)
    for _, port in servers.values():
        wait_up(f"http://127.0.0.1:{port}/")
    return servers


def run_wrk(
    wrk: str, script: Path, port: int, profile: str, seconds: int, connections: int
) -> dict[str, Any]:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    done = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/"],
        env={**os.environ, "BENCH_PROFILE": profile},
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
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated subset")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("throughput.py needs wrk: apt-get install wrk")
    kinds = args.apps.split(",")

    with tempfile.TemporaryDirectory(prefix="flagware-throughput-") as directory:
        return _run(args, wrk, kinds, Path(directory))


def _run(args: argparse.Namespace, wrk: str, kinds: list[str], tmp: Path) -> dict[str, Any]:
    script = tmp / "bench.lua"
    script.write_text(LUA)
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {
        (k, p): [] for k in kinds for p in PROFILES
    }
    with StatsigStub(dcs=compile_dcs(load_spec(SPEC))) as stub:
        servers = start_servers(tmp, stub.url)
        try:
            for kind in kinds:  # warm up: imports, SDK start in each worker, caches
                for profile in PROFILES:
                    run_wrk(wrk, script, servers[kind][1], profile, 1, args.connections)
            for round_ in range(args.rounds):
                order = kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]
                for kind in order:
                    for profile in PROFILES:
                        result = run_wrk(
                            wrk, script, servers[kind][1], profile, args.seconds, args.connections
                        )
                        samples[kind, profile].append(result)
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                process.wait(timeout=60)
        delivered = len(stub.events)

    figures: dict[str, Any] = {"apps": {}, "ratios": {}, "stub_events": delivered}
    for (kind, profile), results in samples.items():
        figures["apps"].setdefault(kind, {})[profile] = {
            "rps": round(statistics.median(r["rps"] for r in results), 1),
            "p50_ms": round(statistics.median(r["p50"] for r in results) / 1000, 3),
            "p99_ms": round(statistics.median(r["p99"] for r in results) / 1000, 3),
            "errors": sum(r["errors"] for r in results),
        }
    apps = figures["apps"]
    for profile in PROFILES:

        def ratio(a: str, b: str, profile: str = profile) -> float | None:
            if a not in apps or b not in apps:
                return None
            return round(apps[a][profile]["rps"] / apps[b][profile]["rps"], 3)

        figures["ratios"][profile] = {
            "wrapped/bare (goal >= 0.97)": ratio("wrapped", "bare"),
            "legacy/hand (goal >= 1.0)": ratio("legacy", "hand"),
            "core/hand (goal >= 1.2)": ratio("core", "hand"),
            "hand/bare": ratio("hand", "bare"),
        }
    figures["settings"] = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "server": "gunicorn -w 2 -k sync",
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"gunicorn -w 2 (sync), wrk -t1 -c{args.connections}, median of {args.rounds} rounds "
            f"of {args.seconds:g} s"
        )
        for profile in PROFILES:
            print(f"\n{profile} visitors            req/s    p50 ms   p99 ms")
            for kind in kinds:
                row = apps[kind][profile]
                print(
                    f"  {APPS[kind]:<38} {row['rps']:>8.0f} {row['p50_ms']:>8.2f} "
                    f"{row['p99_ms']:>8.2f}"
                )
            for name, value in figures["ratios"][profile].items():
                if value is not None:
                    print(f"  {name:<38} {value:.3f}x")
    return figures


if __name__ == "__main__":
    main()
