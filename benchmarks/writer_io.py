"""What the SQLite writer's batches cost in system calls and time, side by side.

    .venv/bin/python benchmarks/writer_io.py [--events 300000] [--batch 600] [--rounds 5]

The writer stores a batch every 0.2 s: at 1,000 seed-lab requests a second
in a process (a gate exposure, an experiment exposure and a
``visited_signup`` each), 600 events. This builds one store of ``--events``
events (``benchmarks/results_1m.py``'s data), copies it per variant, and
appends the same batches of the seed lab's traffic to each copy through
``Store.append`` in alternating rounds:

- ``ABORT``: the insert as 0.1.0 ran it (SQLite's default conflict
  resolution), which keeps a statement journal and spills it to a temporary
  file once it passes 64 KiB;
- ``OR FAIL``: the insert now, which keeps none (see ``_INSERT`` in
  ``flagware/events/store/sqlite.py``), checkpointing the WAL every 1,000
  pages, SQLite's default, as flagware did before;
- ``now``: the same, checkpointing every ``WAL_CHECKPOINT_PAGES``;
- ``8000 pages``: checkpointing less often still.

Prints medians per stored event: write system calls and bytes written (from
``/proc/self/io``, Linux), user and system CPU, and wall time; and the longest
append of the run (a checkpoint runs inside the append that passes the limit).
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_1m import build_store  # noqa: E402
from store_index import lab_traffic  # noqa: E402

from flagware.events.store import sqlite  # noqa: E402


class AbortStore(sqlite.EventStore):
    """The store with the insert as it was: default conflict resolution (ABORT)."""

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        for start in range(0, len(rows), sqlite._CHUNK):
            chunk = rows[start : start + sqlite._CHUNK]
            statement = sqlite._insert_rows(len(chunk)).replace("INSERT OR FAIL", "INSERT", 1)
            conn.execute(statement, [value for row in chunk for value in row])


def checkpointing_every(pages: int) -> type[sqlite.EventStore]:
    class Store(sqlite.EventStore):
        def _connect(self) -> Any:
            conn = super()._connect()
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            return conn

    return Store


class OrFailStore(checkpointing_every(1000)):  # type: ignore[misc]
    """OR FAIL, checkpointing as SQLite does by default."""


class DefaultCheckpointAbortStore(checkpointing_every(1000)):  # type: ignore[misc]
    """ABORT, checkpointing as SQLite does by default (0.1.0)."""

    _insert = AbortStore._insert


VARIANTS = {
    "ABORT": DefaultCheckpointAbortStore,
    "OR FAIL": OrFailStore,
    "now": sqlite.EventStore,
    "8000 pages": checkpointing_every(8000),
}


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as lines:
        return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=600, help="events per append")
    parser.add_argument("--batches", type=int, default=20, help="appends per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_store(tmp / "base.db", args.events, 100_000)
        stores = {}
        for i, (name, store_class) in enumerate(VARIANTS.items()):
            shutil.copy(tmp / "base.db", tmp / f"{i}.db")
            stores[name] = store_class(tmp / f"{i}.db")
        figures: dict[str, dict[str, list[float]]] = {name: {} for name in stores}
        longest: dict[str, float] = {}
        for _ in range(args.rounds):
            batches = [lab_traffic(rng, args.batch // 3) for _ in range(args.batches)]
            count = sum(len(batch) for batch in batches)
            for name, store in stores.items():
                io, cpu = io_counters(), resource.getrusage(resource.RUSAGE_SELF)
                began = time.perf_counter()
                for batch in batches:
                    start = time.perf_counter()
                    store.append(batch)
                    longest[name] = max(longest.get(name, 0.0), time.perf_counter() - start)
                wall = time.perf_counter() - began
                io_after, cpu_after = io_counters(), resource.getrusage(resource.RUSAGE_SELF)
                sample = {
                    "write calls": (io_after["syscw"] - io["syscw"]) / count,
                    "KiB written": (io_after["wchar"] - io["wchar"]) / count / 1024,
                    "user us": (cpu_after.ru_utime - cpu.ru_utime) / count * 1e6,
                    "system us": (cpu_after.ru_stime - cpu.ru_stime) / count * 1e6,
                    "wall us": wall / count * 1e6,
                }
                for key, value in sample.items():
                    figures[name].setdefault(key, []).append(value)
        for store in stores.values():
            store.close()
    print(f"per stored event, batches of {args.batch}, medians of {args.rounds} rounds:")
    keys = list(next(iter(figures.values())))
    print(f"{'':>10} " + " ".join(f"{key:>12}" for key in keys) + "  longest append")
    for name, figure in figures.items():
        medians = " ".join(f"{statistics.median(figure[k]):12.2f}" for k in keys)
        print(f"{name:>10} {medians}  {longest[name] * 1000:9.0f} ms")


if __name__ == "__main__":
    main()
