"""flagware.W007: a template that reads a gate or an experiment the local spec
does not define (``manage.py check``; the URLconf's views are W006).

A misspelt ``{% gate "nme" %}`` reads False for every visitor and an unknown
experiment serves its defaults, said once in the log at the first render: the
check names the file and line before any request. Templates are read by the
engines' own lexers, as rendering reads them: a tag counts where flagware's
library provides it (loaded, or a builtin, and not replaced by a later
``{% load %}`` of another library's tag of that name), never inside comments,
``{% comment %}`` or ``{% verbatim %}``. Only names written as string
literals are known. Django templates are found in the directories of each
engine's loaders (``DIRS``, and app directories whether through
``APP_DIRS`` or a ``loaders`` list); Jinja2 templates under flagware's
environment through its loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.checks import CheckMessage, register

from flagware.names import KINDS, jinja_reads, undefined_flags

# How each kind is read, in Django's templates (tags) and in Jinja2's (calls).
_READ_BY = {
    True: {"gate": "{% gate %}", "experiment": "{% experiment %}"},
    False: {"gate": "gate(...)", "experiment": "experiment(...)"},
}
_LARGEST = 1 << 20  # bytes: larger files are no templates worth reading at every check
# Folders under a template directory that hold no templates: a DIRS entry set
# to the project's root read a whole virtualenv (7,132 files, 0.55 s a check).
_SKIPPED = {"node_modules", "site-packages", "__pycache__", "venv"}


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
        for where, tags, kind, name in sorted(_flags_read(), key=_by_place)
    )
    return [checks.Warning(m, hint=h, id="flagware.W007") for m, h in undefined_flags(spec, reads)]


def _by_place(read: tuple[str, bool, str, str]) -> tuple[str, int]:
    file, _, line = read[0].rpartition(":")
    return file, int(line)


def _flags_read() -> Iterator[tuple[str, bool, str, str]]:
    """(file:line, read by a tag, kind, name) for each flag a template names,
    once per file and flag."""
    from django.template import engines
    from django.template.backends.django import DjangoTemplates
    from django.template.backends.jinja2 import Jinja2

    for engine in engines.all():
        if isinstance(engine, DjangoTemplates):
            for file in _files(engine):
                try:
                    if file.stat().st_size > _LARGEST:
                        continue
                    text = file.read_text(errors="replace")
                except OSError:
                    continue
                for line, kind, name in _tags(engine, text):
                    yield f"{file}:{line}", True, kind, name
        elif isinstance(engine, Jinja2):
            from flagware.django import jinja2

            if engine.env.globals.get("gate") is jinja2.gate:
                for source, line, kind, name in jinja_reads(engine.env, plain_calls=True):
                    yield f"{source}:{line}", False, kind, name


def _tags(engine: Any, text: str) -> Iterator[tuple[int, str, str]]:
    """(line, kind, name) of each flagware tag in ``text``, as Django's parser
    takes it: a tag is from whichever library provided it last. A regular
    expression read comments, verbatim blocks and other libraries' tags of
    the same names as flags (a re-check)."""
    from django.template.base import Lexer, TokenType

    from flagware.django.templatetags.flagware import register as ours

    if "gate" not in text and "experiment" not in text:
        return
    django = engine.engine
    owner = {tag: lib for lib in django.template_builtins for tag in KINDS if tag in lib.tags}
    seen: set[tuple[str, str]] = set()
    in_comment = False
    for token in Lexer(text).tokenize():
        if token.token_type != TokenType.BLOCK:
            continue  # text, variables and {# comments #}; {% verbatim %} is text
        bits = token.split_contents()
        if not bits:
            continue
        if in_comment:
            in_comment = bits[0] != "endcomment"
        elif bits[0] == "comment":
            in_comment = True
        elif bits[0] == "load":
            _load(django, bits, owner)
        elif bits[0] in KINDS and owner.get(bits[0]) is ours and len(bits) > 1:
            name = _literal(bits[1])
            if name is not None and (bits[0], name) not in seen:
                seen.add((bits[0], name))
                yield token.lineno or 0, bits[0], name


def _load(django: Any, bits: list[str], owner: dict[str, Any]) -> None:
    """``{% load a b %}`` or ``{% load gate from a %}``: the library each tag is now from."""
    picked = len(bits) > 3 and bits[-2] == "from"
    for library in [bits[-1]] if picked else bits[1:]:
        lib = django.template_libraries.get(library)
        for tag in KINDS:
            if lib is not None and tag in lib.tags and (not picked or tag in bits[1:-2]):
                owner[tag] = lib


def _literal(bit: str) -> str | None:
    """The string a tag's argument spells, or None for a variable."""
    if len(bit) > 1 and bit[0] in "\"'" and bit[-1] == bit[0]:
        return bit[1:-1]
    return None


def _files(engine: Any) -> Iterator[Path]:
    """The files under the directories of ``engine``'s loaders, each once."""
    dirs: list[str] = []
    for loader in engine.engine.template_loaders:
        dirs += (str(d) for d in getattr(loader, "get_dirs", list)() if str(d) not in dirs)
    for directory in dirs:
        yield from _walk(Path(directory))


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if not entry.name.startswith(".") and entry.name not in _SKIPPED:
                yield from _walk(entry)
        elif entry.is_file():
            yield entry
