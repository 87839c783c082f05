"""``log_event``, ``feature_gate`` and ``experiment``: flags for views with no extra code.

One wrapt decorator each, for functions and methods, sync and async. None of
them can break a view: outside a request they warn once and run the view with
defaults, and failures inside flagware are counted and logged by the client.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import wrapt

from flagware import request
from flagware.flags import Config, Flags, _current

log = logging.getLogger("flagware")

F = TypeVar("F", bound=Callable[..., Any])
Value = str | float | None
_warned: set[tuple[str, str]] = set()


def _flags_or_warn(decorator: str, name: str) -> Flags | None:
    flags = _current.get()
    if flags is None and (decorator, name) not in _warned:
        _warned.add((decorator, name))
        log.warning(
            "flagware: @%s(%r) ran outside a request handled by FlagwareMiddleware; "
            "the view runs with defaults and nothing is logged",
            decorator,
            name,
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


def _succeeded(result: Any) -> bool:
    status = status_of(result)
    return status is None or status < 400


def _resolve(flags: Flags, what: Any, result: Any, field: str) -> Any:
    if not callable(what):
        return what
    try:
        return what(result)
    except Exception as exc:  # the event is still logged, without this field
        flags._client.report(exc, f"log_event {field}")
        return None


def _log(flags: Flags | None, name: str, value: Any, metadata: Any, result: Any) -> None:
    if flags is None:
        return
    flags.log_event(
        name,
        value=_resolve(flags, value, result, "value"),
        metadata=_resolve(flags, metadata, result, "metadata"),
    )


def _hold(flags: Flags | None, name: str, value: Any, metadata: Any, result: Any) -> None:
    """A success event: logged when the response status is known to be < 400."""
    if flags is None:
        return
    try:
        event = flags._event(
            name,
            _resolve(flags, value, result, "value"),
            _resolve(flags, metadata, result, "metadata"),
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

    "Success" means the view returned without raising and the status the
    client got is below 400. A middleware (WSGI, ASGI or Django) holds the
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

    @wrapt.decorator
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(wrapped):

            async def run_async() -> Any:
                flags = before()
                result = await wrapped(*args, **kwargs)
                after(flags, result)
                return result

            return run_async()
        flags = before()
        result = wrapped(*args, **kwargs)
        after(flags, result)
        return result

    return wrapper  # type: ignore[return-value]


def feature_gate(name: str, *, otherwise: int | Callable[..., Any] = 404) -> Callable[[F], F]:
    """Run the view only for requests that pass gate ``name``.

    Others get ``otherwise``: an HTTP status (Flask: raised as werkzeug's
    HTTPException; Django: ``Http404`` or an empty response with that status),
    or a callable that receives the view's arguments and returns a response.
    """

    def denied(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if callable(otherwise):
            return otherwise(*args, **kwargs)
        return _deny(otherwise, args, _current.get())

    def allowed() -> bool:
        flags = _flags_or_warn("feature_gate", name)
        return flags is not None and flags.gate(name)

    @wrapt.decorator
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(wrapped):

            async def run_async() -> Any:
                if not allowed():
                    result = denied(args, kwargs)
                    return await result if inspect.isawaitable(result) else result
                return await wrapped(*args, **kwargs)

            return run_async()
        if not allowed():
            return denied(args, kwargs)
        return wrapped(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _is_django_request(obj: Any) -> bool:
    return hasattr(obj, "META") and hasattr(obj, "method") and hasattr(obj, "path_info")


def _deny(status: int, args: tuple[Any, ...], flags: Flags | None) -> Any:
    if args and _is_django_request(args[0]):
        from django.http import Http404, HttpResponse

        if status == 404:
            raise Http404("feature not available")
        return HttpResponse(status=status)
    if flags is not None and getattr(flags._environ, "scope", None) is not None:
        # An ASGI request: Starlette and FastAPI answer their own HTTPException.
        try:
            from starlette.exceptions import HTTPException
        except ImportError:
            pass
        else:
            raise HTTPException(status)
    from werkzeug.exceptions import abort

    abort(status)


def experiment(name: str, *, arg: str = "experiment") -> Callable[[F], F]:
    """Pass this request's experiment ``name`` to the view as keyword ``arg``."""

    def assignment() -> Config:
        flags = _flags_or_warn("experiment", name)
        return flags.experiment(name) if flags is not None else Config(name, {})

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        kwargs = {**kwargs, arg: assignment()}
        return wrapped(*args, **kwargs)

    def decorate(view: F) -> F:
        # The view's signature without ``arg``: frameworks that inject
        # arguments by name (FastAPI) must not try to fill it from the request.
        adapter = _without_parameter(view, arg)
        decorator: Any = wrapt.decorator(adapter=adapter)
        return decorator(wrapper)(view)  # type: ignore[no-any-return]

    return decorate


def _without_parameter(view: Callable[..., Any], name: str) -> Any:
    try:
        signature = inspect.signature(view)
    except (TypeError, ValueError):  # builtins and other objects without one
        return None
    if name not in signature.parameters:
        return None
    adapted = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != name]
    )

    # wrapt takes the signature from the adapter and the coroutine flag from
    # its code object, so an async view needs an async adapter.
    adapter: Any
    if inspect.iscoroutinefunction(view):

        async def async_adapter(*args: Any, **kwargs: Any) -> Any: ...

        adapter = async_adapter
    else:

        def sync_adapter(*args: Any, **kwargs: Any) -> Any: ...

        adapter = sync_adapter
    adapter.__signature__ = adapted
    return adapter
