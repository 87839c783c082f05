"""benchmarks/throughput.py runs end to end: real gunicorn and uvicorn servers, real wrk.

A smoke run (one round of one second on three of the apps per server), so the benchmark the
README quotes cannot rot; it asserts that every request succeeded and that the
figures are there, not how fast this machine is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Engine-independent: it drives both engines, so it runs in the default CI leg only.
ONE_LEG = pytest.mark.skipif(
    os.environ.get("FLAGWARE_ENGINE") == "core",
    reason="it runs both engines itself (default leg only)",
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    ONE_LEG,
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="the throughput benchmark needs wrk (apt-get install wrk)",
    ),
]


def test_the_throughput_benchmark_serves_every_app_without_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("statsig_python_core")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import throughput

    apps = "hand,corehand,core"
    figures = throughput.main(["--rounds", "1", "--seconds", "1", "--apps", apps, "--json"])
    assert set(figures["servers"]) == {"gunicorn", "uvicorn"}
    for server in figures["servers"].values():
        for kind in apps.split(","):
            for profile in ("new", "returning"):
                row = server["apps"][kind][profile]
                assert row["errors"] == 0 and row["rps"] > 0
                assert 0 < row["p50_ms"] <= row["p99_ms"]
                # The workers' CPU was found in /proc and is plausible per request.
                assert 10 < row["cpu_us"] < 100_000
        assert server["ratios"]["new"]["core/hand (goal >= 1.2)"] > 0
        assert server["ratios"]["new"]["by hand, Core/legacy"] > 0
        # Each ratio's spread over the rounds, and the same ratio by CPU per request.
        for profile in ("new", "returning"):
            spread = server["spread"][profile]["core/hand (goal >= 1.2)"]
            assert 0 < spread["min"] <= spread["max"] and spread["cpu"] > 0
            assert spread["min"] <= server["ratios"][profile]["core/hand (goal >= 1.2)"]
            assert server["spread"][profile]["wrapped/bare (goal >= 0.97)"] is None  # not run
    assert figures["settings"]["workers"] == 2


def test_compare_runs_one_app_from_two_checkouts(monkeypatch: pytest.MonkeyPatch) -> None:
    # This checkout against itself: both sides serve, and each round gives a ratio.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compare

    argv = ["--baseline", str(ROOT), "--app", "legacy", "--rounds", "2", "--seconds", "1", "--gc"]
    figures = compare.main(argv)
    assert figures["errors"] == 0
    assert all(figures["full_collections"][side] >= 0 for side in ("baseline", "this"))
    assert len(figures["ratios"]) == 2 and all(r > 0 for r in figures["ratios"])
    for side in ("baseline", "this"):
        assert 10 < figures["cpu_us"][side] < 100_000 and figures["rps"][side] > 0


def test_the_gc_probe_logs_each_full_collection(tmp_path: Path) -> None:
    # What compare.py --gc counts: loaded as sitecustomize, one line per full collection.
    log = tmp_path / "gc.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "benchmarks" / "gc_probe"),
        "BENCH_GC_LOG": str(log),
    }
    code = (
        "import gc, os\n"
        "def lines():\n"
        "    path = os.environ['BENCH_GC_LOG']\n"
        "    return len(open(path).read().splitlines()) if os.path.exists(path) else 0\n"
        "start = lines(); gc.collect(0); gc.collect(1); young = lines()\n"
        "gc.collect(); gc.collect(2)\n"
        "print(young - start, lines() - young)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert done.stdout.split() == [b"0", b"2"]  # the two full collections, not the younger ones
    lines = log.read_text().splitlines()
    assert all(float(ms) >= 0 and float(at) > 0 for at, ms in (line.split() for line in lines))
