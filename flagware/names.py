"""Flag names an app reads, against its local spec, before any request.

A misspelt ``@feature_gate("nme")`` answered 404 to everyone and an unknown
experiment served its defaults, said once in the log at the first request (a
trial). What the checks need, whatever the framework: the flags a view's
decorators read (they mark it with ``decorators.FLAGS_READ``), the flags a
template names as string literals, and what to say of a name the spec
lacks. Django's system checks (W006, W007) and ``flask flagware check`` use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flagware.decorators import FLAGS_READ
from flagware.spec import Spec, did_you_mean

__all__ = [
    "KINDS",
    "Read",
    "decorator_reads",
    "jinja_reads",
    "undefined_flag",
    "undefined_flags",
    "view_flags",
]

# A flag read somewhere: (what reads it, as the message starts; kind; name;
# how each kind is read there, for the hint).
Read = tuple[str, str, str, Mapping[str, str]]
KINDS = ("gate", "experiment")


def jinja_reads(env: Any, plain_calls: bool) -> Iterator[tuple[str, int, str, str]]:
    """(template file, line, kind, name) of each flag the templates ``env``'s
    loader lists read by name: ``flags.gate("x")``, and ``gate("x")`` too with
    ``plain_calls`` (Django's Jinja2 globals). Read by Jinja's own lexer, so
    comments, ``raw`` blocks and page text say nothing (a regular expression
    flagged each: a re-check); once per template, kind and name."""
    loader = env.loader
    for template in sorted(env.list_templates()) if loader is not None else []:
        try:
            source, filename, _ = loader.get_source(env, template)
            tokens = [(t[0], t[1], t[2]) for t in env.lex(source) if t[1] != "whitespace"]
        except Exception:  # unreadable, or a syntax error: rendering says it
            continue
        seen: set[tuple[str, str]] = set()
        for i, (line, token, value) in enumerate(tokens[:-3]):
            if token != "name" or value not in KINDS or tokens[i + 2][1] != "string":
                continue
            if (tokens[i + 1][2], tokens[i + 3][2]) != ("(", ")"):
                continue
            name = tokens[i + 2][2][1:-1]
            if _on_flags(tokens, i, plain_calls) and (value, name) not in seen:
                seen.add((value, name))
                yield filename or template, line, value, name


def _on_flags(tokens: list[tuple[int, str, str]], i: int, plain_calls: bool) -> bool:
    """Whether the call at ``i`` is ``flags.<kind>(...)`` (``request.flags``
    too) or, with ``plain_calls``, a bare ``<kind>(...)``: not another
    object's method."""
    if i >= 1 and tokens[i - 1][2] == ".":
        return i >= 2 and tokens[i - 2][1:] == ("name", "flags")
    return plain_calls


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


_DECORATORS = {"gate": "@feature_gate", "experiment": "@experiment"}


def decorator_reads(views: Iterable[tuple[str, tuple[str, str]]]) -> Iterator[Read]:
    """The reads of :func:`view_flags`' (view, flag) pairs, as the checks say them."""
    for where, (kind, name) in views:
        yield f"{where} is decorated with {_DECORATORS[kind]}({name!r})", kind, name, _DECORATORS


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
