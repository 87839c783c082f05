"""Suite-wide fixtures. The first one makes the whole suite provably offline."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
refused: list[str] = []


def _is_loopback_host(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or host == "":
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check_address(family: int, address: Any) -> None:
    if family == getattr(socket, "AF_UNIX", object()):
        return
    host = address[0] if isinstance(address, tuple) else address
    if not _is_loopback_host(host):
        refused.append(f"connect {address!r}")
        raise ConnectionRefusedError(f"tests may not reach {address!r}: loopback only")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self.family, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self.family, address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not _is_loopback_host(host):
        refused.append(f"lookup {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"tests may not look up {host!r}: loopback only")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def no_internet() -> Iterator[list[str]]:
    """Refuse every non-loopback connection and DNS look-up for the whole suite."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo
    try:
        yield refused
    finally:
        socket.socket.connect = _real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = _real_getaddrinfo


# The suite talks to loopback only: a developer's (or a CI runner's) proxy
# variables would send the stub's traffic to the proxy, from flagware's clients and
# from the statsig SDK's requests alike. tests/test_proxy.py sets its own.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
for _name in PROXY_VARIABLES:
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)


# -- flagware fixtures ----------------------------------------------------------

SPEC = """
[gates.new_signup]
rollout = 50

[gates.everyone]
rollout = 100

[gates.nobody]
rollout = 0

[experiments.button_color]
unit = "stableID"
allocation = 100
groups = [
  { name = "Control", weight = 50, params = { color = "blue" } },
  { name = "Red",     weight = 50, params = { color = "red" } },
]
"""


@pytest.fixture
def spec_file(tmp_path: Any) -> Any:
    path = tmp_path / "flagware.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def make_client(tmp_path: Any, spec_file: Any) -> Iterator[Any]:
    """Factory for local-engine clients on a fresh store; all closed after the test."""
    from flagware import Flagware

    made: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("spec", spec_file)
        options.setdefault("event_store", tmp_path / "events.db")
        options.setdefault("hash_key", "test-key")
        client = Flagware(**options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Any) -> Any:
    return make_client()


@pytest.fixture
def user() -> Iterator[Any]:
    """A Django user, "ada", in the auth tables for the test (Django's tests)."""
    from django.contrib.auth import get_user_model
    from django_settings import PASSWORD, migrate

    migrate()
    user = get_user_model().objects.create_user(username="ada", password=PASSWORD)  # type: ignore[attr-defined]
    yield user
    user.delete()


# -- PostgreSQL -------------------------------------------------------------------


class Postgres:
    """The suite's PostgreSQL server: fresh databases on demand, and restarts."""

    def __init__(self, admin_url: str, cluster: Any | None) -> None:
        self.admin_url = admin_url
        self.cluster = cluster  # None for an external server (FLAGWARE_TEST_POSTGRES)
        self._n = 0

    def database(self) -> str:
        from pg_cluster import create_database

        self._n += 1
        return create_database(self.admin_url, f"flagware_test_{os.getpid()}_{self._n}")

    def restart(self) -> None:
        if self.cluster is None:
            pytest.skip("restarting needs the suite's own cluster, not FLAGWARE_TEST_POSTGRES")
        self.cluster.pg_ctl("restart")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole run: the suite's own throwaway cluster."""
    external = os.environ.get("FLAGWARE_TEST_POSTGRES")
    if external:
        yield Postgres(external, None)
        return
    from pg_cluster import Cluster, find_bin

    bin_dir = find_bin()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bin_dir = None
    if bin_dir is None:
        reason = "PostgreSQL (initdb) or psycopg is not installed; .ci/run installs them"
        if os.environ.get("FLAGWARE_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = Cluster(bin_dir)
    try:
        yield Postgres(cluster.url(), cluster)
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    from pg_cluster import drop_database

    url = postgres.database()
    yield url
    drop_database(postgres.admin_url, url.partition("?")[0].rpartition("/")[2])


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Where a test's store lives, once per backend: a SQLite path, a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
