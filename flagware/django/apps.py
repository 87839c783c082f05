"""The Django app config: registers the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class FlagwareConfig(AppConfig):
    name = "flagware.django"
    label = "flagware"
    verbose_name = "flagware"

    def ready(self) -> None:
        # Imported for its @register side effect: `manage.py check` runs them.
        from flagware.django import checks  # noqa: F401
