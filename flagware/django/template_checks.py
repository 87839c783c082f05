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

from flagware.spec import Spec, did_you_mean, load_spec

_TAG = re.compile(r"""\{%-?\s*(gate|experiment)\s+(["'])([^"'\s]+)\2""")
_LOADS = re.compile(r"\{%-?\s*load\s[^%]*\bflagware\b")
_CALL = re.compile(r"""\b(gate|experiment)\(\s*(["'])([^"'\s]+)\2\s*\)""")
_LARGEST = 1 << 20  # bytes: larger files are no templates worth reading at every check


@register("flagware", checks.Tags.templates)
def check_templates(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from flagware.django import conf
    from flagware.django.checks import _local_spec

    try:
        path = _local_spec(conf.options())
        spec = None if path is None else load_spec(path)
    except Exception:  # E002, E003 or E005 say it
        return []
    if spec is None:  # on Statsig the console's names are not known here
        return []
    found = []
    for where, written, kind, name in _flags_read():
        defined = list(spec.gates if kind == "gate" else spec.experiments)
        if name not in defined:
            found.append(_warning(spec, path, where, written, kind, name, defined))
    return found


def _warning(
    spec: Spec,
    path: Path | None,
    where: str,
    written: str,
    kind: str,
    name: str,
    defined: list[str],
) -> CheckMessage:
    hint = f"define {kind}s.{name} in the spec, or fix the name"
    if kind == "gate" and name in spec.experiments:
        hint = f"{name!r} is an experiment: read it with " + written.replace("gate", "experiment")
    elif kind == "experiment" and name in spec.gates:
        hint = f"{name!r} is a gate: read it with " + written.replace("experiment", "gate")
    said = "reads False for" if kind == "gate" else "serves its defaults to"
    return checks.Warning(
        f"{where}: {written} reads {kind} {name!r}, which {path} does not define"
        f"{did_you_mean(name, defined)}: it {said} every request",
        hint=hint,
        id="flagware.W007",
    )


def _flags_read() -> Iterator[tuple[str, str, str, str]]:
    """(file:line, as written, kind, name) for each flag a template names, once
    per file and flag."""
    from django.template import engines

    seen: set[tuple[Path, str, str]] = set()
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
            if pattern is _TAG and not (_builtin(engine) or _LOADS.search(text)):
                continue
            for match in pattern.finditer(text):
                kind, name = match[1], match[3]
                if (file, kind, name) not in seen:
                    seen.add((file, kind, name))
                    line = text.count("\n", 0, match.start()) + 1
                    written = f"{{% {kind} %}}" if pattern is _TAG else f"{kind}(...)"
                    yield f"{file}:{line}", written, kind, name


def _pattern(engine: Any) -> re.Pattern[str] | None:
    """What reads a flag in ``engine``'s templates: tags, calls, or None."""
    from django.template.backends.django import DjangoTemplates
    from django.template.backends.jinja2 import Jinja2

    if isinstance(engine, DjangoTemplates):
        return _TAG
    if isinstance(engine, Jinja2):
        from flagware.django import jinja2

        if engine.env.globals.get("gate") is jinja2.gate:
            return _CALL
    return None


def _builtin(engine: Any) -> bool:
    from flagware.django.templatetags.flagware import register as library

    return library in engine.engine.template_builtins


def _files(engine: Any) -> Iterator[Path]:
    for directory in engine.template_dirs:
        root = Path(directory)
        if root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.is_file())
