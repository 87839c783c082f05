"""The Django app config: registers the system checks."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from django.apps import AppConfig


class FlagwareConfig(AppConfig):
    name = "flagware.django"
    label = "flagware"
    verbose_name = "flagware"

    def ready(self) -> None:
        # Imported for its @register side effect: `manage.py check` runs them.
        from flagware.django import checks, template_checks  # noqa: F401

        # A test runner's workers that --failfast terminated left their
        # temporary stores: this process removes them at its exit.
        atexit.register(_remove_children_stores, os.getpid())


def _remove_children_stores(parent: int) -> None:
    from flagware.django.conf import children_stores

    for folder in Path(tempfile.gettempdir()).glob(children_stores(parent) + "*"):
        shutil.rmtree(folder, ignore_errors=True)
