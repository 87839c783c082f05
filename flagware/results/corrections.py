"""Multiple-comparison corrections: Bonferroni for decisions, Benjamini-Hochberg for the rest.

Both take p-values (``None`` for comparisons that could not be tested) and
return adjusted p-values in the same order, clipped at 1, as
``statsmodels.stats.multitest.multipletests`` does (``tests`` check the two
agree). ``m`` is the family size; it counts untestable comparisons too, because
they were planned and a family must not shrink when data are missing.

Each also gives the level at which a comparison's interval must be drawn so
that the interval excludes 0 exactly when the adjusted p-value is below alpha:

- Bonferroni (1936): every interval at ``alpha / m``; these are simultaneous
  intervals, all covering at once with probability at least ``1 - alpha``.
- Benjamini and Hochberg (1995), "Controlling the false discovery rate", JRSS B
  57(1): with ``R`` rejections, intervals at ``R * alpha / m`` (``alpha / m``
  when none): the false-coverage-rate adjusted intervals of Benjamini and
  Yekutieli (2005), "False discovery rate-adjusted multiple confidence
  intervals for selected parameters", JASA 100(469).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["benjamini_hochberg", "bonferroni"]


def bonferroni(
    p_values: Sequence[float | None], alpha: float, m: int | None = None
) -> tuple[list[float | None], float]:
    """Adjusted p-values ``min(1, m p)`` and the per-comparison level ``alpha / m``."""
    size = max(m if m is not None else len(p_values), 1)
    adjusted = [None if p is None else min(1.0, p * size) for p in p_values]
    return adjusted, alpha / size


def benjamini_hochberg(
    p_values: Sequence[float | None], alpha: float, m: int | None = None
) -> tuple[list[float | None], float]:
    """Step-up adjusted p-values and the FCR-adjusted level ``max(R, 1) * alpha / m``."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    size = max(m if m is not None else len(p_values), 1)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 1.0
    # From the largest p down: adjusted p_(k) = min over j >= k of m p_(j) / j.
    for rank in range(len(tested), 0, -1):
        p, index = tested[rank - 1]
        running = min(running, p * size / rank)
        adjusted[index] = running
    rejected = sum(1 for p in adjusted if p is not None and p < alpha)
    return adjusted, max(rejected, 1) * alpha / size
