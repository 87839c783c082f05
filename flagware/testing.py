"""pytest plugin: force flags and capture events in your own tests.

Installed with flagware (the ``pytest11`` entry point), it adds two fixtures;
neither needs a spec file, an event store or a network::

    def test_red_button(client, flagware_overrides, flagware_events):
        flagware_overrides.experiment("button_color", {"color": "red"}, group="Red")
        flagware_overrides.gate("new_signup", True)

        response = client.get("/signup")

        assert b"background: red" in response.content
        assert flagware_events.names() == ["visited_signup"]

``flagware_overrides`` applies to every flagware client in the process for the
duration of the test. ``flagware_events`` lists every event logged by any
client during the test, custom events and exposures alike.

Overrides, as Statsig's own ``override_gate``/``override_config``, replace the
evaluation only: reading an overridden flag is still an exposure, logged with
``ruleID`` "override", so a test can assert that a view exposed its user.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flagware.events.model import Event

__all__ = ["CapturedEvents", "FlagwareOverrides"]

OVERRIDE_RULE = "override"  # the rule ID Statsig reports for local overrides


class FlagwareOverrides:
    """Forced values for gates, experiments and dynamic configs."""

    def __init__(self) -> None:
        # Imported here, not at module level: pytest loads this plugin in
        # every session of every project that has flagware installed.
        from flagware.flags import overrides

        self._overrides = overrides

    def gate(self, name: str, value: bool = True) -> None:
        """Every request passes gate ``name`` (or fails it, with ``False``)."""
        self._overrides.gates[name] = bool(value)

    def experiment(self, name: str, params: Mapping[str, Any], group: str | None = None) -> None:
        """Every request is in ``group`` of experiment ``name`` with these params."""
        from flagware.flags import Config

        self._overrides.configs[name] = Config(
            name, dict(params), group=group, rule_id=OVERRIDE_RULE
        )

    def config(self, name: str, value: Mapping[str, Any]) -> None:
        """Dynamic config ``name`` has this value for every request."""
        from flagware.flags import Config

        self._overrides.configs[name] = Config(name, dict(value), rule_id=OVERRIDE_RULE)

    def clear(self) -> None:
        """Drop every override set so far in this test."""
        self._overrides.clear()


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


@pytest.fixture
def flagware_overrides() -> Iterator[FlagwareOverrides]:
    """Force gates, experiments and configs for this test; undone after it."""
    from flagware.flags import overrides

    # Restore rather than clear, so overrides a user set up outside this
    # fixture (e.g. in a session fixture) survive the test.
    saved = dict(overrides.gates), dict(overrides.configs)
    try:
        yield FlagwareOverrides()
    finally:
        overrides.gates.clear()
        overrides.gates.update(saved[0])
        overrides.configs.clear()
        overrides.configs.update(saved[1])


@pytest.fixture
def flagware_events() -> Iterator[CapturedEvents]:
    """Every event (custom and exposures) any flagware client logs during this test."""
    from flagware.flags import listeners

    events = CapturedEvents()
    listener = events.append  # the one bound method, so remove() finds exactly it
    listeners.append(listener)
    try:
        yield events
    finally:
        listeners.remove(listener)
