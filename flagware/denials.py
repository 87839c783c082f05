"""``@feature_gate``'s denial: the HTTP exception the framework serving the request answers.

A status passed as ``otherwise`` must reach the client as that status. Each
framework turns only its own exception into a response and answers any other
with a 500 and a logged traceback (measured: werkzeug's ``NotFound`` under
Falcon, Bottle, Pyramid, Sanic and BlackSheep), so the exception is chosen by
the app serving the request, never by what happens to be installed (Quart
answered Starlette's exception with a 500 whenever Starlette was importable).

The app is found from the ASGI scope where the framework puts itself there
(Starlette, FastAPI, Litestar) and otherwise from what the middleware wraps,
followed through bound methods (Flask's ``app.wsgi_app``) and the ``.app``
attribute wrapping middlewares keep, once per middleware. Django's views are
told by their request argument (:func:`django`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("flagware")
F = TypeVar("F")

__all__ = ["Denial", "django", "flags_class", "for_app", "for_scope", "framework", "werkzeug"]


def werkzeug(status: int) -> BaseException:
    from werkzeug.exceptions import HTTPException, default_exceptions

    known = default_exceptions.get(status)
    if known is not None:
        return known()
    exc = HTTPException("feature not available")  # a status werkzeug has no class for
    exc.code = status
    return exc


def _starlette(status: int) -> BaseException:
    from starlette.exceptions import HTTPException

    return HTTPException(status)


def _fastapi(status: int) -> BaseException:
    # FastAPI's subclasses Starlette's: a handler registered on either sees it,
    # where Starlette's would bypass a handler on FastAPI's (a new user's trial).
    from fastapi import HTTPException

    return HTTPException(status)


def _litestar(status: int) -> BaseException:
    from litestar.exceptions import HTTPException

    return HTTPException(status_code=status)


def _sanic(status: int) -> BaseException:
    sanic: Any = importlib.import_module("sanic.exceptions")
    # quiet: a denial is no error; Sanic would log each with a traceback.
    exc: BaseException = sanic.SanicException(
        "feature not available", status_code=status, quiet=True
    )
    return exc


def _blacksheep(status: int) -> BaseException:
    blacksheep: Any = importlib.import_module("blacksheep.exceptions")
    exc: BaseException = blacksheep.HTTPException(status, "feature not available")
    return exc


def _falcon(status: int) -> BaseException:
    import falcon

    return falcon.HTTPError(status)


def _bottle(status: int) -> BaseException:
    bottle: Any = importlib.import_module("bottle")
    exc: BaseException = bottle.HTTPError(status, "feature not available")
    return exc


def _pyramid(status: int) -> BaseException:
    pyramid: Any = importlib.import_module("pyramid.httpexceptions")
    exc: BaseException = pyramid.exception_response(status)
    return exc


def _is_drf(request: object) -> bool:
    return any(
        cls.__module__ == "rest_framework.request" and cls.__qualname__ == "Request"
        for cls in type(request).__mro__
    )


def _is_ninja(request: object) -> bool:
    # Ninja's URLs resolve to views made in ninja.operation, for every version
    # (a bound PathView method before 1.4, a closure since).
    match = getattr(request, "resolver_match", None)
    module = getattr(getattr(match, "func", None), "__module__", None)
    return isinstance(module, str) and module.startswith("ninja.")


def django(status: int, request: object) -> Any:
    """A Django view's denial, as the framework calling the view answers ``status``.

    Raised where one of the stack's exceptions means that status, since only
    then do their handlers see it (a trial: an empty 403 bypassed DRF's
    exception handler and Ninja's JSON): ``Http404`` for 404 everywhere (DRF
    and Ninja answer it as their JSON 404); in a DRF view an ``APIException``
    with the status (``PermissionDenied`` for 403); in a django-ninja
    operation ``HttpError`` (Ninja answers Django's ``PermissionDenied`` with
    a 500 under ``DEBUG``); in a plain view the page of ``handler403`` or
    ``handler400`` (:func:`_django_error_page`). Any other status in a plain
    view is an empty response with it. Responses are returned, exceptions
    raised.
    """
    from django.http import Http404, HttpResponse

    if status == 404:
        raise Http404("feature not available")
    if _is_drf(request):
        drf: Any = importlib.import_module("rest_framework.exceptions")
        if status == 403:
            raise drf.PermissionDenied("feature not available")
        exc = drf.APIException("feature not available")
        exc.status_code = status
        raise exc
    if _is_ninja(request):
        ninja: Any = importlib.import_module("ninja.errors")
        raise ninja.HttpError(status, "feature not available")
    if status in (400, 403):
        return _django_error_page(status, request)
    return HttpResponse(status=status)


def _django_error_page(status: int, request: Any) -> Any:
    """The project's ``handler403``/``handler400`` page, as Django renders it
    for ``PermissionDenied``/``BadRequest``, returned rather than raised:
    Django logs a raised one with its traceback, every denial (a trial: 21
    lines each), and a returned 4xx in one line (``Forbidden: /path``). In
    an async view (a running event loop) it is a coroutine the decorator
    awaits, the handler run in a thread as Django runs it."""
    from django.core.exceptions import BadRequest, PermissionDenied
    from django.core.handlers.exception import get_exception_response
    from django.urls import get_resolver, get_urlconf

    exc = (PermissionDenied if status == 403 else BadRequest)("feature not available")

    def page() -> Any:
        return get_exception_response(request, get_resolver(get_urlconf()), status, exc)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return page()
    from asgiref.sync import sync_to_async

    return sync_to_async(page)()


Denial = Callable[[int], BaseException]
WERKZEUG = "werkzeug"
# Each framework's app class, as its module and name: looked up in an app's
# MRO, so subclasses (FastAPI of Starlette, falcon.asgi.App of falcon.App) count.
_FRAMEWORKS: dict[str, tuple[str, Denial]] = {
    "flask.app.Flask": (WERKZEUG, werkzeug),
    "flask.sansio.app.App": (WERKZEUG, werkzeug),
    "quart.app.Quart": (WERKZEUG, werkzeug),
    "fastapi.applications.FastAPI": ("fastapi", _fastapi),
    "starlette.applications.Starlette": ("starlette", _starlette),
    "litestar.app.Litestar": ("litestar", _litestar),
    "sanic.app.Sanic": ("sanic", _sanic),
    "blacksheep.server.application.Application": ("blacksheep", _blacksheep),
    "falcon.app.App": ("falcon", _falcon),
    "bottle.Bottle": ("bottle", _bottle),
    "pyramid.router.Router": ("pyramid", _pyramid),
}
_EXCEPTIONS = dict(_FRAMEWORKS.values())
_warned: set[str] = set()
_by_class: dict[type, tuple[str, Denial] | None] = {}  # a handful of app classes


def _by_type(cls: type) -> tuple[str, Denial] | None:
    try:
        return _by_class[cls]
    except KeyError:
        pass
    found = None
    for base in cls.__mro__:
        found = _FRAMEWORKS.get(f"{base.__module__}.{base.__qualname__}")
        if found is not None:
            break
    _by_class[cls] = found
    return found


def _known(app: object) -> str | None:
    found = _by_type(type(app))
    return found[0] if found is not None else None


def _served(app: object) -> object:
    """A bound method's object (Flask's ``app.wsgi_app``), else ``app`` itself."""
    owner = getattr(app, "__self__", None)
    return owner if owner is not None else app


# Where a wrapping middleware keeps the app it wraps: werkzeug's ProxyFix and
# most as ``app``; others as ``application`` (a trial's hand-written one, and
# a Falcon app behind it answered every denial with a 500) or ``wsgi_app``.
_WRAPPED = ("app", "application", "wsgi_app", "_app", "__wrapped__")


def framework(app: object) -> str | None:
    """The framework serving through ``app``, or None when none flagware knows.

    Follows a bound method to its object and a wrapping middleware to the app
    it keeps (:data:`_WRAPPED`), a few layers deep.
    """
    seen: set[int] = set()
    try:
        for _ in range(16):
            if app is None or id(app) in seen:
                return None
            seen.add(id(app))
            name = _known(app)
            if name is not None:
                return name
            served = _served(app)
            if served is not app:
                app = served
                continue
            app = next(
                (inner for inner in (getattr(app, a, None) for a in _WRAPPED) if inner is not None),
                None,
            )
    except Exception:  # an object whose attributes raise (a proxy): not one we know
        return None
    return None


def for_scope(app: object) -> Denial | None:
    """The denial of the app an ASGI framework put in its scope, cached by its class."""
    found = _by_type(type(app)) if app is not None else None
    return found[1] if found is not None else None


def _unknown(served_by: str) -> Denial:
    def deny(status: int) -> BaseException:
        if served_by not in _warned:
            _warned.add(served_by)
            log.warning(
                "flagware: @feature_gate denied a request served by %s, which flagware does "
                "not know, with werkzeug's HTTPException(%d); if it answers 500, pass "
                "otherwise= a callable that returns the framework's own response",
                served_by,
                status,
            )
        return werkzeug(status)

    return deny


def for_app(app: object) -> Denial:
    """How a middleware wrapping ``app`` denies: its framework's exception.

    An app flagware does not know gets werkzeug's ``HTTPException``, which
    werkzeug-based apps answer with that status, and a warning once naming
    the app's class: others answer it with a 500, and ``otherwise=`` a
    callable returning the framework's own response is then the way.
    """
    name = framework(app)
    if name is not None:
        return _EXCEPTIONS[name]
    try:
        served_by = type(_served(app)).__qualname__
    except Exception:  # a proxy whose attributes raise
        served_by = type(app).__qualname__
    return _unknown(served_by)


def flags_class(base: type[F], app: object) -> type[F]:
    """A middleware's own ``Flags`` class, which denies as the app it wraps does.

    Chosen once per middleware, so an allowed request pays nothing for it.
    """
    made: type[F] = type(base.__name__, (base,), {"_deny": staticmethod(for_app(app))})
    return made
