"""The kill -9 window under load: what a SIGKILLed gunicorn worker loses.

gunicorn (gthread, several workers, several threads each) serves a view that
logs 3 events per request; wrk drives it at 32 connections, so the machine is
busy. Mid-run one worker is SIGKILLed. Each worker writes a line per request
it logged (``os.write`` to its own file, unbuffered: it survives the kill), so
the events logged and never stored are counted exactly, and the window is the
time between the newest stored event of the killed worker and the last event
it logged.

    python benchmarks/kill9_load.py [--runs 5] [--workers 4] [--threads 4]
                                    [--store postgresql://... | --postgres]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flagware.events.store import open_store  # noqa: E402

APP = """
import os, sys, time
sys.path.insert(0, {root!r})
from flagware import Flagware, FlagwareMiddleware, current_flags

fw = Flagware(spec={spec!r}, event_store={store!r}, hash_key="k")
LOG = {log!r}
_fds = {{}}

def app(environ, start_response):
    flags = current_flags()
    t = time.time_ns() // 1_000_000
    for i in range(3):
        flags.log_event("hit", value=i, metadata={{"pid": os.getpid(), "t": t}})
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        fd = _fds[pid] = os.open(f"{{LOG}}/{{pid}}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"{{t}}\\n".encode())  # after the events were queued
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

app = FlagwareMiddleware(app, fw)
"""

SPEC = "[gates.on]\nrollout = 100\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def one_run(args: argparse.Namespace, tmp: Path, store: str) -> tuple[int, int, float]:
    log = tmp / "log"
    log.mkdir()
    (tmp / "flagware.toml").write_text(SPEC)
    (tmp / "app.py").write_text(
        APP.format(root=str(ROOT), spec=str(tmp / "flagware.toml"), store=store, log=str(log))
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--chdir",
            str(tmp),
            "-k",
            "gthread",
            "-w",
            str(args.workers),
            "--threads",
            str(args.threads),
            "-b",
            f"127.0.0.1:{port}",
            "app:app",
        ],
        stderr=open(tmp / "gunicorn.log", "w"),  # noqa: SIM115 - closed with the directory
    )
    try:
        deadline = time.monotonic() + 20
        while len(children(server.pid)) < args.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        load = subprocess.Popen(
            [
                "wrk",
                "-t2",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                f"http://127.0.0.1:{port}/",
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(args.seconds / 2)
        # A worker that has served requests (each writes its file on its first).
        serving = [pid for pid in children(server.pid) if (log / str(pid)).exists()]
        victim = serving[0]
        os.kill(victim, signal.SIGKILL)
        load.wait()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    logged = [int(t) for t in (log / str(victim)).read_text().split()]
    with open_store(store) as s:
        stored = [
            row["metadata"]["t"]
            for row in s.iter_events()
            if row["metadata"] and row["metadata"].get("pid") == victim
        ]
    lost = 3 * len(logged) - len(stored)
    window = (max(logged) - max(stored)) / 1000 if stored else float("nan")
    return lost, len(logged), window


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--store", help="a postgresql:// URL (default: a fresh SQLite file)")
    parser.add_argument(
        "--postgres", action="store_true", help="on a throwaway PostgreSQL cluster (fsync on)"
    )
    args = parser.parse_args()
    if args.postgres and not args.store:
        sys.path.insert(0, str(ROOT / "tests"))
        from pg_cluster import Cluster, create_database, find_bin

        bin_dir = find_bin()
        assert bin_dir is not None, "PostgreSQL is not installed"
        cluster = Cluster(bin_dir, durable=True)
        try:
            args.store = create_database(cluster.url(), "flagware_kill9")
            measure(args)
        finally:
            cluster.stop()
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    windows, losses = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            # A shared PostgreSQL store keeps earlier runs: rows are told apart by pid.
            store = args.store or str(Path(tmp) / "events.db")
            lost, requests, window = one_run(args, Path(tmp), store)
        windows.append(window)
        losses.append(lost)
        print(
            f"run {run + 1}: killed worker answered {requests} requests;"
            f" lost {lost} events, {window * 1000:.0f} ms of its traffic"
        )
    print(
        f"kill -9 under load: lost median {statistics.median(losses):.0f} max {max(losses)} events;"
        f" window median {statistics.median(windows) * 1000:.0f} ms,"
        f" max {max(windows) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
