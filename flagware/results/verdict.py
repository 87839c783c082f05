"""Checks that block a launch, and the verdict.

In order:

1. **Blocked** by any of: a sample ratio mismatch (chi-square of units against
   the weights, p < 0.001; p < 0.01 warns); crossover units (exposed to two
   groups) above :data:`CROSSOVER_BLOCK` of the units; a guardrail that is stale
   (no event within ``fresh_within`` hours, or none at all) or that regressed
   significantly in any group.
2. **Ship** a group whose decision metrics include a significant improvement
   (after the Bonferroni correction) and no significant regression; the group
   with the most such improvements is named (ties: the spec's order).
3. **No-ship** when a decision metric regressed significantly and no group ships.
4. Otherwise **inconclusive**, saying whether the sample is still below the
   minimum for a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from flagware.results.formatting import p_phrase
from flagware.results.inference import MIN_UNITS
from flagware.results.model import GroupResult, GroupUnits, GuardrailStatus, MetricResult, Verdict

__all__ = [
    "CROSSOVER_BLOCK",
    "FIXED_HORIZON",
    "SRM_BLOCK_P",
    "SRM_RULE",
    "SRM_WARN_P",
    "describe",
    "guardrail_status",
    "srm_status",
    "verdict",
]

SRM_WARN_P = 0.01
SRM_BLOCK_P = 0.001
#: Said beside the status: "ok" alone beside p = 0.013 read as a clean bill
#: (a statistician's trial); it only means not below the warning line.
SRM_RULE = f"warns below {SRM_WARN_P:g}, blocks below {SRM_BLOCK_P:g}"
#: Crossovers above this share of the experiment's units block the launch
#: (GrowthBook's multiple-exposure warning threshold); any crossover warns.
CROSSOVER_BLOCK = 0.01


#: Said with every fixed-horizon result: its error rates hold for one look.
FIXED_HORIZON = (
    "fixed horizon (sequential = false, or --no-sequential): this verdict is valid read"
    " once, at the sample"
    " size planned before the experiment started; read repeatedly, it calls noise"
    " significant more often than alpha (sequential = true may be read any time)"
)


def srm_status(p: float | None) -> Literal["ok", "warning", "failed", "untested"]:
    if p is None:
        return "untested"
    if p < SRM_BLOCK_P:
        return "failed"
    return "warning" if p < SRM_WARN_P else "ok"


def never_stored_phrase(event: str, hint: str) -> str:
    """An event the store never held, as results and ``flagware check`` both say it."""
    return f"no {event!r} events stored{hint}"


#: Why a guardrail without data blocks, in results and in ``flagware check``.
UNCHECKABLE = "the guardrail cannot be checked"


def guardrail_status(
    result: MetricResult,
    newest: int | None,
    fresh_within: float | None,
    now: int,
    never_stored: tuple[str, str] | None = None,
    exposed: bool = True,
) -> GuardrailStatus:
    """``newest``: the newest event's time in the analysis window, if any;
    ``never_stored``: an event the metric reads that the store never held, with
    its did-you-mean ("" if none); ``exposed``: whether any unit was exposed in
    the window."""
    event = result.event
    if not exposed:
        # No unit in the window (a restart or reset a moment ago, an --until
        # before the first exposure): nothing to launch and nothing to vouch
        # for. It blocked, and two new users' trials read exit 3 right after
        # a restart as a real block; the verdict says "no units" instead.
        reason = "no unit was exposed in the analysis window yet: nothing to check"
        return GuardrailStatus(result.name, "untested", reason, newest)
    # Each reason is said: a guardrail both stale and regressed said only
    # "stale" (a new user's trial), and a team that fixed the logging would
    # have read the block as gone while the regression stood.
    problems: list[str] = []
    if never_stored is not None or newest is None:
        if never_stored is not None:
            what = never_stored_phrase(*never_stored)
        else:  # stored, only not in this window (--until before them)
            what = f"no {event!r} events in the analysis window"
        problems.append(f"not fed: {what}, so {UNCHECKABLE}")  # "stale" read oddly (a trial)
    elif fresh_within is not None and (now - newest) / 3_600_000 > fresh_within:
        age, limit = (now - newest) / 3_600_000, _hours(fresh_within)
        problems.append(
            f"stale: newest {event!r} event is {_hours(age)} old (fresh_within = {fresh_within:g} h"
            + ("" if limit.endswith(" h") else f", {limit}")
            + ")"
        )
    worse = [r for r in result.results if r.outcome == "worse"]
    if worse:
        problems.append("regressed: " + "; ".join(describe(result.name, r) for r in worse))
    if problems:
        return GuardrailStatus(result.name, "blocked", "; and ".join(problems), newest)
    return GuardrailStatus(result.name, "ok", "no significant regression", newest)


def _hours(hours: float) -> str:
    """A span given in hours, in the unit that shows it: "0.0 h old" read as
    fresh against a 0.01 h limit (a new user's trial)."""
    if hours >= 1:
        return f"{hours:.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.0f} s"


def describe(metric: str, r: GroupResult) -> str:
    change = f"{r.relative:+.1%}" if r.relative is not None else f"{r.delta:+.4g}"
    if r.p_value_adjusted is not None and r.p_value_adjusted != r.p_value:
        p = p_phrase(r.p_value_adjusted, "adjusted p")
    else:
        p = p_phrase(r.p_value) if r.p_value is not None else "p n/a"
    return f"{metric} {change} in {r.group} vs {r.vs} ({p})"


def verdict(
    srm_p: float | None,
    groups: Sequence[GroupUnits],
    metrics: Sequence[MetricResult],
    guardrails: Sequence[GuardrailStatus],
    alpha: float,
    *,
    crossover_units: int = 0,
    ungrouped_units: int = 0,
    future_events: int = 0,
    sequential: bool = False,
    shipped: str | None = None,
) -> tuple[Verdict, list[str], list[str], str | None]:
    """(verdict, reasons, warnings, best group)."""
    warnings: list[str] = []
    blockers: list[str] = []
    if srm_p is not None and srm_p < SRM_WARN_P:
        counts = ", ".join(f"{g.name} {g.units}" for g in groups)
        message = f"sample ratio mismatch: {p_phrase(srm_p)} for units {counts} against the weights"
        (blockers if srm_p < SRM_BLOCK_P else warnings).append(message)
    units = sum(g.units for g in groups)
    if crossover_units:
        share = crossover_units / (units + crossover_units)
        message = (
            f"{crossover_units} unit(s) ({share:.1%}) were exposed to more than one group and"
            " are left out of the analysis"
        )
        (blockers if share > CROSSOVER_BLOCK else warnings).append(
            message + (f" (above {CROSSOVER_BLOCK:.0%})" if share > CROSSOVER_BLOCK else "")
        )
    if not sequential:
        warnings.append(FIXED_HORIZON)
    if future_events:
        warnings.append(
            f"{future_events} event(s) are stamped in the future (clock skew?) and are not counted"
        )
    blockers += [f"guardrail {g.metric}: {g.reason}" for g in guardrails if g.status == "blocked"]

    wins: dict[str, list[str]] = {}
    losses: dict[str, list[str]] = {}
    for m in metrics:
        for r in m.results:
            if m.role == "decision" and r.outcome == "better":
                wins.setdefault(r.group, []).append(describe(m.name, r))
            elif m.role == "decision" and r.outcome == "worse":
                losses.setdefault(r.group, []).append(describe(m.name, r))
            elif m.role == "secondary" and r.outcome == "worse":
                warnings.append(f"secondary metric regressed: {describe(m.name, r)}")
    shippable = [g.name for g in groups if wins.get(g.name) and not losses.get(g.name)]
    best = max(shippable, key=lambda g: len(wins[g])) if shippable else None
    regressions = [text for items in losses.values() for text in items]

    if blockers:
        # No best group: a JSON reader taking best_group as "ship this" must not
        # launch past a block (a guardrail regressed in C blocks shipping B too).
        # What would ship is still said: a statistician's trial found B's clean
        # win nowhere in the verdict once C's guardrail blocked it.
        if best is not None:
            warnings.append(f"but for the block, {best} would ship: " + "; ".join(wins[best]))
        return "blocked", blockers, warnings, None
    if best is not None:
        warnings += [f"also: {text}" for text in regressions]
        return "ship", [f"ship {best}: " + "; ".join(wins[best])], warnings, best
    if regressions:
        return "no-ship", [f"significant regression: {t}" for t in regressions], warnings, None
    if not units and shipped is not None:
        # Shipped as it started (a ship left across `flagware reset`): it read
        # "not allocated, or failing the targeting gate" (a re-check).
        reason = (
            f"no unit is in a group: {shipped} was shipped before any unit was, so every"
            " unit exposed was served its params outside the experiment"
        )
        return "inconclusive", [reason], warnings, None
    if not units and ungrouped_units:
        reason = (
            f"no unit is in a group: the {ungrouped_units} unit(s) exposed were first exposed"
            " outside the groups (not allocated, or failing the experiment's targeting gate)"
        )
        return "inconclusive", [reason], warnings, None
    if not units:
        return "inconclusive", ["no units exposed to the experiment yet"], warnings, None
    if not any(m.role == "decision" for m in metrics):  # it said none "moved" (a trial)
        reason = (
            "no decision metric to decide by: declare metrics in the spec ([metrics.<name>];"
            " every metric that is not a guardrail decides, unless some are tagged primary)"
        )
        return "inconclusive", [reason], warnings, None
    decision = [r for m in metrics if m.role == "decision" for r in m.results]
    if decision and all(r.note and "at least" in r.note for r in decision):
        reason = (
            f"not enough data for a call: every decision metric needs at least {MIN_UNITS}"
            " units in each group (a ratio or mean metric, 10 units with its denominator:"
            " a mean metric's, a valued event)"
        )
        return "inconclusive", [reason], warnings, None
    how = "always-valid, Bonferroni-corrected" if sequential else "Bonferroni-corrected"
    reason = f"no decision metric moved significantly ({how}, alpha {alpha:g})"
    return "inconclusive", [reason], warnings, None
