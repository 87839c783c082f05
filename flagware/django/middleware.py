"""``FlagwareMiddleware`` for Django: ``request.flags`` under WSGI and ASGI.

Like the WSGI middleware it only creates an empty Flags object per request and
sets the contextvar around the view; identity and evaluation happen when the
view (or a template, or code it calls) first reads a flag. The stableID cookie
is added to the response only when this request minted one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from flagware import request as lifecycle
from flagware.django import conf
from flagware.flags import Flags

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware


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
        if self.async_mode:
            # Django sees an async middleware and does not wrap it in a thread.
            markcoroutinefunction(self)
        # Built when Django loads the middleware, so a bad configuration fails
        # at start-up rather than on the first request that reads a flag.
        conf.get_client()

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        flags, token = self._begin(request)
        try:
            # Django turns a view's exception (and a TemplateResponse that
            # fails while rendering) into a response before it gets here.
            response = cast(HttpResponseBase, self.get_response(request))
        except BaseException:
            lifecycle.finish(flags, failed=True)
            raise
        finally:
            lifecycle.end(token)
        return self._respond(flags, request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        await _load_user(request)
        flags, token = self._begin(request)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        except BaseException:
            lifecycle.finish(flags, failed=True)
            raise
        finally:
            lifecycle.end(token)
        return self._respond(flags, request, response)

    def _begin(self, request: HttpRequest) -> tuple[Flags, Token[Flags | None]]:
        client = conf.get_client()
        flags, token = lifecycle.begin(client, _environ(request, client))
        request.META[lifecycle.KEY] = flags
        request.flags = flags  # type: ignore[attr-defined]
        return flags, token

    def _respond(
        self, flags: Flags, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        # The status this request's client gets decides its success events.
        cookie = lifecycle.respond(flags, response.status_code, secure=request.is_secure())
        minted = flags._minted
        if cookie is not None and minted is not None:  # this request minted the stableID
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
        return response


def _environ(request: HttpRequest, client: Flagware) -> WSGIEnvironment:
    """What the core reads identity from: ``request.META``, the WSGI environ itself."""
    environ: WSGIEnvironment = request.META
    if client.proxy_hops:
        # The WSGI middleware uses werkzeug's ProxyFix; Django has no
        # equivalent, so apply the same rule, to flagware's copy only: the
        # address the trusted proxy saw, never one the client chose.
        trusted = _forwarded_for(request.META, client.proxy_hops)
        if trusted is not None:
            environ = {**request.META, "REMOTE_ADDR": trusted}
    conf.attach_request(environ, request)
    return environ


def _forwarded_for(meta: dict[str, Any], hops: int) -> str | None:
    return lifecycle.forwarded_for(meta.get("HTTP_X_FORWARDED_FOR"), hops)


async def _load_user(request: HttpRequest) -> None:
    """Load the user before an async view, for the default resolver.

    Reading ``request.user`` loads the session and user synchronously, which
    Django refuses inside the event loop, so async views would silently fall
    back to the hashed IP. ``request.auser()`` (set by the auth middleware)
    loads it without blocking; for visitors without a session it costs nothing.
    """
    auser = getattr(request, "auser", None)
    client = conf.get_client()
    if auser is None or not conf.uses_default_user(client):
        return
    try:
        user = await auser()
    except Exception as exc:  # e.g. the session store is down: no user, never a broken page
        client.report(exc, "user_id resolver")
        user = None
    request.META[conf.USER_KEY] = user
