"""The local spec file: validation with clear errors, and compilation to a Statsig DCS.

The local engine never evaluates anything itself. ``compile_dcs`` turns the spec into a
``download_config_specs`` document (DCS v1) shaped the way the Statsig console emits it, and
the real ``statsig`` SDK evaluates that document in local mode. Assignments are therefore
Statsig's own: the same salts give the same gate values and groups on Statsig's servers.

Spec file reference (TOML). Every key below is checked; an unknown key, section or condition
is an error, so a typo never silently changes who sees what.

``[gates.<name>]``  a feature gate; ``<name>`` is letters, digits, ``_`` and ``-``.

- ``rollout``  percent of units passing the conditions that get ``true``; 0-100, default 100.
- ``unit``  the ID the rollout hashes: ``"userID"`` (default), ``"stableID"`` or any custom ID.
- ``salt``  hashing salt; default derived from the gate name (a UUID), so every process and
  restart agrees. Set it to a Statsig gate's salt to reproduce that gate.
- ``enabled``  ``false`` turns the gate off for everyone; default ``true``.
- ``conditions``  a list of inline tables; a unit must pass ALL of them, and units failing any
  get ``false``. Each table has exactly one of:

  - ``{ country = ["US", "CA"] }``  ISO 3166 alpha-2 codes, matched against ``user.country``
    (flagware derives the country from the IP itself and never sends the IP).
  - ``{ browser = ["Chrome"] }``  browser name parsed from the user agent, case-insensitive.
  - ``{ os = ["Mac OS X"] }``  operating system name parsed from the user agent, ditto.
  - ``{ field = "plan", in = ["pro", "team"] }``  a user field (a StatsigUser attribute such as
    ``email`` or ``locale``, else ``custom.<field>``) is one of the values; compared as strings,
    case-insensitive (Statsig's "any of").
  - ``{ field = "plan", equals = "pro" }``  the field equals the value exactly (type and case).
  - ``{ tier = ["production"] }``  the environment tier (``StatsigOptions(tier=...)``).

``[experiments.<name>]``  an experiment.

- ``unit``  ``"userID"`` (default), ``"stableID"`` or any custom ID type.
- ``allocation``  percent of units in the experiment, 0-100 in steps of 0.1, default 100.
  Raising it keeps everyone already in; the rest see the control group's params, no group.
- ``groups``  non-empty list of ``{ name = "...", weight = N, params = { ... } }``: names
  unique (case-insensitive), weights positive, in steps of 0.1, adding up to 100; ``params``
  a table (default empty). The group named "Control" (any case), else the first, is control.
- ``salt``  the group-assignment salt; default derived from the experiment name.
- ``allocation_salt``  the salt deciding who is allocated; default derived from ``salt``, so
  a new salt reshuffles both. Set both to reproduce a Statsig experiment (its layer salt).
- ``targeting_gate``  name of a gate in this spec; units failing it are not in the experiment.
- ``sequential``  ``true`` makes results always valid (a confidence sequence), so they
  can be read at any time; default ``false`` (fixed horizon).
- ``restart``  ``true`` starts a fresh analysis period (read by the results module);
  default ``false``. It does not change assignment.

``[metrics.<name>]``  a metric for results; metrics do not change the DCS.

- ``event``  the event name (required).
- ``kind``  ``"conversion"`` (default), ``"count"``, ``"sum"``, ``"mean"`` or ``"ratio"``.
- ``numerator``, ``denominator``  ratio metrics only, instead of ``event``: tables
  ``{ event = "...", aggregate = "count" | "sum" }`` (default ``"count"``).
- ``cuped_days``  days of pre-exposure data for CUPED, default 7; 0 turns it off.
- ``cap_percentile``  sum and count metrics: per-unit values are capped at this
  percentile of the experiment's units, default 99.9; 100 turns it off.
- ``tags``  list of strings, default ``[]``; ``"guardrail"`` makes it a guardrail,
  ``"primary"`` a decision metric (none tagged: every non-guardrail metric is one).
- ``direction``  ``"increase"`` (default) or ``"decrease"``: which way is better.
- ``fresh_within``  hours, a positive number; guardrails only: how recent the data must be.

``[flagware]``  reserved for future options; its contents are not checked.

What the compiled document does for users who are not in an experiment (unallocated or
failing the targeting gate): the SDK returns the experiment's ``defaultValue``, which is the
control group's params, and ``group_name`` None, so they see control but are not counted in it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, get_args

__all__ = [
    "Condition",
    "ExperimentSpec",
    "GateSpec",
    "Group",
    "MetricSpec",
    "Spec",
    "SpecError",
    "compile_dcs",
    "derived_salt",
    "gate_rule_id",
    "group_rule_id",
    "load_spec",
    "parse_spec",
]

ConditionKind = Literal["country", "browser", "os", "field", "tier"]
MetricKind = Literal["conversion", "count", "sum", "mean", "ratio"]
Aggregate = Literal["count", "sum"]
Direction = Literal["increase", "decrease"]
Scalar = str | int | float | bool

# Statsig buckets experiment units into 1000 buckets (user_bucket = hash % 1000), so
# allocation and group weights resolve to 0.1 percent.
BUCKETS = 1000
# Fixed forever: changing it would move every unit of every spec without a salt.
_SALT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/flagware/flagware/salt")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_COUNTRY = re.compile(r"[A-Za-z]{2}")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the key path and the problem."""


@dataclass(frozen=True)
class Group:
    name: str
    weight: float  # percent of allocated units
    params: dict[str, Any]


@dataclass(frozen=True)
class Condition:
    """One targeting condition of a gate; a unit must pass all of the gate's conditions."""

    kind: ConditionKind
    values: tuple[Scalar, ...]  # the unit passes when its value is one of these
    field: str | None = None  # the user field, for kind "field"
    exact: bool = False  # "field" with `equals`: one value, compared by type and case


@dataclass(frozen=True)
class GateSpec:
    name: str
    rollout: float  # percent, 0-100
    salt: str
    unit: str = "userID"
    enabled: bool = True
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    unit: str  # "userID", "stableID" or a custom ID type
    allocation: float  # percent, 0-100
    salt: str
    groups: tuple[Group, ...]
    targeting_gate: str | None = None
    restart: bool = False
    allocation_salt: str | None = None  # None: derived from `salt`
    sequential: bool = False  # always-valid results (read by the results module)

    def fingerprint_fields(self) -> dict[str, Any]:
        """What decides which group a unit lands in and what it sees; not allocation."""
        return {
            "unit": self.unit,
            "salt": self.salt,
            # Who is allocated at all: a new allocation salt reshuffles them.
            "allocation_salt": self.effective_allocation_salt,
            # float() so that weight 50 and 50.0 give the same fingerprint
            "groups": [
                {"name": g.name, "weight": float(g.weight), "params": g.params} for g in self.groups
            ],
        }

    def fingerprint(self) -> str:
        """A stable sha256 hex of `fingerprint_fields()`; it changes when results restart."""
        canonical = json.dumps(
            self.fingerprint_fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def control(self) -> Group:
        """The group named "Control" (any case), else the first group."""
        for group in self.groups:
            if group.name.casefold() == "control":
                return group
        return self.groups[0]

    @property
    def effective_allocation_salt(self) -> str:
        return self.allocation_salt or derived_salt("allocation", self.salt)


@dataclass(frozen=True)
class EventAggregate:
    """One side of a ratio metric: an event's count or the sum of its values, per unit."""

    event: str
    aggregate: Aggregate = "count"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    event: str  # for ratio metrics, the numerator's event
    kind: MetricKind = "conversion"
    tags: tuple[str, ...] = ()
    direction: Direction = "increase"
    fresh_within: float | None = None  # hours; only meaningful for guardrails
    numerator: EventAggregate | None = None  # ratio metrics only
    denominator: EventAggregate | None = None
    cuped_days: float = 7.0  # pre-exposure lookback for CUPED; 0 turns it off
    cap_percentile: float = 99.9  # sum and count metrics: winsorize here; 100 turns it off

    @property
    def guardrail(self) -> bool:
        return "guardrail" in self.tags


@dataclass(frozen=True)
class Spec:
    gates: dict[str, GateSpec]
    experiments: dict[str, ExperimentSpec]
    metrics: dict[str, MetricSpec]
    source: str = "<spec>"


def derived_salt(kind: str, name: str) -> str:
    """The default salt: a UUID (like the console's) that depends on nothing but the name."""
    return str(uuid.uuid5(_SALT_NAMESPACE, f"{kind}:{name}"))


# --------------------------------------------------------------------------- loading


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and validate a TOML spec file."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{source}: spec file not found") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read spec file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)"
        raise SpecError(f"{source}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_spec(data, source=source)


def parse_spec(data: Mapping[str, Any], *, source: str = "<spec>") -> Spec:
    """Validate a parsed TOML mapping; raise SpecError naming the first problem found."""
    try:
        return _Parser(source).spec(data)
    except _Invalid as exc:
        raise SpecError(f"{source}: {exc.path}: {exc.problem}") from None


class _Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


_T = TypeVar("_T")


class _Parser:
    """Checks one mapping; every helper takes the key path it reports on errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def spec(self, data: Mapping[str, Any]) -> Spec:
        if not isinstance(data, Mapping):
            raise _Invalid("<top level>", "must be a table")
        for key in data:
            if key not in ("gates", "experiments", "metrics", "flagware"):
                raise _Invalid(
                    key, "unknown section (expected gates, experiments, metrics or flagware)"
                )
        _table(data, "flagware", "flagware")
        gates = self.section(data, "gates", self.gate)
        experiments = self.section(data, "experiments", self.experiment)
        metrics = self.section(data, "metrics", self.metric)
        for exp in experiments.values():
            if exp.targeting_gate is not None and exp.targeting_gate not in gates:
                raise _Invalid(
                    f"experiments.{exp.name}.targeting_gate",
                    f"gate {exp.targeting_gate!r} is not defined under [gates]",
                )
        return Spec(gates=gates, experiments=experiments, metrics=metrics, source=self.source)

    def section(
        self, data: Mapping[str, Any], section: str, build: Callable[[str, Mapping[str, Any]], _T]
    ) -> dict[str, _T]:
        entries = _table(data, section, section)
        result: dict[str, _T] = {}
        for name, body in entries.items():
            if not _NAME.fullmatch(name):
                raise _Invalid(section, f"invalid name {name!r} (use letters, digits, '_' and '-')")
            path = f"{section}.{name}"
            if not isinstance(body, Mapping):
                raise _Invalid(path, f"must be a table, not {_type_name(body)}")
            result[name] = build(name, body)
        return result

    def gate(self, name: str, body: Mapping[str, Any]) -> GateSpec:
        path = f"gates.{name}"
        _known_keys(body, path, {"rollout", "unit", "salt", "enabled", "conditions"})
        raw_conditions = _get(body, path, "conditions", list, [])
        conditions = tuple(
            _condition(c, f"{path}.conditions[{i}]") for i, c in enumerate(raw_conditions)
        )
        return GateSpec(
            name=name,
            rollout=_percent(body, path, "rollout", 100.0),
            salt=_nonempty(body, path, "salt", derived_salt("gate", name)),
            unit=_unit(body, path),
            enabled=_get(body, path, "enabled", bool, True),
            conditions=conditions,
        )

    def experiment(self, name: str, body: Mapping[str, Any]) -> ExperimentSpec:
        path = f"experiments.{name}"
        keys = {"unit", "allocation", "groups", "salt", "allocation_salt", "targeting_gate"}
        _known_keys(body, path, keys | {"restart", "sequential"})
        allocation = _percent(body, path, "allocation", 100.0)
        _check_buckets(allocation, f"{path}.allocation")
        salt = _nonempty(body, path, "salt", derived_salt("experiment", name))
        targeting = body.get("targeting_gate")
        if targeting is not None:
            targeting = _nonempty(body, path, "targeting_gate", "")
        return ExperimentSpec(
            name=name,
            unit=_unit(body, path),
            allocation=allocation,
            salt=salt,
            groups=_groups(body, path),
            targeting_gate=targeting,
            restart=_get(body, path, "restart", bool, False),
            sequential=_get(body, path, "sequential", bool, False),
            allocation_salt=_nonempty(
                body, path, "allocation_salt", derived_salt("allocation", salt)
            ),
        )

    def metric(self, name: str, body: Mapping[str, Any]) -> MetricSpec:
        path = f"metrics.{name}"
        keys = {"event", "kind", "tags", "direction", "fresh_within", "cuped_days"}
        _known_keys(body, path, keys | {"cap_percentile", "numerator", "denominator"})
        kind = _choice(body, path, "kind", get_args(MetricKind), "conversion")
        numerator = denominator = None
        if kind == "ratio":
            for key in ("numerator", "denominator"):
                if key not in body:
                    raise _Invalid(
                        f"{path}.{key}", 'missing (ratio metrics need { event = "..." })'
                    )
            if "event" in body:
                raise _Invalid(
                    f"{path}.event", "ratio metrics name their numerator and denominator"
                )
            numerator = _event_aggregate(body["numerator"], f"{path}.numerator")
            denominator = _event_aggregate(body["denominator"], f"{path}.denominator")
        else:
            for key in ("numerator", "denominator"):
                if key in body:
                    raise _Invalid(f"{path}.{key}", 'only applies to kind = "ratio"')
            if "event" not in body:
                raise _Invalid(f"{path}.event", "missing (the name of the event to count)")
        tags = _get(body, path, "tags", list, [])
        for i, tag in enumerate(tags):
            if not isinstance(tag, str) or not tag:
                raise _Invalid(f"{path}.tags[{i}]", "must be a non-empty string")
        fresh_within = body.get("fresh_within")
        if fresh_within is not None:
            fresh_within = _number(fresh_within, f"{path}.fresh_within")
            if fresh_within <= 0:
                raise _Invalid(f"{path}.fresh_within", "must be a positive number of hours")
            if "guardrail" not in tags:
                raise _Invalid(f"{path}.fresh_within", 'only applies to metrics tagged "guardrail"')
        if "guardrail" in tags and "primary" in tags:
            raise _Invalid(f"{path}.tags", 'a metric is either "primary" or "guardrail", not both')
        cuped_days = _number(body.get("cuped_days", 7), f"{path}.cuped_days")
        if not 0 <= cuped_days <= 365:
            raise _Invalid(f"{path}.cuped_days", "must be between 0 (off) and 365 days")
        cap = _number(body.get("cap_percentile", 99.9), f"{path}.cap_percentile")
        if not 50 <= cap <= 100:
            raise _Invalid(f"{path}.cap_percentile", "must be between 50 and 100 (100: no cap)")
        if "cap_percentile" in body and kind not in ("sum", "count"):
            raise _Invalid(f"{path}.cap_percentile", 'only applies to kind "sum" or "count"')
        return MetricSpec(
            name=name,
            event=numerator.event if numerator else _nonempty(body, path, "event", ""),
            kind=kind,
            tags=tuple(tags),
            direction=_choice(body, path, "direction", get_args(Direction), "increase"),
            fresh_within=fresh_within,
            numerator=numerator,
            denominator=denominator,
            cuped_days=cuped_days,
            cap_percentile=cap,
        )


def _event_aggregate(raw: Any, path: str) -> EventAggregate:
    if not isinstance(raw, Mapping):
        raise _Invalid(path, 'must be a table like { event = "purchase", aggregate = "sum" }')
    _known_keys(raw, path, {"event", "aggregate"})
    if "event" not in raw:
        raise _Invalid(f"{path}.event", "missing (the name of the event)")
    return EventAggregate(
        event=_nonempty(raw, path, "event", ""),
        aggregate=_choice(raw, path, "aggregate", get_args(Aggregate), "count"),
    )


# --------------------------------------------------------------------------- value checks


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


_EXPECTED = {bool: "true or false", list: "a list", str: "a string"}


def _get(body: Mapping[str, Any], path: str, key: str, kind: type[_T], default: _T) -> _T:
    value = body.get(key, default)
    if not isinstance(value, kind):
        raise _Invalid(f"{path}.{key}", f"must be {_EXPECTED[kind]}, not {_type_name(value)}")
    return value


def _table(body: Mapping[str, Any], path: str, key: str) -> Mapping[str, Any]:
    value = body.get(key, {})
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"must be a table, not {_type_name(value)}")
    return cast(Mapping[str, Any], value)


def _known_keys(body: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise _Invalid(f"{path}.{key}", f"unknown key (expected one of: {expected})")


def _nonempty(body: Mapping[str, Any], path: str, key: str, default: str) -> str:
    value = _get(body, path, key, str, default)
    if not value.strip():
        raise _Invalid(f"{path}.{key}", "must not be empty")
    return value


def _number(value: Any, path: str) -> float:
    # bool is an int in Python; `rollout = true` is a mistake, not 1 percent
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(path, f"must be a number, not {_type_name(value)}")
    if not math.isfinite(value):
        raise _Invalid(path, "must be a finite number")
    return float(value)


def _percent(body: Mapping[str, Any], path: str, key: str, default: float) -> float:
    value = _number(body.get(key, default), f"{path}.{key}")
    if not 0 <= value <= 100:
        raise _Invalid(f"{path}.{key}", f"must be between 0 and 100, not {_fmt(value)}")
    return value


def _check_buckets(percent: float, path: str) -> None:
    if abs(percent * 10 - round(percent * 10)) > 1e-6:
        raise _Invalid(
            path, f"{_fmt(percent)} is finer than 0.1 (units are split into {BUCKETS} buckets)"
        )


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _choice(
    body: Mapping[str, Any], path: str, key: str, allowed: tuple[str, ...], default: str
) -> Any:
    value = body.get(key, default)
    if value not in allowed:
        options = " or ".join(repr(a) for a in allowed)
        raise _Invalid(f"{path}.{key}", f"must be {options}, not {value!r}")
    return value


def _unit(body: Mapping[str, Any], path: str) -> str:
    unit = _get(body, path, "unit", str, "userID")
    if not _NAME.fullmatch(unit):
        raise _Invalid(f"{path}.unit", f'invalid ID type {unit!r} (e.g. "userID", "stableID")')
    return unit


def _json_value(value: Any, path: str) -> None:
    """Params become DCS JSON: TOML dates and NaN have no faithful JSON form."""
    if isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(path, "must be a finite number (JSON has no NaN or infinity)")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _json_value(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _json_value(item, f"{path}.{key}")
        return
    raise _Invalid(path, f"{type(value).__name__} values cannot be sent as JSON")


def _groups(body: Mapping[str, Any], path: str) -> tuple[Group, ...]:
    if "groups" not in body:
        raise _Invalid(f"{path}.groups", "missing (a list of { name, weight, params })")
    raw = _get(body, path, "groups", list, [])
    if not raw:
        raise _Invalid(f"{path}.groups", "must list at least one group")
    groups = tuple(_group(g, f"{path}.groups[{i}]") for i, g in enumerate(raw))
    seen: set[str] = set()
    for i, group in enumerate(groups):
        if group.name.casefold() in seen:
            raise _Invalid(f"{path}.groups[{i}].name", f"duplicate group name {group.name!r}")
        seen.add(group.name.casefold())
    total = sum(g.weight for g in groups)
    if abs(total - 100) > 1e-6:
        raise _Invalid(f"{path}.groups", f"weights add up to {_fmt(round(total, 6))}, not 100")
    return groups


def _group(raw: Any, path: str) -> Group:
    if not isinstance(raw, Mapping):
        raise _Invalid(path, f"must be a table {{ name, weight, params }}, not {_type_name(raw)}")
    _known_keys(raw, path, {"name", "weight", "params"})
    for key in ("name", "weight"):
        if key not in raw:
            raise _Invalid(f"{path}.{key}", "missing")
    weight = _number(raw["weight"], f"{path}.weight")
    if weight <= 0:
        raise _Invalid(f"{path}.weight", f"must be positive, not {_fmt(weight)}")
    _check_buckets(weight, f"{path}.weight")
    params = _table(raw, f"{path}.params", "params")
    _json_value(params, f"{path}.params")
    return Group(name=_nonempty(raw, path, "name", ""), weight=weight, params=dict(params))


# Condition tables: the key that names the kind, and the DCS field it reads.
_LIST_CONDITIONS: dict[str, str] = {"country": "country", "browser": "browser", "os": "os"}
_CONDITION_KEYS = ("country", "browser", "os", "field", "tier")


def _condition(raw: Any, path: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise _Invalid(
            path, f"must be a table such as {{ country = [...] }}, not {_type_name(raw)}"
        )
    kinds = [k for k in _CONDITION_KEYS if k in raw]
    if not kinds and raw:
        # most likely a misspelt kind: point at the key itself
        _known_keys(raw, path, set(_CONDITION_KEYS))
    if len(kinds) != 1:
        found = f"found {', '.join(kinds)}" if kinds else "found none"
        raise _Invalid(path, f"needs exactly one of {', '.join(_CONDITION_KEYS)} ({found})")
    kind = cast(ConditionKind, kinds[0])
    if kind == "field":
        return _field_condition(raw, path)
    _known_keys(raw, path, {kind})
    values = _string_list(raw[kind], f"{path}.{kind}")
    if kind == "country":
        for i, code in enumerate(values):
            if not _COUNTRY.fullmatch(code):
                raise _Invalid(f"{path}.country[{i}]", f"{code!r} is not a 2-letter ISO code")
        values = tuple(code.upper() for code in values)
    return Condition(kind=kind, values=values)


def _field_condition(raw: Mapping[str, Any], path: str) -> Condition:
    _known_keys(raw, path, {"field", "in", "equals"})
    name = _nonempty(raw, path, "field", "")
    if ("in" in raw) == ("equals" in raw):
        raise _Invalid(path, "a field condition needs exactly one of `in` or `equals`")
    if "equals" in raw:
        value = raw["equals"]
        if not isinstance(value, str | int | float):  # bool is an int
            raise _Invalid(
                f"{path}.equals", f"must be a string, number or boolean, not {_type_name(value)}"
            )
        return Condition(kind="field", field=name, values=(value,), exact=True)
    values = raw["in"]
    if not isinstance(values, list) or not values:
        raise _Invalid(f"{path}.in", "must be a non-empty list")
    for i, value in enumerate(values):
        if not isinstance(value, str | int | float):
            raise _Invalid(
                f"{path}.in[{i}]", f"must be a string, number or boolean, not {_type_name(value)}"
            )
    return Condition(kind="field", field=name, values=tuple(values))


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid(path, "must be a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _Invalid(f"{path}[{i}]", "must be a non-empty string")
    return tuple(value)


# --------------------------------------------------------------------------- compiling


def compile_dcs(spec: Spec, *, time_ms: int | None = None) -> dict[str, Any]:
    """The spec as a DCS v1 document for `StatsigOptions(local_mode=True, bootstrap_values=...)`.

    `time_ms` is the document's `time`; the SDK ignores a document older than the one it has,
    so the default (now) lets a reloaded spec replace the previous one.
    """
    return {
        "has_updates": True,
        "time": int(time.time() * 1000) if time_ms is None else time_ms,
        "feature_gates": [_gate_dcs(gate) for gate in spec.gates.values()],
        "dynamic_configs": [_experiment_dcs(exp) for exp in spec.experiments.values()],
        "layer_configs": [],
        "layers": {},
        "id_lists": {},
    }


def gate_rule_id(gate: GateSpec) -> str:
    """The id (and rule salt) of a gate's one rule: stable, so reloads keep every unit."""
    return f"{gate.name}:rollout"


def group_rule_id(experiment: ExperimentSpec, group: Group) -> str:
    return f"{experiment.name}:{group.name}"


def _dcs_condition(
    type_: str,
    unit: str,
    *,
    operator: str | None,
    target: Any,
    field: str | None = None,
    salt: str | None = None,
) -> dict[str, Any]:
    return {
        "type": type_,
        "operator": operator,
        "targetValue": target,
        "field": field,
        "additionalValues": {} if salt is None else {"salt": salt},
        "isDeviceBased": False,
        "idType": unit,
    }


def _condition_dcs(condition: Condition, unit: str) -> dict[str, Any]:
    values = list(condition.values)
    if condition.kind == "country":
        # ip_based reads user.country first; flagware fills it, so the SDK never needs an IP
        return _dcs_condition("ip_based", unit, operator="any", target=values, field="country")
    if condition.kind == "browser":
        return _dcs_condition("ua_based", unit, operator="any", target=values, field="browser_name")
    if condition.kind == "os":
        return _dcs_condition("ua_based", unit, operator="any", target=values, field="os_name")
    if condition.kind == "tier":
        return _dcs_condition(
            "environment_field", unit, operator="any", target=values, field="tier"
        )
    if condition.exact:
        return _dcs_condition(
            "user_field", unit, operator="eq", target=values[0], field=condition.field
        )
    return _dcs_condition("user_field", unit, operator="any", target=values, field=condition.field)


def _gate_dcs(gate: GateSpec) -> dict[str, Any]:
    rule_id = gate_rule_id(gate)
    conditions = [_condition_dcs(c, gate.unit) for c in gate.conditions] or [
        _dcs_condition("public", gate.unit, operator=None, target=None)
    ]
    return {
        "name": gate.name,
        "type": "feature_gate",
        "entity": "feature_gate",
        "salt": gate.salt,
        "enabled": gate.enabled,
        "defaultValue": False,
        "idType": gate.unit,
        "isDeviceBased": False,
        "rules": [
            {
                "name": "rollout",
                "id": rule_id,
                "salt": rule_id,
                "passPercentage": gate.rollout,
                "returnValue": True,
                "idType": gate.unit,
                "isDeviceBased": False,
                "conditions": conditions,
            }
        ],
    }


def _experiment_dcs(exp: ExperimentSpec) -> dict[str, Any]:
    default = exp.control.params
    rules = [_allocation_rule(exp, default)]
    if exp.targeting_gate is not None:
        rules.append(_targeting_rule(exp, exp.targeting_gate, default))
    rules.extend(_group_rules(exp))
    return {
        "name": exp.name,
        "type": "dynamic_config",
        "entity": "experiment",
        "salt": exp.salt,
        "enabled": True,
        "isActive": True,
        "hasSharedParams": False,
        "idType": exp.unit,
        "isDeviceBased": False,
        "defaultValue": default,
        "rules": rules,
    }


def _not_in_experiment_rule(
    exp: ExperimentSpec, rule_id: str, default: dict[str, Any], condition: dict[str, Any]
) -> dict[str, Any]:
    # No groupName, unlike the console's "Layer Assignment": the SDK copies groupName into
    # group_name, and a unit outside the experiment must read as group None.
    return {
        "name": rule_id,
        "id": rule_id,
        "salt": "",
        "passPercentage": 100,
        "returnValue": default,
        "idType": exp.unit,
        "isDeviceBased": False,
        "conditions": [condition],
    }


def _allocation_rule(exp: ExperimentSpec, default: dict[str, Any]) -> dict[str, Any]:
    # Units in the first `allocation` buckets of the allocation salt are in; the others stop
    # here. Its own salt keeps allocation independent of the group split, and a larger
    # allocation only adds buckets, so nobody already in leaves.
    allocated = list(range(round(exp.allocation * BUCKETS / 100)))
    condition = _dcs_condition(
        "user_bucket",
        exp.unit,
        operator="none",
        target=allocated,
        salt=exp.effective_allocation_salt,
    )
    return _not_in_experiment_rule(exp, "layerAssignment", default, condition)


def _targeting_rule(exp: ExperimentSpec, gate: str, default: dict[str, Any]) -> dict[str, Any]:
    condition = _dcs_condition("fail_gate", exp.unit, operator=None, target=gate)
    return _not_in_experiment_rule(exp, "targetingGate", default, condition)


def _group_rules(exp: ExperimentSpec) -> list[dict[str, Any]]:
    rules = []
    cumulative = 0.0
    for group in exp.groups:
        cumulative += group.weight
        rule_id = group_rule_id(exp, group)
        rules.append(
            {
                "name": group.name,
                "id": rule_id,
                "salt": rule_id,
                "groupName": group.name,
                "isExperimentGroup": True,
                "passPercentage": 100,
                "returnValue": group.params,
                "idType": exp.unit,
                "isDeviceBased": False,
                "conditions": [
                    _dcs_condition(
                        "user_bucket",
                        exp.unit,
                        operator="lt",
                        target=round(cumulative * BUCKETS / 100),
                        salt=exp.salt,
                    )
                ],
            }
        )
    return rules
