"""flagware.testing without pytest: overrides as decorators and context managers."""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import sys
import time
import unittest
import warnings
from typing import Any

import pytest
from werkzeug.test import Client

from flagware import FlagwareMiddleware, current_flags
from flagware.overrides import overrides
from flagware.testing import (
    FlagwareOverrides,
    UnknownOverrideWarning,
    capture_events,
    isolate,
    override_config,
    override_defaults,
    override_experiment,
    override_gate,
)


def read(client: Any, ip: str = "192.0.2.1") -> str:
    def app(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        exp = flags.experiment("button_color")
        start_response("200 OK", [])
        return [f"{flags.gate('nobody')} {exp.group} {exp.get('color')}".encode()]

    return Client(FlagwareMiddleware(app, client)).get("/", environ_base={"REMOTE_ADDR": ip}).text


def test_context_managers_nest_and_restore(client: Any) -> None:
    with override_gate("nobody"):
        assert read(client).startswith("True ")
        with (
            override_gate("nobody", False),
            override_experiment("button_color", {"color": "green"}, group="Red"),
        ):
            assert read(client) == "False Red green"
        assert read(client).startswith("True ") and not read(client).endswith(" green")
    assert not overrides


def test_a_group_forced_alone_takes_the_specs_params(client: Any) -> None:
    """Forcing a group needed its params copied into the test, where they could
    drift from the spec (a new user's trial): given alone, the group's params
    are the spec's, read by the client that evaluates."""
    from flagware.testing import FlagwareOverrides

    with override_experiment("button_color", group="Red"):
        assert read(client) == "False Red red"
    forced = FlagwareOverrides()
    try:
        forced.experiment("button_color", group="Control")
        assert read(client) == "False Control blue"
        forced.experiment("button_color", {"color": "green"}, group="Red")  # params given win
        assert read(client) == "False Red green"
        forced.experiment("button_color")  # neither: outside the experiment
        assert read(client) == "False None None"
    finally:
        forced.clear()
    assert not overrides


GATE_ELSEWHERE = (
    "; outside this override the app reads it as False, and a misspelt name forces nothing"
)


def test_an_override_of_a_name_no_spec_defines_warns(client: Any) -> None:
    """A typo in an override forces nothing, and the test may pass for the wrong
    reason (a new user's trial): each way of overriding says so."""
    source = client.engine.spec.source
    with pytest.warns(UnknownOverrideWarning) as caught:
        FlagwareOverrides().gate("new_signpu")
        with override_gate("nobdy"):
            pass
        FlagwareOverrides().experiment("button_colour", {"color": "red"})
        with override_experiment("button_color", {"color": "green"}, group="Greeen"):
            pass
    overrides.clear()
    assert [str(w.message) for w in caught] == [
        f"override of gate 'new_signpu': no gate of that name in {source}"
        " (did you mean 'new_signup'?)" + GATE_ELSEWHERE,
        f"override of gate 'nobdy': no gate of that name in {source}"
        " (did you mean 'nobody'?)" + GATE_ELSEWHERE,
        f"override of experiment 'button_colour': no experiment of that name in"
        f" {source} (did you mean 'button_color'?); outside this override the app gets no"
        " group and its defaults, and a misspelt name forces nothing",
        "override of experiment 'button_color': no group 'Greeen' (its groups: Control, Red);"
        " exposures will carry a group the experiment never had",
    ]
    # Each points at the test's own line: the call, the with statement.
    assert [w.filename for w in caught] == [__file__] * 4

    @override_gate("nobdy")
    def decorated() -> None:
        pass

    with pytest.warns(UnknownOverrideWarning) as caught:
        decorated()
    site = decorated.__wrapped__.__code__.co_firstlineno  # type: ignore[attr-defined]
    assert (caught[0].filename, caught[0].lineno) == (__file__, site)
    assert not overrides


def test_an_unknown_override_points_at_the_test_under_other_overrides(client: Any) -> None:
    """A trial's class-level typo was said at flagware's own line when the test
    method had an override of its own (the wrapper's code, not the test's)."""

    @override_gate("nobdy")
    class SignupTests(unittest.TestCase):
        @override_experiment("button_color", {"color": "red"}, group="Red")
        def test_red(self) -> None:
            pass

    @override_gate("nobdy")
    @override_config("limits", {"max_tasks": 5})
    def stacked() -> None:
        pass

    with pytest.warns(UnknownOverrideWarning) as caught:
        result = unittest.TextTestRunner(stream=io.StringIO()).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(SignupTests)
        )
        stacked()
    assert result.wasSuccessful()
    # A class's override is said at its decorator, the first line of the class's source.
    class_line = inspect.getsourcelines(SignupTests)[1]
    sites = [class_line, inspect.unwrap(stacked).__code__.co_firstlineno]
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line) for line in sites]
    assert not overrides


def test_an_override_made_before_any_client_is_checked_by_the_first(spec_file: Any) -> None:
    """Django makes its client at the first request, after the test's override."""
    from flagware import Flagware
    from flagware.lifecycle import _closed_clients, _live_clients

    alive, closed = set(_live_clients), set(_closed_clients)
    _live_clients.clear()
    _closed_clients.clear()
    try:
        with override_gate("nobdy"), override_experiment("button_color", {}, group="Greeen"):
            line = sys._getframe().f_lineno - 1
            assert overrides.unchecked  # nothing to check against yet
            with pytest.warns(UnknownOverrideWarning) as caught:
                made = Flagware(spec=spec_file, event_store=spec_file.parent / "e.db", hash_key="k")
            made.close()
            _closed_clients.clear()  # gone, as no client was there before it
        assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)] * 2
        assert "'nobdy'" in str(caught[0].message) and "'Greeen'" in str(caught[1].message)
        # Undone before any client: nothing is said later.
        with override_gate("nobdy"):
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Flagware(spec=spec_file, event_store=spec_file.parent / "e.db", hash_key="k").close()
    finally:
        overrides.clear()
        _live_clients.update(alive)
        _closed_clients.update(closed)


# Starlette's own (its TestClient on httpx), not the test's concern.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_an_override_is_checked_against_a_client_a_lifespan_closed(spec_file: Any) -> None:
    """A FastAPI app's module-level client, closed by the lifespan of an
    earlier test's ``with TestClient(app)``: no client was live, so the typo
    waited for a new client that never came, and passed unsaid whenever such
    a test ran first (a new user's trial)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from flagware import Flagware
    from flagware.asgi import FlagwareMiddleware as ASGIMiddleware
    from flagware.lifecycle import _closed_clients, _live_clients

    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(current_flags().gate("new_signup")))

    alive, closed = set(_live_clients), set(_closed_clients)
    _live_clients.clear()
    _closed_clients.clear()
    fw = Flagware(spec=spec_file, event_store=spec_file.parent / "e.db", hash_key="k")
    try:
        app = Starlette(routes=[Route("/", page)])
        app.add_middleware(ASGIMiddleware, client=fw)
        with TestClient(app) as http:  # the earlier test: its lifespan closes fw
            assert http.get("/").status_code == 200
        assert fw not in _live_clients
        with (
            pytest.warns(UnknownOverrideWarning, match="did you mean 'new_signup'") as caught,
            override_gate("new_signpu"),
        ):
            pass
        assert [w.filename for w in caught] == [__file__]  # the test's own line
        assert not overrides.unchecked
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnknownOverrideWarning)  # a name it defines
            with override_gate("new_signup"), TestClient(app) as http:
                assert http.get("/").text == "True"
            # ...also while another client, on another spec, is live (a re-check
            # trial: the right name was said unknown, in the other's spec).
            other_spec = spec_file.parent / "other.toml"
            other_spec.write_text("[gates.admin_beta]\nrollout = 100\n")
            other = Flagware(spec=other_spec, event_store=spec_file.parent / "o.db", hash_key="k")
            try:
                with override_gate("new_signup"), override_gate("admin_beta"):
                    pass
            finally:
                other.close()
    finally:
        fw.close()
        overrides.clear()
        _live_clients.update(alive)
        _closed_clients.update(closed)


def test_a_closed_clients_other_groups_do_not_make_a_group_unknown(spec_file: Any) -> None:
    """A fixture's client whose spec gave the experiment other groups, closed
    since, made a group the app's live spec has "unknown" to every later test
    (a new user's trial: the last spec read won the merge)."""
    from flagware import Flagware
    from flagware.lifecycle import _closed_clients, _live_clients

    folder = spec_file.parent
    alive, closed = set(_live_clients), set(_closed_clients)
    _live_clients.clear()
    _closed_clients.clear()
    app_spec, fixture_spec = folder / "app.toml", folder / "fixture.toml"
    groups = '[experiments.button_color]\ngroups = [{ name = "Control", weight = 50 }, %s]\n'
    app_spec.write_text(groups % '{ name = "Green", weight = 50 }')
    fixture_spec.write_text(groups % '{ name = "Blue", weight = 50 }')
    app = Flagware(spec=app_spec, event_store=folder / "a.db", hash_key="k")
    try:
        fixture = Flagware(spec=fixture_spec, event_store=folder / "f.db", hash_key="k")
        fixture.close()  # still referenced, as a module's client is
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnknownOverrideWarning)
            with override_experiment("button_color", {}, group="Green"):
                pass
        with (
            pytest.warns(UnknownOverrideWarning, match=r"\(its groups: Control, Green\)"),
            override_experiment("button_color", {}, group="Blue"),  # only the closed one's
        ):
            pass
        app.close()  # now only closed clients: either spec's groups are known
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnknownOverrideWarning)
            with override_experiment("button_color", {}, group="Blue"):
                pass
        # No live client while the override is set, only closed ones: the
        # check waits for the client the test makes (Django's, at the first
        # request after a settings swap; a factory's), and it knows Green (a
        # re-check trial: said unknown from the swap's closed client).
        _live_clients.clear()
        _closed_clients.clear()
        _closed_clients.add(fixture)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnknownOverrideWarning)
            with override_experiment("button_color", {}, group="Green"):
                made = Flagware(spec=app_spec, event_store=folder / "m.db", hash_key="k")
                made.close()
    finally:
        app.close()
        overrides.clear()
        _live_clients.clear()
        _closed_clients.clear()
        _live_clients.update(alive)
        _closed_clients.update(closed)


def test_no_override_warning_while_a_client_on_statsig_lives(client: Any) -> None:
    """A client on Statsig may define any name: with one alive, nothing is said."""
    from flagware import Flagware

    with (
        Flagware(
            statsig_secret="secret-x",
            statsig_api="http://127.0.0.1:9",
            hash_key="k",
            event_store=client.event_store_path.parent / "statsig.db",
            init_timeout=0,
        ),
        override_gate("only_on_statsig"),
    ):
        pass
    with pytest.warns(UnknownOverrideWarning), override_gate("only_on_statsig"):
        pass


def test_decorators_on_functions_and_coroutines(client: Any) -> None:
    @override_gate("nobody")
    @override_config("limits", {"max_tasks": 5})
    def view() -> tuple[bool, Any]:
        return overrides.gates["nobody"], overrides.configs["limits"].params

    @override_experiment("button_color", {"color": "red"}, group="Red")
    async def async_view() -> str:
        return read(client)

    assert view() == (True, {"max_tasks": 5})
    assert asyncio.run(async_view()).endswith(" Red red")
    assert not overrides


def test_defaults_mode(client: Any) -> None:
    @override_defaults()
    def everyone() -> set[str]:
        return {read(client, f"198.51.100.{i}") for i in range(1, 21)}

    assert everyone() == {"False Control blue"}
    assert len({read(client, f"198.51.100.{i}") for i in range(1, 21)}) > 1


def test_a_decorated_unittest_class_is_overridden_from_set_up_class(client: Any) -> None:
    """As Django's override_settings: in force in setUpClass, so in Django's
    setUpTestData (entered per test from setUp it was off there: a 404 where
    override_settings held, in a new user's trial and a re-check)."""
    seen: list[Any] = []

    @override_gate("nobody")
    class WithClassSetUp(unittest.TestCase):
        @classmethod
        def setUpClass(cls) -> None:
            super().setUpClass()
            seen.append(("setUpClass", overrides.gates.get("nobody")))

        def test_one(self) -> None:
            seen.append(("test", read(client).split()[0]))

    @override_experiment("button_color", group="Red")
    class Plain(unittest.TestCase):  # no setUpClass of its own: unittest's runs
        def test_two(self) -> None:
            seen.append(("test", read(client)))

    for case in (WithClassSetUp, Plain):
        result = unittest.TextTestRunner(stream=io.StringIO()).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(case)
        )
        assert result.wasSuccessful() and result.testsRun == 1
    assert seen == [("setUpClass", True), ("test", "True"), ("test", "False Red red")]
    assert not overrides


def test_a_decorated_unittest_class(client: Any) -> None:
    """As Django's override_settings (and waffle's override_flag): on from before
    setUp, for inherited tests too (only the class's own methods were wrapped,
    and setUp ran outside: a new user's trial)."""
    seen: list[str] = []

    class Inherited(unittest.TestCase):
        def test_inherited(self) -> None:
            seen.append("inherited " + read(client).split()[0])

    @override_gate("nobody")
    class SignupTests(Inherited):
        def setUp(self) -> None:
            seen.append(f"setUp {overrides.gates.get('nobody')}")

        def test_banner(self) -> None:
            seen.append(read(client).split()[0])

        @override_experiment("button_color", {"color": "red"}, group="Red")
        def test_red(self) -> None:
            seen.append(read(client))

        def test_off_inside(self) -> None:
            with override_gate("nobody", False):
                seen.append(read(client).split()[0])

    result = unittest.TextTestRunner(stream=io.StringIO()).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(SignupTests)
    )
    assert result.wasSuccessful() and result.testsRun == 4
    assert sorted(seen) == sorted(
        ["setUp True"] * 4 + ["True", "True Red red", "False", "inherited True"]
    )
    assert not overrides


def test_capture_events(client: Any) -> None:
    with capture_events() as events, override_gate("nobody"):
        read(client)
    read(client)  # after the block: not captured
    assert events.names(exposures=True) == ["statsig::config_exposure", "statsig::gate_exposure"]
    assert events.exposures[1].metadata["ruleID"] == "override"


def test_isolate_for_other_runners(spec_file: Any, tmp_path: Any) -> None:
    from flagware import Flagware
    from flagware.client import TEST_HASH_KEY

    with isolate() as root:
        fw = Flagware(spec=spec_file, event_store=tmp_path / "app.db")
        assert fw.isolated and fw.event_store_path.is_relative_to(root)
        assert fw.hash_key == TEST_HASH_KEY.encode()
        read(fw)
        with pytest.raises(RuntimeError, match="already isolated"), isolate():
            pass
    assert fw._closed and not root.exists()
    assert not (tmp_path / "app.db").exists()
    with Flagware(spec=spec_file, event_store=tmp_path / "app.db", hash_key="k") as after:
        assert not after.isolated


def test_isolate_starts_each_unittest_test_afresh(spec_file: Any) -> None:
    """Under Django's runner an earlier test's restart left its second
    forgetting pending (the window opens SETTLE_MS later), and a later test
    logged a visitor's repeat exposure; the pytest plugin starts each test
    afresh, and isolate() now does the same for unittest's tests."""
    from flagware import Flagware
    from flagware.visitors import forget_repeats

    logged: list[int] = []
    deadline: list[float] = []

    class Tests(unittest.TestCase):
        def test_1_restart(self) -> None:
            forget_repeats(again_after=1.0)  # what a restart's reload asks
            deadline.append(time.monotonic() + 1.0)

        def test_2_repeat(self) -> None:
            with Flagware(spec=spec_file) as fw, capture_events() as events:
                fw.flags_for(user_id="u1").experiment("button_color")
                time.sleep(max(0.0, deadline[0] - time.monotonic()) + 0.05)
                fw.flags_for(user_id="u1").experiment("button_color")
                logged.append(len(events.exposures))

    with isolate():
        result = unittest.TextTestRunner(stream=io.StringIO()).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(Tests)
        )
    assert result.wasSuccessful() and logged == [1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_isolated_forked_workers_get_stores_of_their_own(spec_file: Any) -> None:
    """Django's test --parallel forks workers after isolate(): the count they
    inherited gave each the same store (a new user's trial)."""
    import multiprocessing

    from flagware import Flagware

    def worker(paths: Any) -> None:
        with Flagware(spec=spec_file) as fw:
            paths.put(str(fw.event_store_path))

    with isolate():
        fork = multiprocessing.get_context("fork")
        paths = fork.Queue()
        workers = [fork.Process(target=worker, args=(paths,)) for _ in range(2)]
        for process in workers:
            process.start()
        got = {paths.get(timeout=30) for _ in workers}
        for process in workers:
            process.join(timeout=30)
    assert len(got) == 2


def test_a_forced_value_that_is_no_bool_or_params_that_are_no_mapping_are_refused(
    client: Any,
) -> None:
    """A string is truthy: gate("promo", "false") forced the gate on, without a
    word, and params given as a list said only "dictionary update sequence
    element #0 has length 1" (a new user's trial)."""
    forced = FlagwareOverrides()
    for force in (
        lambda: forced.gate("nobody", "false"),  # type: ignore[arg-type]
        lambda: override_gate("nobody", "false"),  # type: ignore[arg-type]
        lambda: override_gate("nobody", None),  # type: ignore[arg-type]
        lambda: forced.defaults("no"),  # type: ignore[arg-type]
        lambda: override_defaults("off"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="is True or False, not "):
            force()
    with pytest.raises(TypeError, match=r"for 'button_color' are a mapping .* not list \['x'\]"):
        forced.experiment("button_color", ["x"], group="Red")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="for 'limits' are a mapping"):
        override_config("limits", "max=5")  # type: ignore[arg-type]
    assert not overrides
    forced.gate("nobody", 1)  # an int that is a bool's value is one
    try:
        assert read(client).startswith("True ")
    finally:
        forced.clear()


def test_an_override_of_the_other_kind_says_which_kind_the_name_is(client: Any) -> None:
    """experiment("new_signup") for a gate warned "no experiment of that name",
    and did not say the name is there, as a gate (a new user's trial)."""
    with (
        pytest.warns(UnknownOverrideWarning) as caught,
        override_experiment("new_signup", {"x": 1}),
        override_gate("button_color"),
    ):
        pass
    assert [str(w.message).split(";")[0] for w in caught] == [
        "override of experiment 'new_signup': no experiment of that name in"
        f" {client.engine.spec.source} ('new_signup' is a gate: force it as one)",
        "override of gate 'button_color': no gate of that name in"
        f" {client.engine.spec.source} ('button_color' is an experiment: force it as one)",
    ]


def test_a_group_forced_alone_on_statsig_without_specs_says_its_params_are_empty(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Under the isolation a client on Statsig downloads no specs, so a group
    forced without params reads empty params: documented, yet a suite moved to
    CI with the secret set failed without a word why (a new user's trial)."""
    from flagware import Flagware
    from flagware import overrides as overrides_module

    overrides_module._said_no_specs.clear()  # said once a process: maybe by another test
    with (
        Flagware(
            statsig_secret="secret-x",
            statsig_api="http://127.0.0.1:9",
            hash_key="k",
            event_store=tmp_path / "statsig.db",
            init_timeout=0,
            shutdown_timeout=0,  # nothing can be delivered there
        ) as on_statsig,
        override_experiment("button_color", group="Red"),
        caplog.at_level("WARNING", "flagware"),
    ):
        assert read(on_statsig) == "False Red None"
        assert read(on_statsig) == "False Red None"
    said = [r.getMessage() for r in caplog.records if "forced to group" in r.getMessage()]
    assert said == [
        "flagware: experiment 'button_color' forced to group 'Red' without params, on a"
        " client on Statsig that has no specs for it (the test isolation downloads none):"
        " its params are empty; pass them (experiment(name, params, group=...)) or run"
        " such tests on the local spec"
    ]
