"""``manage.py flagware COMMAND``: the ``flagware`` command, reading the project's settings.

``--spec`` and ``--store`` default to ``settings.FLAGWARE["spec"]`` and
``settings.FLAGWARE["event_store"]``, where the app reads its spec and writes
its events; where a key is not set, to what ``flagware`` itself uses (the
environment, then ``flagware.toml`` and ``.flagware/events.db``), as
``Flagware(...)`` does. So ``manage.py flagware results button_color`` reads
what the running site stored, from any working directory, with the options and
exit codes of ``flagware results`` (3: the launch is blocked). Under the test
isolation, ``--store`` defaults to the project client's temporary store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from flagware import cli, client
from flagware.django import conf
from flagware.django.conf import SETTING, options, unknown_keys

# The options every manage.py command takes. ManagementUtility has applied
# --settings and --pythonpath (they choose the settings); the rest mean nothing
# here (the flagware command prints what it finds, runs no system checks and
# reports its errors in one line). None is theirs to parse: they are dropped,
# wherever they are, so a script can pass them to any command.
_TAKING_A_VALUE = ("--settings", "--pythonpath", "--verbosity", "-v")
_FLAGS = ("--traceback", "--no-color", "--force-color", "--skip-checks")


def flagware_defaults() -> dict[str, str]:
    """``--spec`` and ``--store`` defaults from ``settings.FLAGWARE``, where set."""
    try:
        settings = options()
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc), returncode=cli.EXIT_BAD_INPUT) from None
    unknown = unknown_keys(settings)
    if unknown:  # a misspelled event_store would read the default store instead
        raise CommandError(unknown, returncode=cli.EXIT_BAD_INPUT)
    defaults: dict[str, str] = {}
    for key, dest in (("spec", "spec"), ("event_store", "store")):
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, str | os.PathLike):
            raise CommandError(
                f"settings.{SETTING}[{key!r}] must be a path or URL, not {type(value).__name__}",
                returncode=cli.EXIT_BAD_INPUT,
            )
        defaults[dest] = os.fspath(value)
    if client.isolated_store is not None:
        # Under the test isolation (the pytest plugin, FlagwareRunner) the
        # project's client stores in a temporary file: a test that ran
        # `flagware results` read the real store, dev data and all, and passed
        # on it (a new user's trial). Its events are flushed first.
        try:
            project = conf.get_client()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=cli.EXIT_BAD_INPUT) from None
        project.flush()
        defaults["store"] = project.event_store
    secret = settings.get("statsig_secret")
    if "spec" not in defaults and isinstance(secret, str) and secret.strip():
        defaults["statsig"] = f"settings.{SETTING}['statsig_secret']"  # `check` says so
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
        elif arg in _TAKING_A_VALUE:
            skip = True  # its value is the next argument
        elif not _is_django_option(arg):
            kept.append(arg)
    return kept


def _is_django_option(arg: str) -> bool:
    if arg in _FLAGS or arg.startswith(tuple(f"{option}=" for option in _TAKING_A_VALUE)):
        return True
    return arg.startswith("-v") and arg[2:].isdigit()  # -v0


class _Text:
    """A text stream onto a command's ``OutputWrapper``, written as given:
    the wrapper would end every ``write`` with a newline (``print`` writes the
    newline apart) and colour stderr as an error on a terminal."""

    def __init__(self, wrapper: OutputWrapper) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> int:
        self._wrapper.write(text, style_func=str, ending="")
        return len(text)

    def flush(self) -> None:
        self._wrapper.flush()

    def isatty(self) -> bool:
        return False


class Command(BaseCommand):
    requires_system_checks = ()  # it checks its settings itself (flagware_defaults)
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
        try:
            code = run(_without_django_options(argv[2:]))
        except CommandError as exc:  # as BaseCommand reports it, with our exit code
            self.stderr.write(f"CommandError: {exc}")
            code = exc.returncode
        sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command(..., stdout=buffer) gets the output, as from Django's own
        # commands: the flagware command prints to sys.stdout and sys.stderr.
        try:
            with (
                contextlib.redirect_stdout(_Text(self.stdout)),
                contextlib.redirect_stderr(_Text(self.stderr)),
            ):
                code = run(list(args))
        except SystemExit as exit:  # argparse: --help (0), or a usage error (2)
            code = exit.code if isinstance(exit.code, int) else 2
        if code:
            raise CommandError(f"flagware {' '.join(args[:1])} exited with {code}", returncode=code)
