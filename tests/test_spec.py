"""flagware.spec: validation messages, and compiled documents evaluated by the real SDK.

The SDK tests run 10,000+ synthetic users through `statsig` in local mode and compare
every answer with an independent re-implementation of Statsig's hashing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import chisquare
from statsig import StatsigOptions, StatsigUser
from statsig.statsig_server import StatsigServer

from flagware.spec import (
    Condition,
    ExperimentSpec,
    Group,
    Spec,
    SpecError,
    compile_dcs,
    load_spec,
    parse_spec,
)

N_USERS = 10_000

CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
# (user agent, browser family, OS family) as the SDK's ua_parser names them
AGENTS = [
    (CHROME_MAC, "Chrome", "Mac OS X"),
    (FIREFOX_WINDOWS, "Firefox", "Windows"),
    (SAFARI_IPHONE, "Mobile Safari", "iOS"),
]
COUNTRIES = ["US", "CA", "DE", None]
PLANS = ["free", "pro", "PRO", "team", None]


def spec_from(text: str) -> Spec:
    return parse_spec(tomllib.loads(text), source="flagware.toml")


@contextmanager
def sdk(spec: Spec, *, tier: str | None = None) -> Iterator[StatsigServer]:
    """A real SDK instance evaluating the compiled spec, offline."""
    options = StatsigOptions(
        local_mode=True,
        bootstrap_values=json.dumps(compile_dcs(spec, time_ms=1_700_000_000_000)),
        disable_all_logging=True,
        tier=tier,
    )
    server = StatsigServer()
    server.initialize("secret-local", options)
    try:
        yield server
    finally:
        server.shutdown()


def make_user(i: int) -> StatsigUser:
    agent = AGENTS[i % len(AGENTS)][0]
    country = COUNTRIES[(i // 3) % len(COUNTRIES)]
    plan = PLANS[(i // 12) % len(PLANS)]
    custom: dict[str, Any] = {"beta": i % 2 == 0}
    if plan is not None:
        custom["plan"] = plan
    return StatsigUser(
        user_id=f"user-{i}",
        custom_ids={"stableID": f"stable-{i:x}"},
        country=country,
        user_agent=agent,
        custom=custom,
    )


USERS = [make_user(i) for i in range(N_USERS)]


def within(observed: int, n: int, p: float) -> bool:
    """Observed count inside 4.5 binomial standard deviations of n * p."""
    return abs(observed - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1e-9


# --------------------------------------------------------------------------- Statsig's hashing,
# re-implemented from the documented algorithm (NOTES "Hashing"), not from flagware.spec.


def h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def unit_id(user: StatsigUser, unit: str) -> str:
    if unit.lower() == "userid":
        return user.user_id or ""
    return (user.custom_ids or {}).get(unit, "")


def predict_rollout(spec_salt: str, rule_salt: str, percent: float, uid: str) -> bool:
    return h(f"{spec_salt}.{rule_salt}.{uid}") % 10_000 < percent * 100


def predict_group(exp: ExperimentSpec, user: StatsigUser, passes_targeting: bool) -> str | None:
    uid = unit_id(user, exp.unit)
    assert exp.allocation_salt is not None
    if h(f"{exp.allocation_salt}.{uid}") % 1000 >= exp.allocation * 10:
        return None
    if not passes_targeting:
        return None
    bucket = h(f"{exp.salt}.{uid}") % 1000
    upper = 0.0
    for group in exp.groups:
        upper += group.weight * 10
        if bucket < upper:
            return group.name
    raise AssertionError("weights do not cover 1000 buckets")


def gate_rule_salt(spec: Spec, gate: str) -> str:
    (dcs_gate,) = [g for g in compile_dcs(spec)["feature_gates"] if g["name"] == gate]
    (rule,) = dcs_gate["rules"]
    return str(rule["salt"])


# --------------------------------------------------------------------------- parsing


CONTRACT_EXAMPLE = """
[gates.new_signup]
rollout = 50                 # percent of units that pass

[experiments.button_color]
unit = "stableID"            # or "userID"
allocation = 100             # percent of units in the experiment
groups = [
  { name = "Control", weight = 50, params = { color = "blue" } },
  { name = "Red",     weight = 50, params = { color = "red" } },
]
"""


def test_contract_example_parses_with_defaults() -> None:
    spec = spec_from(CONTRACT_EXAMPLE)

    gate = spec.gates["new_signup"]
    assert (gate.rollout, gate.unit, gate.enabled, gate.conditions) == (50, "userID", True, ())
    exp = spec.experiments["button_color"]
    assert (exp.unit, exp.allocation, exp.targeting_gate, exp.restart) == (
        "stableID",
        100,
        None,
        False,
    )
    assert exp.groups == (
        Group("Control", 50, {"color": "blue"}),
        Group("Red", 50, {"color": "red"}),
    )
    assert exp.control.name == "Control"
    assert spec.metrics == {}
    assert spec.source == "flagware.toml"


def test_default_salts_are_pinned_uuids_derived_from_names() -> None:
    # Pinned: a different value here would move every unit of every spec without a salt.
    spec = spec_from(CONTRACT_EXAMPLE)
    assert spec.gates["new_signup"].salt == "b2302868-c1b0-5df6-9ea3-0800e6777d38"
    exp = spec.experiments["button_color"]
    assert exp.salt == "e8e05879-871e-5df2-a5a3-360ccf036f9e"
    assert exp.allocation_salt == "531cba29-e381-52db-be06-4d945e823661"


def test_explicit_keys_are_kept() -> None:
    spec = spec_from(
        """
        [flagware]
        custom_ids = ["companyID"]
        [gates.beta]
        rollout = 12.5
        unit = "stableID"
        salt = "gate-salt"
        enabled = false
        conditions = [
          { country = ["us", "CA"] }, { browser = ["Chrome"] }, { os = ["Mac OS X"] },
          { field = "plan", in = ["pro", "team"] }, { field = "beta", equals = true },
          { tier = ["production"] },
        ]
        [experiments.checkout]
        unit = "companyID"
        allocation = 40.5
        salt = "exp-salt"
        allocation_salt = "layer-salt"
        targeting_gate = "beta"
        restart = true
        groups = [{ name = "A", weight = 33.3 }, { name = "control", weight = 66.7 }]
        [metrics.latency]
        event = "page_load"
        kind = "mean"
        tags = ["guardrail", "perf", "primary_kpi"]
        direction = "decrease"
        fresh_within = 24
        """
    )
    gate = spec.gates["beta"]
    assert (gate.rollout, gate.unit, gate.salt, gate.enabled) == (
        12.5,
        "stableID",
        "gate-salt",
        False,
    )
    assert gate.conditions == (
        Condition("country", ("US", "CA")),
        Condition("browser", ("Chrome",)),
        Condition("os", ("Mac OS X",)),
        Condition("field", ("pro", "team"), field="plan"),
        Condition("field", (True,), field="beta", exact=True),
        Condition("tier", ("production",)),
    )
    exp = spec.experiments["checkout"]
    assert (exp.unit, exp.allocation, exp.salt, exp.allocation_salt) == (
        "companyID",
        40.5,
        "exp-salt",
        "layer-salt",
    )
    assert (exp.targeting_gate, exp.restart) == ("beta", True)
    assert exp.groups[0].params == {}
    assert exp.control.name == "control"  # matched case-insensitively, not just the first
    metric = spec.metrics["latency"]
    assert (metric.event, metric.kind, metric.direction, metric.fresh_within) == (
        "page_load",
        "mean",
        "decrease",
        24,
    )
    assert metric.tags == ("guardrail", "perf", "primary_kpi")  # labels near a role are fine
    assert metric.guardrail


def test_metric_defaults() -> None:
    metric = spec_from('[metrics.signups]\nevent = "signed_up"').metrics["signups"]
    assert (metric.kind, metric.tags, metric.direction, metric.fresh_within) == (
        "conversion",
        (),
        "increase",
        None,
    )
    assert not metric.guardrail


def test_control_falls_back_to_first_group() -> None:
    spec = spec_from(
        """
        [experiments.e]
        groups = [{ name = "Blue", weight = 60 }, { name = "Green", weight = 40 }]
        """
    )
    assert spec.experiments["e"].control.name == "Blue"


EXPERIMENT = "[experiments.e]\n"
GROUPS = 'groups = [{ name = "Control", weight = 50 }, { name = "Red", weight = 50 }]\n'

INVALID_SPECS = [
    # top level
    (
        "[gate.x]\nrollout = 5",
        "gate: unknown section (did you mean 'gates'?)"
        " (expected gates, experiments, metrics or flagware)",
    ),
    ("gates = 5", "gates: must be a table, not a number"),
    ("flagware = 1", "flagware: must be a table, not a number"),
    ('[gates."bad name"]', "gates: invalid name 'bad name' (use letters, digits, '_' and '-')"),
    ('[gates.""]', "gates: invalid name '' (use letters, digits, '_' and '-')"),
    ("gates.x = 1", "gates.x: must be a table, not a number"),
    # gates
    (
        "[gates.x]\nrolout = 5",
        "gates.x.rolout: unknown key (did you mean 'rollout'?)"
        " (expected one of: conditions, enabled, overrides, rollout, salt, unit)",
    ),
    (
        '[gates.x]\noverrides = { pas = ["u1"] }',
        "gates.x.overrides.pas: unknown list (did you mean 'pass'?) (expected one of: pass, fail)",
    ),
    (
        '[gates.x]\noverrides = { pass = ["u1"], fail = ["u1"] }',
        "gates.x.overrides.fail: 'u1' is in 'pass' too",
    ),
    (
        '[gates.x]\noverrides = { pass = "u1" }',
        "gates.x.overrides.pass: must be a list of IDs, not a string",
    ),
    (
        '[gates.x]\noverrides = { pass = ["a", true] }',
        "gates.x.overrides.pass[1]: must be an ID (a non-empty string or a number)",
    ),
    ('[gates.x]\nrollout = "50"', "gates.x.rollout: must be a number, not a string"),
    ("[gates.x]\nrollout = true", "gates.x.rollout: must be a number, not a boolean"),
    ("[gates.x]\nrollout = 101", "gates.x.rollout: must be between 0 and 100, not 101"),
    ("[gates.x]\nrollout = -0.5", "gates.x.rollout: must be between 0 and 100, not -0.5"),
    ("[gates.x]\nrollout = nan", "gates.x.rollout: must be a finite number"),
    ('[gates.x]\nsalt = ""', "gates.x.salt: must not be empty"),
    ("[gates.x]\nsalt = 7", "gates.x.salt: must be a string, not a number"),
    (
        '[gates.x]\nunit = "user id"',
        "gates.x.unit: unknown ID type 'user id' (did you mean 'userID'?) (ID types are"
        " case-sensitive:"
        ' "userID", "stableID", or a custom ID type declared in [flagware] custom_ids)',
    ),
    ('[gates.x]\nenabled = "yes"', "gates.x.enabled: must be true or false, not a string"),
    (
        '[gates.x]\nconditions = { country = ["US"] }',
        "gates.x.conditions: must be a list, not a table",
    ),
    # conditions
    (
        '[gates.x]\nconditions = ["US"]',
        "gates.x.conditions[0]: must be a table such as { country = [...] }, not a string",
    ),
    (
        "[gates.x]\nconditions = [{}]",
        "gates.x.conditions[0]: needs exactly one of country, browser, os, field, tier"
        " (found none)",
    ),
    (
        '[gates.x]\nconditions = [{ country = ["US"], os = ["iOS"] }]',
        "gates.x.conditions[0]: needs exactly one of country, browser, os, field, tier"
        " (found country, os)",
    ),
    (
        '[gates.x]\nconditions = [{ contry = ["US"] }]',
        "gates.x.conditions[0].contry: unknown key (did you mean 'country'?)"
        " (expected one of: browser, country, field, os, tier)",
    ),
    (
        '[gates.x]\nconditions = [{ country = ["US"], any = true }]',
        "gates.x.conditions[0].any: unknown key (expected one of: country)",
    ),
    (
        '[gates.x]\nconditions = [{ country = "US" }]',
        "gates.x.conditions[0].country: must be a non-empty list of strings",
    ),
    (
        "[gates.x]\nconditions = [{ country = [] }]",
        "gates.x.conditions[0].country: must be a non-empty list of strings",
    ),
    (
        '[gates.x]\nconditions = [{ country = ["USA"] }]',
        "gates.x.conditions[0].country[0]: 'USA' is not a 2-letter ISO code",
    ),
    (
        '[gates.x]\nconditions = [{ browser = ["Chrome", 5] }]',
        "gates.x.conditions[0].browser[1]: must be a non-empty string",
    ),
    (
        '[gates.x]\nconditions = [{ os = [" "] }]',
        "gates.x.conditions[0].os[0]: must be a non-empty string",
    ),
    (
        '[gates.x]\nconditions = [{ tier = "production" }]',
        "gates.x.conditions[0].tier: must be a non-empty list of strings",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan" }]',
        "gates.x.conditions[0]: a field condition needs exactly one of `in` or `equals`",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan", in = ["a"], equals = "a" }]',
        "gates.x.conditions[0]: a field condition needs exactly one of `in` or `equals`",
    ),
    (
        '[gates.x]\nconditions = [{ field = "", equals = "a" }]',
        "gates.x.conditions[0].field: must not be empty",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan", equal = "a" }]',
        "gates.x.conditions[0].equal: unknown key (did you mean 'equals'?)"
        " (expected one of: equals, field, in)",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan", in = [] }]',
        "gates.x.conditions[0].in: must be a non-empty list",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan", in = "pro" }]',
        "gates.x.conditions[0].in: must be a non-empty list",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan", in = ["pro", ["x"]] }]',
        "gates.x.conditions[0].in[1]: must be a string, number or boolean, not a list",
    ),
    (
        '[gates.x]\nconditions = [{ field = "plan", equals = { a = 1 } }]',
        "gates.x.conditions[0].equals: must be a string, number or boolean, not a table",
    ),
    # experiments
    (EXPERIMENT, "experiments.e.groups: missing (a list of { name, weight, params })"),
    (EXPERIMENT + "groups = []", "experiments.e.groups: must list at least one group"),
    (EXPERIMENT + 'groups = "Control"', "experiments.e.groups: must be a list, not a string"),
    (
        EXPERIMENT + GROUPS + "alocation = 5",
        "experiments.e.alocation: unknown key (did you mean 'allocation'?)"
        " (expected one of: allocation, allocation_salt,"
        " groups, overrides, restart, salt, sequential, sequential_tuning, ship, targeting_gate,"
        " unit)",
    ),
    (
        EXPERIMENT + GROUPS + "sequential_tuning = 50",
        "experiments.e.sequential_tuning: must be a whole number of units from 100 to 1e9, not 50",
    ),
    (
        EXPERIMENT + GROUPS + "sequential_tuning = 2500.5",
        "experiments.e.sequential_tuning: must be a whole number of units from 100 to 1e9,"
        " not 2500.5",
    ),
    (
        EXPERIMENT + GROUPS + 'overrides = { red = ["u1"] }',
        "experiments.e.overrides.red: unknown group (did you mean 'Red'?) (expected one of:"
        " Control, Red)",
    ),
    (
        EXPERIMENT + GROUPS + 'overrides = { Red = ["u1", "u1"] }',
        "experiments.e.overrides.Red: 'u1' is listed twice",
    ),
    (
        EXPERIMENT + GROUPS + 'overrides = [ "u1" ]',
        "experiments.e.overrides: must be a table (group = [IDs]), not a list",
    ),
    (
        EXPERIMENT + GROUPS + 'ship = "red"',
        "experiments.e.ship: unknown group 'red' (did you mean 'Red'?) (expected one of:"
        " Control, Red)",
    ),
    (
        EXPERIMENT + GROUPS + "sequential_tuning = true",
        "experiments.e.sequential_tuning: must be a number, not a boolean",
    ),
    (
        EXPERIMENT + GROUPS + "allocation = 120",
        "experiments.e.allocation: must be between 0 and 100, not 120",
    ),
    (
        EXPERIMENT + GROUPS + "allocation = 33.33",
        "experiments.e.allocation: 33.33 is finer than 0.1 (units are split into 1000 buckets)",
    ),
    (EXPERIMENT + GROUPS + "unit = 5", "experiments.e.unit: must be a string, not a number"),
    (EXPERIMENT + GROUPS + 'salt = " "', "experiments.e.salt: must not be empty"),
    (
        EXPERIMENT + GROUPS + 'allocation_salt = ""',
        "experiments.e.allocation_salt: must not be empty",
    ),
    (
        EXPERIMENT + GROUPS + "restart = 1",
        "experiments.e.restart: must be true or false, not a number",
    ),
    (
        EXPERIMENT + GROUPS + 'targeting_gate = "nope"',
        "experiments.e.targeting_gate: gate 'nope' is not defined under [gates]",
    ),
    (
        EXPERIMENT + GROUPS + 'targeting_gate = ""',
        "experiments.e.targeting_gate: must not be empty",
    ),
    (
        EXPERIMENT + GROUPS + "targeting_gate = 3",
        "experiments.e.targeting_gate: must be a string, not a number",
    ),
    (
        EXPERIMENT + 'groups = ["Control"]',
        "experiments.e.groups[0]: must be a table { name, weight, params }, not a string",
    ),
    (EXPERIMENT + "groups = [{ weight = 100 }]", "experiments.e.groups[0].name: missing"),
    (EXPERIMENT + 'groups = [{ name = "A" }]', "experiments.e.groups[0].weight: missing"),
    (
        EXPERIMENT + 'groups = [{ name = "", weight = 100 }]',
        "experiments.e.groups[0].name: must not be empty",
    ),
    (
        EXPERIMENT + "groups = [{ name = 1, weight = 100 }]",
        "experiments.e.groups[0].name: must be a string, not a number",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 100, parms = {} }]',
        "experiments.e.groups[0].parms: unknown key (did you mean 'params'?)"
        " (expected one of: name, params, weight)",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = "100" }]',
        "experiments.e.groups[0].weight: must be a number, not a string",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 0 }, { name = "B", weight = 100 }]',
        "experiments.e.groups[0].weight: must be positive, not 0",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = -10 }, { name = "B", weight = 110 }]',
        "experiments.e.groups[0].weight: must be positive, not -10",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 33.33 }, { name = "B", weight = 66.67 }]',
        "experiments.e.groups[0].weight: 33.33 is finer than 0.1"
        " (units are split into 1000 buckets)\nflagware.toml: experiments.e.groups[1].weight:"
        " 66.67 is finer than 0.1 (units are split into 1000 buckets)",
    ),
    (
        EXPERIMENT
        + 'groups = [{ name = "A", weight = 50, params = 1 }, { name = "B", weight = 50 }]',
        "experiments.e.groups[0].params: must be a table, not a number",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 100, params = { x = [1, inf] } }]',
        "experiments.e.groups[0].params.x[1]: must be a finite number"
        " (JSON has no NaN or infinity)",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 100, params = { at = 1979-05-27 } }]',
        "experiments.e.groups[0].params.at: date values cannot be sent as JSON",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "Red", weight = 50 }, { name = "red", weight = 50 }]',
        "experiments.e.groups[1].name: duplicate group name 'red'",
    ),
    (
        "[experiments.button_color]\n"
        'groups = [{ name = "Control", weight = 50 }, { name = "Red", weight = 40 }]',
        "experiments.button_color.groups: weights add up to 90, not 100",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 50.1 }, { name = "B", weight = 50 }]',
        "experiments.e.groups: weights add up to 100.1, not 100",
    ),
    # Every group sets the same parameters, each of one type: a group without
    # one read the app's default, so the experiment compared nothing.
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 50, params = { color = "blue" } },'
        ' { name = "B", weight = 50 }]',
        "experiments.e.groups[1].params: has no 'color', which group 'A' sets"
        " (every group sets the same parameters)",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 50, params = { color = "blue" } },'
        ' { name = "B", weight = 50, params = { colour = "red" } }]',
        "experiments.e.groups[1].params.colour: 'colour' here, 'color' in group 'A'"
        " (every group sets the same parameters)",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 50, params = { size = 12 } },'
        ' { name = "B", weight = 50, params = { size = "large" } }]',
        "experiments.e.groups[1].params.size: is a string, but a number in group 'A'",
    ),
    (
        EXPERIMENT + 'groups = [{ name = "A", weight = 50, params = { on = 1 } },'
        ' { name = "B", weight = 50, params = { on = true } }]',
        "experiments.e.groups[1].params.on: is a boolean, but a number in group 'A'",
    ),
    # metrics
    ("[metrics.m]", "metrics.m.event: missing (the name of the event to count)"),
    ('[metrics.m]\nevent = ""', "metrics.m.event: must not be empty"),
    ("[metrics.m]\nevent = 5", "metrics.m.event: must be a string, not a number"),
    (
        '[metrics.m]\nevent = "e"\ntype = "sum"',
        "metrics.m.type: unknown key (expected one of: cap_percentile, cuped_days, denominator,"
        " direction, event, fresh_within, kind, numerator, tags)",
    ),
    (
        '[metrics.m]\nevent = "e"\nkind = "average"',
        "metrics.m.kind: must be 'conversion' or 'count' or 'sum' or 'mean' or 'ratio',"
        " not 'average'",
    ),
    (
        '[metrics.m]\nevent = "e"\ndirection = "up"',
        "metrics.m.direction: must be 'increase' or 'decrease', not 'up'",
    ),
    (
        '[metrics.m]\nevent = "e"\ntags = "guardrail"',
        "metrics.m.tags: must be a list, not a string",
    ),
    ('[metrics.m]\nevent = "e"\ntags = ["ok", 1]', "metrics.m.tags[1]: must be a non-empty string"),
    # A role tag misspelled would silently make a guardrail a plain metric.
    (
        '[metrics.m]\nevent = "e"\ntags = ["core", "guardrails"]',
        "metrics.m.tags[1]: 'guardrails' (did you mean 'guardrail'? only the exact tag makes the"
        " metric a guardrail; for a plain label, pick another word)",
    ),
    (
        '[metrics.m]\nevent = "e"\ntags = ["Guard Rail"]',
        "metrics.m.tags[0]: 'Guard Rail' (did you mean 'guardrail'? only the exact tag makes the"
        " metric a guardrail; for a plain label, pick another word)",
    ),
    (
        '[metrics.m]\nevent = "e"\ntags = ["Primary"]',
        "metrics.m.tags[0]: 'Primary' (did you mean 'primary'? only the exact tag makes the"
        " metric primary; for a plain label, pick another word)",
    ),
    (
        '[metrics.m]\nevent = "e"\ntags = ["guardrail"]\nfresh_within = 0',
        "metrics.m.fresh_within: must be a positive number of hours",
    ),
    (
        '[metrics.m]\nevent = "e"\ntags = ["guardrail"]\nfresh_within = "1h"',
        "metrics.m.fresh_within: must be a number, not a string",
    ),
    (
        '[metrics.m]\nevent = "e"\nfresh_within = 2',
        'metrics.m.fresh_within: only applies to metrics tagged "guardrail"',
    ),
]


@pytest.mark.parametrize(("toml", "message"), INVALID_SPECS)
def test_invalid_spec_names_file_key_path_and_problem(toml: str, message: str) -> None:
    with pytest.raises(SpecError) as excinfo:
        spec_from(toml)
    assert str(excinfo.value) == f"flagware.toml: {message}"


def test_every_problem_of_an_overrides_table_is_listed() -> None:
    """A trial was told one problem of its overrides at a time."""
    toml = (
        EXPERIMENT + GROUPS + 'overrides = { Blue = ["x"], Red = [1, true, "a"], Control = ["a"] }'
    )
    with pytest.raises(SpecError) as excinfo:
        spec_from(toml)
    assert excinfo.value.problems == [
        "flagware.toml: experiments.e.overrides.Blue: unknown group (expected one of: Control,"
        " Red)",
        "flagware.toml: experiments.e.overrides.Red[1]: must be an ID (a non-empty string or a"
        " number)",
        "flagware.toml: experiments.e.overrides.Control: 'a' is in 'Red' too",
    ]


def test_weights_and_params_are_checked_together() -> None:
    """A trial's weights hid its misspelt parameter until the next check."""
    toml = (
        EXPERIMENT + 'groups = [{ name = "Control", weight = 50, params = { color = "blue" } },'
        ' { name = "Red", weight = 40, params = { colour = "red" } }]'
    )
    with pytest.raises(SpecError) as excinfo:
        spec_from(toml)
    assert excinfo.value.problems == [
        "flagware.toml: experiments.e.groups: weights add up to 90, not 100",
        "flagware.toml: experiments.e.groups[1].params.colour: 'colour' here, 'color' in group"
        " 'Control' (every group sets the same parameters)",
    ]


def test_a_duplicate_name_or_a_bad_weight_hides_no_other_problem() -> None:
    """A duplicate group name hid three problems, a weight of 0 every other (a re-check)."""
    toml = (
        EXPERIMENT + 'groups = [{ name = "Control", weight = 50, params = { c = "b", s = 1 } },'
        ' { name = "Red", weight = 40, params = { c = 3 } },'
        ' { name = "Red", weight = 0, params = { c = "r", s = 2 } }]'
    )
    with pytest.raises(SpecError) as excinfo:
        spec_from(toml)
    assert excinfo.value.problems == [
        "flagware.toml: experiments.e.groups[2].weight: must be positive, not 0",
        "flagware.toml: experiments.e.groups[2].name: duplicate group name 'Red'",
        "flagware.toml: experiments.e.groups[1].params: has no 's', which group 'Control' sets"
        " (every group sets the same parameters)",
        "flagware.toml: experiments.e.groups[1].params.c: is a number, but a string in group"
        " 'Control'",
    ]


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_parse_spec_default_source() -> None:
    with pytest.raises(SpecError, match=r"^<spec>: gates.x: must be a table, not a number$"):
        parse_spec({"gates": {"x": 1}})


def test_load_spec_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "flagware.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    spec = load_spec(path)
    assert spec.source == str(path)
    assert set(spec.gates) == {"new_signup"}
    assert spec == load_spec(str(path))


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(SpecError) as excinfo:
        load_spec(path)
    assert str(excinfo.value) == f"{path}: spec file not found"


def test_load_spec_bad_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "flagware.toml"
    path.write_text("[gates.a]\nrollout = 5\n\n[gates.b\nrollout = 1\n", encoding="utf-8")
    with pytest.raises(SpecError) as excinfo:
        load_spec(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 4" in message


def test_load_spec_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "flagware.toml"
    path.write_bytes(b'[gates.a]\nsalt = "\xff"\n')
    with pytest.raises(SpecError, match=r"invalid TOML|not UTF-8"):
        load_spec(path)


def test_load_spec_validation_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "flagware.toml"
    path.write_text("[gates.a]\nrollout = 500\n", encoding="utf-8")
    with pytest.raises(SpecError) as excinfo:
        load_spec(path)
    assert str(excinfo.value) == f"{path}: gates.a.rollout: must be between 0 and 100, not 500"


# --------------------------------------------------------------------------- compiling


THREE_GROUPS = """
[gates.eligible]
rollout = 80

[gates.fractional]
rollout = 12.34
unit = "stableID"

[gates.off]
enabled = false

[gates.nobody]
rollout = 0

[experiments.checkout]
unit = "stableID"
allocation = 40
targeting_gate = "eligible"
groups = [
  { name = "Control", weight = 20, params = { color = "blue", size = 1, nested = {} } },
  { name = "Green",   weight = 30, params = { color = "green", size = 2.5, nested = {} } },
  { name = "Red",     weight = 50, params = { color = "red", size = 3, nested = { a = [1, 2] } } },
]

[experiments.everyone]
groups = [
  { name = "A", weight = 50, params = { v = "a" } },
  { name = "B", weight = 50, params = { v = "b" } },
]
"""


def test_compile_is_deterministic_and_json() -> None:
    first = compile_dcs(spec_from(THREE_GROUPS), time_ms=123)
    second = compile_dcs(spec_from(THREE_GROUPS), time_ms=123)
    assert first == second
    assert json.loads(json.dumps(first, allow_nan=False)) == first
    assert first["time"] == 123
    rule_ids = [rule["id"] for exp in first["dynamic_configs"] for rule in exp["rules"]]
    assert rule_ids == [
        "layerAssignment",
        "targetingGate",
        "checkout:Control",
        "checkout:Green",
        "checkout:Red",
        "layerAssignment",
        "everyone:A",
        "everyone:B",
    ]


def test_compile_time_defaults_to_now() -> None:
    before = int(time.time() * 1000)
    dcs = compile_dcs(spec_from(CONTRACT_EXAMPLE))
    assert before <= dcs["time"] <= int(time.time() * 1000)


def test_compiled_experiment_looks_like_the_console() -> None:
    (exp,) = [
        e
        for e in compile_dcs(spec_from(THREE_GROUPS))["dynamic_configs"]
        if e["name"] == "checkout"
    ]
    spec_exp = spec_from(THREE_GROUPS).experiments["checkout"]
    assert exp["entity"] == "experiment"
    assert exp["defaultValue"] == {"color": "blue", "size": 1, "nested": {}}
    allocation, targeting, *groups = exp["rules"]
    assert allocation["conditions"][0]["operator"] == "none"
    assert allocation["conditions"][0]["targetValue"] == list(range(400))
    assert allocation["conditions"][0]["additionalValues"] == {"salt": spec_exp.allocation_salt}
    assert targeting["conditions"][0]["type"] == "fail_gate"
    assert targeting["conditions"][0]["targetValue"] == "eligible"
    assert "groupName" not in allocation and "groupName" not in targeting
    assert [g["conditions"][0]["targetValue"] for g in groups] == [200, 500, 1000]
    assert {g["conditions"][0]["additionalValues"]["salt"] for g in groups} == {spec_exp.salt}
    assert all(g["isExperimentGroup"] for g in groups)


# --------------------------------------------------------------------------- the real SDK


def test_gates_match_predicted_hashing_and_rollout_rates() -> None:
    spec = spec_from(THREE_GROUPS)
    gates = ["eligible", "fractional", "off", "nobody"]
    observed: Counter[str] = Counter()
    mismatches = []
    with sdk(spec) as server:
        for user in USERS:
            for name in gates:
                gate = spec.gates[name]
                value = server.check_gate(user, name, log_exposure=False)
                expected = gate.enabled and predict_rollout(
                    gate.salt, gate_rule_salt(spec, name), gate.rollout, unit_id(user, gate.unit)
                )
                observed[name] += value
                if value != expected:
                    mismatches.append((user.user_id, name, value))
        disabled = server.get_feature_gate(USERS[0], "off", log_exposure=False)
    assert mismatches == []
    assert within(observed["eligible"], N_USERS, 0.80), observed
    assert within(observed["fractional"], N_USERS, 0.1234), observed
    assert observed["off"] == observed["nobody"] == 0
    assert disabled.rule_id == "disabled"


def _targeting_spec() -> Spec:
    return spec_from(
        """
        [gates.all_of_them]
        conditions = [
          { country = ["us", "CA"] }, { browser = ["chrome", "Firefox"] },
          { os = ["mac os x", "Windows"] }, { field = "plan", in = ["PRO", "team"] },
          { tier = ["Production"] },
        ]
        [gates.country]
        conditions = [{ country = ["DE"] }]
        [gates.browser]
        conditions = [{ browser = ["Mobile Safari"] }]
        [gates.os]
        conditions = [{ os = ["iOS"] }]
        [gates.plan_exact]
        conditions = [{ field = "plan", equals = "pro" }]
        [gates.beta]
        conditions = [{ field = "beta", equals = true }]
        [gates.tier]
        conditions = [{ tier = ["staging"] }]
        [gates.half_of_germany]
        rollout = 50
        conditions = [{ country = ["DE"] }]
        """
    )


def _expected_targeting(user: StatsigUser, tier: str | None) -> dict[str, bool]:
    custom = user.custom or {}
    (browser, os_name) = next((b, o) for ua, b, o in AGENTS if ua == user.user_agent)
    plan = custom.get("plan")
    return {
        "all_of_them": user.country in ("US", "CA")
        and browser in ("Chrome", "Firefox")
        and os_name in ("Mac OS X", "Windows")
        and str(plan).lower() in ("pro", "team")
        and tier == "production",
        "country": user.country == "DE",
        "browser": browser == "Mobile Safari",
        "os": os_name == "iOS",
        "plan_exact": plan == "pro",  # `equals` is exact: "PRO" does not match
        "beta": custom["beta"] is True,
        "tier": tier == "staging",
    }


@pytest.mark.parametrize("tier", ["production", "staging", None])
def test_conditions_match_user_by_user(tier: str | None) -> None:
    spec = _targeting_spec()
    mismatches = []
    passed: Counter[str] = Counter()
    with sdk(spec, tier=tier) as server:
        for user in USERS[:3000]:
            for name, expected in _expected_targeting(user, tier).items():
                value = server.check_gate(user, name, log_exposure=False)
                passed[name] += value
                if value != expected:
                    mismatches.append((user.user_id, name, value))
    assert mismatches == []
    # every condition is exercised both ways where the tier allows it
    assert 0 < passed["country"] < 3000 and 0 < passed["plan_exact"] < 3000
    assert passed["all_of_them"] > 0 if tier == "production" else passed["all_of_them"] == 0


def test_conditions_then_rollout() -> None:
    spec = _targeting_spec()
    gate = spec.gates["half_of_germany"]
    german = passed = mismatches = 0
    with sdk(spec) as server:
        for user in USERS:
            value = server.check_gate(user, "half_of_germany", log_exposure=False)
            in_germany = user.country == "DE"
            expected = in_germany and predict_rollout(
                gate.salt, gate_rule_salt(spec, gate.name), 50, unit_id(user, "userID")
            )
            german += in_germany
            passed += value
            mismatches += value != expected
    assert mismatches == 0
    assert within(passed, german, 0.5), (passed, german)


def test_no_ip_is_needed_for_country() -> None:
    spec = spec_from('[gates.us]\nconditions = [{ country = ["US"] }]')
    with sdk(spec) as server:
        assert server.check_gate(StatsigUser("a", country="US"), "us", log_exposure=False)
        assert not server.check_gate(StatsigUser("a", country="DE"), "us", log_exposure=False)
        assert not server.check_gate(StatsigUser("a"), "us", log_exposure=False)


def test_experiment_groups_params_and_allocation_match_predictions() -> None:
    spec = spec_from(THREE_GROUPS)
    exp = spec.experiments["checkout"]
    eligible = spec.gates["eligible"]
    params = {g.name: g.params for g in exp.groups}
    groups: Counter[str | None] = Counter()
    rule_ids: Counter[str] = Counter()
    mismatches = []
    with sdk(spec) as server:
        for user in USERS:
            config = server.get_experiment(user, "checkout", log_exposure=False)
            passes_targeting = predict_rollout(
                eligible.salt, gate_rule_salt(spec, "eligible"), 80, unit_id(user, "userID")
            )
            expected = predict_group(exp, user, passes_targeting)
            if config.group_name != expected:
                mismatches.append((user.user_id, config.group_name, expected))
            # exposed units see their group's params, everyone else sees control's
            assert config.value == params[expected or "Control"]
            groups[config.group_name] += 1
            rule_ids[config.rule_id] += 1

    assert mismatches == []
    exposed = N_USERS - groups[None]
    assert within(exposed, N_USERS, 0.40 * 0.80), groups
    observed = [groups["Control"], groups["Green"], groups["Red"]]
    assert chisquare(observed, [exposed * w for w in (0.2, 0.3, 0.5)]).pvalue > 0.001, observed
    assert within(rule_ids["layerAssignment"], N_USERS, 0.60), rule_ids
    assert within(rule_ids["targetingGate"], N_USERS, 0.40 * 0.20), rule_ids
    assert rule_ids["checkout:Red"] == groups["Red"]


def test_full_allocation_without_targeting_puts_everyone_in_a_group() -> None:
    spec = spec_from(THREE_GROUPS)
    exp = spec.experiments["everyone"]
    seen: Counter[str | None] = Counter()
    with sdk(spec) as server:
        for user in USERS[:2000]:
            config = server.get_experiment(user, "everyone", log_exposure=False)
            assert config.group_name == predict_group(exp, user, passes_targeting=True)
            seen[config.group_name] += 1
            assert config.value == {"v": "a" if config.group_name == "A" else "b"}
    assert seen[None] == 0 and within(seen["A"], 2000, 0.5)


def test_zero_allocation_is_nobody() -> None:
    spec = spec_from(EXPERIMENT + GROUPS + "allocation = 0")
    with sdk(spec) as server:
        results = {
            server.get_experiment(u, "e", log_exposure=False).group_name for u in USERS[:500]
        }
    assert results == {None}


def test_raising_allocation_keeps_everyone_already_in() -> None:
    def groups_at(allocation: int) -> dict[str, str | None]:
        spec = spec_from(EXPERIMENT + GROUPS + f"allocation = {allocation}")
        with sdk(spec) as server:
            return {
                str(u.user_id): server.get_experiment(u, "e", log_exposure=False).group_name
                for u in USERS[:2000]
            }

    small, large = groups_at(30), groups_at(70)
    moved = [uid for uid, group in small.items() if group is not None and large[uid] != group]
    assert moved == []
    assert sum(g is not None for g in large.values()) > sum(g is not None for g in small.values())


def _console_condition(type_: str, operator: str | None, target: Any, **extra: Any) -> Any:
    return {
        "type": type_,
        "operator": operator,
        "targetValue": target,
        "field": extra.get("field"),
        "additionalValues": extra.get("additional", {}),
        "isDeviceBased": False,
        "idType": extra.get("unit", "stableID"),
    }


def _console_rule(rule_id: str, conditions: list[Any], value: Any, **extra: Any) -> Any:
    return {
        "name": rule_id,
        "id": rule_id,
        "salt": extra.pop("salt", rule_id),
        "passPercentage": 100,
        "returnValue": value,
        "idType": extra.pop("unit", "stableID"),
        "conditions": conditions,
        **extra,
    }


def console_fixture() -> dict[str, Any]:
    """The experiment and targeting gate of the verified console fixture, dcs_example.json
    (kept inline so the suite needs nothing outside the repository)."""
    blue = {"button_color": "blue", "show_banner": False}
    green = {"button_color": "green", "show_banner": False}
    mobile = _console_condition(
        "user_field", "any", ["ios", "android"], field="platform", unit="userID"
    )
    gate = {
        "name": "checkout_exp_targeting",
        "type": "feature_gate",
        "entity": "feature_gate",
        "salt": "gate-salt-targeting",
        "enabled": True,
        "defaultValue": False,
        "idType": "userID",
        "isDeviceBased": False,
        "rules": [
            _console_rule(
                "rule_mobile", [mobile], True, unit="userID", isDeviceBased=False, name="mobile"
            )
        ],
    }
    layer = {"salt": "layer-salt-checkout"}
    experiment_salt = {"salt": "exp-salt-checkout-button"}
    rules = [
        _console_rule(
            "layerAssignment",
            [_console_condition("user_bucket", "none", list(range(500)), additional=layer)],
            blue,
            salt="",
            groupName="Layer Assignment",
        ),
        _console_rule(
            "targetingGate",
            [_console_condition("fail_gate", None, "checkout_exp_targeting")],
            blue,
            salt="",
        ),
        _console_rule(
            "grp_control",
            [_console_condition("user_bucket", "lt", 500, additional=experiment_salt)],
            blue,
            groupName="Control",
            isExperimentGroup=True,
        ),
        _console_rule(
            "grp_test",
            [_console_condition("user_bucket", "lt", 1000, additional=experiment_salt)],
            green,
            groupName="Test",
            isExperimentGroup=True,
        ),
    ]
    experiment = {
        "name": "checkout_button_exp",
        "type": "dynamic_config",
        "entity": "experiment",
        "salt": "exp-salt-checkout-button",
        "enabled": True,
        "isActive": True,
        "hasSharedParams": True,
        "idType": "stableID",
        "isDeviceBased": False,
        "defaultValue": blue,
        "explicitParameters": ["button_color"],
        "rules": rules,
    }
    return {
        "has_updates": True,
        "time": 1700000000000,
        "feature_gates": [gate],
        "dynamic_configs": [experiment],
        "layer_configs": [],
        "layers": {},
        "id_lists": {},
    }


def test_explicit_salts_reproduce_the_console_experiment() -> None:
    """Same salts, same assignment: the verified console fixture against our compilation."""
    fixture = console_fixture()
    spec = spec_from(
        """
        [gates.checkout_exp_targeting]
        salt = "gate-salt-targeting"
        conditions = [{ field = "platform", in = ["ios", "android"] }]

        [experiments.checkout_button_exp]
        unit = "stableID"
        allocation = 50
        salt = "exp-salt-checkout-button"
        allocation_salt = "layer-salt-checkout"
        targeting_gate = "checkout_exp_targeting"
        groups = [
          { name = "Control", weight = 50, params = { button_color = "blue", show_banner = false }},
          { name = "Test", weight = 50, params = { button_color = "green", show_banner = false }},
        ]
        """
    )
    users = [
        StatsigUser(
            f"user-{i}",
            custom_ids={"stableID": f"stable-{i}"},
            custom={"platform": ["ios", "android", "web"][i % 3]},
        )
        for i in range(3000)
    ]

    def evaluate(server: StatsigServer) -> list[tuple[str | None, str, Any]]:
        results = []
        for user in users:
            config = server.get_experiment(user, "checkout_button_exp", log_exposure=False)
            # the console names its allocation rule's group; flagware leaves it None on purpose
            group = None if config.group_name == "Layer Assignment" else config.group_name
            rule_id = config.rule_id.removeprefix("checkout_button_exp:").removeprefix("grp_")
            results.append((group, rule_id.lower(), config.value))
        return results

    with sdk(spec) as server:
        ours = evaluate(server)
    theirs_server = StatsigServer()
    theirs_server.initialize(
        "secret-local",
        StatsigOptions(
            local_mode=True, bootstrap_values=json.dumps(fixture), disable_all_logging=True
        ),
    )
    try:
        theirs = evaluate(theirs_server)
    finally:
        theirs_server.shutdown()

    assert ours == theirs
    counts = Counter(group for group, _, _ in ours)
    assert counts[None] > 0 and counts["Control"] > 0 and counts["Test"] > 0


# --------------------------------------------------------------------------- fingerprint


def _base_experiment() -> ExperimentSpec:
    return spec_from(THREE_GROUPS).experiments["checkout"]


def test_fingerprint_is_stable_and_hex() -> None:
    first, second = _base_experiment(), _base_experiment()
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 64 and int(first.fingerprint(), 16) >= 0
    assert set(first.fingerprint_fields()) == {"unit", "salt", "allocation_salt", "groups"}


def test_fingerprint_ignores_allocation_restart_and_weight_spelling() -> None:
    base = _base_experiment()
    same = [
        replace(base, allocation=90),
        replace(base, restart=True),
        replace(base, targeting_gate=None),
        replace(base, groups=tuple(replace(g, weight=int(g.weight)) for g in base.groups)),
        replace(
            base,
            groups=(
                replace(base.groups[0], params={"nested": {}, "size": 1, "color": "blue"}),
                *base.groups[1:],
            ),
        ),
    ]
    for variant in same:
        assert variant.fingerprint() == base.fingerprint(), variant


def test_fingerprint_changes_with_what_decides_assignment() -> None:
    base = _base_experiment()
    control, green, red = base.groups
    changed = {
        "unit": replace(base, unit="userID"),
        "salt": replace(base, salt="another"),
        "allocation salt": replace(base, allocation_salt="another"),
        "group name": replace(base, groups=(replace(control, name="Ctl"), green, red)),
        "weight": replace(
            base, groups=(replace(control, weight=25), replace(green, weight=25), red)
        ),
        "order": replace(base, groups=(green, control, red)),
        "params": replace(base, groups=(replace(control, params={"color": "navy"}), green, red)),
        "nested params": replace(
            base,
            groups=(control, green, replace(red, params={"color": "red", "nested": {"a": [2, 1]}})),
        ),
    }
    fingerprints = {name: variant.fingerprint() for name, variant in changed.items()}
    assert base.fingerprint() not in fingerprints.values()
    assert len(set(fingerprints.values())) == len(changed)
    assert changed["params"].fingerprint_fields()["groups"][0]["params"] == {"color": "navy"}


def test_spec_changes_names_what_a_reload_added_changed_and_removed() -> None:
    from flagware.engine.local import spec_changes
    from flagware.spec import parse_spec

    old = parse_spec(
        {
            "gates": {"a": {"rollout": 10}, "b": {}},
            "experiments": {
                "e": {"groups": [{"name": "x", "weight": 50}, {"name": "y", "weight": 50}]}
            },
        }
    )
    new = parse_spec(
        {
            "gates": {"a": {"rollout": 20}, "c": {}},
            "experiments": {
                "e": {"groups": [{"name": "x", "weight": 50}, {"name": "y", "weight": 50}]}
            },
        }
    )
    assert spec_changes(old, new) == (
        "gates.a changed (rollout changed from 10 to 20); gates.c added; gates.b removed"
    )
    assert spec_changes(new, new) == "no gate, experiment or metric changed"
