"""WSGI entry point: ``gunicorn demo.wsgi`` from examples/django_demo."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
application = get_wsgi_application()
