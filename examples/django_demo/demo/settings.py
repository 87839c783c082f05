"""Settings for the Django demo. flagware needs the three marked lines."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-flagware-demo-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "flagware.django",  # flagware: 1/3
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "flagware.django.FlagwareMiddleware",  # flagware: 2/3, after authentication
]

# flagware: 3/3. The secret selects Statsig; without it, the spec beside
# manage.py. ?random=1 re-rolls a visitor's IDs, as in the lab: demo only.
FLAGWARE = (
    {"allow_random_override": True}
    if os.environ.get("STATSIG_SERVER_SECRET")
    else {"spec": BASE_DIR / "flagware.toml", "allow_random_override": True}
)

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
ASGI_APPLICATION = "demo.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# The seed lab has no database: sessions live in signed cookies, visitors are
# anonymous, and flagware keeps its events in its own SQLite store.
DATABASES: dict[str, dict[str, str]] = {}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

USE_TZ = True
