"""The pytest plugin (flagware.testing), run as users run it: through pytester."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from flagware import FlagwareMiddleware, current_flags
from flagware.overrides import overrides

pytest_plugins = ["pytester"]

# A user's project: a tiny WSGI app behind flagware, and tests that force flags.
USER_CONFTEST = '''
import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from flagware import Flagware, FlagwareMiddleware, current_flags, log_event

SPEC = """
[gates.new_signup]
rollout = 0

[experiments.button_color]
unit = "stableID"
allocation = 100
groups = [{ name = "Control", weight = 100, params = { color = "blue" } }]
"""


def make_app(client):
    @Request.application
    @log_event("visited_signup", value=1, metadata={"page": "signup"})
    def app(request):
        flags = current_flags()
        exp = flags.experiment("button_color")
        banner = "banner" if flags.gate("new_signup") else "plain"
        return Response(f"{banner} {exp.get('color')} {exp.group}")

    return FlagwareMiddleware(app, client)


@pytest.fixture
def fw(tmp_path):
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    with Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key="k") as client:
        yield client


@pytest.fixture
def http(fw):
    return Client(make_app(fw))
'''


def run(pytester: pytest.Pytester, source: str, passed: int) -> None:
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(source)
    # No pytest_plugins line anywhere: the pytest11 entry point loads the plugin.
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=passed)


def test_overrides_force_gates_and_experiments(pytester: pytest.Pytester) -> None:
    run(
        pytester,
        """
        def test_forced(http, flagware_overrides, flagware_events):
            flagware_overrides.gate("new_signup", True)
            flagware_overrides.experiment("button_color", {"color": "red"}, group="Control")
            assert http.get("/signup").text == "banner red Control"
            assert flagware_events.names() == ["visited_signup"]
            [event] = flagware_events.custom
            assert event.value == 1 and event.metadata == {"page": "signup"}
            assert len(event.stable_id) == 32 and event.user_id

        def test_gate_forced_off(http, flagware_overrides):
            flagware_overrides.gate("new_signup", False)
            assert http.get("/").text.startswith("plain ")

        def test_undone_after_the_test(http, flagware_events):
            assert http.get("/signup").text == "plain blue Control"
            assert flagware_events.names(exposures=True) == [
                "statsig::config_exposure", "statsig::gate_exposure", "visited_signup",
            ]
        """,
        passed=3,
    )


def test_overrides_apply_to_every_client(pytester: pytest.Pytester) -> None:
    run(
        pytester,
        """
        from conftest import SPEC, make_app
        from flagware import Flagware
        from werkzeug.test import Client

        def test_two_clients(tmp_path, fw, flagware_overrides, flagware_events):
            (tmp_path / "b").mkdir()
            (tmp_path / "b" / "spec.toml").write_text(SPEC)
            with Flagware(spec=tmp_path / "b" / "spec.toml", event_store=tmp_path / "b" / "e.db",
                          hash_key="other") as other:
                flagware_overrides.gate("new_signup", True)
                for client in (fw, other):
                    assert Client(make_app(client)).get("/").text.startswith("banner ")
            assert flagware_events.names() == ["visited_signup", "visited_signup"]
        """,
        passed=1,
    )


def test_config_overrides_and_clear(pytester: pytest.Pytester) -> None:
    run(
        pytester,
        """
        from flagware import current_flags
        from werkzeug.test import Client
        from werkzeug.wrappers import Request, Response
        from flagware import FlagwareMiddleware

        def test_config(fw, flagware_overrides):
            flagware_overrides.config("limits", {"max_tasks": 5})

            @Request.application
            def app(request):
                config = current_flags().config("limits")
                return Response(f"{config.get('max_tasks')} {config.group}")

            http = Client(FlagwareMiddleware(app, fw))
            assert http.get("/").text == "5 None"
            flagware_overrides.clear()
            assert http.get("/").text == "None None"  # not in the spec: defaults
        """,
        passed=1,
    )


def test_fixtures_need_no_client_spec_or_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from flagware.overrides import overrides

        def test_alone(flagware_overrides, flagware_events):
            flagware_overrides.gate("x", True)
            flagware_overrides.experiment("e", {"k": 1})
            assert overrides.gates == {"x": True}
            assert overrides.configs["e"].params == {"k": 1}
            assert overrides.configs["e"].group is None
            assert flagware_events == []

        def test_then_clean():
            assert not overrides
        """
    )
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert not list(pytester.path.glob("**/*.db"))


def test_overrides_set_outside_the_fixture_survive_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from flagware.overrides import overrides

        @pytest.fixture(autouse=True, scope="session")
        def project_wide():
            overrides.gates["kill_switch"] = False
            yield
            overrides.clear()
        """
    )
    pytester.makepyfile(
        """
        from flagware.overrides import overrides

        def test_a(flagware_overrides):
            flagware_overrides.gate("new_signup", True)
            flagware_overrides.gate("kill_switch", True)

        def test_b():
            assert overrides.gates == {"kill_switch": False}
        """
    )
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    for line in ("plugins: *flagware-*", "*from flagware.testing*"):
        result.stdout.fnmatch_lines([line])
    for fixture in ("flagware_overrides", "flagware_events"):
        result.stdout.fnmatch_lines(["*from flagware.testing*", f"{fixture} -- *"])


def test_events_are_captured_in_this_suite_too(client: Any, flagware_events: Any) -> None:
    @Request.application
    def app(request: Request) -> Response:
        flags = current_flags()
        flags.gate("everyone")
        flags.log_event("clicked", value="pro", metadata={"plan": "pro"})
        return Response("ok")

    Client(FlagwareMiddleware(app, client)).get("/")
    assert flagware_events.names(exposures=True) == ["statsig::gate_exposure", "clicked"]
    [clicked] = flagware_events.named("clicked")
    assert (clicked.value, clicked.metadata) == ("pro", {"plan": "pro"})
    assert [e.metadata["gate"] for e in flagware_events.exposures] == ["everyone"]


def test_overridden_values_still_log_their_exposure(
    client: Any, flagware_overrides: Any, flagware_events: Any
) -> None:
    # As Statsig's override_gate/override_config: the evaluation is replaced,
    # the exposure is still logged, with ruleID "override".
    flagware_overrides.gate("nobody", True)
    flagware_overrides.experiment("button_color", {"color": "green"}, group="Red")

    @Request.application
    def app(request: Request) -> Response:
        flags = current_flags()
        return Response(f"{flags.gate('nobody')} {flags.experiment('button_color').group}")

    assert Client(FlagwareMiddleware(app, client)).get("/").text == "True Red"
    gate, config = flagware_events.exposures
    assert gate.metadata == {"gate": "nobody", "gateValue": "true", "ruleID": "override"}
    assert config.metadata["ruleID"] == "override" and config.group == "Red"
    assert gate.stable_id == config.stable_id is not None


def test_no_override_leaks_out_of_this_module() -> None:
    assert not overrides


def test_each_request_gets_its_own_copy_of_an_overridden_config(
    client: Any, flagware_overrides: Any
) -> None:
    from werkzeug.test import Client

    from flagware import FlagwareMiddleware, current_flags

    flagware_overrides.experiment("button_color", {"color": "red"}, group="Red")

    def app(environ: Any, start_response: Any) -> Any:
        exp = current_flags().experiment("button_color")
        body = f"{exp.group} {exp.params['color']}"
        exp.params["color"] = "mutated by the view"
        start_response("200 OK", [])
        return [body.encode()]

    http = Client(FlagwareMiddleware(app, client))
    assert [http.get("/").text for _ in range(2)] == ["Red red", "Red red"]


def test_new_visitors_get_the_same_stable_ids_on_every_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stableIDs were random, so an unforced stableID experiment gave a test
    Control on one run and Red on the next (a new user's trial: 6 runs, both
    groups). Under the plugin they come from the test's ID."""
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(
        """
        import os

        from conftest import make_app
        from werkzeug.test import Client

        def visitors(fw):
            http = Client(make_app(fw), use_cookies=False)  # three new browsers
            return [http.get("/").headers["Set-Cookie"].split(";")[0] for _ in range(3)]

        def test_one(fw):
            with open(os.environ["IDS"], "a") as out:
                out.write("one " + " ".join(visitors(fw)) + "\\n")

        def test_two(fw):
            with open(os.environ["IDS"], "a") as out:
                out.write("two " + " ".join(visitors(fw)) + "\\n")
        """
    )
    runs = []
    for run in range(2):
        ids = pytester.path / f"ids-{run}.txt"
        monkeypatch.setenv("IDS", str(ids))
        pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
        runs.append(sorted(ids.read_text().splitlines()))
    assert runs[0] == runs[1]
    one, two = (set(line.split()[1:]) for line in runs[0])
    assert len(one) == 3 and len(two) == 3 and not one & two  # distinct visitors


def test_an_override_waits_for_the_client_the_test_makes(pytester: pytest.Pytester) -> None:
    """A closed client whose spec gave the experiment other groups (a settings
    swap's) made a right group "unknown" when the app's client came later in
    the test (a re-check trial); with no client made at all, the closed ones
    are what the override is checked against, as the test ends."""
    pytester.makepyfile(
        """
        import pytest
        from flagware import Flagware

        def spec(tmp_path, name, groups):
            path = tmp_path / name
            path.write_text(
                "[experiments.button_color]\\ngroups = ["
                + ", ".join(f'{{ name = "{g}", weight = 50 }}' for g in groups) + "]\\n"
            )
            return path

        @pytest.fixture
        def swapped(tmp_path):
            client = Flagware(spec=spec(tmp_path, "old.toml", ["Control", "Blue"]), hash_key="k")
            client.close()
            return client

        def test_the_app_made_later_knows_the_group(tmp_path, swapped, flagware_overrides):
            flagware_overrides.experiment("button_color", group="Green")
            app = Flagware(spec=spec(tmp_path, "app.toml", ["Control", "Green"]), hash_key="k")
            assert app.flags_for(user_id="u").experiment("button_color").group == "Green"
            app.close()

        def test_no_client_made_checks_the_closed_ones(swapped, flagware_overrides):
            flagware_overrides.experiment("button_color", group="Greeen")
        """
    )
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the second errs in its teardown
    result.stdout.fnmatch_lines(["*UnknownOverrideWarning*no group 'Greeen'*"])
