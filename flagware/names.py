"""Flag names an app reads, against its local spec, before any request.

A misspelt ``@feature_gate("nme")`` answered 404 to everyone and an unknown
experiment served its defaults, said once in the log at the first request (a
trial). What the checks need, whatever the framework: the flags a view's
decorators read (they mark it with ``decorators.FLAGS_READ``), the flags a
template names as string literals, and what to say of a name the spec
lacks. Django's system checks (W006, W007) and ``flask flagware check`` use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flagware.decorators import FLAGS_READ
from flagware.spec import Spec, did_you_mean

__all__ = [
    "CALLS",
    "LOADS",
    "TAGS",
    "Read",
    "named_in",
    "undefined_flag",
    "undefined_flags",
    "view_flags",
]

# A flag read somewhere: (what reads it, as the message starts; kind; name;
# how each kind is read there, for the hint).
Read = tuple[str, str, str, Mapping[str, str]]

# Django's template tags: {% gate "x" as v %}, {% experiment 'x' as e %}.
TAGS = re.compile(r"""\{%-?\s*(gate|experiment)\s+(["'])([^"'\s]+)\2""")
# A Django template that loads flagware's tags (unless they are builtins).
LOADS = re.compile(r"\{%-?\s*load\s[^%]*\bflagware\b")
# Jinja2's calls: gate("x"), flags.experiment("x") (Flask's and Django's).
CALLS = re.compile(r"""\b(gate|experiment)\(\s*(["'])([^"'\s]+)\2\s*\)""")


def named_in(text: str, pattern: re.Pattern[str]) -> Iterator[tuple[int, str, str]]:
    """(line, kind, name) of each flag ``text`` names, once per kind and name."""
    seen: set[tuple[str, str]] = set()
    for match in pattern.finditer(text):
        kind, name = match[1], match[3]
        if (kind, name) not in seen:
            seen.add((kind, name))
            yield text.count("\n", 0, match.start()) + 1, kind, name


def view_flags(view: Any, where: str) -> Iterator[tuple[str, tuple[str, str]]]:
    """(view, (kind, name)) for each flag a routed view's decorators read:
    function views, and class-based ones (Django's and Flask's ``as_view()``
    set ``view_class``) by their class and method."""
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        yield from ((where, flag) for flag in getattr(view, FLAGS_READ, ()))
        return
    # Named by the class: a decorated dispatch read as Django's View.dispatch,
    # and as_view() copies its attributes to the view function (a re-check).
    named = f"{view_class.__module__}.{view_class.__qualname__}"
    seen = set()
    for attr, member in vars(view_class).items():
        for flag in getattr(member, FLAGS_READ, ()):
            seen.add(flag)
            yield f"{named}.{attr}", flag
    yield from ((named, f) for f in getattr(view, FLAGS_READ, ()) if f not in seen)


def undefined_flag(
    spec: Spec, kind: str, name: str, read_by: Mapping[str, str]
) -> tuple[str, str] | None:
    """What reading gate or experiment ``name`` does when the local spec lacks
    it, and the hint (``read_by``: how each kind is read there,
    ``@feature_gate`` or ``{% gate %}``); None when the spec defines it."""
    defined = list(spec.gates if kind == "gate" else spec.experiments)
    if name in defined:
        return None
    hint = f"define {kind}s.{name} in the spec, or fix the name"
    if kind == "gate" and name in spec.experiments:  # the other kind (a re-check)
        hint = f"{name!r} is an experiment: read it with {read_by['experiment']}"
    elif kind == "experiment" and name in spec.gates:
        hint = f"{name!r} is a gate: read it with {read_by['gate']}"
    said = "reads False for" if kind == "gate" else "serves its defaults to"
    lacks = f"which {spec.source} does not define{did_you_mean(name, defined)}"
    return f"{lacks}: it {said} every request", hint


def undefined_flags(spec: Spec, reads: Iterable[Read]) -> Iterator[tuple[str, str]]:
    """(message, hint) for each read of a flag the spec lacks."""
    for what, kind, name, read_by in reads:
        lacking = undefined_flag(spec, kind, name, read_by)
        if lacking is not None:
            yield f"{what}, {lacking[0]}", lacking[1]
