"""examples/django_demo: the seed lab on Django, in-process and as its one command."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_settings import ROOT, configure, flagware_settings

configure()

from django.test import Client, override_settings  # noqa: E402

DEMO = ROOT / "examples" / "django_demo"
SPEC = DEMO / "flagware.toml"
BUTTON = re.compile(r"background: (\w+);.*data-group=\"(\w*)\"", re.S)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Any]:
    """The demo's URLs and settings.FLAGWARE (its own spec, a store in tmp_path)."""
    with override_settings(ROOT_URLCONF="examples.django_demo.demo.urls"):
        yield from flagware_settings(tmp_path, SPEC, allow_random_override=True)


def button(response: Any) -> tuple[str, str]:
    match = BUTTON.search(response.content.decode())
    assert match, response.content
    return match.group(1), match.group(2)


def test_tasks(demo: Any) -> None:
    response = Client().get("/tasks")
    body = response.json()
    assert [t["id"] for t in body["tasks"]] == [1, 2, 3]
    assert isinstance(body["new_signup"], bool)
    assert body["button_color"] in {"blue", "red"}
    assert "flagware_id" in response.cookies


def test_signup_page_shows_the_assigned_colour_and_logs_the_visit(
    demo: Any, flagware_events: Any
) -> None:
    http = Client()
    color, group = button(http.get("/signup"))
    assert (group, color) in {("Control", "blue"), ("Red", "red")}
    # The browser keeps its group.
    assert button(http.get("/signup")) == (color, group)
    assert flagware_events.names() == ["visited_signup", "visited_signup"]
    # One exposure: the browser's second visit within the minute repeats it.
    configs = flagware_events.named("statsig::config_exposure")
    assert [e.group for e in configs] == [group]


def test_signup_with_forced_flags(demo: Any, flagware_overrides: Any) -> None:
    flagware_overrides.gate("new_signup", True)
    flagware_overrides.experiment("button_color", {"color": "red"}, group="Red")
    response = Client().get("/signup")
    assert button(response) == ("red", "Red")
    assert 'id="banner"' in response.content.decode()
    flagware_overrides.gate("new_signup", False)
    flagware_overrides.experiment("button_color", {"color": "blue"}, group="Control")
    response = Client().get("/signup")
    assert button(response) == ("blue", "Control")
    assert 'id="banner"' not in response.content.decode()


def test_click_logs_signup_clicked(demo: Any, flagware_events: Any) -> None:
    http = Client()
    http.get("/signup")
    assert http.get("/signup/click").status_code == 405
    assert http.post("/signup/click").json() == {"ok": True}
    assert flagware_events.names() == ["visited_signup", "signup_clicked"]
    visit, click = flagware_events.custom
    assert visit.stable_id == click.stable_id == http.cookies["flagware_id"].value


def test_random_override_rerolls_without_a_cookie(demo: Any, flagware_events: Any) -> None:
    http = Client()
    response = http.get("/signup?random=1")
    assert "flagware_id" not in response.cookies
    http.get("/signup?random=1")
    first, second = flagware_events.named("visited_signup")
    assert first.stable_id != second.stable_id


def test_index_redirects_to_signup(demo: Any) -> None:
    assert Client().get("/")["Location"] == "/signup"


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STATSIG_"))}
    env["FLAGWARE_EVENT_STORE"] = str(tmp_path / "events.db")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_manage_py_check_passes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO / "manage.py"), "check", "--fail-level", "WARNING"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


DJANGO_TESTS = """
from django.test import SimpleTestCase


class SignupTests(SimpleTestCase):
    def test_signup(self):
        self.assertEqual(self.client.get("/signup").status_code, 200)
"""
RUNNER = """
from django.test.runner import DiscoverRunner
from flagware.testing import isolate


class FlagwareRunner(DiscoverRunner):
    def run_tests(self, *args, **kwargs):
        with isolate():
            return super().run_tests(*args, **kwargs)
"""


def _django_test(
    tmp_path: Path, *args: str, settings: str = "demo.settings", returncode: int = 0
) -> str:
    env = demo_env(tmp_path)
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(DEMO), str(ROOT)]))
    env.update(DJANGO_SETTINGS_MODULE=settings)
    # The isolation's temporary stores, to see that they are removed.
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(TMPDIR=str(tmp_path / "tmp"))
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == returncode, result.stderr
    return result.stderr


def test_django_tests_are_isolated_without_a_runner(tmp_path: Path) -> None:
    """``manage.py test`` stored the tests' events in the project's store and
    made a hash key there, with a warning at best (new users' trials): it is
    isolated now as the pytest plugin isolates, runner or not, and a test
    module that imports pytest (for its raises()) is no pytest run."""
    (tmp_path / "signup_tests.py").write_text("import pytest  # noqa: F401\n" + DJANGO_TESTS)
    (tmp_path / "flagware_runner.py").write_text(RUNNER)
    project_store = tmp_path / "events.db"  # FLAGWARE_EVENT_STORE
    for runner in ([], ["--testrunner", "flagware_runner.FlagwareRunner"]):
        said = _django_test(tmp_path, "signup_tests", *runner)
        assert "Ran 1 test" in said
        assert not project_store.exists() and not (tmp_path / "hash_key").exists(), said
        assert list((tmp_path / "tmp").iterdir()) == []  # removed at exit
    # Turned off, the tests use the project's store (and say nothing of it).
    (tmp_path / "unisolated.py").write_text(
        "from demo.settings import *\nFLAGWARE_TEST_ISOLATION = False\n"
    )
    said = _django_test(tmp_path, "signup_tests", settings="unisolated")
    assert project_store.exists() and "created a hash key" in said


SEEDED_TESTS = """
import sys

from django.test import SimpleTestCase


class SeededTests(SimpleTestCase):
    def test_first(self):
        print("first", self.client.get("/signup").cookies["flagware_id"].value, file=sys.stderr)

    def test_second(self):
        print("second", self.client.get("/signup").cookies["flagware_id"].value, file=sys.stderr)
"""


def test_django_tests_mint_the_same_stable_ids_on_every_run(tmp_path: Path) -> None:
    """The pytest plugin seeds each test's new visitors by its ID; Django's
    runner did not, and a test that forced no group got Control, Red, Red on
    three runs (a trial). Either way it is isolated, a test's visitors are
    the same on every run, and differ from another test's."""
    (tmp_path / "seeded_tests.py").write_text(SEEDED_TESTS)
    (tmp_path / "flagware_runner.py").write_text(RUNNER)

    def minted(*args: str) -> dict[str, str]:
        said = _django_test(tmp_path, *args)  # after the runner's progress dots
        return dict(re.findall(r"(first|second) ([0-9a-f]{32})", said))

    once = minted("seeded_tests")
    assert once == minted("seeded_tests") and once["first"] != once["second"]
    # A test alone gets its own visitors, and the explicit runner seeds alike.
    alone = minted("seeded_tests.SeededTests.test_second")
    assert alone["second"] == once["second"]
    runner = ["--testrunner", "flagware_runner.FlagwareRunner"]
    assert minted("seeded_tests", *runner) == once


PARALLEL_TESTS = """
import time

from django.test import SimpleTestCase


class SignupTests(SimpleTestCase):
    def test_signup(self):
        time.sleep(0.2)  # each worker takes a class before one takes them all
        self.assertEqual(self.client.get("/signup").status_code, 200)
"""
# Four classes for two workers.
PARALLEL_TESTS += "".join(f"\n\nclass Signup{n}Tests(SignupTests):\n    pass\n" for n in range(3))


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_parallel_workers_are_isolated_however_they_start(tmp_path: Path, start: str) -> None:
    """Workers started fresh (spawn: macOS, Windows; forkserver from Python
    3.14) did not inherit a runner's isolation: each isolates itself now."""
    (tmp_path / "parallel_tests.py").write_text(PARALLEL_TESTS)
    (tmp_path / "starting.py").write_text(
        "import multiprocessing\nfrom demo.settings import *\n"
        f"multiprocessing.set_start_method({start!r}, force=True)\n"
    )
    said = _django_test(tmp_path, "parallel_tests", "--parallel", "2", settings="starting")
    assert "Ran 4 tests" in said
    assert not (tmp_path / "events.db").exists() and not (tmp_path / "hash_key").exists(), said
    assert list((tmp_path / "tmp").iterdir()) == []  # each worker removed its stores


FAILING_TESTS = """
import time

from django.test import SimpleTestCase


class SlowTests(SimpleTestCase):
    def test_signup(self):
        self.assertEqual(self.client.get("/signup").status_code, 200)
        time.sleep(5)  # still in its test when the pool is terminated


class FailingTests(SimpleTestCase):
    def test_signup(self):
        self.assertEqual(self.client.get("/signup").status_code, 200)
        self.fail("the signup page")
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_parallel_workers_stopped_at_a_failure_remove_their_stores(
    tmp_path: Path, start: str
) -> None:
    """``--failfast`` terminates the pool at the first failure (SIGTERM, past
    atexit and multiprocessing's finalizers): every worker left its temporary
    stores behind. (The other worker is in a test then, not sending a result:
    a process killed while it writes to the pool's result queue holds its lock,
    and ``Pool.terminate`` then waits for ever, flagware or not.)"""
    (tmp_path / "parallel_tests.py").write_text(FAILING_TESTS)
    (tmp_path / "starting.py").write_text(
        "import multiprocessing\nfrom demo.settings import *\n"
        f"multiprocessing.set_start_method({start!r}, force=True)\n"
    )
    said = _django_test(
        tmp_path,
        "parallel_tests",
        "--parallel",
        "2",
        "--failfast",
        settings="starting",
        returncode=1,
    )
    assert "the signup page" in said
    assert list((tmp_path / "tmp").iterdir()) == []


def test_wsgi_and_asgi_entry_points_import(tmp_path: Path) -> None:
    code = "import demo.asgi, demo.wsgi; print(demo.wsgi.application, demo.asgi.application)"
    subprocess.run(
        [sys.executable, "-c", code], cwd=DEMO, env=demo_env(tmp_path), check=True, timeout=120
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_runserver_serves_the_lab_with_one_command(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, str(DEMO / "manage.py"), "runserver", f"127.0.0.1:{port}"]
    server = subprocess.Popen(
        [*command, "--noreload"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            # http.client, not urllib: no proxy from the environment gets a say.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/tasks")
                response = conn.getresponse()
                body, cookie = json.load(response), response.getheader("Set-Cookie")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            finally:
                conn.close()
        assert body["button_color"] in {"blue", "red"}
        assert cookie is not None and "flagware_id=" in cookie and "HttpOnly" in cookie
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert b"Traceback" not in output, output.decode()
