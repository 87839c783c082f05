"""The spec's data: what parsing produces and compiling and results read."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

ConditionKind = Literal["country", "browser", "os", "field", "tier"]
MetricKind = Literal["conversion", "count", "sum", "mean", "ratio"]
Aggregate = Literal["count", "sum"]
Direction = Literal["increase", "decrease"]
Scalar = str | int | float | bool

# Statsig buckets experiment units into 1000 buckets (user_bucket = hash % 1000), so
# allocation and group weights resolve to 0.1 percent.
BUCKETS = 1000
#: A comparison's units (a group and the control) where a sequential experiment's confidence
#: sequence is tightest, unless it sets ``sequential_tuning``: GrowthBook's default.
SEQUENTIAL_TUNING = 5000
# Fixed forever: changing it would move every unit of every spec without a salt.
_SALT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/flagware/flagware/salt")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the key path and the problem.

    ``problems`` lists every problem found, one ``"<file>: <key path>: <problem>"``
    line each; the message is those lines.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems if problems else [message]
        super().__init__("\n".join(self.problems) if problems else message)


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
    # IDs of its unit forced to pass or fail, before every other rule
    # (Statsig's console overrides): {"pass": (...), "fail": (...)}.
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)


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
    # Always-valid results (the results module): safe however often they are
    # read. False is a fixed horizon, valid read once at a planned size.
    sequential: bool = True
    # Where that sequence is tightest: the experiment's planned units, all
    # groups together. Any value keeps the guarantee if chosen before the data
    # are read; it only moves where the intervals are narrowest.
    sequential_tuning: int = SEQUENTIAL_TUNING
    # IDs of its unit forced into a group, before allocation and targeting:
    # {group name: (...)}. Not part of the definition (a QA account may be
    # added at any time), and their exposures are left out of results.
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A decision, as the console's "Ship": every unit gets this group's params
    # (allocated or not), and results read up to when the app first served it.
    ship: str | None = None

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
    # Sum and count metrics: winsorize here; 100 turns it off. None: the
    # default, 99.9, or 100 for a guardrail (see ``cap``).
    cap_percentile: float | None = None

    @property
    def cap(self) -> float:
        """The percentile per-unit values are capped at (100: none)."""
        if self.cap_percentile is not None:
            return self.cap_percentile
        return 100.0 if self.guardrail else 99.9

    @property
    def guardrail(self) -> bool:
        return "guardrail" in self.tags


@dataclass(frozen=True)
class Spec:
    gates: dict[str, GateSpec]
    experiments: dict[str, ExperimentSpec]
    metrics: dict[str, MetricSpec]
    source: str = "<spec>"
    custom_ids: tuple[str, ...] = ()  # ID types declared in [flagware] custom_ids

    @cached_property
    def metric_events(self) -> frozenset[str]:
        """Every event a metric reads (a ratio's denominator too): made once a
        spec, since each event logged for a user named in code asks."""
        events = {m.event for m in self.metrics.values()}
        events.update(m.denominator.event for m in self.metrics.values() if m.denominator)
        return frozenset(events)


def derived_salt(kind: str, name: str) -> str:
    """The default salt: a UUID (like the console's) that depends on nothing but the name."""
    return str(uuid.uuid5(_SALT_NAMESPACE, f"{kind}:{name}"))
