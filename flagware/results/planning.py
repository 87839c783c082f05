"""How long to run: the minimum detectable effect now, and the units a target needs.

For a comparison with standard error ``se`` at the level ``alpha'`` it is
tested at (after the correction), the minimum detectable effect at 80% power
is ``(c(alpha') + z_0.8) * se`` (c: the critical value the interval uses). The
standard error shrinks as ``1 / sqrt(n)``, so a target effect ``d`` needs
``n * ((c + z_0.8) * se / d)^2`` units in the two groups together, the same
split kept. The sequential critical value grows slowly with n, so there the
units are found by a few fixed-point steps. This is the textbook normal power
calculation (e.g. Kohavi, Tang and Xu (2020), "Trustworthy Online Controlled
Experiments", ch. 17) that GrowthBook's power calculator also uses.
"""

from __future__ import annotations

import math

from flagware.results import sequential
from flagware.results.inference import Estimate
from flagware.results.stats import norm_ppf

__all__ = ["POWER", "minimum_detectable_effect", "units_needed"]

POWER = 0.8


def minimum_detectable_effect(est: Estimate, alpha: float) -> float | None:
    """The absolute effect detectable with 80% power at the current sample."""
    if est.p_value is None or not est.se > 0:
        return None
    return (est.crit(alpha) + norm_ppf(POWER)) * est.se


def units_needed(est: Estimate, alpha: float, effect: float) -> int | None:
    """Units (both groups together) to detect an absolute ``effect`` with 80% power."""
    if est.p_value is None or not est.se > 0 or effect <= 0:
        return None
    n = est.n_t + est.n_c
    z_power = norm_ppf(POWER)
    needed = n * ((est.crit(alpha) + z_power) * est.se / effect) ** 2
    if est.rho is not None:
        for _ in range(50):
            crit = sequential.critical(alpha, max(int(needed), 2), est.rho)
            following = n * ((crit + z_power) * est.se / effect) ** 2
            converged = abs(following - needed) < 1.0
            needed = following
            if converged:
                break
    return math.ceil(needed)
