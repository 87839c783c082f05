"""The Flask extension: ``FlaskFlagware(app)`` or ``ext.init_app(app)`` in a factory.

It wraps ``app.wsgi_app`` with :class:`~flagware.FlagwareMiddleware`, registers
the client in ``app.extensions["flagware"]`` and puts ``flags`` (this request's
Flags) into Jinja templates. It never keeps a reference to the app, so one
extension object serves any number of apps, each with its own client.
"""

from __future__ import annotations

from typing import Any

try:
    from flask import Flask, current_app
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("flagware.flask needs Flask: pip install 'flagware[flask]'") from exc

from flagware.client import Flagware
from flagware.flags import Flags, _current
from flagware.middleware import FlagwareMiddleware

__all__ = ["FlaskFlagware", "get_client"]


class FlaskFlagware:
    """Flask extension. Options come from ``client=``, keyword arguments, or
    ``app.config["FLAGWARE"]`` (a dict of ``Flagware(...)`` keyword arguments),
    in that order; environment variables apply as for ``Flagware``."""

    def __init__(
        self, app: Flask | None = None, *, client: Flagware | None = None, **options: Any
    ) -> None:
        self.client = client
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, client: Flagware | None = None) -> Flagware:
        if "flagware" in app.extensions:
            raise RuntimeError("flagware is already initialised on this app")
        client = client or self.client
        if client is None:
            options = {**app.config.get("FLAGWARE", {}), **self.options}
            client = Flagware(**options)
        app.wsgi_app = FlagwareMiddleware(app.wsgi_app, client)  # type: ignore[method-assign]
        app.extensions["flagware"] = client
        app.context_processor(_template_flags)
        return client


def _template_flags() -> dict[str, Flags | None]:
    return {"flags": _current.get()}


def get_client(app: Flask | None = None) -> Flagware:
    """The client registered on ``app`` (default: the current app)."""
    target: Any = app if app is not None else current_app
    client: Flagware = target.extensions["flagware"]
    return client
