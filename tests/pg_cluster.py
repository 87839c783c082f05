"""A throwaway PostgreSQL cluster for the suite and the benchmarks.

``initdb`` into a temporary directory, listening only on a unix socket in that
directory (no TCP port to collide on), durability off (a test never survives a
power cut). As root, every server command runs as the ``postgres`` user, since
PostgreSQL refuses to run as root. ``FLAGWARE_TEST_POSTGRES`` (a URL of a server
whose user may create databases) is used instead when set.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SETTINGS = """
listen_addresses = ''
unix_socket_directories = '{socket_dir}'
max_connections = 200
"""
# Tests never survive a power cut: durability off makes the suite's writes cheap.
FAST = """
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def find_bin() -> Path | None:
    """The directory of PostgreSQL's server programs, if installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class Cluster:
    """A server in a temporary directory; ``url(db)`` for each database on it."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="fwpg-"))  # short: socket paths are limited
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._names = itertools.count()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(SETTINGS.format(socket_dir=self.dir) + ("" if durable else FAST))
        self.pg_ctl("start")

    def _run(self, program: str, *args: str) -> None:
        proc = subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
            **self._user,
        )
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{proc.stderr}\n{log}")

    def pg_ctl(self, action: str) -> None:
        """``start``, ``stop`` or ``restart`` (fast shutdown: sessions are cut off)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-m", "fast", action)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}"

    def stop(self) -> None:
        try:
            self.pg_ctl("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    """A fresh, empty database on the server of ``admin_url``; returns its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"
