"""The wheel and the sdist carry everything an install needs, the demo included.

Built without network (no build isolation). CI (.ci/run) also installs the
wheel with its dependencies into a fresh virtual environment and runs
``flagware demo`` from another directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
    "flagware/py.typed",
    "flagware/diagnostics/page.html",
    "flagware/events/store/sqlite.sql",  # each store dialect's queries
    "flagware/events/store/postgres.sql",
    "flagware/demo/app.py",
    "flagware/demo/flagware.toml",
    "flagware/testing/plugin.py",
    "flagware/spec/compile.py",
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for command in (
        ["-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        ["-m", "build", "--sdist", "--no-isolation", "-o", str(out), "."],
    ):
        subprocess.run(
            [sys.executable, *command], cwd=ROOT, check=True, capture_output=True, timeout=300
        )
    return out


def test_the_wheel_ships_the_demo_data_and_entry_points(dist: Path) -> None:
    [wheel] = dist.glob("flagware-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entries = archive.read(entry_points).decode()
    assert set(SHIPPED) <= names
    assert not any(name.startswith(("tests/", "examples/")) for name in names)
    assert "flagware = flagware.cli:main" in entries
    assert "flagware = flagware.testing.plugin" in entries


def test_the_sdist_builds_the_same_package(dist: Path) -> None:
    [sdist] = dist.glob("flagware-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert set(SHIPPED) | {"pyproject.toml", "README.md"} <= names


def test_the_demo_runs_from_the_wheel_in_any_directory(dist: Path, tmp_path: Path) -> None:
    [wheel] = dist.glob("flagware-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)  # what pip puts in site-packages
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # TMPDIR: the demo keeps its store for the user to read, here in tmp_path.
    env = {**os.environ, "PYTHONPATH": str(installed), "TMPDIR": str(tmp_path)}
    where = subprocess.run(
        [sys.executable, "-c", "import flagware.demo.app as m; print(m.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(installed))  # this copy, not the checkout
    demo = subprocess.run(
        [sys.executable, "-m", "flagware.cli", "demo", "--visitors", "100"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert "Verdict" in demo.stdout
    assert list(elsewhere.iterdir()) == []  # its store is a temporary one
