"""``log_event``, ``feature_gate`` and ``experiment``: flags for views with no extra code.

Each wraps the view in a plain function (``functools.wraps``): sync views in a
sync one, async views in an async one, decided once when the view is
decorated, so ``inspect.iscoroutinefunction`` and frameworks that dispatch on
it see what the view is. ``classmethod`` and ``staticmethod`` objects are
unwrapped and rewrapped. None of them can break a view: outside a request
they warn once and run the view with defaults, and failures inside flagware
are counted and logged by the client.

Plain functions, not ``wrapt`` proxies (0.1.0): a proxy cost every decorated
request about 2 us, a third in calling through it and the rest in Flask's
``ensure_sync`` and our own ``iscoroutinefunction`` asking the proxy for the
view's code object (callgrind, in process: the seed lab through flagware ran
20k fewer instructions a request, of 797k).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from flagware import denials, request
from flagware.flags import Flags, _current
from flagware.overrides import Config

log = logging.getLogger("flagware")

F = TypeVar("F", bound=Callable[..., Any])
Value = str | float | None
_warned: set[tuple[str, str]] = set()
#: The attribute naming the flags a decorated view reads, as ("gate" or
#: "experiment", name) pairs, outermost decorator last: a check before any
#: request reads it (Django's flagware.W006), where a misspelt
#: ``@feature_gate`` answered 404 to everyone, said once in the log at the
#: first request (a trial).
FLAGS_READ = "__flagware_flags__"


def _flags_or_warn(decorator: str, name: str) -> Flags | None:
    flags = _current.get()
    if flags is None and (decorator, name) not in _warned:
        _warned.add((decorator, name))
        log.warning(
            "flagware: @%s(%r) ran outside a request handled by FlagwareMiddleware; %s",
            decorator,
            name,
            (
                "the gate reads False: the view is denied"
                if decorator == "feature_gate"
                else "the view runs with defaults and nothing is logged"
            )
            # A task or a script has no request: flags_for names its user.
            + " (outside a request, run it inside `with fw.flags_for(user_id=...)`)",
        )
    return flags


def status_of(result: Any) -> int | None:
    """The HTTP status a view's return value carries, where it is visible."""
    status = getattr(result, "status_code", None)  # werkzeug/Flask and Django responses
    if isinstance(status, int):
        return status
    if isinstance(result, tuple) and len(result) >= 2:  # Flask's (body, status[, headers])
        status = result[1]
        if isinstance(status, int):
            return status
        if isinstance(status, str) and status[:3].isdigit():
            return int(status[:3])
    return None


def raised_status(exc: BaseException) -> int | None:
    """The HTTP status an exception a view raised stands for, if it is a
    response (Pyramid's and Bottle's are; werkzeug's and Falcon's carry one)."""
    # Flask's abort(redirect(...)): werkzeug's exception with the response in
    # it and no code of its own, so a 302 was a failure (a Flask trial).
    response = getattr(exc, "response", None)
    if response is not None and type(exc).__module__.startswith("werkzeug."):
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    for field in ("status_code", "code", "status_int", "status"):
        status = getattr(exc, field, None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status if 100 <= status < 600 else None
        if isinstance(status, str) and status[:3].isdigit():
            return int(status[:3])
    return None


def _succeeded(result: Any) -> bool:
    status = status_of(result)
    return status is None or status < 400


def _resolve(flags: Flags, what: Any, result: Any, field: str, name: str) -> Any:
    if not callable(what):
        return what
    try:
        return what(result)
    except Exception as exc:  # the event is still logged, without this field
        # Named, and counted per event: "log_event metadata failed (serving
        # defaults)" named neither the event nor what happened to it (a trial).
        flags._client.report(exc, f"log_event {field} of {name!r}")
        return None


def _log(flags: Flags | None, name: str, value: Any, metadata: Any, result: Any) -> None:
    if flags is None:
        return
    flags.log_event(
        name,
        value=_resolve(flags, value, result, "value", name),
        metadata=_resolve(flags, metadata, result, "metadata", name),
    )


def _hold(flags: Flags | None, name: str, value: Any, metadata: Any, result: Any) -> None:
    """A success event: logged when the response status is known to be < 400."""
    if flags is None:
        return
    try:
        event = flags._event(
            name,
            _resolve(flags, value, result, "value", name),
            _resolve(flags, metadata, result, "metadata", name),
        )
        request.hold(flags, event)
    except Exception as exc:
        flags._client.report(exc, "log_event")


def log_event(
    name: str,
    *,
    value: Value | Callable[[Any], Value] = None,
    metadata: Mapping[str, Any] | Callable[[Any], Mapping[str, Any] | None] | None = None,
    on: Literal["success", "call"] = "success",
) -> Callable[[F], F]:
    """Log ``name`` server-side for the request's user when the view succeeds.

    "Success" means the view returned without raising (or raised a response
    below 400: a redirect raised in Pyramid, Bottle or Falcon, or Flask's
    ``abort(redirect(...))``) and the status
    the client got is below 400. A middleware (WSGI, ASGI or Django) holds the
    event until the response starts and decides by its status, whatever set
    it: a response object, a renderer, a template that failed while
    rendering, an error handler. Without one (a plain function outside a
    request) the status visible in the return value decides (Flask/werkzeug
    and Django responses, ``(body, status)`` tuples). ``on="call"`` logs
    before the view runs instead. ``value`` and ``metadata`` are constants or
    callables of the view's result.
    """
    if on not in ("success", "call"):
        raise ValueError(f"log_event(on=...) must be 'success' or 'call', not {on!r}")

    def before() -> Flags | None:
        flags = _flags_or_warn("log_event", name)
        if on == "call":
            _log(flags, name, value, metadata, None)
        return flags

    def after(flags: Flags | None, result: Any) -> None:
        if on == "success" and _succeeded(result):
            _hold(flags, name, value, metadata, result)

    def raised(flags: Flags | None, exc: BaseException) -> None:
        # A redirect raised as a response (Pyramid's HTTPFound, Bottle's
        # redirect(), Falcon's HTTPFound): a 302 the client gets, and the
        # signup it ends logged nothing (a new user's trial). Held for the
        # middleware, whose status decides as for a returned response.
        if on == "success" and flags is not None and flags._watched:
            status = raised_status(exc)
            if status is not None and status < 400:
                _hold(flags, name, value, metadata, exc)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(view):

            async def async_view(*args: Any, **kwargs: Any) -> Any:
                flags = before()
                try:
                    result = await view(*args, **kwargs)
                except BaseException as exc:
                    raised(flags, exc)
                    raise
                after(flags, result)
                return result

            return async_view

        def sync_view(*args: Any, **kwargs: Any) -> Any:
            flags = before()
            try:
                result = view(*args, **kwargs)
            except BaseException as exc:
                raised(flags, exc)
                raise
            after(flags, result)
            return result

        return sync_view

    return _decorator(decorate)


def feature_gate(name: str, *, otherwise: int | Callable[..., Any] = 404) -> Callable[[F], F]:
    """Run the view only for requests that pass gate ``name``.

    Others get ``otherwise``: an HTTP status, raised as the exception the
    framework serving the request answers with it (flagware.denials), or a
    callable that receives the view's arguments and returns a response.
    """

    def denied(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if callable(otherwise):
            return otherwise(*args, **kwargs)
        return _deny(otherwise, args, _current.get())

    def allowed() -> bool:
        flags = _flags_or_warn("feature_gate", name)
        return flags is not None and flags.gate(name)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(view):

            async def async_view(*args: Any, **kwargs: Any) -> Any:
                if not allowed():
                    result = denied(args, kwargs)
                    return await result if inspect.isawaitable(result) else result
                return await view(*args, **kwargs)

            return async_view

        if _is_async(otherwise):
            # A plain view's framework never awaits what it returns: FastAPI
            # answered this denial with a 500 (a new user's trial).
            raise TypeError(
                f"@feature_gate({name!r}): otherwise= is async but the view "
                f"{getattr(view, '__qualname__', view)!r} is not; make both async or both plain"
            )

        def sync_view(*args: Any, **kwargs: Any) -> Any:
            if not allowed():
                return denied(args, kwargs)
            return view(*args, **kwargs)

        return sync_view

    return _decorator(decorate, read=("gate", name))


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _is_async(fn: object) -> bool:
    """An async function, a partial of one, or an object whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    # An instance whose class (or a base) has an async __call__, as Starlette checks.
    return inspect.iscoroutinefunction(inspect.getattr_static(type(fn), "__call__", None))


def _decorator(
    decorate: Wrap,
    adapt: Callable[[inspect.Signature], inspect.Signature] | None = None,
    *,
    read: tuple[str, str] | None = None,
) -> Callable[[F], F]:
    """``decorate`` as a decorator.

    The wrapper gets the view's name, docstring, attributes (Django's
    ``csrf_exempt``...), ``__wrapped__`` (FastAPI reads the view's globals
    there) and the view's signature as ``__signature__``, which ``adapt`` may
    change: frameworks that call a view by what it accepts read it, and
    ``inspect.getfullargspec`` (Pyramid's "request only" check) reads only
    that, never ``__wrapped__``. ``classmethod`` and ``staticmethod`` objects
    are rewrapped around their decorated function. ``read`` is the flag the
    decorator reads, added to :data:`FLAGS_READ`.
    """

    def decorator(view: F) -> F:
        if isinstance(view, classmethod | staticmethod):
            return type(view)(decorator(view.__func__))
        wrapper: Any = functools.update_wrapper(decorate(view), view)
        if read is not None:  # a tuple: update_wrapper shared the inner one's
            setattr(wrapper, FLAGS_READ, (*getattr(view, FLAGS_READ, ()), read))
        # Django's method_decorator decorates a partial on every call, and
        # calls it itself: no signature to read, and none worth its cost.
        if not isinstance(view, functools.partial):
            try:
                signature = inspect.signature(view)
            except (TypeError, ValueError):  # builtins and other objects without one
                pass
            else:
                wrapper.__signature__ = signature if adapt is None else adapt(signature)
        return wrapper  # type: ignore[no-any-return]

    return decorator


def _is_django_request(obj: Any) -> bool:
    return hasattr(obj, "META") and hasattr(obj, "method") and hasattr(obj, "path_info")


def _deny(status: int, args: tuple[Any, ...], flags: Flags | None) -> Any:
    # The request comes first, or second after a method's self.
    for arg in args[:2]:
        if _is_django_request(arg):
            return denials.django(status, arg)
    if flags is None:  # outside a request (warned already): werkzeug's, as before
        raise denials.werkzeug(status)
    refuse = getattr(flags, "_refuse", None)
    if refuse is not None:  # a websocket's handshake (async views only): refused by flagware
        return refuse(status)
    # Starlette, FastAPI and Litestar put their app in the ASGI scope (an
    # add_middleware middleware wraps only the next layer of its stack).
    scope = getattr(flags, "_scope", None)
    deny = denials.for_scope(scope.get("app")) if scope is not None else None
    raise (deny or flags._deny)(status)


def experiment(name: str, *, arg: str = "experiment") -> Callable[[F], F]:
    """Pass this request's experiment ``name`` to the view as keyword ``arg``."""

    def assignment() -> Config:
        flags = _flags_or_warn("experiment", name)
        return flags.experiment(name) if flags is not None else Config(name, {})

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(view):

            async def async_view(*args: Any, **kwargs: Any) -> Any:
                return await view(*args, **{**kwargs, arg: assignment()})

            return async_view

        def sync_view(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **{**kwargs, arg: assignment()})

        return sync_view

    def hide(signature: inspect.Signature) -> inspect.Signature:
        # Frameworks that inject arguments by name (FastAPI) must not try to
        # fill ``arg`` from the request.
        parameters = [p for p in signature.parameters.values() if p.name != arg]
        return signature.replace(parameters=parameters)

    return _decorator(decorate, hide, read=("experiment", name))
