"""The per-request Flags object and ``current_flags()``.

A Flags object is created for every request but does nothing until used: the
identity, the Statsig user and each evaluation are computed on first use and
memoised, so one request records at most one exposure per gate or experiment,
and a visitor shown the same thing again within a minute none (as Statsig's SDKs
dedupe exposures; see ``visitors.Repeats``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flagware import denials, identity, qa, visitors
from flagware.events.model import CONFIG_EXPOSURE, GATE_EXPOSURE, Event, compact_json, now_ms
from flagware.overrides import OVERRIDE_RULE, Config, overrides
from flagware.spec.compile import LAUNCHED

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware

__all__ = ["Config", "Flags", "NoRequestError", "current_flags"]

log = logging.getLogger("flagware")


class NoRequestError(LookupError):
    """Raised by ``current_flags()`` outside a request handled by the middleware."""


_current: ContextVar[Flags | None] = ContextVar("flagware_flags", default=None)
# Where current_flags() looks when no middleware has set the contextvar here: a
# framework's own request context that outlives the middleware's call. A WSGI
# body is iterated after the middleware returned, and Flask's
# stream_with_context keeps Flask's request (whose environ still holds the
# Flags) for it; flagware.flask adds that lookup.
lookups: list[Callable[[], Flags | None]] = []


def current_flags() -> Flags:
    """This request's flags. Raises :class:`NoRequestError` outside a request."""
    flags = _current.get()
    if flags is None:
        for lookup in lookups:
            found = lookup()
            if found is not None:
                return found
        raise NoRequestError(
            "current_flags() was called outside a request handled by flagware: wrap the app "
            "with FlagwareMiddleware (WSGI: app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw), "
            "or the Flask extension; ASGI: app = flagware.asgi.FlagwareMiddleware(app, fw), "
            "served by an ASGI server), or add flagware.django.FlagwareMiddleware to MIDDLEWARE;"
            " outside any request (a task, a script), name the user:"
            " `with fw.flags_for(user_id=...):`; in a thread a view started, which"
            " does not inherit the request's context, pass it the view's"
            " `request.flags` (or current_flags()) instead"
        )
    return flags


# Called with every event a client logs; the pytest plugin captures through it.
listeners: list[Callable[[Event], None]] = []


class Flags:
    """One request's identity, gates, experiments and event logging."""

    # No __slots__: class-level defaults make a Flags object two attribute
    # stores to create, which is all a request that never reads flags pays.
    _user_id: str | None = None
    _stable_id: str | None = None
    _minted: str | None = None  # a stableID to set in the response cookie
    _user: Any = None  # the engine's SDK user
    _user_dict: dict[str, Any] | None = None
    _user_json: str | None = None  # _user_dict encoded once, for every event it logs
    _ids: Any = None  # the unit IDs, as the repeat key names them (_unit_ids)
    _gates: dict[str, bool] | None = None
    _configs: dict[str, Config] | None = None
    # True while a middleware will see the response (set by the request
    # lifecycle, flagware.request): success events wait in _held for its status.
    _watched = False
    _held: list[Event] | None = None
    _status: int | None = None  # the response status, once it started
    _visitor: bool | None = None  # whether flag reads are exposures; decided on first use
    _skip: str | None = None  # why they are not ("bot", "method", "prefetch", "filter")
    _qa: Any = False  # the QA override cookie: False until read, then QAOverride or None
    # The request's order, kept in its events' millisecond times (_stamp).
    _event_ms = -1  # the newest custom event's time
    _exposure_ms = -1  # the newest exposure's time
    # How @feature_gate denies: the HTTP exception of the framework the
    # middleware wraps (each middleware's own Flags subclass sets it;
    # flagware.denials). werkzeug's outside a middleware.
    _deny: Callable[[int], BaseException] = staticmethod(denials.werkzeug)

    def __init__(self, client: Flagware, environ: WSGIEnvironment) -> None:
        self._client = client
        self._environ = environ

    # -- identity ---------------------------------------------------------------

    @property
    def stable_id(self) -> str:
        if self._stable_id is None:
            self._resolve_ids()
        assert self._stable_id is not None  # set by _resolve_ids
        return self._stable_id

    @property
    def user_id(self) -> str:
        if self._user_id is None:
            self._resolve_ids()
        assert self._user_id is not None
        return self._user_id

    def _resolve_ids(self) -> None:
        self._user_id, self._stable_id, minted = identity.resolve_ids(
            self._client, self._environ, self._stable_id
        )
        if minted is not None:
            self._minted = minted
            if self._status is not None:  # the response has started: no cookie can carry it
                self._client.failures.minted_too_late()

    def statsig_user(self) -> Any:
        """The engine SDK's user for this request, built once."""
        if self._user is None:
            self._user = self._build_user()
        return self._user

    def _build_user(self) -> Any:
        client = self._client
        user = identity.user_fields(client, self._environ, self.user_id, self.stable_id)
        self._user_dict = user
        return client.engine.user(user)

    def _wire_user(self) -> dict[str, Any]:
        if self._user_dict is None:
            self.statsig_user()
        assert self._user_dict is not None
        return self._user_dict

    def _unit_ids(self) -> Any:
        """Every unit ID of the user, for the repeat key: the stableID alone, or
        with the custom IDs. A key of userID and stableID alone took a user's
        exposure under a second company for a repeat, and the company, never
        exposed, left the results of a companyID experiment (a new user's
        trial: 16 of 16 such companies). Statsig's SDKs key on every ID."""
        ids = self._ids
        if ids is None:
            custom = self._wire_user().get("customIDs") or {}
            only_stable = not custom or (len(custom) == 1 and "stableID" in custom)
            ids = self._ids = self.stable_id if only_stable else tuple(sorted(custom.items()))
        return ids

    def _encoded_user(self) -> str:
        """The wire user as compact JSON: one encoding for all this request's events."""
        encoded = self._user_json
        if encoded is None:
            encoded = self._user_json = compact_json(self._wire_user())
        return encoded

    # -- gates and configs ------------------------------------------------------

    def gate(self, name: str) -> bool:
        """Whether this request passes the gate. Evaluated once; False on any error."""
        gates = self._gates
        if gates is None:
            gates = self._gates = {}
        elif name in gates:
            return gates[name]
        value = False
        client = self._client
        try:
            forced = self._forced_gate(name)
            if forced is not None:
                # As Statsig's override_gate: the value is forced, the exposure
                # is still logged (ruleID "override"), so tests can assert on it.
                value, rule_id, secondary = forced, OVERRIDE_RULE, []
            else:
                result = client.engine.gate(self.statsig_user(), name)
                value, rule_id = result.value, result.rule_id
                secondary = result.secondary_exposures
            if self._exposes() and client.repeats.first(
                (GATE_EXPOSURE, name, value, rule_id, self.user_id, self._unit_ids())
            ):
                client._log_exposure(
                    Event(
                        GATE_EXPOSURE,
                        self._wire_user(),
                        metadata={
                            "gate": name,
                            "gateValue": "true" if value else "false",
                            "ruleID": rule_id,
                        },
                        secondary_exposures=secondary,
                        exposure=name,
                        user_json=self._encoded_user(),
                        time=self._stamp(exposure=True),
                    )
                )
        except Exception as exc:
            client.report(exc, "gate")
        gates[name] = value
        self._release_environ()
        return value

    def experiment(self, name: str) -> Config:
        """This request's group and parameters. Evaluated once; defaults on any error."""
        return self.config(name)

    def config(self, name: str) -> Config:
        """A dynamic config or experiment (Statsig evaluates both the same way)."""
        configs = self._configs
        if configs is None:
            configs = self._configs = {}
        elif name in configs:
            return configs[name]
        client = self._client
        config = Config(name, {})
        try:
            forced = overrides.config(name, client) if overrides else None
            if forced is None:
                forced = self._forced_config(name)
            if forced is not None:
                # As Statsig's override_config: forced, and still an exposure.
                # A copy per request, so a view that edits .params edits only its own.
                config = Config(
                    name, dict(forced.params), group=forced.group, rule_id=forced.rule_id
                )
                passed, secondary = True, []
            else:
                result = client.engine.config(self.statsig_user(), name)
                config = Config(name, result.params, group=result.group, rule_id=result.rule_id)
                passed, secondary = result.value, result.secondary_exposures
            if self._exposes() and client.repeats.first(
                (
                    CONFIG_EXPOSURE,
                    name,
                    config.rule_id,
                    config.group,
                    passed,
                    self.user_id,
                    self._unit_ids(),
                )
            ):
                exposure = Event(
                    CONFIG_EXPOSURE,
                    self._wire_user(),
                    metadata={
                        "config": name,
                        "ruleID": config.rule_id,
                        "rulePassed": "true" if passed else "false",
                    },
                    secondary_exposures=secondary,
                    exposure=name,
                    group=config.group,
                    user_json=self._encoded_user(),
                    time=self._stamp(exposure=True),
                )
                client._log_exposure(exposure)
                starts = client.starts
                # A start: a unit in a group, or the ship served (a ship left
                # across `flagware reset` served everyone, and nothing recorded it).
                if (
                    forced is None
                    and (config.group is not None or config.rule_id == LAUNCHED)
                    and name not in starts.seen
                ):
                    starts.note(name, exposure.time)
        except Exception as exc:
            client.report(exc, "experiment")
        configs[name] = config
        self._release_environ()
        return config

    def _release_environ(self) -> None:
        """Let go of the WSGI environ (or Django's META) once nothing is left to read in it.

        The environ holds this Flags under ``flagware.flags``, so while the
        Flags holds the environ the two form a reference cycle: the finished
        request, with everything its environ holds, waits for the garbage
        collector (7 us of collection a request in process, measured with the
        seed lab). Once the identity, the user, the visitor rule and the QA
        cookie are known, flags never read the environ again. An ASGI scope
        view is kept: the ASGI middleware breaks that cycle itself, and
        ``feature_gate`` asks it which framework answers a denial.
        """
        if (
            self._user is not None
            and self._visitor is not None
            and self._qa is not False
            and type(self._environ) is dict
        ):
            self._environ = {}

    # -- exposure rules and QA overrides -----------------------------------------

    def _exposes(self) -> bool:
        """Whether this request's flag reads are exposures (see flagware.visitors)."""
        visitor = self._visitor
        if visitor is None:
            client = self._client
            try:
                self._skip = visitors.skip_reason(self._environ, client.exposure_filter)
            except Exception as exc:  # a broken filter: log the exposure, never lose it
                client.report(exc, "exposure filter")
                self._skip = None
            visitor = self._visitor = self._skip is None
        if not visitor:
            skipped = self._client.skipped_exposures
            reason = self._skip or "filter"
            if reason == "bot" and not skipped[reason]:
                # Said once a client: a new user's test driver on Python's urllib
                # (a bot, by ua-parser's rules) logged no exposure without a word.
                log.warning(
                    "flagware: flag reads by bots log no exposures (User-Agent %r); browsers'"
                    " do, and fw.skipped_exposures counts the rest (README: Exposures only"
                    " from visitors)",
                    str(self._environ.get("HTTP_USER_AGENT", ""))[:80],
                )
            skipped[reason] += 1
        return visitor

    def _qa_override(self) -> qa.QAOverride | None:
        if self._qa is False:
            override = None
            # No key yet (flagware.shared_key): no cookie can be verified.
            if qa.COOKIE in self._environ.get("HTTP_COOKIE", "") and self._client.hash_key:
                override = qa.read(self._client.hash_key, self._environ)
            self._qa = override
        found: qa.QAOverride | None = self._qa
        return found

    def _forced_gate(self, name: str) -> bool | None:
        """A test's override (or its defaults mode), else this browser's QA override."""
        forced = overrides.gate(name) if overrides else None
        if forced is not None:
            return forced
        override = self._qa_override()
        return override.gates.get(name) if override else None

    def _forced_config(self, name: str) -> Config | None:
        """The group a QA override chose for this browser, with that group's params."""
        override = self._qa_override()
        group = override.groups.get(name) if override else None
        if group is None:
            return None
        params = qa.group_params(self._client.engine, name, group)
        if params is None:  # the group was renamed or removed since: evaluate normally
            return None
        return Config(name, params, group=group, rule_id=OVERRIDE_RULE)

    # -- events -----------------------------------------------------------------

    def log_event(
        self,
        name: str,
        value: str | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Log a custom event for this request's user (never raises)."""
        client = self._client
        try:
            client.log(self._event(name, value, metadata))
        except Exception as exc:
            client.report(exc, "log_event")

    def _event(
        self, name: str, value: str | float | None, metadata: Mapping[str, Any] | None
    ) -> Event:
        return Event(
            name,
            self._wire_user(),
            value=value,
            metadata=None if metadata is None else dict(metadata),
            user_json=self._encoded_user(),
            time=self._stamp(exposure=False),
        )

    def _stamp(self, *, exposure: bool) -> int:
        """The time of an event this request logs now, in milliseconds, keeping the
        request's order: an exposure comes after the request's earlier events,
        and an event no earlier than its earlier exposures.

        Results count a unit's events from its first exposure's time on. Most of
        a request runs within one millisecond, so an event logged before the
        flag read (``@log_event(on="call")``) had the exposure's time and
        counted as its outcome: 43-52% of the pre-exposure conversions in a
        statistician's trial. A stamp moves by at most a millisecond a switch.
        """
        t = now_ms()
        if exposure:
            if t <= self._event_ms:
                t = self._event_ms + 1
            if t > self._exposure_ms:
                self._exposure_ms = t
        else:
            if t < self._exposure_ms:
                t = self._exposure_ms
            self._event_ms = t
        return t

    def __repr__(self) -> str:
        return f"<Flags gates={self._gates or {}!r} configs={list(self._configs or ())!r}>"
