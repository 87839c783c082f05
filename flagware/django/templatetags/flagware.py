"""``{% load flagware %}``: gates and experiments in Django templates.

    {% gate "new_signup" as show_banner %}
    {% experiment "button_color" as exp %}
    <button style="background: {{ exp.params.color|default:'blue' }}">{{ exp.group }}</button>

Both read the request's flags (``request.flags``, else the current request's),
so each is evaluated and exposed at most once per request however often a
template asks. Rendered outside a request, a gate is False and an experiment
has no group and no params, and a warning is logged once.
"""

from __future__ import annotations

import logging
from typing import Any

from django import template

from flagware.flags import Flags, _current
from flagware.overrides import Config

log = logging.getLogger("flagware")
register = template.Library()
_warned: set[str] = set()


def flags_for(request: Any) -> Flags | None:
    """The flags of ``request`` or, without one, of the request being served."""
    flags = getattr(request, "flags", None)
    if isinstance(flags, Flags):
        return flags
    flags = _current.get()
    if flags is None and "template" not in _warned:
        _warned.add("template")
        log.warning(
            "flagware: a template read a flag outside a request handled by "
            "flagware.django.FlagwareMiddleware; it gets defaults and nothing is logged"
        )
    return flags


@register.simple_tag(takes_context=True)
def gate(context: template.Context, name: str) -> bool:
    """``{% gate "name" as var %}``: whether this request passes the gate."""
    flags = flags_for(context.get("request"))
    return flags is not None and flags.gate(name)


@register.simple_tag(takes_context=True)
def experiment(context: template.Context, name: str) -> Config:
    """``{% experiment "name" as exp %}``: ``exp.group``, ``exp.params.<key>``."""
    flags = flags_for(context.get("request"))
    return flags.experiment(name) if flags is not None else Config(name, {})


@register.simple_tag(takes_context=True)
def config(context: template.Context, name: str) -> Config:
    """``{% config "name" as cfg %}``: a dynamic config, read like an experiment."""
    flags = flags_for(context.get("request"))
    return flags.config(name) if flags is not None else Config(name, {})
