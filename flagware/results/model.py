"""What an analysis returns: plain frozen dataclasses, rendered by :mod:`.render`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from flagware.events.model import now_ms
from flagware.results.stats import Sample

__all__ = [
    "GroupResult",
    "GroupUnits",
    "GuardrailStatus",
    "MetricResult",
    "Outcome",
    "Results",
    "ResultsError",
    "Role",
    "Verdict",
]

Verdict = Literal["blocked", "ship", "no-ship", "inconclusive"]
Outcome = Literal["better", "worse", "inconclusive"]
#: decision: can ship (corrected with Bonferroni); secondary: reported with
#: Benjamini-Hochberg, never ships; guardrail: uncorrected, a regression blocks.
Role = Literal["decision", "secondary", "guardrail"]


class ResultsError(ValueError):
    """Results cannot be computed from these inputs (unknown experiment, no store, bad alpha)."""


@dataclass(frozen=True)
class GroupUnits:
    name: str
    units: int
    weight: float  # percent of allocated units the spec assigns; 0 for unknown groups
    expected: float | None  # units expected from the weights (None without an SRM test)


@dataclass(frozen=True)
class GroupResult:
    """One metric, one group against the control.

    ``ci`` and ``relative_ci`` are drawn at ``ci_alpha`` (the level after the
    multiple-comparison correction), so ``significant`` is exactly "``ci``
    excludes 0", and ``relative_ci`` then excludes 0 on the same side.
    ``p_value_adjusted`` below the experiment's alpha says the same thing.
    """

    group: str
    vs: str
    units: int  # units in this metric's sample (for `mean`: units with a value)
    control_units: int
    mean: float | None
    control_mean: float | None
    delta: float | None
    ci: tuple[float, float] | None
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float | None
    significant: bool
    outcome: Outcome  # significant and in the metric's good direction, bad one, or neither
    p_value_adjusted: float | None = None
    ci_alpha: float | None = None
    method: str | None = None  # "welch", "pooled", "score", "delta", "delta-pooled" or "sequential"
    note: str | None = None  # why no test was made (below the minimum sample, no variance)
    mde: float | None = None  # absolute effect detectable with 80% power at this sample
    units_needed: int | None = None  # units (both groups) for the target MDE at 80% power


@dataclass(frozen=True)
class MetricResult:
    name: str
    event: str
    kind: str
    tags: tuple[str, ...]
    direction: str
    guardrail: bool
    alpha: float
    samples: dict[str, Sample]  # per group, control included
    results: tuple[GroupResult, ...]
    role: Role = "decision"
    correction: str = "bonferroni"  # "bonferroni", "benjamini-hochberg" or "none"
    family_size: int = 1
    non_numeric_events: int = 0  # sum/mean metrics: events whose value is not a number
    cuped: bool = False  # adjusted by pre-exposure data (CUPED)
    theta: float | None = None  # CUPED's pooled coefficient
    variance_reduction: dict[str, float] = field(default_factory=dict)  # per group, 0-1
    # A conversion metric left unadjusted: the pooled reduction CUPED would have made.
    cuped_skipped: float | None = None
    # CUPED asked for and not applied: no unit had the metric's events before
    # its first exposure ("none"), or every unit the same value ("constant").
    cuped_without: str | None = None
    cap: float | None = None  # per-unit values were capped here (winsorized)
    capped_units: int = 0
    group_intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardrailStatus:
    metric: str
    status: Literal["ok", "blocked", "untested"]  # untested: no unit exposed in the window
    reason: str
    newest_event: int | None  # ms


@dataclass(frozen=True)
class Results:
    experiment: str
    unit: str
    alpha: float
    control: str
    groups: tuple[GroupUnits, ...]
    srm_p_value: float | None
    srm_status: Literal["ok", "warning", "failed", "untested"]
    metrics: tuple[MetricResult, ...]
    guardrails: tuple[GuardrailStatus, ...]
    verdict: Verdict
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    best_group: str | None = None
    window_start: int | None = None  # ms, when a restart opened a new analysis window
    window_opened_by: str | None = None  # "restart" or "reset": what opened it
    units_before_window: int = 0  # units in a group before it, not exposed in it since
    shipped: str | None = None  # the group `ship` launched, if it did (results end there)
    shipped_at: int | None = None  # ms: when the app first served it
    computed_at: int = field(default_factory=now_ms)
    until: int | None = None  # ms: nothing later is counted (default: computed_at)
    sequential: bool = False
    sequential_tuning: int | None = None  # units where its sequence is tightest (sequential)
    crossover_units: int = 0  # units exposed to two groups, excluded from the analysis
    ungrouped_units: int = 0  # units first exposed with no group (not allocated, targeted out)
    units_left_groups: int = 0  # units in a group later exposed with none (targeted out later)
    units_switched_groups: int = 0  # units of the window in another group before it opened
    exposures_without_unit: int = 0  # exposures without the unit's ID: no unit to count them for
    shared_browsers: int = 0  # userID experiments: stableIDs exposed under two or more userIDs
    override_exposures: int = 0  # exposures forced by overrides (ruleID "override"), ignored
    future_events: int = 0  # exposures, and its units' events, stamped after computed_at
    first_exposure: int | None = None  # ms, the earliest counted exposure
    last_exposure: int | None = None
    cuped: bool = True  # CUPED allowed (``--no-cuped`` turns it off)
    target_mde: float = 0.05  # relative effect the planning figures are for

    @property
    def blocked(self) -> bool:
        return self.verdict == "blocked"
