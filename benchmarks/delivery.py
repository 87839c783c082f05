"""Event logging cost on the request path, and sustained delivery throughput.

(a) Request path: the time one ``log_event`` call takes in the calling thread.
    - flagware, queue only: ``EventWriter.put`` of a ready ``Event``;
    - flagware, full path: ``current_flags().log_event(...)`` inside a request
      through ``FlagwareMiddleware`` on a Statsig-mode client;
    - the SDK: ``statsig.log_event(StatsigEvent(...))`` on a server
      initialised against the loopback stub (not local mode, which drops
      events), its logger threads live.
    Goal: flagware no slower than the SDK.
(b) Sustained delivery: a store prefilled with N events drained by one
    ``Delivery`` to the stub running in another process (so the stub does not
    share this process's GIL). Goal: at least 20,000 events/s.
(c) The kill -9 bound: a process logging ~2,000 events/s is SIGKILLed; how
    many events (and how many ms of logging) were lost.

Medians over ``--runs`` runs.

    python benchmarks/delivery.py [--runs 7] [--calls 5000] [--events 100000]
"""

from __future__ import annotations

import argparse
import gc
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statsig import StatsigEvent, StatsigOptions, StatsigUser, statsig  # noqa: E402
from werkzeug.test import Client  # noqa: E402
from werkzeug.wrappers import Response  # noqa: E402

from flagware import Flagware, FlagwareMiddleware, current_flags  # noqa: E402
from flagware.events.delivery import Delivery  # noqa: E402
from flagware.events.model import Event  # noqa: E402
from flagware.events.store import EventStore  # noqa: E402
from flagware.events.writer import EventWriter  # noqa: E402
from tests import conftest as offline  # noqa: E402
from tests.statsig_stub import StatsigStub  # noqa: E402

# The SDK's error boundary posts to statsigapi.net on internal errors (such as
# its own dropped-events report): keep the benchmark as offline as the tests.
socket.socket.connect = offline._guarded_connect  # type: ignore[method-assign]
socket.getaddrinfo = offline._guarded_getaddrinfo

METADATA = {"plan": "pro", "source": "benchmark"}


@contextmanager
def stub_process() -> Iterator[str]:
    """The stub in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "statsig_stub.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def per_call(loop: Callable[[int], None], calls: int) -> float:
    gc.collect()
    start = time.perf_counter()
    loop(calls)
    return (time.perf_counter() - start) / calls


# -- (a) request path --------------------------------------------------------------


def bench_writer_put(tmp: Path, calls: int) -> float:
    store = EventStore(tmp / "put.db")
    writer = EventWriter(store, deliver=True)
    event = Event("clicked", {"userID": "u"}, value=1, metadata=METADATA)
    put = writer.put
    put(event)

    def loop(n: int) -> None:
        for _ in range(n):
            put(event)

    try:
        return per_call(loop, calls)
    finally:
        writer.close()
        store.close()


def bench_flagware_full(fw: Flagware, calls: int) -> float:
    result: list[float] = []

    def view(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        flags.log_event("warmup")  # builds the request's user once, like a real view

        def loop(n: int) -> None:
            log = flags.log_event
            for _ in range(n):
                log("clicked", value=1, metadata=METADATA)

        result.append(per_call(loop, calls))
        return Response("ok")(environ, start_response)

    Client(FlagwareMiddleware(view, fw)).get("/")
    fw.flush()
    return result[0]


def bench_sdk(calls: int) -> float:
    user = StatsigUser(user_id="u", custom_ids={"stableID": "s"})
    log = statsig.log_event

    def loop(n: int) -> None:
        for _ in range(n):
            log(StatsigEvent(user, "clicked", value=1, metadata=METADATA))

    return per_call(loop, calls)


def request_path(runs: int, calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir, StatsigStub() as stub:
        tmp = Path(tmp_dir)
        statsig.initialize("secret-bench", StatsigOptions(api=stub.url, disable_diagnostics=True))
        fw = Flagware(
            statsig_secret="secret-bench",
            statsig_api=stub.url,
            hash_key="k",
            event_store=tmp / "full.db",
        )
        put, full, sdk = [], [], []
        try:
            for _ in range(runs):  # alternate, so noise hits all three alike
                put.append(bench_writer_put(tmp, calls))
                full.append(bench_flagware_full(fw, calls))
                sdk.append(bench_sdk(calls))
                time.sleep(1.5)  # let the SDK flush: more than 10 queued batches it drops
        finally:
            fw.close()
            statsig.shutdown()
    m_put, m_full, m_sdk = (statistics.median(x) * 1e6 for x in (put, full, sdk))
    print(f"(a) request path, median of {runs} runs x {calls} calls (us per call)")
    print(f"    flagware EventWriter.put (ready Event)     {m_put:7.2f} us")
    print(f"    flagware flags.log_event (full path)       {m_full:7.2f} us")
    print(f"    statsig.log_event(StatsigEvent(...))       {m_sdk:7.2f} us")
    print(f"    ratio full/sdk {m_full / m_sdk:.2f}x, put/sdk {m_put / m_sdk:.2f}x")


# -- (b) delivery throughput ---------------------------------------------------------


def delivery_run(api: str, tmp: Path, events: int, run: int, **options: Any) -> float:
    path = tmp / f"throughput-{time.monotonic_ns()}-{run}.db"
    store = EventStore(path)
    batch = [
        Event("clicked", {"userID": f"u{i}"}, value=1, metadata={**METADATA, "uid": i})
        for i in range(events)
    ]
    store.append(batch, deliver=True)
    delivery = Delivery(path, secret="secret-bench", api=api, **options)
    start = time.perf_counter()
    done = delivery.drain(120)
    elapsed = time.perf_counter() - start
    delivery.close()
    stats = store.stats()
    store.close()
    if not done or stats.delivered != events:
        raise SystemExit(f"delivery incomplete: {stats}")
    return events / elapsed


def throughput(runs: int, events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir, stub_process() as api:
        tmp = Path(tmp_dir)
        print(f"(b) delivery to the stub (separate process), {events} events, median of {runs}")
        for options in ({}, {"batch_size": 2000, "concurrency": 2}):
            rates = [delivery_run(api, tmp, events, r, **options) for r in range(runs)]
            label = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
            print(
                f"    {label:<32} {statistics.median(rates):9,.0f} events/s"
                f"  (min {min(rates):,.0f}, max {max(rates):,.0f})"
            )


# -- (c) kill -9 -----------------------------------------------------------------------

KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from flagware import Flagware
from flagware.events.model import Event
fw = Flagware(statsig_secret="secret-bench", statsig_api={api!r}, hash_key="k",
              event_store={store!r}, flush_interval={interval!r})
i = 0
while True:
    t = time.time()
    fw.log(Event("tick", {{"userID": "u"}}, metadata={{"uid": i}}))
    print(i, int(t * 1000), flush=True)
    i += 1
    time.sleep(0.0005)
"""


def kill_once(api: str, store: Path, interval: float, after: float) -> tuple[int, float]:
    script = KILL_SCRIPT.format(root=str(ROOT), api=api, store=str(store), interval=interval)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    lines = proc.stdout.read().split("\n")
    proc.wait()
    proc.stdout.close()
    last = lines[-2].split()
    logged, last_ms = int(last[0]) + 1, int(last[1])
    s = EventStore(store)
    stored = s.count()
    last_stored_ms = s._conn().execute("SELECT max(time) FROM events").fetchone()[0]
    s.close()
    return logged - stored, (last_ms - last_stored_ms) if stored else float(last_ms)


def kill_bound(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_dir, stub_process() as api:
        tmp = Path(tmp_dir)
        print(f"(c) kill -9 while logging ~2,000 events/s, {runs} kills per flush interval")
        for interval in (0.05, 0.2):
            results = [
                kill_once(api, tmp / f"kill-{interval}-{r}.db", interval, 1.0 + 0.137 * r)
                for r in range(runs)
            ]
            lost = [n for n, _ in results]
            window = [ms for _, ms in results]
            print(
                f"    flush_interval {interval * 1000:4.0f} ms: lost median"
                f" {statistics.median(lost):.0f}, max {max(lost)} events;"
                f" window median {statistics.median(window):.0f} ms, max {max(window):.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--only", choices=("request", "throughput", "kill"))
    args = parser.parse_args()
    if args.only in (None, "request"):
        request_path(args.runs, args.calls)
    if args.only in (None, "throughput"):
        throughput(args.runs, args.events)
    if args.only in (None, "kill"):
        kill_bound(args.runs)


if __name__ == "__main__":
    main()
