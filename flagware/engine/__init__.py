"""Evaluation engines: where the specs come from, and which Statsig SDK evaluates them.

Specs: ``local`` (the TOML spec compiled to a DCS document, evaluated offline)
or ``statsig`` (downloaded from Statsig). SDK: ``legacy``, the ``statsig``
package (the default), or ``core``, ``statsig-python-core`` (``engine="core"``).
flagware logs exposures itself (into its own queue and store), so every SDK is
started with its logging off: that also keeps the legacy SDK's error boundary
from POSTing to a hard-coded statsigapi.net address.
"""

from flagware.engine.base import Engine, Evaluation
from flagware.engine.local import LocalEngine, LocalSpec
from flagware.engine.statsig import StatsigEngine

__all__ = ["Engine", "Evaluation", "LocalEngine", "LocalSpec", "StatsigEngine"]
