"""Force flags and capture events in tests: pytest fixtures, decorators, context managers.

With pytest (the ``pytest11`` plugin in :mod:`flagware.testing.plugin`, loaded
automatically), every test run is isolated and deterministic without any
setup: each client stores its events in a temporary file, delivers nothing to
Statsig and hashes with a fixed key. Two fixtures force flags and capture
events::

    def test_red_button(client, flagware_overrides, flagware_events):
        flagware_overrides.experiment("button_color", {"color": "red"}, group="Red")
        flagware_overrides.gate("new_signup", True)

        response = client.get("/signup")

        assert b"background: red" in response.data
        assert flagware_events.names() == ["visited_signup"]

Without pytest (``unittest``, Django's ``TestCase``), the same overrides are
decorators and context managers::

    from flagware.testing import override_experiment, override_gate

    @override_gate("new_signup", True)
    class SignupTests(TestCase):
        @override_experiment("button_color", {"color": "red"}, group="Red")
        def test_red_button(self): ...

        def test_banner_off(self):
            with override_gate("new_signup", False):
                ...

Overrides apply to every flagware client in the process. As Statsig's own
``override_gate``/``override_config``, they replace the evaluation only:
reading an overridden flag is still an exposure, logged with ``ruleID``
"override", so a test can assert that a view exposed its user.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import shutil
import sys
import tempfile
import threading
import unittest
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from flagware import identity
from flagware.events.store.postgres import forget_failures
from flagware.flags import listeners
from flagware.overrides import OVERRIDE_RULE, Config, SpecGroup, overrides
from flagware.testing.known import UnknownOverrideWarning, _check_known
from flagware.visitors import forget_repeats, start_afresh

if TYPE_CHECKING:
    from flagware.events.model import Event

__all__ = [
    "OVERRIDE_RULE",
    "CapturedEvents",
    "FlagwareOverrides",
    "UnknownOverrideWarning",
    "capture_events",
    "isolate",
    "override_config",
    "override_defaults",
    "override_experiment",
    "override_gate",
]

_T = TypeVar("_T")
_MISSING: Any = object()


class FlagwareOverrides:
    """Forced values for gates, experiments and dynamic configs (the pytest fixture)."""

    def gate(self, name: str, value: bool = True) -> None:
        """Every request passes gate ``name`` (or fails it, with ``False``)."""
        _check_known("gate", name)
        overrides.gates[name] = _flag("gate", name, value)

    def experiment(
        self, name: str, params: Mapping[str, Any] | None = None, group: str | None = None
    ) -> None:
        """Every request is in ``group`` of experiment ``name`` with these params
        (without ``params``, the group's params in the spec the app reads)."""
        _check_known("experiment", name, group)
        overrides.configs[name] = _forced_experiment(name, params, group)

    def config(self, name: str, value: Mapping[str, Any]) -> None:
        """Dynamic config ``name`` has this value for every request."""
        overrides.configs[name] = _config(name, value)

    def defaults(self, on: bool = True) -> None:
        """Every gate not forced is False; every experiment not forced is its control.

        The control group's name and params come from the local spec; an
        experiment it does not define (or any, with the Statsig engine) has
        empty params and group None. Nothing is evaluated, so nothing depends
        on hashing.
        """
        overrides.defaults = _flag("defaults", "on", on)

    def clear(self) -> None:
        """Drop every override set so far in this test (defaults mode included)."""
        overrides.clear()


class CapturedEvents(list["Event"]):
    """The events logged during a test, oldest first (a plain list, plus helpers)."""

    def names(self, *, exposures: bool = False) -> list[str]:
        """Event names in order; exposures (``statsig::...``) only when asked."""
        return [e.name for e in self if exposures or not _is_exposure(e)]

    def named(self, name: str) -> list[Event]:
        return [e for e in self if e.name == name]

    @property
    def custom(self) -> list[Event]:
        return [e for e in self if not _is_exposure(e)]

    @property
    def exposures(self) -> list[Event]:
        return [e for e in self if _is_exposure(e)]


def _is_exposure(event: Event) -> bool:
    return event.name.startswith("statsig::")


class capture_events:  # lower case: used like a function, as contextlib's helpers
    """``with capture_events() as events:`` every event any client logs inside the block."""

    def __init__(self) -> None:
        self.events = CapturedEvents()

    def __enter__(self) -> CapturedEvents:
        # Exposures the block causes are captured even where the same visitor
        # was exposed just before it (by another test): see visitors.Repeats.
        forget_repeats()
        listeners.append(self.events.append)
        return self.events

    def __exit__(self, *exc_info: object) -> None:
        # remove() compares bound methods by equality: exactly this list's append
        listeners.remove(self.events.append)


class isolate:  # lower case: used like a function, as contextlib's helpers
    """What the pytest plugin does for a test run, for any other runner.

    Inside the block every new client stores its events in a fresh temporary
    file, delivers nothing to Statsig and hashes with a fixed key (unless given
    ``hash_key=``); on exit, the clients still open are closed and their files
    removed. For Django's runner::

        class FlagwareRunner(DiscoverRunner):
            def run_tests(self, *args, **kwargs):
                with isolate():
                    return super().run_tests(*args, **kwargs)
    """

    def __init__(self, *, seed_tests: bool = True) -> None:
        self.root: Path | None = None
        self._pid = -1  # the process that entered
        self.seed_tests = seed_tests  # False: the pytest plugin seeds by node ID itself
        self._run: Any = None  # unittest's TestCase.run, while it is wrapped
        self.label = "session"  # the plugin names a folder per test
        self.prefix = "flagware-tests-"  # Django's --parallel workers: their parent's
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self) -> Path:
        """A new client's store path (``flagware.client.isolated_store``).

        A forked worker (Django's ``test --parallel``) names its own: the
        count it inherited gave two workers the same store."""
        assert self.root is not None  # only installed between enter and exit
        pid = os.getpid()
        forked = "" if pid == self._pid else f"-{pid}"
        with self._lock:
            return self.root / f"{self.label}{forked}-{next(self._count)}" / "events.db"

    def __enter__(self) -> Path:
        from flagware import client

        if client.isolated_store is not None:
            raise RuntimeError("flagware clients are already isolated")
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._pid = os.getpid()
        client.isolated_store = self
        if self.seed_tests:
            self._seed_each_test()
        return self.root

    def _seed_each_test(self) -> None:
        """Each unittest test's new visitors get the same stableIDs, so the same
        groups, on every run and machine, seeded by the test's ID as the
        pytest plugin seeds by node ID: under Django's runner a test that
        forced no group got Control, Red, Red on three runs (a trial). Every
        runner calls ``TestCase.run`` (Django's ``--parallel`` workers too).
        Django's isolation is entered by the first test that makes a client,
        inside its ``run``: that test is found on the stack, and seeded alike."""
        run = unittest.TestCase.run
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code is not run.__code__:
            frame = frame.f_back
        running = None if frame is None else frame.f_locals.get("self")

        def seeded(test: unittest.TestCase, result: Any = None) -> Any:
            identity.seed_ids(test.id())
            # As the pytest plugin: every visitor exposed anew, and an earlier
            # test's restart leaves no forgetting pending to log this one's repeats.
            start_afresh()
            forget_failures()
            return run(test, result)

        self._run = run
        unittest.TestCase.run = seeded  # type: ignore[assignment,method-assign]
        identity.seed_ids(running.id() if isinstance(running, unittest.TestCase) else "session")

    def __exit__(self, *exc_info: object) -> None:
        from flagware import client, lifecycle

        if client.isolated_store is self:
            client.isolated_store = None
        if self._run is not None:
            unittest.TestCase.run = self._run  # type: ignore[method-assign]
            self._run = None
            identity.seed_ids(None)
        # Close what is still open before removing its stores, or exit would
        # write to them again.
        for live in list(lifecycle._live_clients):
            if live.isolated:
                live.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


class _Override:
    """A context manager that is also a decorator for functions, coroutines and classes.

    Every entry saves what it replaces and every exit restores it, so the same
    object can decorate several tests and overrides nest.
    """

    def __init__(self) -> None:
        self._saved: list[Any] = []
        self._waiting: list[list[Callable[..., None]]] = []  # each entry's deferred checks
        self._site: tuple[str, int] | None = None  # the decorated test, while it enters

    def _apply(self) -> Any:
        raise NotImplementedError

    def _restore(self, saved: Any) -> None:
        raise NotImplementedError

    def __enter__(self) -> None:
        before = len(overrides.unchecked)
        try:
            self._saved.append(self._apply())
        finally:
            self._site = None
        self._waiting.append(overrides.unchecked[before:])

    def __exit__(self, *exc_info: object) -> None:
        try:
            overrides.finish_unchecked(self._waiting.pop())  # no client came: the closed ones
        finally:
            self._restore(self._saved.pop())

    def __call__(self, target: _T) -> _T:
        if isinstance(target, type):
            if issubclass(target, unittest.TestCase):
                return self._decorate_test_case(target)  # type: ignore[return-value]
            # Other classes (pytest's): every test method, inherited ones too.
            for name in dir(target):
                attribute = getattr(target, name)
                if name.startswith("test") and callable(attribute):
                    setattr(target, name, self(attribute))
            return target
        function: Callable[..., Any] = target  # type: ignore[assignment]
        code = getattr(inspect.unwrap(function), "__code__", None)  # under other decorators
        site = None if code is None else (code.co_filename, code.co_firstlineno)
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                self._site = site
                with self:
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            self._site = site
            with self:
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]

    def _decorate_test_case(self, cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
        """As Django's override_settings does: on from ``setUpClass`` (so in
        Django's ``setUpTestData`` too) to a class cleanup after
        ``tearDownClass``, for every test the class runs, inherited ones too.
        Entered per test from ``setUp``, it was off in ``setUpTestData`` (a
        new user's trial, and a re-check's: 404 where override_settings held)."""
        override, set_up_class = self, cls.__dict__.get("setUpClass")
        try:  # a warning points at the class, the code that names the override
            site: tuple[str, int] | None = (
                inspect.getsourcefile(cls) or "",
                inspect.getsourcelines(cls)[1],
            )
        except (OSError, TypeError):  # no source (a class made in a REPL)
            site = None

        def setUpClass(klass: type[unittest.TestCase]) -> None:
            override._site = site
            override.__enter__()
            klass.addClassCleanup(override.__exit__, None, None, None)
            if set_up_class is not None:
                set_up_class.__func__(klass)
            else:
                super(cls, klass).setUpClass()  # type: ignore[misc]

        cls.setUpClass = classmethod(setUpClass)  # type: ignore[assignment]
        return cls


class _OverrideConfig(_Override):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def _apply(self) -> Any:
        saved = overrides.configs.get(self.config.name, _MISSING)
        overrides.configs[self.config.name] = self.config
        return saved

    def _restore(self, saved: Any) -> None:
        if saved is _MISSING:
            overrides.configs.pop(self.config.name, None)
        else:
            overrides.configs[self.config.name] = saved


class override_gate(_Override):  # lower case, like Django's override_settings
    """Gate ``name`` is ``value`` for every request, inside the block or decorated test."""

    def __init__(self, name: str, value: bool = True) -> None:
        super().__init__()
        self.name = name
        self.value = _flag("gate", name, value)

    def _apply(self) -> Any:
        _check_known("gate", self.name, site=self._site)
        saved = overrides.gates.get(self.name, _MISSING)
        overrides.gates[self.name] = self.value
        return saved

    def _restore(self, saved: Any) -> None:
        if saved is _MISSING:
            overrides.gates.pop(self.name, None)
        else:
            overrides.gates[self.name] = saved


def _forced_experiment(name: str, params: Mapping[str, Any] | None, group: str | None) -> Config:
    if params is None and group is not None:
        return SpecGroup(name, {}, group=group, rule_id=OVERRIDE_RULE)
    return _config(name, params or {}, group)


def _config(name: str, params: Mapping[str, Any], group: str | None = None) -> Config:
    """A forced config or experiment, refusing params that are no mapping
    (``dict(["x"])`` said only "dictionary update sequence element #0...")."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"the params forced for {name!r} are a mapping of parameter names to"
            f" values, such as {{'color': 'red'}}, not {type(params).__name__} {params!r}"
        )
    return Config(name, dict(params), group=group, rule_id=OVERRIDE_RULE)


def _flag(kind: str, name: str, value: Any) -> bool:
    """A forced gate's value, or defaults' ``on``: True or False only. A string
    such as "false" is truthy, and forced the gate on without a word."""
    if not isinstance(value, bool | int) or value not in (0, 1):
        what = f"gate {name!r}" if kind == "gate" else "defaults"
        raise TypeError(f"the value forced for {what} is True or False, not {value!r}")
    return bool(value)


class override_experiment(_OverrideConfig):
    """Every request is in ``group`` of experiment ``name`` with ``params``
    (without ``params``, the group's params in the spec the app reads)."""

    def __init__(
        self, name: str, params: Mapping[str, Any] | None = None, group: str | None = None
    ) -> None:
        super().__init__(_forced_experiment(name, params, group))

    def _apply(self) -> Any:
        _check_known("experiment", self.config.name, self.config.group, self._site)
        return super()._apply()


class override_config(_OverrideConfig):
    """Dynamic config ``name`` has ``value`` for every request."""

    def __init__(self, name: str, value: Mapping[str, Any]) -> None:
        super().__init__(_config(name, value))


class override_defaults(_Override):
    """Unforced gates are False and unforced experiments their control (see
    :meth:`FlagwareOverrides.defaults`)."""

    def __init__(self, on: bool = True) -> None:
        super().__init__()
        self.on = _flag("defaults", "on", on)

    def _apply(self) -> Any:
        saved = overrides.defaults
        overrides.defaults = self.on
        return saved

    def _restore(self, saved: Any) -> None:
        overrides.defaults = saved
