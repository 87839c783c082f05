"""The one request lifecycle that WSGI, ASGI and Django share.

Each adapter translates its protocol into these calls, and nothing else:

- :func:`begin` when a request arrives: an empty :class:`~flagware.Flags` (its
  identity, evaluations and exposures happen on first use, in ``flags.py``)
  and the contextvar behind ``current_flags()`` (the ASGI and WSGI adapters
  do the same inline, with Flags subclasses that also wrap the response's
  start: measured, see ``asgi.py`` and ``middleware.py``);
- :func:`respond` when the response starts, with the status the client gets:
  it releases or drops the events that ``@log_event(on="success")`` held, and
  returns the stableID to set in the cookie when this request minted one
  (:func:`cookie` makes the ``Set-Cookie`` header);
- :func:`finish` when the app is done: events still held because no response
  ever started are released (see its docstring for why);
- :func:`end` resets the contextvar (and under WSGI and Django :func:`detach`
  lets the Flags read a copy of the environ or ``META``, so the two form no
  reference cycle).

The status decides success, not the view's return value, because many views
never return their status: Falcon and Bottle set it on a response object,
Pyramid renderers on ``request.response``, Django's ``TemplateResponse``
renders (and may fail) after the view returned, and Flask error handlers turn
an exception into a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES

from flagware import identity
from flagware.flags import Flags, _current

if TYPE_CHECKING:
    from flagware.client import Flagware
    from flagware.events.model import Event

__all__ = [
    "begin",
    "cookie",
    "detach",
    "end",
    "finish",
    "hold",
    "respond",
    "status_code",
    "status_codes",
]

KEY = "flagware.flags"  # environ / scope / META key holding this request's Flags


def begin(client: Flagware, environ: Mapping[str, Any]) -> tuple[Flags, Token[Flags | None]]:
    """A request arrived: its (empty) Flags, current until :func:`end`."""
    flags = Flags(client, environ)  # type: ignore[arg-type]  # any mapping of WSGI keys
    # A middleware will see the status: success events wait for it.
    flags._watched = True
    return flags, _current.set(flags)


def end(token: Token[Flags | None]) -> None:
    _current.reset(token)


# What the ASGI and WSGI middlewares inline begin and end with, for every
# request: a Flags subclass made without an __init__ frame, and the
# contextvar's methods bound once (measured: see asgi.py and middleware.py).
new = object.__new__
enter, leave = _current.set, _current.reset


def detach(flags: Flags, environ: dict[str, Any]) -> None:
    """The WSGI app (or Django view) returned: the Flags reads a copy of the environ from now on.

    The environ holds the Flags under :data:`KEY`, and a Flags that has not
    read everything it needs yet (a request that read no flag) holds the
    environ: a reference cycle, so every such request, with all its environ
    holds, waited for the garbage collector. Flask breaks its own cycle at
    the end of a request for the same reason. Under gunicorn the collector
    cost a wrapped Flask app that reads no flag 13k instructions a request,
    a third of flagware's whole overhead; the copy costs a tenth of that. The
    key stays, so a streamed body or an outer middleware still finds the
    Flags, which reads the same values from the copy.
    """
    if flags._environ is environ:
        copy = environ.copy()
        copy.pop(KEY, None)  # the app may have taken the key out itself
        flags._environ = copy


def hold(flags: Flags, event: Event) -> None:
    """A success event from ``@log_event``: logged once the status is known to be < 400.

    Without a middleware that reports the status (a Flags made by hand, a plain
    function outside a request) it is logged at once, as the decorator's own
    check of the view's return value already passed.
    """
    status = flags._status
    if status is not None:  # the response already started (streaming bodies)
        if status < 400:
            flags._client.log(event)
    elif not flags._watched:
        flags._client.log(event)
    elif flags._held is None:
        flags._held = [event]  # made on first use: most requests hold nothing
    else:
        flags._held.append(event)


def respond(flags: Flags, status: int) -> str | None:
    """The response starts with ``status``: settle held events.

    Returns the stableID this request minted, which the adapter sets in the
    browser's cookie (:func:`cookie` for a header), or None: most responses
    set no cookie, so nothing about one is computed unless it is needed.
    """
    if flags._status is None:
        flags._status = status
        if flags._held:
            _settle(flags, status < 400)
    return flags._minted


def cookie(flags: Flags, *, secure: bool) -> str | None:
    """The ``Set-Cookie`` value giving the browser the stableID this request minted."""
    client, minted = flags._client, flags._minted
    if minted is None:
        return None
    try:
        return identity.cookie_header(
            client.cookie_name, minted, secure=secure, max_age=client.cookie_max_age
        )
    except Exception as exc:  # the response goes out without our cookie, never broken
        client.report(exc, "cookie")
        return None


def read_flags(flags: Flags) -> bool:
    """Whether the response may depend on who asked: a flag was read."""
    return flags._gates is not None or flags._configs is not None


def varies_by_cookie(vary: str) -> bool:
    """Whether a ``Vary`` line names Cookie already (or ``*``).

    A response that read flags varies by Cookie: its content depends on the
    visitor, whom the cookies name (flagware's stableID, the app's session),
    and a shared cache keyed on the URL alone served one visitor's group to
    the next (a Flask trial). Django's SessionMiddleware says the same for a
    page that read the session. The adapters add Cookie to the first
    ``Vary`` line unless one of the lines names it (a response may send
    several).
    """
    said = {v.strip().lower() for v in vary.split(",")}
    return "cookie" in said or "*" in said


def caching_changes(headers: Iterable[tuple[str, str]], *, vary: bool) -> tuple[int | None, bool]:
    """What a response that depends on its visitor needs in its caching
    headers: the index of the ``Vary`` line to add Cookie to (-1: add a
    ``Vary: Cookie`` line; None: one names Cookie already, or ``vary`` is
    false), and whether to add ``Cache-Control: private`` (the response says
    nothing of caching). WSGI's str headers and ASGI's bytes, decoded, alike."""
    varied, cached, first = not vary, False, -1
    for i, (key, value) in enumerate(headers):
        name = key.lower()
        if name == "cache-control":
            cached = True
        elif name == "vary" and not varied:  # any of its lines may name Cookie
            if varies_by_cookie(value):
                varied = True
            elif first < 0:
                first = i
    return (None if varied else first), not cached


# A response that depends on its visitor (a flag read, a new visitor's stableID
# set) and says nothing of caching is kept out of shared caches: one that
# ignores Vary served one visitor's group and stableID to the next, and one
# that stores Set-Cookie handed the cookie on (a trial with nginx in front).
PRIVATE = "private"


def status_code(status: str) -> int:
    """The code of a WSGI status line (``"404 Not Found"`` gives 404); 500 without one.

    Adapters look the line up in :data:`status_codes` first and call this only
    on a miss: slicing and parsing cost a WSGI request that reads no flag as
    much as all the rest of its start_response wrapper (measured with callgrind).
    """
    head = status[:3]
    code = int(head) if head.isascii() and head.isdigit() else 500
    if len(status_codes) < 512:  # bounded: an app may put anything after the code
        status_codes[status] = code
    return code


# Every status line werkzeug (so Flask) sends, learnt as others are seen.
status_codes: dict[str, int] = {f"{c} {r}": c for c, r in HTTP_STATUS_CODES.items()}


def finish(flags: Flags, *, failed: bool = False) -> None:
    """The app is done. Events still held mean no response ever started.

    That happens when the client went away mid-request and the server
    cancelled the app, or when a WSGI server stopped before calling
    ``start_response``. A view that returned normally did what its success
    event records (the signup happened; only the page was not delivered), so
    those events are logged. When the app itself raised (``failed``), the
    server answers 500, and they are dropped like any failed response's.
    """
    if flags._status is None and flags._held:
        _settle(flags, not failed)


def _settle(flags: Flags, success: bool) -> None:
    held = flags._held
    if not held:
        return
    flags._held = None
    flags._watched = False  # from now on, events follow the known status or are logged
    if success:
        log = flags._client.log
        for event in held:
            log(event)
