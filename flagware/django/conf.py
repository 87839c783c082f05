"""One Flagware client per process, built from ``settings.FLAGWARE``.

``FLAGWARE`` is a dict of ``Flagware(...)`` keyword arguments; environment
variables apply as for ``Flagware`` (explicit keys win). Two keys differ from
the core because Django code works with requests, not WSGI environs:

- ``user_id``: a callable (or its dotted path) taking the ``HttpRequest`` and
  returning the app's user ID or None. Left out, it is the primary key of an
  authenticated ``request.user``; set to None, visitors are identified by the
  keyed hash of their IP only.
- ``user_custom``: likewise, returning a dict of custom fields for conditions.
- ``user_custom_ids``: likewise, returning the IDs of the spec's ``custom_ids``
  units (``{"companyID": str(request.user.company_id)}``).
- ``exposure_filter``: likewise, returning False for requests whose flag reads
  are not exposures (health checks, internal traffic).

The client is built on first use and closed at interpreter exit by the core's
exit hook; ``override_settings(FLAGWARE=...)`` in tests builds a fresh one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject, empty
from django.utils.module_loading import import_string

from flagware.client import Flagware
from flagware.spec import did_you_mean

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


SETTING = "FLAGWARE"
# Namespaced META keys, as werkzeug does with "werkzeug.proxy_fix.orig".
REQUEST_KEY = "flagware.django.request"  # a weakref: META must not keep its request alive
USER_KEY = "flagware.django.user"  # the user, loaded ahead of an async view

RequestResolver = Callable[[HttpRequest], Any]

# What settings.FLAGWARE may hold: Flagware(...)'s keyword arguments.
OPTIONS = frozenset(inspect.signature(Flagware.__init__).parameters) - {"self"}
KEYS_HINT = f"keys are Flagware(...) arguments: {', '.join(sorted(OPTIONS))}"

_client: Flagware | None = None
_lock = threading.Lock()
log = logging.getLogger("flagware")


def options() -> dict[str, Any]:
    """``settings.FLAGWARE`` as a fresh dict (empty when unset)."""
    raw = getattr(settings, SETTING, None)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"settings.{SETTING} must be a dict of Flagware(...) keyword arguments, "
            f"not {type(raw).__name__}"
        )
    return dict(raw)


def get_client() -> Flagware:
    """This process's client, built from settings on first use."""
    client = _client
    if client is not None:
        return client
    with _lock:
        client = _client
        if client is None:  # not built by another thread while this one waited
            _isolate_django_tests()
            client = build_client()
            _set_client(client)
        return client


def _isolate_django_tests() -> None:
    """Under Django's test runner, isolate the clients as the pytest plugin
    does: a temporary store, the fixed test key, nothing sent to Statsig.

    Django swaps in a test database by itself, and flagware only warned: a
    trial's tests stored their events in the project's store, their users'
    IDs ("1") beside real accounts'. Django's runner keeps sent mail in
    ``django.core.mail.outbox`` while it runs (documented), which is how it is
    told; in a pytest run flagware's plugin decides (``flagware_isolate``). A
    ``--parallel`` worker inherits its parent's isolation when forked after
    the parent's first client, and makes its own otherwise (``spawn``).
    ``FLAGWARE_TEST_ISOLATION = False`` in the settings turns it off.
    """
    import atexit
    import functools
    import multiprocessing.util

    from django.core import mail

    from flagware import client as core

    # Not "pytest" in sys.modules: a test module that imports pytest for its
    # raises() turned the isolation off under Django's runner (a re-check).
    plugin = sys.modules.get("flagware.testing.plugin")
    if core.isolated_store is not None or (plugin is not None and plugin.running()):
        return
    if not hasattr(mail, "outbox") or not getattr(settings, "FLAGWARE_TEST_ISOLATION", True):
        return
    from flagware.testing import isolate

    isolation = isolate()
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:  # a --parallel worker
        isolation.prefix = children_stores(parent.pid)
    isolation.__enter__()
    # Its temporary stores go with the process: at exit, or at a
    # multiprocessing child's end, where atexit does not run.
    end = functools.partial(isolation.__exit__, None, None, None)
    atexit.register(end)
    if multiprocessing.parent_process() is not None:
        multiprocessing.util.Finalize(None, end, exitpriority=5)


def children_stores(parent: int) -> str:
    """The temporary folders' prefix of a test runner's workers, by their parent's pid.

    ``test --parallel --failfast`` terminates the pool at the first failure
    (SIGTERM), past atexit and multiprocessing's finalizers alike: each worker
    that had isolated itself left its temporary stores behind. Named after the
    parent, they are removed at its exit (``apps.FlagwareConfig.ready``).
    Removing them in a SIGTERM handler raced the worker's writer thread, which
    made the folder again, and closing clients there could wait for a lock the
    interrupted test held.
    """
    return f"flagware-tests-of-{parent}-"


def _set_client(client: Flagware | None) -> None:
    global _client
    _client = client


def unknown_keys(options: Mapping[str, Any]) -> str | None:
    """What is wrong with keys ``Flagware(...)`` does not take, each with a did-you-mean."""
    unknown = sorted(set(options) - OPTIONS)
    if not unknown:
        return None
    named = ", ".join(f"{key}{did_you_mean(key, OPTIONS)}" for key in unknown)
    return f"settings.{SETTING} has unknown keys: {named}"


def build_client(opts: Mapping[str, Any] | None = None) -> Flagware:
    """A new client from ``opts`` (default: ``settings.FLAGWARE``)."""
    kwargs = dict(options() if opts is None else opts)
    unknown = unknown_keys(kwargs)
    if unknown:  # as check E005 says it: uvicorn and gunicorn run no system checks
        raise ImproperlyConfigured(f"{unknown} ({KEYS_HINT})")
    user_id = kwargs.pop("user_id", request_user_id)
    user_custom = kwargs.pop("user_custom", None)
    user_custom_ids = kwargs.pop("user_custom_ids", None)
    exposure_filter = load_resolver(kwargs.pop("exposure_filter", None), "exposure_filter")
    return Flagware(
        user_id=_per_request(user_id, "user_id"),
        user_custom=_per_request(user_custom, "user_custom"),
        user_custom_ids=_per_request(user_custom_ids, "user_custom_ids"),
        exposure_filter=None if exposure_filter is None else RequestFilter(exposure_filter),
        **kwargs,
    )


def reset_client() -> None:
    """Close and forget the client; the next request builds a new one."""
    with _lock:
        client = _client
        _set_client(None)
    if client is not None:
        client.close()


def _reset_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        reset_client()


setting_changed.connect(_reset_on_change)


def load_resolver(value: object, key: str) -> RequestResolver | None:
    """A request resolver from a callable, its dotted path, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"settings.{SETTING}[{key!r}]: cannot import {value!r}: {exc}"
            ) from exc
    if not callable(value):
        raise ImproperlyConfigured(
            f"settings.{SETTING}[{key!r}] must be a callable taking the request, or its dotted path"
        )
    return value


def _per_request(value: object, key: str) -> FromRequest | None:
    resolver = load_resolver(value, key)
    return None if resolver is None else FromRequest(resolver)


class FromRequest:
    """Adapts a request resolver to the core's environ resolver.

    The core resolves identity lazily from the environ (``request.META``), so
    the middleware leaves a weak reference to the request there for this to
    follow. Exceptions propagate to the core, which reports them through
    ``client.report`` and falls back to the hashed IP.
    """

    __slots__ = ("resolver",)

    def __init__(self, resolver: RequestResolver) -> None:
        self.resolver = resolver

    def __call__(self, environ: WSGIEnvironment) -> Any:
        request = request_of(environ)
        if request is None:
            return None
        share_loaded_user(request)
        return self.resolver(request)


class RequestFilter(FromRequest):
    """``exposure_filter`` for Django: the app's callable takes the request."""

    __slots__ = ()

    def __call__(self, environ: Mapping[str, Any]) -> bool:
        request = request_of(environ)
        if request is None:
            return True
        share_loaded_user(request)
        return bool(self.resolver(request))


def share_loaded_user(request: HttpRequest) -> None:
    """A user ``await request.auser()`` loaded, where the lazy ``request.user``
    finds it, and the other way round: Django keeps the two apart
    (``_acached_user``, ``_cached_user``). Code of the app's that awaited it
    before a flag was read (an async middleware, a view) still left
    ``request.user`` unreadable on the event loop, and flagware saw no user;
    under WSGI an async view's own ``auser()`` loaded again the user flagware
    had loaded for it (new users' trials)."""
    if hasattr(request, "_acached_user"):
        if not hasattr(request, "_cached_user"):
            request._cached_user = request._acached_user  # type: ignore[attr-defined]
    elif hasattr(request, "_cached_user"):
        request._acached_user = request._cached_user  # type: ignore[attr-defined]


def reads_requests(client: Flagware) -> bool:
    """Whether a callable of ``FLAGWARE`` takes the request (and may read its user)."""
    takers = (
        client.user_id_resolver,
        client.custom_resolver,
        client.custom_ids_resolver,
        client.exposure_filter,
    )
    return any(isinstance(r, FromRequest) for r in takers)


def attach_request(environ: WSGIEnvironment, request: HttpRequest) -> None:
    environ[REQUEST_KEY] = weakref.ref(request)


def request_of(environ: Mapping[str, Any]) -> HttpRequest | None:
    ref = environ.get(REQUEST_KEY)
    return ref() if ref is not None else None


def request_user_id(request: HttpRequest) -> object:
    """The default resolver: the primary key of an authenticated ``request.user``."""
    user = request_user(request)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def request_user(request: HttpRequest) -> Any:
    """``request.user``, as flagware may read it where the first flag is read.

    A user an authentication set on the request wins: Django REST framework's
    (Basic, token, JWT: it authenticates inside the view and sets
    ``request.user``) and a ``login()`` in the view. Under ASGI the user
    loaded ahead of an async view was preferred to it, so a token client was
    the hash of its IP under uvicorn and its account under gunicorn's sync
    workers (a new user's trial). The auth middleware's lazy user, while
    unread, is the one loaded ahead of an async view; with none loaded it is
    read now, except on the event loop, where Django refuses the queries.
    """
    user = getattr(request, "user", None)
    if (
        type(user) is SimpleLazyObject
        and user.__dict__.get("_wrapped") is empty
        and not hasattr(request, "_cached_user")  # what reading it returns, loaded already
    ):
        meta = request.META
        if USER_KEY in meta:  # loaded ahead of an async view (None: that failed, reported)
            return meta[USER_KEY]
        if _on_event_loop():
            raise RuntimeError(
                "a flag was read on the event loop before the view (an async middleware"
                " after FlagwareMiddleware?), where Django refuses to load the logged-in"
                " user: this request is identified without it; await request.auser()"
                " before reading flags there"
            )
    return user


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
