"""Loaded by every Python process started with this directory on PYTHONPATH
(compare.py --gc): appends one line per full garbage collection, "<unix time>
<milliseconds>", to the file named by BENCH_GC_LOG. Nothing else changes."""

import gc
import os
import time

_log = os.environ.get("BENCH_GC_LOG")
if _log:
    _started = [0.0]

    def _probe(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
        elif info["generation"] == 2:
            took = (time.perf_counter() - _started[0]) * 1000
            with open(_log, "a") as out:  # one short append: atomic between workers
                out.write(f"{time.time():.6f} {took:.2f}\n")

    gc.callbacks.append(_probe)
