"""``manage.py flagware COMMAND``: the ``flagware`` command, reading the project's settings.

``--spec`` and ``--store`` default to ``settings.FLAGWARE["spec"]`` and
``settings.FLAGWARE["event_store"]``, where the app reads its spec and writes
its events; where a key is not set, to what ``flagware`` itself uses (the
environment, then ``flagware.toml`` and ``.flagware/events.db``), as
``Flagware(...)`` does. So ``manage.py flagware results button_color`` reads
what the running site stored, from any working directory, with the options and
exit codes of ``flagware results`` (3: the launch is blocked).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError

from flagware import cli
from flagware.django.conf import SETTING, options

# ManagementUtility has already applied these (they pick the settings): they
# are not the flagware command's to parse.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def flagware_defaults() -> dict[str, str]:
    """``--spec`` and ``--store`` defaults from ``settings.FLAGWARE``, where set."""
    settings = options()
    defaults: dict[str, str] = {}
    for key, dest in (("spec", "spec"), ("event_store", "store")):
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, str | os.PathLike):
            raise CommandError(
                f"settings.{SETTING}[{key!r}] must be a path or URL, not {type(value).__name__}"
            )
        defaults[dest] = os.fspath(value)
    return defaults


def run(argv: list[str]) -> int:
    """The flagware command's exit code for ``argv`` (``["results", "button_color"]``)."""
    prog = f"{os.path.basename(sys.argv[0]) or 'manage.py'} flagware"
    return cli.main(argv, prog=prog, defaults=flagware_defaults(), source=f"settings.{SETTING}")


def _without_django_options(argv: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _DJANGO_OPTIONS:
            skip = True  # its value is the next argument
        elif not arg.startswith(tuple(f"{option}=" for option in _DJANGO_OPTIONS)):
            kept.append(arg)
    return kept


class Command(BaseCommand):
    help = (
        "flagware's command (events, check, results, status, ...) with --spec and --store"
        f" taken from settings.{SETTING}. `manage.py flagware COMMAND --help` for each."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        # For call_command(): everything is the flagware command's to parse.
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> NoReturn:
        # Django's parser would take --help and --version for itself; flagware's
        # parser answers them, and its exit code (3: blocked) is the process's.
        sys.exit(run(_without_django_options(argv[2:])))

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            code = run(list(args))
        except SystemExit as exit:  # argparse: --help (0), or a usage error (2)
            code = exit.code if isinstance(exit.code, int) else 2
        if code:
            raise CommandError(f"flagware {' '.join(args[:1])} exited with {code}", returncode=code)
