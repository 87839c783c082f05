"""benchmarks/instructions.py runs end to end: a real gunicorn worker under callgrind.

A smoke run (a few requests, gunicorn only), so the figures the README quotes
cannot rot. It asserts that every request succeeded (the script raises
otherwise) and that the counts are those of a served request, not a speed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("FLAGWARE_ENGINE") == "core",
        reason="engine-independent: the default CI leg runs it",
    ),
    pytest.mark.skipif(
        shutil.which("valgrind") is None,
        reason="the instructions benchmark needs valgrind (apt-get install valgrind)",
    ),
]


def test_the_instructions_benchmark_counts_a_wrapped_and_a_bare_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import instructions

    figures = instructions.main(
        ["--servers", "gunicorn", "--apps", "bare,wrapped", "--requests", "20", "--warmup", "5"]
    )
    counts = figures["servers"]["gunicorn"]
    # A Flask request under gunicorn is hundreds of thousands of instructions;
    # flagware's middleware adds to it, never takes away, and adds a few percent.
    assert 200_000 < counts["bare"] < counts["wrapped"] < 1.2 * counts["bare"]
    assert "bare/wrapped" in capsys.readouterr().out
