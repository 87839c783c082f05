"""What the store's secondary indexes cost the writer, per event, side by side.

    .venv/bin/python benchmarks/store_index.py [--events 1000000] [--batch 15] [--rounds 5]

Builds one SQLite store of ``--events`` events (``benchmarks/results_1m.py``'s
data), copies it once per index layout, and appends the seed lab's traffic to
each copy through ``Store.append`` (the writer's path: JSON encoding and the
insert) in alternating rounds: per request a gate exposure, an experiment
exposure and a ``visited_signup`` event, for 100,000 random visitors. Prints
the median CPU and wall time per event of each layout:

- ``0.1.0``: the plain index on the event name;
- ``now``: ``events_by_user`` (name, userID, time, value; exposures left out)
  and the small index of non-numeric values;
- ``+ stableID``: the same again keyed by stableID, what indexing a second
  unit type would cost (not built by flagware).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_1m import build_store  # noqa: E402

from flagware.events.model import CONFIG_EXPOSURE, GATE_EXPOSURE, Event  # noqa: E402
from flagware.events.store import open_store  # noqa: E402

LAYOUTS = {
    "0.1.0": [
        "DROP INDEX events_by_user",
        "DROP INDEX events_non_numeric",
        "CREATE INDEX events_by_name ON events (event)",
    ],
    "now": [],
    "+ stableID": [
        "CREATE INDEX events_by_stable ON events (event, stable_id, time, value_num, exposure)"
        " WHERE exposure IS NULL"
    ],
}


def lab_traffic(rng: random.Random, requests: int) -> list[Event]:
    events = []
    for _ in range(requests):
        u = rng.randrange(100_000)
        user = {"userID": f"u{u}", "customIDs": {"stableID": f"s{u}"}}
        events.append(
            Event(
                GATE_EXPOSURE,
                user,
                metadata={"gate": "new_signup", "gateValue": "true", "ruleID": "rollout"},
                exposure="new_signup",
            )
        )
        events.append(
            Event(
                CONFIG_EXPOSURE,
                user,
                metadata={"config": "button_color", "ruleID": "layer"},
                exposure="button_color",
                group=rng.choice(["Control", "Red"]),
            )
        )
        events.append(Event("visited_signup", user))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=15, help="events per append (5 requests)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    batches = [lab_traffic(rng, args.batch // 3) for _ in range(200)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_store(tmp / "base.db", args.events, 100_000)
        stores = {}
        for i, (name, statements) in enumerate(LAYOUTS.items()):
            path = tmp / f"{i}.db"
            shutil.copy(tmp / "base.db", path)
            conn = sqlite3.connect(path)
            for statement in statements:
                conn.execute(statement)
            conn.commit()
            conn.close()
            stores[name] = open_store(path)
            stores[name].append(batches[0])
        cpu: dict[str, list[float]] = {name: [] for name in stores}
        wall: dict[str, list[float]] = {name: [] for name in stores}
        count = sum(len(b) for b in batches)
        for _ in range(args.rounds):
            for name, store in stores.items():
                began, began_cpu = time.perf_counter(), time.process_time()
                for batch in batches:
                    store.append(batch)
                cpu[name].append((time.process_time() - began_cpu) / count * 1e6)
                wall[name].append((time.perf_counter() - began) / count * 1e6)
        base = statistics.median(cpu["0.1.0"])
        for name in stores:
            median = statistics.median(cpu[name])
            print(
                f"{name:>11}: {median:5.1f} us CPU, {statistics.median(wall[name]):5.1f} us wall"
                f" per event ({median / base:.2f}x 0.1.0's CPU)"
            )
            stores[name].close()


if __name__ == "__main__":
    main()
