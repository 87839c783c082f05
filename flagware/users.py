"""Flags and events for a user named in code, outside any request's identity.

A request's identity is its visitor's: the stableID cookie and the keyed hash
of the address. A payment provider's webhook, a Celery task or a nightly job
acts for a user the request does not identify: under the middleware, a
webhook's ``current_flags()`` is the provider's server, and ``@log_event``
there would count a purchase for it. Statsig's SDKs take the user as an
argument everywhere (``statsig.log_event(StatsigEvent(user, "purchase"))``);
``fw.flags_for(user_id=...)`` and ``fw.log_event(..., user_id=...)`` are that:
the same evaluation, exposures, dedupe and pipeline as a request's flags, for
the IDs given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any, cast

from flagware import flags as _flags
from flagware.flags import Flags
from flagware.identity import add_traits
from flagware.overrides import Config
from flagware.unit_ids import declared

if TYPE_CHECKING:
    from flagware.client import Flagware

__all__ = ["NamedUsers", "UserFlags", "check_event", "user_ids"]

log = logging.getLogger("flagware")
# Experiments, and (event, unit) pairs, already warned about (once a process each).
_warned_units: set[str] = set()
_warned_events: set[tuple[str, str]] = set()


class NamedUsers:
    """``Flagware``'s methods for a user named in code rather than by a request
    (a mixin: they live beside what they build, and the client's module keeps
    to its wiring)."""

    def flags_for(
        self,
        *,
        user_id: str | int | None = None,
        stable_id: str | None = None,
        custom_ids: Mapping[str, str | int] | None = None,
        custom: Mapping[str, Any] | None = None,
        country: str | None = None,
        user_agent: str | None = None,
    ) -> UserFlags:
        """Flags for the user these IDs name, anywhere (a task, a webhook, a script).

        Evaluated, exposed and deduped as a request's; events are logged at
        once (no response to wait for). ``with fw.flags_for(...):`` makes them
        ``current_flags()``."""
        client = cast("Flagware", self)  # the one class this mixin is for
        fields = user_ids(user_id, stable_id, custom_ids)
        if "customIDs" in fields:
            fields["customIDs"] = declared(client, fields["customIDs"])
        if country:
            fields["country"] = country.upper()
        add_traits(client, fields, user_agent, custom)
        return UserFlags(client, fields)

    def log_event(
        self,
        name: str,
        value: str | float | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        user_id: str | int | None = None,
        stable_id: str | None = None,
        custom_ids: Mapping[str, str | int] | None = None,
    ) -> None:
        """Log an event for the user these IDs name (a payment webhook's purchase).

        Raises for a missing or malformed ID, name or value (a bug where it is
        written); never once they are valid, as ``Flags.log_event``."""
        check_event(name, value)
        flags = self.flags_for(user_id=user_id, stable_id=stable_id, custom_ids=custom_ids)
        flags.log_event(name, value, metadata)


class UserFlags(Flags):
    """A :class:`Flags` for the IDs given to ``fw.flags_for(...)``, usable anywhere.

    Gates and experiments are evaluated once and memoised, exposures logged
    and deduped as a request's are, and ``log_event`` logs the event at
    once (no response decides whether it counts). Used as a context manager, it is what
    ``current_flags()`` returns inside the block, so code written for
    requests (``@experiment``, a helper reading ``current_flags()``) runs in
    a task as it does in a view.
    """

    def __init__(self, client: Flagware, fields: dict[str, Any]) -> None:
        super().__init__(client, {})
        ids = fields.get("customIDs") or {}
        # "" rather than None for an ID not given: the properties would
        # otherwise mint one from the (empty) environ, as a new visitor's.
        self._user_id = fields.get("userID") or ""
        self._stable_id = ids.get("stableID") or ""
        self._user_dict = fields
        self._visitor = True  # no request to judge: a bot filter has nothing to read
        self._qa = None  # no browser, so no QA cookie
        self._token: list[Token[Flags | None]] = []

    def _build_user(self) -> Any:
        assert self._user_dict is not None  # set when made
        return self._client.engine.user(self._user_dict)

    def gate(self, name: str) -> bool:
        value = super().gate(name)
        # As for experiments: a gate on a unit the user lacks is one bucket
        # for every such user, all or nothing (a trial was warned of the
        # experiment, not of the gate beside it on the same unit).
        spec = getattr(self._client.engine, "spec", None)
        gate = spec.gates.get(name) if spec is not None else None
        if gate is not None:
            self._warn_unit(f"gates.{name}", gate.unit, "the same value")
        return value

    def config(self, name: str) -> Config:
        config = super().config(name)
        # Statsig evaluates a user without the experiment's unit ID as if the ID
        # were "": every such user shares one bucket. Results count units, so
        # they leave these exposures out; say so where the spec tells the unit.
        spec = getattr(self._client.engine, "spec", None)
        experiment = spec.experiments.get(name) if spec is not None else None
        if experiment is not None:
            self._warn_unit(name, experiment.unit, "the same group, and results leave them out")
        return config

    def _warn_unit(self, name: str, unit: str, outcome: str) -> None:
        if name in _warned_units or self._has(unit):
            return
        _warned_units.add(name)
        log.warning(
            "flagware: flags_for() evaluated %s, keyed on %s, for a user without a %s:"
            " every such user gets %s",
            name,
            unit,
            unit,
            outcome,
        )

    def log_event(
        self,
        name: str,
        value: str | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().log_event(name, value, metadata)
        # A metric's event without an experiment's unit ID counts for none of
        # its units; said here, where it is logged, since results cannot tell
        # it from an event nobody logged (a new user's trial: a webhook that
        # sent the stableID for half the purchases halved the conversions).
        spec = getattr(self._client.engine, "spec", None)
        if spec is None or name not in spec.metric_events:
            return
        for unit in sorted({e.unit for e in spec.experiments.values()}):
            if (name, unit) in _warned_events or self._has(unit):
                continue
            _warned_events.add((name, unit))
            keyed = sorted(n for n, e in spec.experiments.items() if e.unit == unit)
            log.warning(
                "flagware: %r was logged for a user without a %s: the experiments keyed on it"
                " (%s) count it for none of their units; give the %s to fw.log_event or"
                " flags_for",
                name,
                unit,
                ", ".join(keyed),
                unit,
            )

    def _has(self, unit: str) -> bool:
        user = self._user_dict or {}
        if unit == "userID":
            return bool(user.get("userID"))
        return bool((user.get("customIDs") or {}).get(unit))

    def __enter__(self) -> UserFlags:
        self._token.append(_flags._current.set(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _flags._current.reset(self._token.pop())

    def __repr__(self) -> str:
        return f"<UserFlags user_id={self._user_id!r} stable_id={self._stable_id!r}>"


def user_ids(
    user_id: str | int | None,
    stable_id: str | None,
    custom_ids: Mapping[str, str | int] | None,
) -> dict[str, Any]:
    """The Statsig user (as the wire carries it) with the IDs given.

    Raises ``ValueError`` when no ID is given and ``TypeError`` for an ID
    that is neither a string nor an integer: a mistake in the calling code,
    said where it is made rather than stored as an event no result can count.
    """
    user: dict[str, Any] = {}
    if user_id is not None:
        user["userID"] = _id("user_id", user_id)
    ids = {name: _id(f"custom_ids[{name!r}]", value) for name, value in (custom_ids or {}).items()}
    if stable_id is not None:
        ids["stableID"] = _id("stable_id", stable_id)
    if ids:
        user["customIDs"] = ids
    if not user:
        raise ValueError(
            "flagware: give the user's user_id, stable_id or custom_ids: the ID each "
            "experiment is keyed on (its unit) is what its results count by"
        )
    return user


def check_event(name: object, value: object) -> None:
    """Refuse, where it is logged, an event no metric could read: an empty or
    non-string name, or a value that is neither a number nor a string (a dict
    would be stored as its JSON, which no sum or mean reads)."""
    if not isinstance(name, str):
        raise TypeError(f"flagware: the event name must be a string, not {name!r}")
    if not name:
        raise ValueError("flagware: the event name is empty")
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
        raise TypeError(
            f"flagware: an event's value is a number or a string, not {value!r}"
            " (put the rest in metadata)"
        )


def _id(name: str, value: object) -> str:
    # bool is an int, and True is no one's ID.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"flagware: {name} must be a string or an integer, not {value!r}")
    text = str(value)
    if not text:
        raise ValueError(f"flagware: {name} is empty")
    return text
