"""The pytest plugin (``pytest11`` entry point): isolation, determinism, two fixtures.

From the moment pytest starts, before your conftest imports the app, every
flagware client the test run creates:

- stores its events in a fresh temporary file (one per client, under a
  directory per test; removed when the run ends), never in the app's store;
- delivers nothing to Statsig, even with ``STATSIG_SERVER_SECRET`` set;
- hashes IPs with a fixed key (unless given ``hash_key=``), so unforced flags
  evaluate the same on every run and every machine, and no ``hash_key`` file
  is created;
- forgets, as each test starts, which exposures were logged (see
  ``flagware.visitors.Repeats``), so no test loses an exposure to a repeat of
  one an earlier test caused.

ini options (``pytest.ini``, ``[tool.pytest.ini_options]``):

- ``flagware_isolate = false`` turns the isolation off (a suite that tests
  delivery or reads a store it named itself);
- ``flagware_defaults = true`` starts every test in defaults mode: unforced
  gates False, unforced experiments their control (see
  :meth:`~flagware.testing.FlagwareOverrides.defaults`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from flagware import identity
from flagware.testing import CapturedEvents, FlagwareOverrides, capture_events, isolate

__all__ = ["flagware_events", "flagware_overrides"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "flagware_isolate",
        type="bool",
        default=True,
        help="flagware: temporary stores, no Statsig delivery, a fixed hash key (default true)",
    )
    parser.addini(
        "flagware_defaults",
        type="bool",
        default=False,
        help="flagware: unforced gates False and experiments their control in every test",
    )


_isolation: isolate | None = None
# The pytest runs that have this plugin (pytester nests one in another): while
# any does, the isolation is the plugin's to decide (``flagware_isolate``),
# not Django's test-runner check's.
_runs: set[int] = set()


def running() -> bool:
    return bool(_runs)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Before conftest.py files are imported: an app built at import time is
    # isolated too. (pytest calls this hook only for installed plugins.)
    _start(early_config)


def pytest_configure(config: pytest.Config) -> None:
    _start(config)  # for runs that load the plugin with -p, after conftests


def _start(config: pytest.Config) -> None:
    global _isolation
    _runs.add(id(config))
    if _isolation is not None or not config.getini("flagware_isolate"):
        return
    _isolation = isolate(seed_tests=False)  # seeded by node ID, below
    _isolation.__enter__()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _isolation
    _runs.discard(id(config))
    isolation, _isolation = _isolation, None
    if isolation is not None:
        isolation.__exit__()


@pytest.fixture(autouse=True)
def _flagware_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Clients made during a test store under that test's own directory, and
    expose every visitor anew (an earlier test's exposures dedupe nothing)."""
    from flagware.events.store.postgres import forget_failures
    from flagware.overrides import overrides
    from flagware.visitors import start_afresh

    start_afresh()
    forget_failures()  # an earlier test's stopped database, as seen by request reads

    isolation = _isolation
    if isolation is not None:
        isolation.label = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
        identity.seed_ids(request.node.nodeid)  # stableID flags: the same on every run
    defaults = overrides.defaults
    if request.config.getini("flagware_defaults"):
        overrides.defaults = True
    try:
        yield
    finally:
        overrides.defaults = defaults
        if isolation is not None:
            isolation.label = "session"
            identity.seed_ids(None)


@pytest.fixture
def flagware_overrides() -> Iterator[FlagwareOverrides]:
    """Force gates, experiments and configs for this test; undone after it."""
    from flagware.overrides import overrides

    # Restore rather than clear, so overrides a user set up outside this
    # fixture (e.g. in a session fixture) survive the test.
    saved = dict(overrides.gates), dict(overrides.configs), overrides.defaults
    try:
        yield FlagwareOverrides()
        overrides.finish_unchecked()  # the test made no client: check against the closed ones
    finally:
        overrides.gates.clear()
        overrides.gates.update(saved[0])
        overrides.configs.clear()
        overrides.configs.update(saved[1])
        overrides.defaults = saved[2]


@pytest.fixture
def flagware_events() -> Iterator[CapturedEvents]:
    """Every event (custom and exposures) any flagware client logs during this test."""
    with capture_events() as events:
        yield events
