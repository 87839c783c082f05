"""``FlagwareMiddleware`` for Django: ``request.flags`` under WSGI and ASGI.

Like the WSGI middleware it only creates an empty Flags object per request and
sets the contextvar around the view; identity and evaluation happen when the
view (or a template, or code it calls) first reads a flag. The stableID cookie
is added to the response only when this request minted one.

A thin adapter over :mod:`flagware.request`: the response it gets back from
Django decides the view's success events (a ``TemplateResponse`` has been
rendered by then, so a template that fails is a 500, not a success). With
``diagnostics`` on it also serves the diagnostics page, the same app the WSGI
and ASGI middlewares serve.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import patch_vary_headers

from flagware import proxies
from flagware import request as lifecycle
from flagware.asgi import start_engine
from flagware.django import conf
from flagware.flags import Flags

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware

log = logging.getLogger("flagware")


class FlagwareMiddleware:
    """Add after ``django.contrib.auth.middleware.AuthenticationMiddleware``."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: (
            Callable[[HttpRequest], HttpResponseBase]
            | Callable[[HttpRequest], Awaitable[HttpResponseBase]]
        ),
    ) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        # Before an async view, where reading request.user is refused, the
        # user is loaded first (see _load_user); a sync view reads it in its
        # thread, only if it reads a flag. Under ASGI an async process_view,
        # so no thread hop per request.
        self.process_view: Callable[..., Any]
        if self.async_mode:
            # Django sees an async middleware and does not wrap it in a thread.
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view
        else:
            self.process_view = self._process_view
        self._diagnostics: tuple[Flagware, Any] | None = None
        # Built when Django loads the middleware, so a bad configuration fails
        # at start-up rather than on the first request that reads a flag.
        conf.get_client()
        _say_misplaced()

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        flags, token = self._begin(request)
        try:
            page = self._diagnostics_page(flags, request)
            if page is not None:
                response: HttpResponseBase = _page_response(page)
            else:
                # Django turns a view's exception (and a TemplateResponse that
                # fails while rendering) into a response before it gets here.
                response = cast(HttpResponseBase, self.get_response(request))
        except BaseException:
            lifecycle.finish(flags, failed=True)
            raise
        finally:
            lifecycle.end(token)
            lifecycle.detach(flags, request.META)  # no META <-> Flags cycle: see detach
        return self._respond(flags, request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        client = conf.get_client()
        if not client.engine.ready:  # never on the event loop: see start_engine
            await start_engine(client)
        flags, token = self._begin(request)
        try:
            page = None
            if self._diagnostics_app(flags._client, request) is not None:
                # A thread only for the page's own path: it reads SQLite.
                page = await sync_to_async(self._diagnostics_page)(flags, request)
            if page is not None:
                response = _page_response(page)
            else:
                response = await self.get_response(request)  # type: ignore[misc]
        except BaseException:
            lifecycle.finish(flags, failed=True)
            raise
        finally:
            lifecycle.end(token)
            lifecycle.detach(flags, request.META)  # no META <-> Flags cycle: see detach
        return self._respond(flags, request, response)

    def _begin(self, request: HttpRequest) -> tuple[Flags, Token[Flags | None]]:
        client = conf.get_client()
        flags, token = lifecycle.begin(client, _environ(request, client))
        request.META[lifecycle.KEY] = flags
        request.flags = flags  # type: ignore[attr-defined]
        return flags, token

    def _process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        if iscoroutinefunction(view) and conf.REQUEST_KEY in request.META:
            _load_user_sync(request)

    async def _aprocess_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> None:
        # Every request once loaded the user here, whatever its view: two
        # queries for each request of a signed-in visitor, on views that read
        # no flag too (a new user's trial). A sync view loads it in its thread
        # when it reads a flag, as under WSGI.
        if iscoroutinefunction(view) and conf.REQUEST_KEY in request.META:
            await _load_user(request)

    def _diagnostics_app(self, client: Flagware, request: HttpRequest) -> Any:
        """The diagnostics app when it is on and the path is its own (cheap checks only)."""
        if not client.diagnostics:
            return None
        cached = self._diagnostics
        if cached is None or cached[0] is not client:  # settings changed: a new client
            from flagware.diagnostics import DiagnosticsApp

            cached = self._diagnostics = (client, DiagnosticsApp(client))
        app = cached[1]
        return app if request.path_info.startswith(app.root) else None

    def _diagnostics_page(
        self, flags: Flags, request: HttpRequest
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The diagnostics page, when enabled, asked for and allowed: the same app,
        access rules and HTML as the WSGI and ASGI middlewares serve."""
        app = self._diagnostics_app(flags._client, request)
        if app is None:
            return None
        environ = {
            **request.META,
            "PATH_INFO": request.path_info,
            "wsgi.url_scheme": request.scheme,
            lifecycle.KEY: flags,
        }
        if not app.handles(environ):  # refused: the app answers, as if it were off
            return None
        # The body only now: read for a refused request, one over Django's
        # DATA_UPLOAD_MAX_MEMORY_SIZE got a 400 where the app answers 404,
        # which told a stranger the page was there.
        environ["wsgi.input"] = io.BytesIO(request.body)
        result: tuple[int, list[tuple[str, str]], bytes] = app.render(environ)
        return result

    def _respond(
        self, flags: Flags, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        # The status this request's client gets decides its success events.
        minted = lifecycle.respond(flags, response.status_code)
        if minted is not None:  # this request minted the browser's stableID
            client = flags._client
            try:
                response.set_cookie(
                    client.cookie_name,
                    minted,
                    max_age=client.cookie_max_age,
                    path="/",
                    secure=request.is_secure(),
                    httponly=True,
                    samesite="Lax",
                )
            except Exception as exc:  # the response goes out without our cookie, never broken
                client.report(exc, "cookie")
        read = lifecycle.read_flags(flags)
        if read:
            patch_vary_headers(response, ("Cookie",))
        if (read or minted is not None) and not response.has_header("Cache-Control"):
            response["Cache-Control"] = lifecycle.PRIVATE
        return response


_said_misplaced = False


def _say_misplaced() -> None:
    """Say check W005 at start-up, once a process: uvicorn and gunicorn run no
    system checks (placed before the auth middleware, async views once logged
    a ``SynchronousOnlyOperation`` traceback with nothing about the order, a
    new user's trial)."""
    global _said_misplaced
    if _said_misplaced:
        return
    _said_misplaced = True
    from flagware.django.checks import check_middleware

    for message in check_middleware():
        if message.id == "flagware.W005":
            log.warning("flagware: %s (%s): %s", message.msg, message.id, message.hint)


def _environ(request: HttpRequest, client: Flagware) -> WSGIEnvironment:
    """What the core reads identity from: ``request.META``, the WSGI environ itself."""
    environ: WSGIEnvironment = request.META
    if client.proxy_hops:
        # The WSGI middleware rewrites the environ as werkzeug's ProxyFix
        # would; Django's META is the app's, so the same rule is applied to
        # flagware's copy only: the address the trusted proxy saw, never one
        # the client chose.
        trusted = proxies.forwarded_for(request.META.get("HTTP_X_FORWARDED_FOR"), client.proxy_hops)
        if trusted is not None:
            environ = {**request.META, "REMOTE_ADDR": trusted}
    conf.attach_request(environ, request)
    return environ


def _load_user_sync(request: HttpRequest) -> None:
    """Load the user now, in the sync chain, before an async view runs."""
    client = conf.get_client()
    if not conf.reads_requests(client) or conf.USER_KEY in request.META:
        return
    user = getattr(request, "user", None)
    try:
        # Touching the lazy user loads the session and the user here.
        user = user if user is not None and user.is_authenticated else None
    except Exception as exc:  # e.g. the session store is down: no user, never a broken page
        client.report(exc, "user_id resolver")
        user = None
    else:
        conf.share_loaded_user(request)  # the view's own auser() needs no second load
    request.META[conf.USER_KEY] = user


async def _load_user(request: HttpRequest) -> None:
    """Load the user before an async view, for the resolvers that take the request.

    Reading ``request.user`` loads the session and user synchronously, which
    Django refuses inside the event loop, so async views would silently fall
    back to the hashed IP. ``request.auser()`` (set by the auth middleware)
    loads it without blocking; for visitors without a session it costs nothing.
    """
    auser = getattr(request, "auser", None)
    client = conf.get_client()
    if auser is None or not conf.reads_requests(client):
        return
    try:
        user = await auser()
    except Exception as exc:  # e.g. the session store is down: no user, never a broken page
        client.report(exc, "user_id resolver")
        user = None
    else:
        # Where the lazy request.user finds it, so a custom resolver may read
        # request.user in an async view: one that did logged a
        # SynchronousOnlyOperation and fell back to the IP (a new user's trial).
        conf.share_loaded_user(request)
    request.META[conf.USER_KEY] = user


def _page_response(page: tuple[int, list[tuple[str, str]], bytes]) -> HttpResponse:
    """The diagnostics page as a Django response. Its cookies go into
    ``response.cookies``: set as headers, a second one replaced the first, and
    Django's test client, which reads ``response.cookies``, saw none (so a
    test could not stay signed in to the page or keep a QA override)."""
    status, headers, body = page
    response = HttpResponse(body, status=status)
    for name, value in headers:
        if name.lower() == "set-cookie":
            response.cookies.load(value)
        else:
            response[name] = value
    return response
