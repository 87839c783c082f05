"""The Flask extension: ``FlaskFlagware(app)`` or ``ext.init_app(app)`` in a factory.

It wraps ``app.wsgi_app`` with :class:`~flagware.FlagwareMiddleware`, registers
the client in ``app.extensions["flagware"]`` and puts ``flags`` (this request's
Flags) into Jinja templates. It never keeps a reference to the app, so one
extension object serves any number of apps.

Clients are shared: apps initialised with the same options (and the same
flagware environment variables) use one client, so an app factory called once
per test, or a thousand times, still runs one writer thread and holds one
store. A shared client is closed once every app using it has been garbage
collected (at the next ``init_app``, or at exit). A client passed as
``client=`` belongs to the caller, who closes it.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

try:
    from flask import Flask, current_app, has_request_context, request
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("flagware.flask needs Flask: pip install 'flagware[flask]'") from exc

from flagware import client as _client_module
from flagware import flags as _flags
from flagware.client import Flagware
from flagware.flags import Flags, NoRequestError, _current
from flagware.middleware import ENVIRON_KEY, FlagwareMiddleware
from flagware.overrides import Config

__all__ = ["FlaskFlagware", "get_client"]

log = logging.getLogger("flagware")

# What Flagware(...) reads from the environment: a change makes a new client.
_ENVIRONMENT = (
    "STATSIG_SERVER_SECRET",
    "STATSIG_API",
    "FLAGWARE_SPEC",
    "FLAGWARE_EVENT_STORE",
    "FLAGWARE_HASH_KEY",
    "FLAGWARE_TIER",
    "FLAGWARE_DIAGNOSTICS_TOKEN",
)


class FlaskFlagware:
    """Flask extension. Options come from ``client=``, keyword arguments, or
    ``app.config["FLAGWARE"]`` (a dict of ``Flagware(...)`` keyword arguments),
    in that order; environment variables apply as for ``Flagware``. A relative
    ``spec`` path is relative to ``app.root_path`` (the app's package folder)."""

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
            spec = options.get("spec")
            if spec is not None and not Path(spec).is_absolute():
                options["spec"] = Path(app.root_path) / spec
            client = _shared_client(app, options)
        app.wsgi_app = FlagwareMiddleware(app.wsgi_app, client)  # type: ignore[method-assign]
        app.extensions["flagware"] = client
        app.context_processor(_template_flags)
        from flagware.flask_cli import cli

        app.cli.add_command(cli)  # flask flagware check
        return client


class _Shared:
    __slots__ = ("apps", "client")

    def __init__(self, client: Flagware) -> None:
        self.client = client
        self.apps: weakref.WeakSet[Flask] = weakref.WeakSet()


_shared: dict[str, _Shared] = {}
_shared_lock = threading.Lock()


def _shared_client(app: Flask, options: dict[str, Any]) -> Flagware:
    key = _configuration_key(options)
    with _shared_lock:
        _close_unused()
        entry = _shared.get(key)
        if entry is None or entry.client._closed:
            entry = _shared[key] = _Shared(Flagware(**options))
        entry.apps.add(app)
        return entry.client


def _close_unused() -> None:
    """Close shared clients whose apps are all gone (called with the lock held).

    Here rather than in a weakref callback: a callback runs in whichever thread
    triggers the garbage collection, possibly the client's own writer thread,
    which cannot wait for itself to stop.
    """
    for key, entry in list(_shared.items()):
        if not entry.apps:
            del _shared[key]
            entry.client.close()


def _configuration_key(options: dict[str, Any]) -> str:
    def canonical(value: Any) -> str:
        if isinstance(value, os.PathLike):
            return repr(os.path.abspath(os.fspath(value)))
        return repr(value)

    parts = [f"{name}={canonical(value)}" for name, value in sorted(options.items())]
    parts += [f"${name}={os.environ.get(name, '')}" for name in _ENVIRONMENT]
    # Inside and outside the pytest plugin's isolation are different clients.
    parts.append(f"isolated={id(_client_module.isolated_store)}")
    return "\0".join(parts)


def _streamed_flags() -> Flags | None:
    """The Flags of the Flask request whose context is active without flagware's:
    a body streamed with ``stream_with_context``, which runs after the middleware
    returned (the environ keeps the request's Flags under its key).

    A request context the middleware never saw (``app.test_request_context()``,
    how Flask tests a helper) raises here, on an app with the extension: the
    general message's advice, to wrap the app, was wrong for it (a new user's
    trial)."""
    if not has_request_context():
        return None
    flags = request.environ.get(ENVIRON_KEY)
    if isinstance(flags, Flags):
        return flags
    if flags is None and "flagware" in current_app.extensions:
        raise NoRequestError(
            "current_flags() in a Flask request context that did not go through"
            " the app (app.test_request_context() pushes one without running it,"
            " so flagware's middleware never saw the request): make the request"
            " with app.test_client(), or name the user for the block, inside the"
            " request context: `with get_client(app).flags_for(user_id=...):`"
        )
    return None


_flags.lookups.append(_streamed_flags)


def _template_flags() -> dict[str, Flags | _OutsideRequest]:
    flags = _current.get()
    if flags is None:
        try:  # a body streamed with the request's context finds it (_streamed_flags)
            flags = _flags.current_flags()
        except NoRequestError:
            return {"flags": _OUTSIDE}
    return {"flags": flags}


class _OutsideRequest:
    """``flags`` in a template rendered outside a request flagware handles (an
    email rendered in an app context or a task): every gate False and every
    experiment or config its code's defaults, as the decorators serve there,
    said once a name. It was None, and Jinja said "'None' has no attribute
    'gate'", which names no flagware (a Flask trial)."""

    def gate(self, name: str) -> bool:
        _say_outside("gate", name)
        return False

    def experiment(self, name: str) -> Config:
        _say_outside("experiment", name)
        return Config(name, {})

    def config(self, name: str) -> Config:
        _say_outside("config", name)
        return Config(name, {})

    def __getattr__(self, name: str) -> Any:  # user_id, log_event...: no visitor to give
        _flags.current_flags()  # raises NoRequestError, with its advice
        raise AttributeError(name)


_OUTSIDE = _OutsideRequest()
_said_outside: set[tuple[str, str]] = set()


def _say_outside(kind: str, name: str) -> None:
    if (kind, name) not in _said_outside:
        _said_outside.add((kind, name))
        log.warning(
            "flagware: a template read flags.%s(%r) outside a request flagware handles:"
            " it serves the defaults (a gate False, an experiment the code's defaults);"
            " to render for a user, render inside `with fw.flags_for(user_id=...)`",
            kind,
            name,
        )


def get_client(app: Flask | None = None) -> Flagware:
    """The client registered on ``app`` (default: the current app)."""
    target: Any = app if app is not None else current_app
    client: Flagware = target.extensions["flagware"]
    return client
