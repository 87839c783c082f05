"""The compiled spec in the shape Statsig's Core SDK reads (DCS v2).

``compile_dcs`` emits the v1 document the legacy SDK reads: specs in lists and
conditions inline in each rule. Core rejects that (``invalid type: sequence,
expected a map``); it wants specs in maps keyed by name and every condition
stored once in ``condition_map``, referenced from rules by key. The evaluation
fields are the same, so the conversion is mechanical and assignments do not
change (the oracle test in tests/test_core_oracle.py holds both SDKs to it),
except for the one difference between the SDKs themselves that it documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["to_v2"]


def to_v2(dcs: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 DCS document (``flagware.spec.compile_dcs``) as a v2 one."""
    conditions: dict[str, dict[str, Any]] = {}

    def specs(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return {spec["name"]: _spec(spec, conditions) for spec in items}

    experiment_to_layer = {
        experiment: layer
        for layer, experiments in dcs.get("layers", {}).items()
        for experiment in experiments
    }
    return {
        "has_updates": True,
        "time": dcs["time"],
        "feature_gates": specs(dcs.get("feature_gates", ())),
        "dynamic_configs": specs(dcs.get("dynamic_configs", ())),
        "layer_configs": specs(dcs.get("layer_configs", ())),
        "condition_map": conditions,
        "experiment_to_layer": experiment_to_layer,
    }


def _spec(spec: Mapping[str, Any], conditions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # The legacy SDK skips the rules of a disabled spec; Core does not look at
    # `enabled` before evaluating rules (Statsig serves disabled specs to it
    # without any), so a disabled spec goes over with none: default value,
    # rule ID "disabled", as on the legacy SDK.
    rules = [
        {**rule, "conditions": [_key(c, conditions) for c in rule["conditions"]]}
        for rule in (spec["rules"] if spec.get("enabled", True) else ())
    ]
    return {**spec, "rules": rules}


def _key(condition: Mapping[str, Any], conditions: dict[str, dict[str, Any]]) -> str:
    # Keyed by content, as the console does: identical conditions are stored once
    # and a key never depends on the order specs were written in.
    text = json.dumps(condition, sort_keys=True, separators=(",", ":"))
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    conditions[key] = dict(condition)
    return key
