"""``FlagwareMiddleware``: gives every WSGI request its own lazily evaluated Flags."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.middleware.proxy_fix import ProxyFix

from flagware.flags import Flags, _current

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from flagware.client import Flagware

ENVIRON_KEY = "flagware.flags"


class FlagwareMiddleware:
    """Wrap any WSGI app: ``app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw)``.

    Per request it only creates an empty Flags object and sets a contextvar;
    identity, cookies and evaluation happen when the view first reads a flag.
    The response iterable is passed through untouched, so its ``close()`` is
    called exactly once, by the server, as PEP 3333 requires.
    """

    def __init__(self, app: WSGIApplication, client: Flagware) -> None:
        self.app = app
        self.client = client
        # ProxyFix rewrites REMOTE_ADDR from X-Forwarded-For for exactly the
        # configured number of trusted hops, before flagware ever reads it.
        self._inner: WSGIApplication = (
            ProxyFix(app, x_for=client.proxy_hops) if client.proxy_hops else app
        )
        self._diagnostics: Any = None
        if client.diagnostics:
            from flagware.diagnostics import DiagnosticsApp

            self._diagnostics = DiagnosticsApp(client)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        flags = Flags(self.client, environ)
        flags._start_response = start_response
        environ[ENVIRON_KEY] = flags
        app = self._inner
        if self._diagnostics is not None and self._diagnostics.handles(environ):
            app = self._diagnostics
        token = _current.set(flags)
        try:
            # The iterable goes back untouched (no wrapper): the server calls its
            # close() once, and wsgi.file_wrapper responses keep their fast path.
            return app(environ, flags._start)
        finally:
            _current.reset(token)
