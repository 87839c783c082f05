"""Scale on both backends: events/s stored by 1, 4 and 8 processes, and
``flagware results`` from 1M to 10M events (time, and the peak memory of the
process that computes them).

    python benchmarks/scale.py write   [--seconds 5] [--postgres URL]
    python benchmarks/scale.py results [--sizes 1000000,3000000,10000000] [--runs 3]
                                       [--unit userID,stableID]
                                       [--postgres URL]

Without ``--postgres`` a throwaway PostgreSQL cluster is started in a temporary
directory (``tests/pg_cluster.py``), with PostgreSQL's default durability (fsync
on), as a production server would run. SQLite runs in WAL mode with
synchronous=NORMAL, flagware's settings.

``write``: each process appends batches of 500 prebuilt events (the writer's
transaction size under load) through ``Store.append`` for ``--seconds``; the
figure is all processes' events over the wall time.

``results``: the store grows to each size (the events of
``benchmarks/results_1m.py``: 100,000 units in a two-group experiment, four
metrics and a guardrail), then ``compute_results`` runs in a fresh process
``--runs`` times; the median time and the largest peak RSS are printed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from flagware.events.model import CONFIG_EXPOSURE, Event  # noqa: E402
from flagware.events.store import open_store  # noqa: E402

UNITS = 100_000


# -- write throughput -------------------------------------------------------------


def _writer(location: str, seconds: float, start: Any, counts: Any, index: int) -> None:
    store = open_store(location)
    batch = [
        Event("click", {"userID": f"u{i}", "customIDs": {"stableID": f"s{i}"}}, value=1)
        for i in range(500)
    ]
    store.append(batch[:1])  # connected, schema ready
    start.wait()
    stored = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        store.append(batch)
        stored += len(batch)
    counts[index] = stored
    store.close()


def write(location: str, processes: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    counts = ctx.Array("q", processes)
    procs = [
        ctx.Process(target=_writer, args=(location, seconds, start, counts, i))
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    time.sleep(2)  # every process connected
    began = time.monotonic()
    start.set()
    for proc in procs:
        proc.join()
    return sum(counts) / (time.monotonic() - began)


# -- results ------------------------------------------------------------------------

SPEC = """
[experiments.button_color]
unit = "{unit}"
groups = [{ name = "Control", weight = 50 }, { name = "Red", weight = 50 }]

[metrics.signed_up]
event = "signup"
kind = "conversion"

[metrics.clicks]
event = "click"
kind = "count"

[metrics.revenue]
event = "purchase"
kind = "sum"

[metrics.order_value]
event = "purchase"
kind = "mean"

[metrics.errors]
event = "error"
kind = "count"
tags = ["guardrail"]
direction = "decrease"
fresh_within = 24
"""

# The events of benchmarks/results_1m.py, generated inside the database (10M
# events through Python would take minutes): 100,000 units exposed once to a
# 50/50 experiment, then events spread over the units and 20 hours: 50% click,
# 30% pageview, 8% signup, 10% purchase (valued), 2% error.
EXPOSURES = {
    "sqlite": """
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :units - 1)
        INSERT INTO events (time, event, user_id, stable_id, exposure, group_name, payload)
        SELECT :start + abs(random()) % 3600000, :exposure, 'u' || i, 's' || i, 'button_color',
               CASE WHEN i % 2 = 0 THEN 'Control' ELSE 'Red' END, '{}'
        FROM n
    """,
    "postgres": """
        INSERT INTO events (time, event, user_id, stable_id, exposure, group_name, payload)
        SELECT %(start)s + (random() * 3600000)::bigint, %(exposure)s, 'u' || i, 's' || i,
               'button_color', CASE WHEN i %% 2 = 0 THEN 'Control' ELSE 'Red' END, '{}'
        FROM generate_series(0, %(units)s - 1) AS i
    """,
}
EVENTS = {
    "sqlite": """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count),
        r AS (SELECT abs(random()) % :units AS u, (abs(random()) % 1000000) / 1e6 AS r,
                     (abs(random()) % 1000000) / 1e6 AS r2 FROM n),
        e AS (SELECT u, r2, CASE WHEN r < 0.5 THEN 'click' WHEN r < 0.8 THEN 'pageview'
                   WHEN r < 0.88 THEN 'signup' WHEN r < 0.98 THEN 'purchase' ELSE 'error' END
                   AS name FROM r)
        INSERT INTO events (time, event, user_id, stable_id, value, value_num, payload)
        SELECT :start + abs(random()) % 72000000, name, 'u' || u, 's' || u,
               CASE WHEN name = 'purchase' THEN round(-30 * ln(1 - r2), 2) END,
               CASE WHEN name = 'purchase' THEN round(-30 * ln(1 - r2), 2) END, '{}'
        FROM e
    """,
    "postgres": """
        INSERT INTO events (time, event, user_id, stable_id, value, value_num, payload)
        SELECT %(start)s + (random() * 72000000)::bigint, name, 'u' || u, 's' || u,
               CASE WHEN name = 'purchase' THEN round((-30 * ln(1 - r2))::numeric, 2)::text END,
               CASE WHEN name = 'purchase' THEN round((-30 * ln(1 - r2))::numeric, 2) END, '{}'
        FROM (SELECT u, r2, CASE WHEN r < 0.5 THEN 'click' WHEN r < 0.8 THEN 'pageview'
                   WHEN r < 0.88 THEN 'signup' WHEN r < 0.98 THEN 'purchase' ELSE 'error' END
                   AS name
              FROM (SELECT (random() * (%(units)s - 1))::int AS u, random() AS r,
                           random() AS r2
                    FROM generate_series(1, %(count)s)) AS r) AS e
    """,
}


def grow(location: str, have: int, size: int) -> None:
    """Add events until the store holds ``size`` (exposures first)."""
    store = open_store(location)
    store.count()  # schema ready
    conn = store._conn()  # type: ignore[attr-defined]
    dialect = store.dialect
    start = time.time_ns() // 1_000_000 - 20 * 3_600_000
    params = {"start": start, "units": UNITS, "exposure": CONFIG_EXPOSURE}
    if have == 0:
        conn.execute(EXPOSURES[dialect], params)
        have = UNITS
    while have < size:  # in steps, so no single transaction holds millions of rows
        step = min(1_000_000, size - have)
        conn.execute(EVENTS[dialect], {**params, "count": step})
        have += step
    if dialect == "postgres":
        conn.execute("VACUUM ANALYZE events")  # what autovacuum would have done by then
    store.close()


RUN = """
import resource, sys, time
sys.path.insert(0, {root!r})
from flagware.results import compute_results
from flagware.spec import load_spec
spec = load_spec({spec!r})
began = time.perf_counter()
compute_results(spec, "button_color", {store!r})
print(time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def results_once(location: str, spec: Path) -> tuple[float, float]:
    script = RUN.format(root=str(ROOT), spec=str(spec), store=location)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    seconds, rss_kb = out.split()
    return float(seconds), int(rss_kb) / 1024


# -- main ---------------------------------------------------------------------------


def backends(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, str]]:
    yield "SQLite", str(tmp / "events.db")
    if args.postgres:
        yield "PostgreSQL", args.postgres
        return
    from pg_cluster import Cluster, create_database, find_bin

    bin_dir = find_bin()
    if bin_dir is None:
        print("PostgreSQL is not installed: SQLite only")
        return
    cluster = Cluster(bin_dir, durable=True)
    try:
        yield "PostgreSQL", create_database(cluster.url(), "flagware_bench")
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("write", "results"))
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--processes", default="1,4,8")
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--unit",
        default="userID,stableID",
        help="experiment unit(s): userID reads the events_by_user index, others scan",
    )
    parser.add_argument("--postgres", help="a postgresql:// URL (default: a throwaway cluster)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        specs = {}
        for unit in args.unit.split(","):
            specs[unit] = tmp / f"{unit}.toml"
            specs[unit].write_text(SPEC.replace("{unit}", unit))
        for name, location in backends(args, tmp):
            if args.what == "write":
                for n in map(int, args.processes.split(",")):
                    rate = write(location, n, args.seconds)
                    print(f"{name}: {n} process(es) stored {rate:,.0f} events/s", flush=True)
                continue
            have = 0
            for size in map(int, args.sizes.split(",")):
                began = time.perf_counter()
                grow(location, have, size)
                have = size
                built = time.perf_counter() - began
                for unit, spec in specs.items():
                    runs = [results_once(location, spec) for _ in range(args.runs)]
                    times = [t for t, _ in runs]
                    print(
                        f"{name}, unit {unit}: results over {size:,} events: median"
                        f" {statistics.median(times):.2f} s"
                        f" ({', '.join(f'{t:.2f}' for t in times)}),"
                        f" peak RSS {max(m for _, m in runs):.0f} MB (grown in {built:.0f} s)",
                        flush=True,
                    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"benchmark process peak RSS {peak} MB")


if __name__ == "__main__":
    main()
