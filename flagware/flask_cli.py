"""``flask flagware check``: the flags an app's views and templates read that
its local spec does not define, before any request (Django's W006 and W007).

A misspelt ``@feature_gate`` answers 404 to everyone and a misspelt
``flags.gate("...")`` in a template reads False, said once in the log at the
first request that reads it. The command exits 1 when it finds one, so a CI
step catches it. Templates are read through the app's Jinja loader
(blueprints' included) and Jinja's lexer (not comments, ``raw`` blocks or
page text); only ``flags.gate("...")`` with a string literal is known.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from flagware.names import Read, decorator_reads, jinja_reads, undefined_flags, view_flags

if TYPE_CHECKING:
    from flagware.engine.local import LocalSpec

cli = AppGroup("flagware", help="flagware's commands for this app.")

_TEMPLATES = {"gate": "flags.gate(...)", "experiment": "flags.experiment(...)"}


@cli.command("check")
def check() -> None:
    """Flags the app's views and templates read that its local spec lacks."""
    from flagware.engine.local import LocalSpec
    from flagware.flask import get_client

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    engine = get_client(app).engine
    if not isinstance(engine, LocalSpec):
        click.echo("flagware: on Statsig the console's names are not known here: nothing checked")
        return
    found = list(_lacking(app, engine))
    for message, hint in found:
        click.echo(f"warning: {message}\n  hint: {hint}", err=True)
    if found:
        raise SystemExit(1)
    click.echo(f"flagware: every flag the views and templates read is defined in {engine.path}")


def _lacking(app: Flask, engine: LocalSpec) -> Iterator[tuple[str, str]]:
    views = sorted({flag for view in app.view_functions.values() for flag in _views(view)})
    reads: list[Read] = list(decorator_reads(views))
    for source, line, kind, name in jinja_reads(app.jinja_env, plain_calls=False):
        where = f"{_shown(source, app.root_path)}:{line}: {_TEMPLATES[kind]}"
        reads.append((f"{where} reads {kind} {name!r}", kind, name, _TEMPLATES))
    return undefined_flags(engine.spec, reads)


def _views(view: object) -> Iterator[tuple[str, tuple[str, str]]]:
    where = f"{getattr(view, '__module__', '?')}.{getattr(view, '__qualname__', view)}"
    return view_flags(view, where)


def _shown(filename: str, root: str) -> str:
    """A template's path from the app's folder when it is inside it."""
    path = Path(filename)
    try:
        return os.path.relpath(path, root) if path.is_relative_to(root) else filename
    except ValueError:  # another drive (Windows)
        return filename
