"""``FlagwareMiddleware``: gives every WSGI request its own lazily evaluated Flags.

A thin adapter: the request lifecycle (flags, held success events, the cookie)
lives in :mod:`flagware.request`; this module only translates WSGI into it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flagware import denials, proxies, request
from flagware.flags import Flags
from flagware.request import enter, leave, new

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from flagware.client import Flagware

ENVIRON_KEY = request.KEY


class FlagwareMiddleware:
    """Wrap any WSGI app: ``app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw)``.

    Per request it only creates an empty Flags object and sets a contextvar;
    identity, cookies and evaluation happen when the view first reads a flag.
    The response iterable is passed through untouched, so its ``close()`` is
    called exactly once, by the server, as PEP 3333 requires.
    """

    def __init__(self, app: WSGIApplication, client: Flagware) -> None:
        if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
            # Starlette's add_middleware builds any class: this one made every
            # request a 500 TypeError and uvicorn skipped the app's lifespan
            # (a new user's trial, importing it from flagware for FastAPI).
            raise TypeError(
                "flagware.FlagwareMiddleware wraps WSGI apps, and this one is ASGI: "
                "use flagware.asgi.FlagwareMiddleware"
            )
        self.app = app
        self.client = client
        # REMOTE_ADDR is rewritten from X-Forwarded-For for exactly this many
        # trusted hops (werkzeug's ProxyFix rule), before flagware reads it.
        self._hops = client.proxy_hops
        # This middleware's own Flags class, which knows the framework it
        # serves: @feature_gate raises that framework's HTTP exception.
        self._flags_class = denials.flags_class(_EnvironFlags, app)
        self._diagnostics: Any = None
        if client.diagnostics:
            from flagware.diagnostics import DiagnosticsApp

            self._diagnostics = DiagnosticsApp(client)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        app = self.app
        if self._diagnostics is not None and self._diagnostics.handles(environ):
            app = self._diagnostics  # judged on the real peer; it applies the hops itself
        elif self._hops:
            proxies.proxy_fix(environ, self._hops)
        # request.begin, inlined as in the ASGI middleware (see asgi.py): this
        # runs for every request, and most read no flag. Measured with
        # callgrind under gunicorn, what a wrapped Flask app that reads no
        # flag pays over bare went from 23k instructions a request to 17k.
        flags = new(self._flags_class)
        flags._client = self.client
        flags._environ = environ
        flags._start_response = start_response
        # Stored although the class has them as defaults: reads that fall
        # through to a class attribute are generic lookups on 3.11, and
        # _starting and the end of the request make them (0.65k instructions).
        flags._status = flags._held = flags._minted = None
        # Read now: a Flags lets go of the environ once it has read its flags.
        flags._https = environ.get("wsgi.url_scheme") == "https"
        environ[ENVIRON_KEY] = flags
        token = enter(flags)
        try:
            body = app(environ, flags._starting)
        except BaseException:
            request.finish(flags, failed=True)
            raise
        finally:
            leave(token)
            request.detach(flags, environ)
        if flags._held and flags._status is None:
            # start_response comes later, from inside the iterable: wait for
            # it (the rare lazy app). Otherwise the iterable goes back
            # untouched: the server calls its close() once, and
            # wsgi.file_wrapper responses keep their fast path.
            return _Settling(body, flags)
        return body


class _EnvironFlags(Flags):
    """One WSGI request's Flags, with the ``start_response`` the app gets."""

    _watched = True  # the middleware sees the response start
    _start_response: StartResponse  # the server's, which _starting wraps
    _https: bool  # whether the cookie is Secure

    def _starting(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """A bound method rather than a closure: cheaper to make, for every request."""
        code = request.status_codes.get(status) or request.status_code(status)
        minted = False
        if self._status is None and not self._held and self._minted is None:
            self._status = code  # what request.respond does when nothing is held or minted
        elif request.respond(self, code) is not None:  # a new browser: set its stableID
            cookie = request.cookie(self, secure=self._https)
            if cookie is not None:
                headers.append(("Set-Cookie", cookie))
                minted = True
        read = self._gates is not None or self._configs is not None  # request.read_flags
        if read or minted:
            _private(headers, vary=read)
        return self._start_response(status, headers, exc_info)


def _private(headers: list[tuple[str, str]], *, vary: bool) -> None:
    """The caching headers of a response that depends on its visitor."""
    line, uncached = request.caching_changes(headers, vary=vary)
    if line is not None and line >= 0:
        key, value = headers[line]
        headers[line] = (key, f"{value}, Cookie")
    elif line is not None:
        headers.append(("Vary", "Cookie"))
    if uncached:
        headers.append(("Cache-Control", request.PRIVATE))


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
