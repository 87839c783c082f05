"""``FlagwareMiddleware``: gives every WSGI request its own lazily evaluated Flags.

A thin adapter: the request lifecycle (flags, held success events, the cookie)
lives in :mod:`flagware.request`; this module only translates WSGI into it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flagware import request

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from flagware.client import Flagware
    from flagware.flags import Flags

ENVIRON_KEY = request.KEY


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
        # REMOTE_ADDR is rewritten from X-Forwarded-For for exactly this many
        # trusted hops (werkzeug's ProxyFix rule), before flagware reads it.
        self._hops = client.proxy_hops
        self._diagnostics: Any = None
        if client.diagnostics:
            from flagware.diagnostics import DiagnosticsApp

            self._diagnostics = DiagnosticsApp(client)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        app = self.app
        if self._diagnostics is not None and self._diagnostics.handles(environ):
            app = self._diagnostics  # judged on the real peer; it applies the hops itself
        elif self._hops:
            request.proxy_fix(environ, self._hops)
        flags, token = request.begin(self.client, environ)
        environ[ENVIRON_KEY] = flags

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = request.status_codes.get(status) or request.status_code(status)
            if request.respond(flags, code) is not None:  # a new browser: set its stableID
                secure = environ.get("wsgi.url_scheme") == "https"
                cookie = request.cookie(flags, secure=secure)
                if cookie is not None:
                    headers.append(("Set-Cookie", cookie))
            return start_response(status, headers, exc_info)

        try:
            body = app(environ, start)
        except BaseException:
            request.finish(flags, failed=True)
            raise
        finally:
            request.end(token)
            request.detach(flags, environ)
        if flags._held and flags._status is None:
            # start_response comes later, from inside the iterable: wait for
            # it (the rare lazy app). Otherwise the iterable goes back
            # untouched: the server calls its close() once, and
            # wsgi.file_wrapper responses keep their fast path.
            return _Settling(body, flags)
        return body


class _Settling:
    """Iterates a lazy app's body; held events settle when it closes."""

    def __init__(self, body: Iterable[bytes], flags: Flags) -> None:
        self._body = body
        self._flags = flags

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            request.finish(self._flags)
