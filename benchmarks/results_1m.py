"""How long `flagware results` takes over a million stored events (goal: at most 3 s).

    .venv/bin/python benchmarks/results_1m.py [--events 1000000] [--runs 5] [--unit userID]

Builds a store in a temporary directory with sqlite's executemany (the event
writer's own path is benchmarked elsewhere): 100,000 units exposed to a
two-group experiment (a fifth of them exposed again), and the rest of the
events spread over four catalog metrics (conversion, count, sum/mean,
guardrail) and one event no metric reads. Then times compute_results, the
whole analysis (temporary tables, aggregation, tests, verdict), and prints the
median of a few runs.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flagware.events.model import CONFIG_EXPOSURE
from flagware.events.store import connect
from flagware.results import compute_results, render_text
from flagware.spec import Spec, parse_spec

SPEC = {
    "experiments": {
        "button_color": {
            "unit": "userID",
            "groups": [{"name": "Control", "weight": 50}, {"name": "Red", "weight": 50}],
        }
    },
    "metrics": {
        "signed_up": {"event": "signup", "kind": "conversion"},
        "clicks": {"event": "click", "kind": "count"},
        "revenue": {"event": "purchase", "kind": "sum"},
        "order_value": {"event": "purchase", "kind": "mean"},
        "errors": {
            "event": "error",
            "kind": "count",
            "tags": ["guardrail"],
            "direction": "decrease",
            "fresh_within": 24,
        },
    },
}

INSERT = (
    "INSERT INTO events (time, event, user_id, stable_id, value, value_num, metadata,"
    " exposure, group_name, payload, delivery) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, '{}', NULL)"
)


def build_store(path: Path, events: int, units: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    start = now - 20 * 3_600_000
    groups = {}
    rows = []
    for i in range(units):
        group = "Control" if rng.random() < 0.5 else "Red"
        groups[i] = group
        t = start + rng.randrange(3_600_000)
        rows.append((t, CONFIG_EXPOSURE, f"u{i}", f"s{i}", None, None, "button_color", group))
        if rng.random() < 0.2:
            again = (
                t + 60_000,
                CONFIG_EXPOSURE,
                f"u{i}",
                f"s{i}",
                None,
                None,
                "button_color",
                group,
            )
            rows.append(again)
    names = ["click"] * 50 + ["pageview"] * 30 + ["signup"] * 8 + ["purchase"] * 10 + ["error"] * 2
    while len(rows) < events:
        i = rng.randrange(units)
        name = rng.choice(names)
        value = round(rng.expovariate(1 / 30), 2) if name == "purchase" else None
        t = start + rng.randrange(20 * 3_600_000)
        rows.append(
            (t, name, f"u{i}", f"s{i}", None if value is None else str(value), value, None, None)
        )
    conn = connect(path)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows)
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--unit",
        default="userID",
        help="the experiment's unit: userID reads the events_by_user index, others scan",
    )
    args = parser.parse_args()
    raw = copy.deepcopy(SPEC)
    raw["experiments"]["button_color"]["unit"] = args.unit
    spec: Spec = parse_spec(raw)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "events.db"
        began = time.perf_counter()
        build_store(store, args.events, args.units)
        print(f"built {args.events:,} events in {time.perf_counter() - began:.1f} s")
        timings = []
        for _ in range(args.runs):
            began = time.perf_counter()
            results = compute_results(spec, "button_color", store)
            timings.append(time.perf_counter() - began)
        print(render_text(results))
        print("runs: " + ", ".join(f"{t:.2f} s" for t in timings))
        median = statistics.median(timings)
        print(f"median results time over {args.events:,} events: {median:.2f} s (goal <= 3 s)")
    return 0 if median <= 3.0 else 1


if __name__ == "__main__":
    sys.exit(main())
