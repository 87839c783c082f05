"""Django settings for flagware's Django tests: configured once per process.

Every Django test module calls :func:`configure` at import; views and URLs
live in the test modules themselves (``override_settings(ROOT_URLCONF=...)``).
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
DEMO_SPEC = ROOT / "examples" / "django_demo" / "flagware.toml"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    AUTH_MIDDLEWARE,
    "flagware.django.FlagwareMiddleware",
]
PASSWORD = "a long enough password"  # the conftest's Django user's
_state: dict[str, Any] = {}

# The demo app is imported from the checkout (examples/ is not installed).
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


def configure() -> None:
    if settings.configured:
        return
    # A file, not ":memory:": async tests reach the database from other threads.
    workdir = Path(tempfile.mkdtemp(prefix="flagware-django-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    _state["workdir"] = workdir
    settings.configure(
        DEBUG=False,
        SECRET_KEY="flagware-tests",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "flagware.django",
            "examples.django_demo.demo",
        ],
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF="examples.django_demo.demo.urls",
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": workdir / "db.sqlite3"}
        },
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
            },
            {
                "BACKEND": "django.template.backends.jinja2.Jinja2",
                "DIRS": [],
                "OPTIONS": {"environment": "flagware.django.jinja2.environment"},
            },
        ],
        FLAGWARE={
            "spec": DEMO_SPEC,
            "event_store": workdir / "events.db",
            "hash_key": "django-tests",
        },
        USE_TZ=True,
    )
    django.setup()


def migrate() -> None:
    """Create the auth and session tables once per process, for tests with users."""
    if not _state.get("migrated"):
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        _state["migrated"] = True


def flagware_settings(tmp_path: Path, spec: Path, **options: Any) -> Iterator[Any]:
    """Point settings.FLAGWARE at a fresh store in ``tmp_path``; yield its client."""
    from django.test import override_settings

    from flagware.django.conf import get_client

    value = {"spec": spec, "event_store": tmp_path / "events.db", "hash_key": "test-key"}
    value.update(options)
    # override_settings fires setting_changed, which closes and forgets the
    # process's client on the way in and out of the block.
    with override_settings(FLAGWARE=value):
        yield get_client()
