"""flagware: feature gates, experiments and server-side events for any WSGI app."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Loaded on first use, so `flagware events` or `flagware results` does not
# import the SDK (0.4-0.7 s of a command's start) to read a store.
_EXPORTS = {
    "ConfigurationError": "flagware.client",
    "Flagware": "flagware.client",
    "experiment": "flagware.decorators",
    "feature_gate": "flagware.decorators",
    "log_event": "flagware.decorators",
    "Config": "flagware.overrides",
    "Flags": "flagware.flags",
    "NoRequestError": "flagware.flags",
    "current_flags": "flagware.flags",
    "FlagwareMiddleware": "flagware.middleware",
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the names, typed
    from flagware.client import ConfigurationError, Flagware
    from flagware.decorators import experiment, feature_gate, log_event
    from flagware.flags import Flags, NoRequestError, current_flags
    from flagware.middleware import FlagwareMiddleware
    from flagware.overrides import Config
else:  # hidden from them, so a misspelled name stays an error there

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'flagware' has no attribute {name!r}")
        value = getattr(import_module(module), name)
        globals()[name] = value  # once: later reads are plain attribute lookups
        return value

    def __dir__() -> list[str]:
        # The public names, for completion: not this module's own imports
        # (a statistician's trial read `Any` and `import_module` as API).
        return sorted([*_EXPORTS, "__version__"])


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
