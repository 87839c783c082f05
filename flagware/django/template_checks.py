"""flagware.W007: a template that reads a gate or an experiment the local spec
does not define (``manage.py check``; the URLconf's views are W006).

A misspelt ``{% gate "nme" %}`` reads False for every visitor and an unknown
experiment serves its defaults, said once in the log at the first render: the
check names the file and line before any request. Only names written as
string literals are known here; Django templates that load flagware's tags
(or have them as builtins) and Jinja2 templates under flagware's environment
are read, from each engine's directories (app directories included).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.checks import CheckMessage, register

from flagware.names import CALLS, LOADS, TAGS, named_in, undefined_flags

# How each kind is read, in Django's templates (tags) and in Jinja2's (calls).
_READ_BY = {
    True: {"gate": "{% gate %}", "experiment": "{% experiment %}"},
    False: {"gate": "gate(...)", "experiment": "experiment(...)"},
}
_LARGEST = 1 << 20  # bytes: larger files are no templates worth reading at every check


@register("flagware", checks.Tags.templates)
def check_templates(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from flagware.django.checks import local_spec

    try:
        spec = local_spec()
    except Exception:  # E002, E003 or E005 say it
        return []
    if spec is None:  # on Statsig the console's names are not known here
        return []
    reads = (
        (f"{where}: {_READ_BY[tags][kind]} reads {kind} {name!r}", kind, name, _READ_BY[tags])
        for where, tags, kind, name in _flags_read()
    )
    return [checks.Warning(m, hint=h, id="flagware.W007") for m, h in undefined_flags(spec, reads)]


def _flags_read() -> Iterator[tuple[str, bool, str, str]]:
    """(file:line, read by a tag, kind, name) for each flag a template names,
    once per file and flag."""
    from django.template import engines

    for engine in engines.all():
        pattern = _pattern(engine)
        if pattern is None:
            continue
        for file in _files(engine):
            try:
                if file.stat().st_size > _LARGEST:
                    continue
                text = file.read_text(errors="replace")
            except OSError:
                continue
            if pattern is TAGS and not (_builtin(engine) or LOADS.search(text)):
                continue
            for line, kind, name in named_in(text, pattern):
                yield f"{file}:{line}", pattern is TAGS, kind, name


def _pattern(engine: Any) -> re.Pattern[str] | None:
    """What reads a flag in ``engine``'s templates: tags, calls, or None."""
    from django.template.backends.django import DjangoTemplates
    from django.template.backends.jinja2 import Jinja2

    if isinstance(engine, DjangoTemplates):
        return TAGS
    if isinstance(engine, Jinja2):
        from flagware.django import jinja2

        if engine.env.globals.get("gate") is jinja2.gate:
            return CALLS
    return None


def _builtin(engine: Any) -> bool:
    from flagware.django.templatetags.flagware import register as library

    return library in engine.engine.template_builtins


def _files(engine: Any) -> Iterator[Path]:
    for directory in engine.template_dirs:
        root = Path(directory)
        if root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.is_file())
