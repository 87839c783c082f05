"""Read and validate a spec: every problem found, each with its key path.

Nothing is guessed: an unknown section, key, ID type or condition is an error
(with a did-you-mean when a known name is close), so a typo never silently
changes who sees what. Everything wrong is reported at once, not only the first.
"""

from __future__ import annotations

import difflib
import functools
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_args

from flagware.spec.model import (
    SEQUENTIAL_TUNING,
    Direction,
    ExperimentSpec,
    GateSpec,
    Group,
    MetricKind,
    MetricSpec,
    Spec,
    SpecError,
    derived_salt,
)
from flagware.spec.values import (
    ID_TYPES,
    NAME,
    _cap_percentile,
    _check_buckets,
    _choice,
    _condition,
    _cuped_days,
    _event_aggregate,
    _fresh_within,
    _get,
    _groups,
    _Invalid,
    _nonempty,
    _overrides,
    _percent,
    _sequential_tuning,
    _ship,
    _table,
    _type_name,
    _unit,
    _unknown_key,
    did_you_mean,
    param_problems,
)

__all__ = ["ID_TYPES", "did_you_mean", "load_spec", "parse_spec"]

_T = TypeVar("_T")

SECTIONS = ("gates", "experiments", "metrics", "flagware")
FLAGWARE_KEYS = {"custom_ids"}
GATE_KEYS = {"rollout", "unit", "salt", "enabled", "conditions", "overrides"}
EXPERIMENT_KEYS = {
    "unit",
    "allocation",
    "groups",
    "salt",
    "allocation_salt",
    "targeting_gate",
    "restart",
    "sequential",
    "sequential_tuning",
    "overrides",
    "ship",
}
METRIC_KEYS = {
    "event",
    "kind",
    "tags",
    "direction",
    "fresh_within",
    "cuped_days",
    "cap_percentile",
    "numerator",
    "denominator",
}


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and validate a TOML spec file; raise :class:`SpecError` listing every problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        where = "" if os.path.isabs(source) else f" (looked for {os.path.abspath(source)})"
        raise SpecError(f"{source}: spec file not found{where}") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read spec file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)"
        raise SpecError(f"{source}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays and tables
        raise SpecError(f"{source}: invalid TOML: nested too deeply") from None
    return parse_spec(data, source=source)


def parse_spec(data: Mapping[str, Any], *, source: str = "<spec>") -> Spec:
    """Validate a parsed TOML mapping; raise :class:`SpecError` listing every problem."""
    parser = _Parser(source)
    try:
        spec = parser.spec(data)
    except _Invalid as exc:  # the top level itself is unusable
        parser.problems.append(exc)
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply") from None
    if parser.problems:
        raise SpecError(
            "", [f"{source}: {problem.path}: {problem.problem}" for problem in parser.problems]
        )
    return spec


# Tags that give a metric its role in the verdict; any other tag is a label.
ROLE_TAGS = ("guardrail", "primary")


def _near_role(tag: str) -> str | None:
    """The role tag ``tag`` is probably a misspelling of ("Guardrail", "guardrails")."""
    key = "".join(c for c in tag.casefold() if c.isalnum())  # "Guard Rail", "PRIMARY "
    if key in ROLE_TAGS:
        return key
    close = difflib.get_close_matches(key, ROLE_TAGS, n=1, cutoff=0.85)
    return close[0] if close else None


class _Parser:
    """Checks one mapping, recording every problem; each check names its key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[_Invalid] = []
        self.custom_ids: tuple[str, ...] = ()

    def attempt(self, check: Callable[[], _T], default: _T) -> _T:
        """``check()``, or ``default`` with its problem recorded."""
        try:
            return check()
        except _Invalid as exc:
            self.problems.append(exc)
            return default

    def all_of(self, checked: tuple[_T, list[_Invalid]]) -> _T:
        """A value checked in parts: every part's problem recorded, the rest kept."""
        value, problems = checked
        self.problems += problems
        return value

    def known_keys(self, body: Mapping[str, Any], path: str, allowed: set[str]) -> None:
        for key in body:
            if key not in allowed:
                self.problems.append(_unknown_key(f"{path}.{key}" if path else key, key, allowed))

    def spec(self, data: Mapping[str, Any]) -> Spec:
        if not isinstance(data, Mapping):
            raise _Invalid("<top level>", "must be a table")
        for key in data:
            if key not in SECTIONS:
                hint = did_you_mean(key, SECTIONS)
                self.problems.append(
                    _Invalid(
                        key,
                        f"unknown section{hint} (expected gates, experiments, metrics or flagware)",
                    )
                )
        self.attempt(lambda: self.flagware(data), None)
        gates = self.section(data, "gates", self.gate)
        experiments = self.section(data, "experiments", self.experiment)
        metrics = self.section(data, "metrics", self.metric)
        for exp in experiments.values():
            if exp.targeting_gate is not None and exp.targeting_gate not in gates:
                hint = did_you_mean(exp.targeting_gate, gates)
                self.problems.append(
                    _Invalid(
                        f"experiments.{exp.name}.targeting_gate",
                        f"gate {exp.targeting_gate!r} is not defined under [gates]{hint}",
                    )
                )
        return Spec(
            gates=gates,
            experiments=experiments,
            metrics=metrics,
            source=self.source,
            custom_ids=self.custom_ids,
        )

    def flagware(self, data: Mapping[str, Any]) -> None:
        body = _table(data, "flagware", "flagware")
        self.known_keys(body, "flagware", FLAGWARE_KEYS)
        declared: list[str] = []
        ids: list[Any] = self.attempt(lambda: _get(body, "flagware", "custom_ids", list, []), [])
        for i, name in enumerate(ids):
            path = f"flagware.custom_ids[{i}]"
            if not isinstance(name, str) or not NAME.fullmatch(name):
                self.problems.append(
                    _Invalid(path, f"invalid ID type {name!r} (use letters, digits, '_' and '-')")
                )
            elif name.casefold() in {t.casefold() for t in ID_TYPES}:
                self.problems.append(
                    _Invalid(path, f"{name!r} is built in (userID and stableID need no declaring)")
                )
            elif name.casefold() in {d.casefold() for d in declared}:
                # The SDK also reads an ID by its name in lower case, so two
                # such names would read each other's IDs.
                twin = next(d for d in declared if d.casefold() == name.casefold())
                self.problems.append(_Invalid(path, f"{name!r} differs from {twin!r} only in case"))
                declared.append(name)  # so that a unit naming it is not also "unknown"
            else:
                declared.append(name)
        self.custom_ids = tuple(declared)

    def section(
        self, data: Mapping[str, Any], section: str, build: Callable[[str, Mapping[str, Any]], _T]
    ) -> dict[str, _T]:
        empty: Mapping[str, Any] = {}
        entries = self.attempt(lambda: _table(data, section, section), empty)
        result: dict[str, _T] = {}
        for name, body in entries.items():
            if not NAME.fullmatch(name):
                self.problems.append(
                    _Invalid(section, f"invalid name {name!r} (use letters, digits, '_' and '-')")
                )
                continue
            if not isinstance(body, Mapping):
                self.problems.append(
                    _Invalid(f"{section}.{name}", f"must be a table, not {_type_name(body)}")
                )
                continue
            result[name] = build(name, body)
        return result

    def gate(self, name: str, body: Mapping[str, Any]) -> GateSpec:
        path = f"gates.{name}"
        self.known_keys(body, path, GATE_KEYS)
        raw_conditions: list[Any] = self.attempt(
            lambda: _get(body, path, "conditions", list, []), []
        )
        conditions = []
        for i, raw in enumerate(raw_conditions):
            where = f"{path}.conditions[{i}]"
            condition = self.attempt(functools.partial(_condition, raw, where), None)
            if condition is not None:
                conditions.append(condition)
        return GateSpec(
            name=name,
            rollout=self.attempt(lambda: _percent(body, path, "rollout", 100.0), 100.0),
            salt=self.attempt(
                lambda: _nonempty(body, path, "salt", derived_salt("gate", name)), ""
            ),
            unit=self.attempt(lambda: _unit(body, path, self.custom_ids), "userID"),
            enabled=self.attempt(lambda: _get(body, path, "enabled", bool, True), True),
            conditions=tuple(conditions),
            overrides=self.all_of(_overrides(body, path, ("pass", "fail"), "list")),
        )

    def experiment(self, name: str, body: Mapping[str, Any]) -> ExperimentSpec:
        path = f"experiments.{name}"
        self.known_keys(body, path, EXPERIMENT_KEYS)
        allocation = self.attempt(lambda: _percent(body, path, "allocation", 100.0), 100.0)
        self.attempt(lambda: _check_buckets(allocation, f"{path}.allocation"), None)
        salt = self.attempt(
            lambda: _nonempty(body, path, "salt", derived_salt("experiment", name)), ""
        )
        targeting = body.get("targeting_gate")
        if targeting is not None:
            targeting = self.attempt(lambda: _nonempty(body, path, "targeting_gate", ""), None)
        no_groups: tuple[tuple[Group, ...], list[_Invalid]] = ((), [])
        groups = self.all_of(self.attempt(lambda: _groups(body, path), no_groups))
        self.problems += param_problems(groups, path)
        return ExperimentSpec(
            name=name,
            unit=self.attempt(lambda: _unit(body, path, self.custom_ids), "userID"),
            allocation=allocation,
            salt=salt,
            groups=groups,
            targeting_gate=targeting,
            restart=self.attempt(lambda: _get(body, path, "restart", bool, False), False),
            sequential=self.attempt(lambda: _get(body, path, "sequential", bool, True), True),
            sequential_tuning=self.attempt(
                lambda: _sequential_tuning(body, path), SEQUENTIAL_TUNING
            ),
            overrides=self.all_of(_overrides(body, path, [g.name for g in groups], "group")),
            ship=self.attempt(lambda: _ship(body, path, [g.name for g in groups]), None),
            allocation_salt=self.attempt(
                lambda: _nonempty(body, path, "allocation_salt", derived_salt("allocation", salt)),
                None,
            ),
        )

    def metric(self, name: str, body: Mapping[str, Any]) -> MetricSpec:
        path = f"metrics.{name}"
        self.known_keys(body, path, METRIC_KEYS)
        kind: MetricKind = self.attempt(
            lambda: _choice(body, path, "kind", get_args(MetricKind), "conversion"), "conversion"
        )
        numerator = denominator = None
        if kind == "ratio":
            for key in ("numerator", "denominator"):
                if key not in body:
                    self.problems.append(
                        _Invalid(f"{path}.{key}", 'missing (ratio metrics need { event = "..." })')
                    )
            if "event" in body:
                self.problems.append(
                    _Invalid(f"{path}.event", "ratio metrics name their numerator and denominator")
                )
            if "numerator" in body:
                numerator = self.attempt(
                    lambda: _event_aggregate(body["numerator"], f"{path}.numerator"), None
                )
            if "denominator" in body:
                denominator = self.attempt(
                    lambda: _event_aggregate(body["denominator"], f"{path}.denominator"), None
                )
        else:
            for key in ("numerator", "denominator"):
                if key in body:
                    self.problems.append(
                        _Invalid(f"{path}.{key}", 'only applies to kind = "ratio"')
                    )
            if "event" not in body:
                self.problems.append(
                    _Invalid(f"{path}.event", "missing (the name of the event to count)")
                )
        tags: list[Any] = self.attempt(lambda: _get(body, path, "tags", list, []), [])
        for i, tag in enumerate(tags):
            if not isinstance(tag, str) or not tag:
                self.problems.append(_Invalid(f"{path}.tags[{i}]", "must be a non-empty string"))
            elif tag not in ROLE_TAGS and (close := _near_role(tag)):
                # Other tags are free labels, but one a letter off a role would
                # silently demote a guardrail, which then never blocks a launch.
                self.problems.append(
                    _Invalid(
                        f"{path}.tags[{i}]",
                        f"{tag!r} (did you mean {close!r}? only the exact tag makes the metric"
                        f" {'a ' if close == 'guardrail' else ''}{close}; for a plain label,"
                        " pick another word)",
                    )
                )
        fresh_within = self.attempt(lambda: _fresh_within(body, path, tags), None)
        if "guardrail" in tags and "primary" in tags:
            self.problems.append(
                _Invalid(f"{path}.tags", 'a metric is either "primary" or "guardrail", not both')
            )
        event = numerator.event if numerator else ""
        if kind != "ratio" and "event" in body:
            event = self.attempt(lambda: _nonempty(body, path, "event", ""), "")
        return MetricSpec(
            name=name,
            event=event,
            kind=kind,
            tags=tuple(tags),
            direction=self.attempt(
                lambda: _choice(body, path, "direction", get_args(Direction), "increase"),
                "increase",
            ),
            fresh_within=fresh_within,
            numerator=numerator,
            denominator=denominator,
            cuped_days=self.attempt(lambda: _cuped_days(body, path), 7.0),
            cap_percentile=self.attempt(lambda: _cap_percentile(body, path, kind), None),
        )
