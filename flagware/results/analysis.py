"""From per-group moments to corrected, mutually consistent results for a whole catalog.

Pure functions over :class:`~flagware.results.stats.Moments` (no store), so the
seeded simulations in the tests run exactly the code the CLI runs.

The families (README, "Reading results"):

- **Decision metrics** are the metrics tagged ``primary``, or, when none is,
  every metric that is not a guardrail. Their tests over (treatment groups x
  decision metrics) form one family, corrected with **Bonferroni**: each
  interval is drawn at ``alpha / m``, so the intervals are simultaneous and the
  chance that any of them calls noise significant is at most alpha. Holm's
  step-down procedure rejects a little more often, but has no intervals that
  agree with its decisions; Bonferroni's do, and it is what Statsig applies.
- **Secondary metrics** (the other non-guardrail metrics) are corrected with
  **Benjamini-Hochberg** over (treatment groups x secondary metrics) and drawn
  at Benjamini-Yekutieli's false-coverage-rate level. They are reported, never
  ship a group, and their regressions are warnings.
- **Guardrails** stay outside any family, as in GrowthBook: each is tested at
  alpha, because missing a regression is the costly error there. A significant
  regression in any group blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flagware.results import cuped, sequential
from flagware.results.corrections import benjamini_hochberg, bonferroni
from flagware.results.inference import Estimate, estimate, too_few_in_ratio, too_small
from flagware.results.model import GroupResult, MetricResult, Outcome, Role
from flagware.results.planning import minimum_detectable_effect, units_needed
from flagware.results.stats import Moments, Sample, norm_ppf
from flagware.spec import MetricSpec

__all__ = ["PRIMARY_TAG", "MetricData", "analyse_metrics", "role_of"]

PRIMARY_TAG = "primary"
Correction = Callable[[Sequence[float | None], float, int | None], tuple[list[float | None], float]]
_EMPTY = Moments(0, math.nan, 0.0)
_RATIOS = ("ratio", "mean")


@dataclass(frozen=True)
class MetricData:
    """One metric's per-group moments, and the cap already applied to them."""

    moments: dict[str, Moments]
    cap: float | None = None
    capped_units: int = 0

    @classmethod
    def of(cls, samples: dict[str, Sample]) -> MetricData:
        """Plain samples, no covariate (simulations and tests)."""
        return cls({g: Moments(s.n, s.mean, s.m2) for g, s in samples.items()})


def role_of(metric: MetricSpec, catalog: Sequence[MetricSpec]) -> Role:
    if metric.guardrail:
        return "guardrail"
    if any(PRIMARY_TAG in m.tags and not m.guardrail for m in catalog):
        return "decision" if PRIMARY_TAG in metric.tags else "secondary"
    return "decision"


class _Prepared:
    """A metric's per-group values ready to compare: adjusted by CUPED, or ratios."""

    def __init__(self, metric: MetricSpec, data: MetricData, use_cuped: bool) -> None:
        self.metric = metric
        self.data = data
        self.theta = None
        self.samples = {g: m.y for g, m in data.moments.items()}
        self.reduction: dict[str, float] = {}
        self.skipped: float | None = None  # CUPED's reduction, when too small to use
        self.without: str | None = None  # why CUPED had nothing to adjust by
        if metric.kind not in _RATIOS and use_cuped and metric.cuped_days > 0:
            self.theta = cuped.theta(data.moments)
            if self.theta is None and any(m.n for m in data.moments.values()):
                # Said, not only a JSON false: a statistician's trial read the
                # silence as CUPED applied with nothing to show.
                pre = any(m.mean_x for m in data.moments.values())
                self.without = "constant" if pre else "none"
        if self.theta is not None:
            adjusted = cuped.adjust(data.moments, self.theta)
            gain = cuped.pooled_reduction(data.moments, adjusted)
            if metric.kind == "conversion" and gain < cuped.MIN_CONVERSION_GAIN:
                # The adjusted values are no longer 0/1: the t-test would replace
                # the score test and its small-sample level for next to nothing.
                self.theta, self.skipped = None, gain
            else:
                self.samples = adjusted
                self.reduction = {
                    g: 1.0 - adjusted[g].m2 / m.m2_y for g, m in data.moments.items() if m.m2_y > 0
                }

    def means(self, group: str) -> tuple[float, float]:
        """The group's point estimate and its squared standard error."""
        if self.metric.kind in _RATIOS:
            return cuped.ratio(self.data.moments.get(group, _EMPTY))
        sample = self.samples.get(group)
        if sample is None or sample.n == 0:
            return math.nan, math.nan
        return sample.mean, sample.variance / sample.n  # variance: nan below 2 units

    def compare(
        self, group: str, control: str, rho: float | None
    ) -> tuple[Estimate | None, str | None]:
        t = self.data.moments.get(group, _EMPTY)
        c = self.data.moments.get(control, _EMPTY)
        reason = too_small(t.y, c.y)
        if reason is None and self.metric.kind in _RATIOS:
            reason = too_few_in_ratio(t.n_x, c.n_x, _denominator(self.metric))
        if reason is not None:
            return None, reason
        if self.metric.kind in _RATIOS:
            est = cuped.ratio_estimate(t, c, rho)
            if est is None:
                return None, "no denominator events in a group"
        else:
            kind = "sum" if self.theta is not None else self.metric.kind
            est = estimate(kind, self.samples[group], self.samples[control], sequential_rho=rho)
        return est, None if est.p_value is not None else "no variance to test"


def _denominator(metric: MetricSpec) -> str:
    """What a ratio metric's units must have to count in it, as the notes say it."""
    if metric.denominator is not None:
        return f"a {metric.denominator.event!r} event"
    return f"a valued {metric.event!r} event"  # mean: the sum of values over valued events


def analyse_metrics(
    metrics: Sequence[MetricSpec],
    data: Sequence[MetricData],
    groups: Sequence[str],
    control: str,
    alpha: float,
    *,
    sequential_rho: float | None = None,
    use_cuped: bool = True,
    target_mde: float = 0.05,
) -> tuple[MetricResult, ...]:
    """Every metric's comparisons of every group with ``control``, corrected per family.

    ``data[i]`` holds metric ``i``'s moments per group; ``groups`` is the
    display order (control included). ``sequential_rho`` switches every test to
    the always-valid confidence sequence with that tuning. ``target_mde`` is
    the relative effect the planning figures (units needed) are for.
    """
    treatments = [g for g in groups if g != control]
    roles = [role_of(m, metrics) for m in metrics]
    prepared = [_Prepared(m, d, use_cuped) for m, d in zip(metrics, data, strict=True)]
    cells = [[p.compare(g, control, sequential_rho) for g in treatments] for p in prepared]

    adjusted: dict[tuple[int, int], float | None] = {}
    levels: dict[Role, float] = {"guardrail": alpha}
    sizes: dict[Role, int] = {"guardrail": 1}
    families: tuple[tuple[Role, Correction], ...] = (
        ("decision", bonferroni),
        ("secondary", benjamini_hochberg),
    )
    for role, correct in families:
        keys = [(i, j) for i, r in enumerate(roles) if r == role for j in range(len(treatments))]
        p_values = [_p(cells[i][j][0]) for i, j in keys]
        sizes[role] = max(len(keys), 1)
        values, levels[role] = correct(p_values, alpha, sizes[role])
        adjusted.update(zip(keys, values, strict=True))

    results = []
    for i, prep in enumerate(prepared):
        role = roles[i]
        row = tuple(
            _group_result(
                prep,
                group,
                control,
                cells[i][j],
                adjusted.get((i, j), _p(cells[i][j][0])),
                levels[role],
                target_mde,
            )
            for j, group in enumerate(treatments)
        )
        results.append(_metric_result(prep, row, role, sizes[role], alpha, groups, sequential_rho))
    return tuple(results)


def _metric_result(
    prep: _Prepared,
    row: tuple[GroupResult, ...],
    role: Role,
    size: int,
    alpha: float,
    groups: Sequence[str],
    sequential_rho: float | None,
) -> MetricResult:
    metric = prep.metric
    z = norm_ppf(1 - alpha / 2)
    intervals: dict[str, tuple[float, float] | None] = {}
    for group in groups:
        mean, var = prep.means(group)
        n_x = prep.data.moments.get(group, _EMPTY).n_x
        if not math.isfinite(var) or (metric.kind in _RATIOS and n_x is not None and n_x < 2):
            # One buyer's revenue per purchase is exactly its own ratio: the
            # delta method gives it no spread, and a zero-width interval.
            intervals[group] = None
            continue
        # Each group's mean, as the comparisons: always valid when they are.
        n = prep.data.moments.get(group, _EMPTY).n
        k = z if sequential_rho is None else sequential.critical(alpha, n, sequential_rho)
        low, high = mean - k * math.sqrt(var), mean + k * math.sqrt(var)
        # A rate lies in [0, 1] and a count is never negative: the interval
        # keeps its coverage cut there, and reads as a rate (a new user's
        # trial saw [-0.52, 0.66] for a small group's sequential interval).
        if metric.kind in ("conversion", "count"):
            low = max(low, 0.0)
        if metric.kind == "conversion":
            high = min(high, 1.0)
        intervals[group] = (low, high)
    return MetricResult(
        name=metric.name,
        event=metric.event,
        kind=metric.kind,
        tags=metric.tags,
        direction=metric.direction,
        guardrail=metric.guardrail,
        alpha=alpha,
        samples={g: m.y for g, m in prep.data.moments.items()},
        results=row,
        role=role,
        correction={
            "decision": "bonferroni",
            "secondary": "benjamini-hochberg",
            "guardrail": "none",
        }[role],
        family_size=size,
        cuped=prep.theta is not None,
        theta=prep.theta,
        variance_reduction=prep.reduction,
        cuped_skipped=prep.skipped,
        cuped_without=prep.without,
        cap=prep.data.cap,
        capped_units=prep.data.capped_units,
        group_intervals=intervals,
    )


def _p(est: Estimate | None) -> float | None:
    return None if est is None else est.p_value


def _group_result(
    prep: _Prepared,
    group: str,
    control: str,
    cell: tuple[Estimate | None, str | None],
    p_adjusted: float | None,
    level: float,
    target_mde: float,
) -> GroupResult:
    est, note = cell
    ci, relative_ci = est.intervals(level) if est is not None else (None, None)
    if relative_ci is not None and prep.metric.kind == "count":
        # No count falls below none, so neither does a ratio of mean counts; Fieller's
        # interval, blind to signs, reached -119% for a skewed treatment. What it
        # leaves out holds no true value, so its level is unchanged.
        relative_ci = (max(relative_ci[0], -1.0), max(relative_ci[1], -1.0))
    if prep.metric.kind == "conversion":
        # A difference of two shares lies in [-1, 1] and a lift at or above
        # -100%: a sequential interval reached [-1.341, +1.28] and -122.3% on a
        # few units (a new user's trial). Cut to what can be true, the level is
        # unchanged, and so is whether the interval holds 0.
        if ci is not None and ci[0] <= 1.0 and ci[1] >= -1.0:
            ci = (max(ci[0], -1.0), min(ci[1], 1.0))
        if relative_ci is not None:
            relative_ci = (max(relative_ci[0], -1.0), max(relative_ci[1], -1.0))
    # Significant is defined by the interval itself, so the two cannot disagree.
    significant = ci is not None and (ci[0] > 0.0 or ci[1] < 0.0)
    mean, _ = prep.means(group)
    control_mean, _ = prep.means(control)
    if est is not None:
        mean, control_mean = est.m_t, est.m_c
    delta = mean - control_mean
    outcome: Outcome = "inconclusive"
    if significant:
        up = delta > 0
        outcome = "better" if up == (prep.metric.direction == "increase") else "worse"
    units = prep.data.moments.get(group, _EMPTY).n
    control_units = prep.data.moments.get(control, _EMPTY).n
    mde = needed = None
    if est is not None:
        mde = minimum_detectable_effect(est, level)
        if math.isfinite(control_mean) and control_mean > 0:
            needed = units_needed(est, level, target_mde * control_mean)
    return GroupResult(
        group=group,
        vs=control,
        units=units,
        control_units=control_units,
        mean=_finite(mean),
        control_mean=_finite(control_mean),
        delta=_finite(delta),
        ci=ci,
        # A mean over no events (a group that never had the denominator) is nan:
        # no lift, not "+nan%" in the text and a crash in the JSON.
        relative=(mean / control_mean - 1.0)
        if math.isfinite(mean) and math.isfinite(control_mean) and control_mean > 0
        else None,
        relative_ci=relative_ci,
        p_value=_p(est),
        significant=significant,
        outcome=outcome,
        p_value_adjusted=p_adjusted,
        ci_alpha=level if est is not None else None,
        method=None if est is None else est.method + ("+cuped" if prep.theta is not None else ""),
        note=note,
        mde=mde,
        units_needed=needed,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
