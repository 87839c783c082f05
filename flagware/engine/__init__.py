"""Evaluation engines: where the specs come from, and which Statsig SDK evaluates them.

Specs: ``local`` (the TOML spec compiled to a DCS document, evaluated offline)
or ``statsig`` (downloaded from Statsig). SDK: ``legacy``, the ``statsig``
package (the default), or ``core``, ``statsig-python-core`` (``engine="core"``).
flagware logs exposures itself (into its own queue and store), so every SDK is
started with its logging off: that also keeps the legacy SDK's error boundary
from POSTing to a hard-coded statsigapi.net address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flagware.engine.base import Engine, Evaluation
from flagware.engine.local import LocalEngine, LocalSpec
from flagware.engine.statsig import StatsigEngine

if TYPE_CHECKING:
    from flagware.settings import EngineChoice

__all__ = [
    "Engine",
    "Evaluation",
    "LocalEngine",
    "LocalSpec",
    "StatsigEngine",
    "local_engine",
    "statsig_engine",
]


# Core is imported only when chosen: its wheel is an optional extra.


def local_engine(sdk: EngineChoice) -> type[LocalSpec]:
    """The engine class that evaluates the local spec with ``sdk``."""
    if sdk == "core":
        from flagware.engine.core import CoreLocalEngine

        return CoreLocalEngine
    return LocalEngine


def statsig_engine(sdk: EngineChoice) -> Callable[..., Engine]:
    """The engine class that evaluates Statsig's downloaded specs with ``sdk``."""
    if sdk == "core":
        from flagware.engine.core import CoreStatsigEngine

        return CoreStatsigEngine
    return StatsigEngine
