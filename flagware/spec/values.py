"""Value checks for the spec parser: each raises ``_Invalid`` naming its key path."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from typing import Any, TypeVar, cast, get_args

from flagware.spec.model import (
    BUCKETS,
    SEQUENTIAL_TUNING,
    Aggregate,
    Condition,
    ConditionKind,
    EventAggregate,
    Group,
)

ID_TYPES = ("userID", "stableID")  # built in; others are declared in [flagware] custom_ids
MAX_DEPTH = 32  # params nested deeper than this are a mistake (and a RecursionError risk)
NAME = re.compile(r"[A-Za-z0-9_-]+")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_T = TypeVar("_T")


def did_you_mean(name: str, known: Collection[str], *, cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or ``""``."""
    by_case = [k for k in known if k.casefold() == name.casefold()]
    close = by_case or difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _fresh_within(body: Mapping[str, Any], path: str, tags: list[Any]) -> float | None:
    value = body.get("fresh_within")
    if value is None:
        return None
    hours = _number(value, f"{path}.fresh_within")
    if hours <= 0:
        raise _Invalid(f"{path}.fresh_within", "must be a positive number of hours")
    if "guardrail" not in tags:
        raise _Invalid(f"{path}.fresh_within", 'only applies to metrics tagged "guardrail"')
    return hours


def _cuped_days(body: Mapping[str, Any], path: str) -> float:
    days = _number(body.get("cuped_days", 7), f"{path}.cuped_days")
    if not 0 <= days <= 365:
        raise _Invalid(f"{path}.cuped_days", "must be between 0 (off) and 365 days")
    return days


def _sequential_tuning(body: Mapping[str, Any], path: str) -> int:
    where = f"{path}.sequential_tuning"
    units = _number(body.get("sequential_tuning", SEQUENTIAL_TUNING), where)
    if not units.is_integer() or not 100 <= units <= 1e9:
        raise _Invalid(where, f"must be a whole number of units from 100 to 1e9, not {_fmt(units)}")
    return int(units)


def _overrides(
    body: Mapping[str, Any], path: str, keys: Collection[str], what: str
) -> tuple[dict[str, tuple[str, ...]], list[_Invalid]]:
    """``overrides = { <key> = ["id", ...] }``: the IDs (of the flag's unit)
    forced to a gate's ``pass``/``fail`` or an experiment's group, as Statsig's
    console overrides do, and every problem with them (a trial was told one
    at a time). Each ID once: two answers for one ID is a mistake."""
    where = f"{path}.overrides"
    table = body.get("overrides", {})
    if not isinstance(table, Mapping):
        return {}, [_Invalid(where, f"must be a table ({what} = [IDs]), not {_type_name(table)}")]
    forced: dict[str, tuple[str, ...]] = {}
    problems: list[_Invalid] = []
    seen: dict[str, str] = {}
    for key, ids in table.items():
        if key not in keys:
            hint = f"{did_you_mean(key, keys)} (expected one of: {', '.join(keys)})"
            problems.append(_Invalid(f"{where}.{key}", f"unknown {what}{hint}"))
            continue
        if not isinstance(ids, list):
            problems.append(
                _Invalid(f"{where}.{key}", f"must be a list of IDs, not {_type_name(ids)}")
            )
            continue
        named = []
        for i, unit_id in enumerate(ids):
            # An ID as the app gives it: 42 is "42" (flags_for takes either).
            if isinstance(unit_id, bool) or not isinstance(unit_id, str | int) or unit_id == "":
                said = "must be an ID (a non-empty string or a number)"
                problems.append(_Invalid(f"{where}.{key}[{i}]", said))
                continue
            unit_id = str(unit_id)
            if unit_id in seen:
                twice = "listed twice" if seen[unit_id] == key else f"in {seen[unit_id]!r} too"
                problems.append(_Invalid(f"{where}.{key}", f"{unit_id!r} is {twice}"))
                continue
            seen[unit_id] = key
            named.append(unit_id)
        forced[key] = tuple(named)
    return forced, problems


def _ship(body: Mapping[str, Any], path: str, groups: Collection[str]) -> str | None:
    if "ship" not in body:
        return None
    group = _get(body, path, "ship", str, "")
    if group not in groups:
        raise _Invalid(
            f"{path}.ship",
            f"unknown group {group!r}{did_you_mean(group, groups)} (expected one of:"
            f" {', '.join(groups)})",
        )
    return group


def _cap_percentile(body: Mapping[str, Any], path: str, kind: str) -> float | None:
    """The metric's cap, or None for the default (MetricSpec.cap): a guardrail
    is uncapped unless asked, since a crash loop in 0.2% of units is what an
    errors guardrail is for (capping at 99.9 hid 94% of that excess in a
    statistician's trial, p 0.011 -> 0.030)."""
    if "cap_percentile" not in body:
        return None
    cap = _number(body["cap_percentile"], f"{path}.cap_percentile")
    if not 50 <= cap <= 100:
        raise _Invalid(f"{path}.cap_percentile", "must be between 50 and 100 (100: no cap)")
    if "cap_percentile" in body and kind not in ("sum", "count"):
        raise _Invalid(f"{path}.cap_percentile", 'only applies to kind "sum" or "count"')
    return cap


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


def _unknown_key(path: str, key: str, allowed: Collection[str]) -> _Invalid:
    hint = did_you_mean(key, allowed)
    return _Invalid(path, f"unknown key{hint} (expected one of: {', '.join(sorted(allowed))})")


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
            raise _unknown_key(f"{path}.{key}", key, allowed)


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


def _unit(body: Mapping[str, Any], path: str, custom_ids: tuple[str, ...]) -> str:
    unit = _get(body, path, "unit", str, "userID")
    known = (*ID_TYPES, *custom_ids)
    if unit in known:
        return unit
    # "stableId" is not "stableID": the SDK would read an absent custom ID and
    # put every unit in one bucket.
    raise _Invalid(
        f"{path}.unit",
        f"unknown ID type {unit!r}{did_you_mean(unit, known)} (ID types are case-sensitive:"
        ' "userID", "stableID", or a custom ID type declared in [flagware] custom_ids)',
    )


def _json_value(value: Any, path: str, depth: int = 0) -> None:
    """Params become DCS JSON: TOML dates and NaN have no faithful JSON form."""
    if depth > MAX_DEPTH:
        raise _Invalid(path, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(path, "must be a finite number (JSON has no NaN or infinity)")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _json_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _json_value(item, f"{path}.{key}", depth + 1)
        return
    raise _Invalid(path, f"{type(value).__name__} values cannot be sent as JSON")


def _groups(body: Mapping[str, Any], path: str) -> tuple[tuple[Group, ...], list[_Invalid]]:
    """The groups, and every problem of theirs at once: each group's, a
    duplicate name, weights that do not add up to 100 (a trial's weights hid
    its misspelt parameter, another's duplicate name three more problems).
    A group that cannot be read leaves none, so their params are not
    compared (the groups' indices would shift)."""
    if "groups" not in body:
        raise _Invalid(f"{path}.groups", "missing (a list of { name, weight, params })")
    raw = _get(body, path, "groups", list, [])
    if not raw:
        raise _Invalid(f"{path}.groups", "must list at least one group")
    groups: list[Group] = []
    problems: list[_Invalid] = []
    for i, entry in enumerate(raw):
        where = f"{path}.groups[{i}]"
        try:
            group = _group(entry, where)
            groups.append(group)
            if group.weight <= 0:
                raise _Invalid(f"{where}.weight", f"must be positive, not {_fmt(group.weight)}")
            _check_buckets(group.weight, f"{where}.weight")
        except _Invalid as exc:
            problems.append(exc)
    if len(groups) < len(raw):
        return (), problems
    seen: set[str] = set()
    for i, group in enumerate(groups):
        if group.name.casefold() in seen:
            said = f"duplicate group name {group.name!r}"
            problems.append(_Invalid(f"{path}.groups[{i}].name", said))
        seen.add(group.name.casefold())
    total = sum(g.weight for g in groups)
    if all(g.weight > 0 for g in groups) and abs(total - 100) > 1e-6:
        said = f"weights add up to {_fmt(round(total, 6))}, not 100"
        problems.append(_Invalid(f"{path}.groups", said))
    return tuple(groups), problems


def param_problems(groups: tuple[Group, ...], path: str) -> list[_Invalid]:
    """Every group sets the first group's parameters, each of the same JSON
    type, as Statsig's console requires. A group without one (or with
    ``button_colour``) read the app's default through ``get("button_color",
    "blue")``, so the experiment compared nothing while ``flagware check`` said
    "valid" (a new user's trial). An int and a float are both numbers, as in
    JSON. Each difference is a problem, all listed."""
    if not groups:
        return []
    first, *others = groups
    same = " (every group sets the same parameters)"
    found = []
    for i, group in enumerate(others, start=1):
        where = f"{path}.groups[{i}].params"
        missing = [k for k in first.params if k not in group.params]
        extra = [k for k in group.params if k not in first.params]
        for key in missing:
            typo = difflib.get_close_matches(key, extra, n=1, cutoff=0.6)
            if typo:
                extra.remove(typo[0])
                said = f"{typo[0]!r} here, {key!r} in group {first.name!r}{same}"
                found.append(_Invalid(f"{where}.{typo[0]}", said))
            else:
                said = f"has no {key!r}, which group {first.name!r} sets{same}"
                found.append(_Invalid(where, said))
        found += [_Invalid(f"{where}.{k}", f"not set in group {first.name!r}{same}") for k in extra]
        for key, value in group.params.items():
            if key in first.params:
                kind, theirs = _type_name(value), _type_name(first.params[key])
                if kind != theirs:
                    said = f"is {kind}, but {theirs} in group {first.name!r}"
                    found.append(_Invalid(f"{where}.{key}", said))
    return found


def _group(raw: Any, path: str) -> Group:
    if not isinstance(raw, Mapping):
        raise _Invalid(path, f"must be a table {{ name, weight, params }}, not {_type_name(raw)}")
    _known_keys(raw, path, {"name", "weight", "params"})
    for key in ("name", "weight"):
        if key not in raw:
            raise _Invalid(f"{path}.{key}", "missing")
    weight = _number(raw["weight"], f"{path}.weight")  # its value: checked by _groups
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
