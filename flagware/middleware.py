"""``FlagwareMiddleware``: gives every WSGI request its own lazily evaluated Flags."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    The response iterable is passed through untouched; its ``close()`` is
    called exactly once.
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
        environ[ENVIRON_KEY] = flags
        if self._diagnostics is not None and self._diagnostics.handles(environ):
            start_response = _with_cookie(flags, start_response, self.client)
            token = _current.set(flags)
            try:
                return self._diagnostics(environ, start_response)  # type: ignore[no-any-return]
            finally:
                _current.reset(token)
        token = _current.set(flags)
        try:
            result = self._inner(environ, _with_cookie(flags, start_response, self.client))
        finally:
            _current.reset(token)
        return _ClosingResponse(result)


def _with_cookie(flags: Flags, start_response: StartResponse, client: Flagware) -> StartResponse:
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        try:
            cookie = flags._set_cookie_header()
        except Exception as exc:  # the response goes out without our cookie, never broken
            client.report(exc, "cookie")
            cookie = None
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        return start_response(status, headers, exc_info)

    return start  # type: ignore[return-value]


class _ClosingResponse:
    """The app's iterable, unchanged, with a ``close()`` that runs exactly once."""

    __slots__ = ("_closed", "_result")

    def __init__(self, result: Iterable[bytes]) -> None:
        self._result = result
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._result, "close", None)
        if close is not None:
            close()
