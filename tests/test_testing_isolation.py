"""A user's test run is isolated and deterministic: run as users run it, through pytester."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from flagware import Flagware, FlagwareMiddleware, current_flags
from flagware.client import TEST_HASH_KEY
from tests.statsig_stub import StatsigStub

pytest_plugins = ["pytester"]

SPEC = """
[gates.half]
rollout = 50

[experiments.button_color]
unit = "userID"
groups = [
  { name = "Control", weight = 50, params = { color = "blue" } },
  { name = "Red",     weight = 50, params = { color = "red" } },
]
"""

# The app as a user writes it: a module-level client with every default, so
# its store is .flagware/events.db and its key .flagware/hash_key.
APP = """
from werkzeug.wrappers import Request, Response
from flagware import Flagware, FlagwareMiddleware, current_flags, log_event

fw = Flagware.from_env()

@Request.application
@log_event("visited")
def _app(request):
    flags = current_flags()
    return Response(f"{flags.gate('half')} {flags.experiment('button_color').group}")

app = FlagwareMiddleware(_app, fw)
"""

USER_TESTS = """
import json, os
from werkzeug.test import Client
from app import app, fw

IPS = [f"198.51.100.{i}" for i in range(1, 41)]

def test_flags_for_many_visitors():
    http = Client(app)
    seen = [http.get("/", environ_base={"REMOTE_ADDR": ip}).text for ip in IPS]
    with open(os.environ["FLAGWARE_TEST_OUT"], "w") as f:
        json.dump(seen, f)
    fw.flush()
    assert fw.isolated and fw.store.count() == 3 * len(IPS)
    assert ".flagware" not in str(fw.event_store_path)
"""


def visitor_values(client: Flagware, ips: list[str]) -> list[str]:
    def app(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        start_response("200 OK", [])
        body = f"{flags.gate('half')} {flags.experiment('button_color').group}"
        return [body.encode()]

    from werkzeug.test import Client

    http = Client(FlagwareMiddleware(app, client))
    return [http.get("/", environ_base={"REMOTE_ADDR": ip}).text for ip in ips]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makefile(".toml", flagware=SPEC)
    pytester.makepyfile(app=APP, test_user=USER_TESTS)
    # The app is imported before any test runs, as a conftest often does.
    pytester.makeconftest("import app  # noqa: F401\n")
    for name in ("STATSIG_SERVER_SECRET", "FLAGWARE_SPEC", "FLAGWARE_EVENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    # The app has run before: it has a store with events and its own key.
    store = pytester.path / ".flagware" / "events.db"
    with Flagware(spec=pytester.path / "flagware.toml", event_store=store) as fw:
        visitor_values(fw, ["192.0.2.1"])
    assert (pytester.path / ".flagware" / "hash_key").exists()
    return pytester


def run_user_suite(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> list[str]:
    out = project.path.parent / f"{project.path.name}-{name}.json"
    tmp = project.path.parent / f"{project.path.name}-{name}-tmp"
    tmp.mkdir()
    monkeypatch.setenv("FLAGWARE_TEST_OUT", str(out))
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the plugin's temporary stores go
    result = project.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert list(tmp.iterdir()) == []  # every temporary store removed at the end
    values: list[str] = json.loads(out.read_text())
    return values


def test_a_test_run_leaves_the_app_store_and_key_alone_and_repeats_exactly(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint(project.path / ".flagware")
    assert set(before) >= {"events.db", "hash_key"}

    first = run_user_suite(project, monkeypatch, "first")
    # A CI machine with its own key in the environment: the tests still see
    # the same values, since an isolated client hashes with the fixed test key.
    monkeypatch.setenv("FLAGWARE_HASH_KEY", "a-key-only-this-machine-has")
    second = run_user_suite(project, monkeypatch, "second")

    assert first == second
    assert len(set(first)) > 1  # really evaluated: the 50% gate splits the visitors
    ips = [f"198.51.100.{i}" for i in range(1, 41)]
    with Flagware(
        spec=project.path / "flagware.toml",
        event_store=project.path.parent / "expected.db",
        hash_key=TEST_HASH_KEY,
    ) as expected:
        assert first == visitor_values(expected, ips)
    assert fingerprint(project.path / ".flagware") == before


def test_nothing_reaches_statsig_from_a_test_run(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flagware.spec import compile_dcs, load_spec

    before = fingerprint(project.path / ".flagware")
    with StatsigStub(dcs=compile_dcs(load_spec(project.path / "flagware.toml"))) as stub:
        monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-ci")
        monkeypatch.setenv("STATSIG_API", stub.url)
        monkeypatch.delenv("FLAGWARE_HASH_KEY", raising=False)  # not needed under test
        values = run_user_suite(project, monkeypatch, "statsig")
        # Not even the specs: the secret stays on the CI runner, and unforced
        # flags are the defaults, the same on every run and machine.
        assert stub.requests == 0 and stub.events == [] and stub.spec_requests == 0
    assert set(values) == {"False None"}
    assert fingerprint(project.path / ".flagware") == before


def test_defaults_mode_from_the_ini_file_and_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", flagware=SPEC)
    pytester.makeini("[pytest]\nflagware_defaults = true\n")
    pytester.makepyfile(
        """
        from werkzeug.test import Client
        from flagware import Flagware, FlagwareMiddleware, current_flags

        def values(fw):
            def app(environ, start_response):
                flags = current_flags()
                exp = flags.experiment("button_color")
                start_response("200 OK", [])
                return [f"{flags.gate('half')} {exp.group} {exp.get('color')}".encode()]
            http = Client(FlagwareMiddleware(app, fw))
            ips = [f"198.51.100.{i}" for i in range(1, 21)]
            return {http.get("/", environ_base={"REMOTE_ADDR": ip}).text for ip in ips}

        def test_every_visitor_gets_the_defaults():
            with Flagware(spec="flagware.toml") as fw:
                assert values(fw) == {"False Control blue"}

        def test_forced_flags_still_win(flagware_overrides):
            flagware_overrides.gate("half", True)
            with Flagware(spec="flagware.toml") as fw:
                assert values(fw) == {"True Control blue"}

        def test_off_for_one_test(flagware_overrides):
            flagware_overrides.defaults(False)
            with Flagware(spec="flagware.toml") as fw:
                assert len(values(fw)) > 1
        """
    )
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_isolation_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", flagware=SPEC)
    pytester.makeini("[pytest]\nflagware_isolate = false\n")
    pytester.makepyfile(
        """
        from flagware import Flagware

        def test_real_store(tmp_path):
            with Flagware(spec="flagware.toml", event_store=tmp_path / "e.db") as fw:
                assert not fw.isolated and fw.event_store_path == tmp_path / "e.db"
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
