"""flagware in templates rendered by Django's Jinja2 backend.

Point the backend at :func:`environment`, or call :func:`install` from your own
environment function::

    TEMPLATES = [{
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "OPTIONS": {"environment": "flagware.django.jinja2.environment"},
    }]

Templates then use the same calls as the Flask extension and the tag library::

    {% if gate("new_signup") %}...{% endif %}
    {% set exp = experiment("button_color") %}{{ exp.params.color }}
    {{ flags.stable_id }}
"""

from __future__ import annotations

from typing import Any

try:
    import jinja2
except ImportError as exc:  # pragma: no cover - exercised only without Jinja2
    raise ImportError("flagware.django.jinja2 needs Jinja2: pip install jinja2") from exc

from flagware.django.templatetags.flagware import flags_for
from flagware.overrides import Config

__all__ = ["environment", "install"]


@jinja2.pass_context
def gate(context: jinja2.runtime.Context, name: str) -> bool:
    flags = flags_for(context.get("request"))
    return flags is not None and flags.gate(name)


@jinja2.pass_context
def experiment(context: jinja2.runtime.Context, name: str) -> Config:
    flags = flags_for(context.get("request"))
    return flags.experiment(name) if flags is not None else Config(name, {})


@jinja2.pass_context
def config(context: jinja2.runtime.Context, name: str) -> Config:
    flags = flags_for(context.get("request"))
    return flags.config(name) if flags is not None else Config(name, {})


class _RequestFlags:
    """``flags`` in templates: the current request's Flags, looked up per use.

    A Jinja2 global is created once per environment, so it cannot be the
    per-request object itself; this forwards to it instead.
    """

    def __getattr__(self, name: str) -> Any:
        flags = flags_for(None)
        if flags is None:
            raise AttributeError(f"no flagware request is being served (flags.{name})")
        return getattr(flags, name)

    def __repr__(self) -> str:
        return "<flagware request flags>"


def install(env: jinja2.Environment) -> jinja2.Environment:
    """Add ``gate``, ``experiment``, ``config`` and ``flags`` to ``env.globals``."""
    env.globals.update(gate=gate, experiment=experiment, config=config, flags=_RequestFlags())
    return env


def environment(**options: Any) -> jinja2.Environment:
    """A Jinja2 environment with flagware's globals, for ``OPTIONS["environment"]``."""
    return install(jinja2.Environment(**options))
