"""Always-valid inference: a normal-mixture confidence sequence and its p-value.

A fixed-horizon p-value is valid at one pre-planned look. Read after every new
batch of units, it crosses alpha far more often than alpha (in a simulation with
10 looks at alpha 0.05, about 19% of A/A experiments). A confidence sequence
holds at every sample size at once, so an experiment can be watched continuously
and stopped at any time.

Method: the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha,
Kennedy and Ramdas (2023), "Time-uniform central limit theory and asymptotic
confidence sequences", Annals of Statistics (their eq. for the Gaussian-mixture
boundary), built on the normal mixture boundary of Howard, Ramdas, McAuliffe and
Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 49(2), Proposition 5. It is the method of
GrowthBook's sequential engine (gbstats ``sequential_interval_halfwidth``) and,
as a p-value, the mixture SPRT of Johari, Koomen, Pekelis and Walsh (2017),
"Peeking at A/B tests", KDD, which Statsig's sequential testing uses.

For a difference of means with standard error ``se`` over ``n`` units in all,
the half-width is ``se * c`` with

    c^2 = 2 (n rho^2 + 1) / (n rho^2) * log(sqrt(n rho^2 + 1) / alpha)

and ``rho`` tuned so the sequence is tightest near ``n_star`` units. Solving
``|delta| = se * c`` for alpha gives the always-valid p-value

    p = min(1, sqrt(n rho^2 + 1) * exp(-z^2 n rho^2 / (2 (n rho^2 + 1)))),

so the interval at level alpha excludes 0 exactly when p < alpha.
"""

from __future__ import annotations

import math

from flagware.spec.model import SEQUENTIAL_TUNING

__all__ = ["DEFAULT_TUNING", "critical", "p_value", "rho"]

#: A comparison's units (a group and the control) where the sequence is tightest, unless an
#: experiment sets ``sequential_tuning``: GrowthBook's default.
DEFAULT_TUNING = SEQUENTIAL_TUNING


def rho(alpha: float, n_star: float = DEFAULT_TUNING) -> float:
    """The mixture's tuning parameter, as gbstats' ``sequential_rho``."""
    log_term = -2.0 * math.log(alpha)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / n_star)


def critical(alpha: float, n: int, rho_: float) -> float:
    """The multiplier of the standard error that gives the sequence's half-width at ``n``."""
    v = n * rho_ * rho_
    return math.sqrt(2.0 * (v + 1.0) / v * math.log(math.sqrt(v + 1.0) / alpha))


def p_value(z: float, n: int, rho_: float) -> float:
    """The always-valid p-value of a z statistic after ``n`` units."""
    v = n * rho_ * rho_
    log_p = 0.5 * math.log(v + 1.0) - z * z * v / (2.0 * (v + 1.0))
    return min(1.0, math.exp(log_p))
