"""flagware: feature gates, experiments and server-side events for any WSGI app."""

from flagware.client import ConfigurationError, Flagware
from flagware.decorators import experiment, feature_gate, log_event
from flagware.flags import Config, Flags, NoRequestError, current_flags
from flagware.middleware import FlagwareMiddleware

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigurationError",
    "Flags",
    "Flagware",
    "FlagwareMiddleware",
    "NoRequestError",
    "current_flags",
    "experiment",
    "feature_gate",
    "log_event",
]
