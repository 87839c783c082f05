"""From per-group summaries to corrected, mutually consistent results for a whole catalog.

Pure functions over :class:`~flagware.results.stats.Sample` (no store), so the
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

from flagware.results.corrections import benjamini_hochberg, bonferroni
from flagware.results.inference import Estimate, estimate, too_small
from flagware.results.model import GroupResult, MetricResult, Outcome, Role
from flagware.results.stats import Sample
from flagware.spec import MetricSpec

__all__ = ["PRIMARY_TAG", "analyse_metrics", "role_of"]

PRIMARY_TAG = "primary"
Correction = Callable[[Sequence[float | None], float, int | None], tuple[list[float | None], float]]
_EMPTY = Sample(0, math.nan, 0.0)


def role_of(metric: MetricSpec, catalog: Sequence[MetricSpec]) -> Role:
    if metric.guardrail:
        return "guardrail"
    if any(PRIMARY_TAG in m.tags and not m.guardrail for m in catalog):
        return "decision" if PRIMARY_TAG in metric.tags else "secondary"
    return "decision"


def analyse_metrics(
    metrics: Sequence[MetricSpec],
    samples: Sequence[dict[str, Sample]],
    groups: Sequence[str],
    control: str,
    alpha: float,
    *,
    sequential_rho: float | None = None,
) -> tuple[MetricResult, ...]:
    """Every metric's comparisons of every group with ``control``, corrected per family.

    ``samples[i]`` holds metric ``i``'s sample per group; ``groups`` is the
    display order (control included). ``sequential_rho`` switches every test to
    the always-valid confidence sequence with that tuning.
    """
    treatments = [g for g in groups if g != control]
    roles = [role_of(m, metrics) for m in metrics]
    # One estimate (or a reason for none) per metric and treatment group.
    cells: list[list[tuple[Estimate | None, str | None]]] = []
    for metric, per_group in zip(metrics, samples, strict=True):
        base = per_group.get(control, _EMPTY)
        row: list[tuple[Estimate | None, str | None]] = []
        for group in treatments:
            sample = per_group.get(group, _EMPTY)
            reason = too_small(sample, base)
            if reason is None:
                est = estimate(metric.kind, sample, base, sequential_rho=sequential_rho)
                row.append((est, None if est.p_value is not None else "no variance to test"))
            else:
                row.append((None, reason))
        cells.append(row)

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
    for i, (metric, per_group) in enumerate(zip(metrics, samples, strict=True)):
        role = roles[i]
        base = per_group.get(control, _EMPTY)
        row_results = tuple(
            _group_result(
                metric,
                group,
                control,
                per_group.get(group, _EMPTY),
                base,
                cells[i][j],
                adjusted.get((i, j), _p(cells[i][j][0])),
                levels[role],
            )
            for j, group in enumerate(treatments)
        )
        results.append(
            MetricResult(
                name=metric.name,
                event=metric.event,
                kind=metric.kind,
                tags=metric.tags,
                direction=metric.direction,
                guardrail=metric.guardrail,
                alpha=alpha,
                samples=dict(per_group),
                results=row_results,
                role=role,
                correction={
                    "decision": "bonferroni",
                    "secondary": "benjamini-hochberg",
                    "guardrail": "none",
                }[role],
                family_size=sizes[role],
            )
        )
    return tuple(results)


def _p(est: Estimate | None) -> float | None:
    return None if est is None else est.p_value


def _group_result(
    metric: MetricSpec,
    group: str,
    control: str,
    sample: Sample,
    base: Sample,
    cell: tuple[Estimate | None, str | None],
    p_adjusted: float | None,
    level: float,
) -> GroupResult:
    est, note = cell
    ci, relative_ci = est.intervals(level) if est is not None else (None, None)
    # Significant is defined by the interval itself, so the two cannot disagree.
    significant = ci is not None and (ci[0] > 0.0 or ci[1] < 0.0)
    outcome: Outcome = "neutral"
    delta = sample.mean - base.mean
    if significant:
        up = delta > 0
        outcome = "better" if up == (metric.direction == "increase") else "worse"
    m_c = base.mean
    return GroupResult(
        group=group,
        vs=control,
        units=sample.n,
        control_units=base.n,
        mean=_finite(sample.mean),
        control_mean=_finite(m_c),
        delta=_finite(delta),
        ci=ci,
        relative=(sample.mean / m_c - 1.0) if math.isfinite(m_c) and m_c > 0 else None,
        relative_ci=relative_ci,
        p_value=_p(est),
        significant=significant,
        outcome=outcome,
        p_value_adjusted=p_adjusted,
        ci_alpha=level if est is not None else None,
        method=est.method if est is not None else None,
        note=note,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
