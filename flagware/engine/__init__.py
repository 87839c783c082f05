"""Evaluation engines. Both run the real ``statsig`` SDK evaluator.

``LocalEngine`` feeds it a download_config_specs document compiled from the
TOML spec (local mode); ``StatsigEngine`` lets it download specs from Statsig.
flagware logs exposures itself (into its own queue and store), so the SDK is
always started with ``disable_all_logging``: that also keeps its error
boundary from POSTing to a hard-coded statsigapi.net address.
"""

from flagware.engine.base import Engine, Evaluation
from flagware.engine.local import LocalEngine
from flagware.engine.statsig import StatsigEngine

__all__ = ["Engine", "Evaluation", "LocalEngine", "StatsigEngine"]
