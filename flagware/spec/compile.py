"""Compile a spec to a Statsig ``download_config_specs`` document (DCS v1).

The document has the console's own shape (allocation rule, targeting rule, one
rule per group), so the real SDK evaluating it assigns every unit exactly as
Statsig's servers would with the same salts. Names and output are stable: the
engines read them.
"""

from __future__ import annotations

import time
from typing import Any

from flagware.spec.model import BUCKETS, Condition, ExperimentSpec, GateSpec, Group, Spec

# The rule ID of an override, as flagware's own overrides (flagware.overrides)
# report it: results leave exposures with it out. (Not imported: the spec
# package stands alone.)
OVERRIDE_RULE = "override"
#: The rule ID of a shipped group (``ship``), served outside the experiment.
LAUNCHED = "launchedGroup"

__all__ = ["LAUNCHED", "compile_dcs", "gate_rule_id", "group_rule_id"]


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


def _override_rule(
    unit: str, ids: tuple[str, ...], value: Any, *, passes: bool = True, group: str | None = None
) -> dict[str, Any]:
    """IDs forced to a value before every other rule, as Statsig's console
    writes an override. Its ID is the one flagware's own overrides report
    (``flagware.overrides.OVERRIDE_RULE``), so results leave its exposures out."""
    rule: dict[str, Any] = {
        "name": OVERRIDE_RULE,
        "id": OVERRIDE_RULE,
        "salt": OVERRIDE_RULE,
        # A gate's "fail" list: its conditions match, then 0% pass (as a holdout).
        "passPercentage": 100 if passes else 0,
        "returnValue": value,
        "idType": unit,
        "isDeviceBased": False,
        "conditions": [
            _dcs_condition("unit_id", unit, operator="any_case_sensitive", target=list(ids))
        ],
    }
    if group is not None:
        rule["groupName"] = group
    return rule


def _gate_dcs(gate: GateSpec) -> dict[str, Any]:
    rule_id = gate_rule_id(gate)
    conditions = [_condition_dcs(c, gate.unit) for c in gate.conditions] or [
        _dcs_condition("public", gate.unit, operator=None, target=None)
    ]
    forced = [
        _override_rule(gate.unit, gate.overrides[answer], True, passes=answer == "pass")
        for answer in ("pass", "fail")
        if gate.overrides.get(answer)
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
            *forced,
            {
                "name": "rollout",
                "id": rule_id,
                "salt": rule_id,
                "passPercentage": gate.rollout,
                "returnValue": True,
                "idType": gate.unit,
                "isDeviceBased": False,
                "conditions": conditions,
            },
        ],
    }


def _experiment_dcs(exp: ExperimentSpec) -> dict[str, Any]:
    default = exp.control.params
    # Overrides first: a forced ID gets its group whatever its allocation.
    rules = [
        _override_rule(exp.unit, ids, group.params, group=group.name)
        for group in exp.groups
        if (ids := exp.overrides.get(group.name))
    ]
    if exp.ship is not None:
        rules.append(_launched_rule(exp, exp.ship))
    else:
        rules.append(_allocation_rule(exp, default))
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


def _launched_rule(exp: ExperimentSpec, ship: str) -> dict[str, Any]:
    """Shipped: one group's params for everyone, outside the experiment (no
    group, as the console's launched experiments are served)."""
    params = next((g.params for g in exp.groups if g.name == ship), exp.control.params)
    condition = _dcs_condition("public", exp.unit, operator=None, target=None)
    return _not_in_experiment_rule(exp, LAUNCHED, params, condition)


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
