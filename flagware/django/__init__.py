"""flagware for Django: ``INSTALLED_APPS += ["flagware.django"]``, then
``MIDDLEWARE += ["flagware.django.FlagwareMiddleware"]`` after the auth middleware,
and ``FLAGWARE = {...}`` (``Flagware(...)`` keyword arguments) in settings.

Importing this package does not touch settings: the middleware and the client
are loaded on first attribute access, so ``import flagware.django`` works in
any process, configured or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flagware.django.conf import get_client
    from flagware.django.middleware import FlagwareMiddleware

__all__ = ["FlagwareMiddleware", "get_client"]


def __getattr__(name: str) -> Any:
    if name == "FlagwareMiddleware":
        from flagware.django.middleware import FlagwareMiddleware

        return FlagwareMiddleware
    if name == "get_client":
        from flagware.django.conf import get_client

        return get_client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
