"""Independent reference computations for the results tests (no flagware code)."""

from __future__ import annotations

import math

from scipy.optimize import brentq, minimize_scalar


def brute_force_z(
    d: float, x_t: int, n_t: int, x_c: int, n_c: int, ratio: bool, skew: bool = False
) -> float:
    """The MN statistic with the restricted MLE found by numerical maximisation;
    with ``skew``, Laud's (2017) skewness-corrected one (SCAS), re-typed from
    R's ratesci: the root of ``g Z**2 + Z - (z + g)``, quadratic formula as written."""
    p_t, p_c = x_t / n_t, x_c / n_c
    eps = 1e-12

    def rates(r: float) -> tuple[float, float]:
        return (r * d if ratio else r + d), r

    def neg_loglik(r: float) -> float:
        a, b = rates(r)
        a, b = min(max(a, eps), 1 - eps), min(max(b, eps), 1 - eps)
        return -(
            x_t * math.log(a)
            + (n_t - x_t) * math.log(1 - a)
            + x_c * math.log(b)
            + (n_c - x_c) * math.log(1 - b)
        )

    lo, hi = (0.0, min(1.0, 1.0 / d)) if ratio else (max(0.0, -d), min(1.0, 1.0 - d))
    r = minimize_scalar(neg_loglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    a, b = rates(r)
    scale = d if ratio else 1.0
    var = (a * (1 - a) / n_t + scale**2 * b * (1 - b) / n_c) * (n_t + n_c) / (n_t + n_c - 1)
    z = (p_t - (d * p_c if ratio else p_c + d)) / math.sqrt(var)
    if not skew:
        return z
    mu3 = a * (1 - a) * (1 - 2 * a) / n_t**2 - scale**3 * b * (1 - b) * (1 - 2 * b) / n_c**2
    g = mu3 / (6 * var**1.5)
    if g == 0:
        return z
    return (-1 + math.sqrt(max(0.0, 1 + 4 * g * (z + g)))) / (2 * g)


def brute_force_interval(
    x_t: int, n_t: int, x_c: int, n_c: int, crit: float, ratio: bool, skew: bool = False
) -> tuple[float, float]:
    def z(d: float) -> float:
        return brute_force_z(d, x_t, n_t, x_c, n_c, ratio, skew)

    point = (x_t / n_t) / (x_c / n_c) if ratio else x_t / n_t - x_c / n_c
    lo_end, hi_end = (1e-9, 1e4) if ratio else (-1 + 1e-9, 1 - 1e-9)
    lower = (
        (0.0 if ratio else lo_end)
        if z(lo_end) < crit
        else brentq(lambda d: z(d) - crit, lo_end, point)
    )
    if z(hi_end) > -crit:  # the skewness-corrected ratio statistic can level off
        return lower, math.inf
    upper = brentq(lambda d: z(d) + crit, max(point, lo_end), hi_end)
    return lower, upper
