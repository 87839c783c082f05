"""``FlagwareMiddleware`` for ASGI 3 apps: FastAPI, Starlette, Quart, Litestar, Django.

The ASGI twin of :class:`flagware.FlagwareMiddleware`, and as thin: the request
lifecycle lives in :mod:`flagware.request`; this module translates ``scope``
into the WSGI-style keys the core reads identity from, and the response start
into the status and the cookie.

- ``http`` requests get a lazy :class:`~flagware.Flags` (``current_flags()``
  and ``scope["flagware.flags"]``); nothing is computed until a flag is read.
- ``websocket`` connections get one too, for the whole connection: the
  handshake's answer is their status (accepted, or refused by a close or a
  denial response), and a stableID minted before it rides on the accept.
- ``lifespan`` passes through; when the app reports its shutdown complete, the
  client is closed (queued events stored and delivered) first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from flagware import denials, identity, request
from flagware.flags import Flags, NoRequestError, current_flags
from flagware.request import enter, leave, new
from flagware.scope import ScopeEnviron

if TYPE_CHECKING:
    from flagware.client import Flagware

__all__ = ["FlagwareMiddleware", "get_flags"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = request.KEY


class FlagwareMiddleware:
    """Wrap any ASGI 3 app: ``app = FlagwareMiddleware(app, fw)``; in Starlette and
    FastAPI, ``app.add_middleware(FlagwareMiddleware, client=fw)``.

    Proxies: ``proxy_hops`` reads ``X-Forwarded-For`` from the headers exactly
    as the WSGI middleware does, into flagware's own copy of the address
    (``scope["client"]`` is never changed). uvicorn already rewrites
    ``scope["client"]`` from that header for peers in ``--forwarded-allow-ips``
    (127.0.0.1 by default): use either uvicorn's rule or ``proxy_hops``, not
    both (``uvicorn --no-proxy-headers`` with ``proxy_hops``), or a hop is
    skipped twice.
    """

    def __init__(self, app: ASGIApp, client: Flagware) -> None:
        self.app = app
        self.client = client
        self._engine = client.engine
        # This middleware's own Flags class, which knows the framework it
        # serves when the scope does not say (Sanic, BlackSheep, Quart put no
        # "app" there): @feature_gate raises that framework's HTTP exception.
        self._flags_class = denials.flags_class(_ScopeFlags, app)
        self._socket_class = denials.flags_class(_SocketFlags, app)
        self._diagnostics: Any = None
        if client.diagnostics:
            from flagware.diagnostics import DiagnosticsApp

            self._diagnostics = DiagnosticsApp(client)
            self._diagnostics_root = self._diagnostics.root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            flags_class: type[_ScopeFlags] = self._flags_class
        elif kind == "websocket":
            flags_class = self._socket_class
        else:
            await self._pass(scope, receive, send)
            return
        if SCOPE_KEY in scope:
            # A request an outer FlagwareMiddleware already handles (a mounted
            # sub-app wrapped too): one request, one Flags.
            await self.app(scope, receive, send)
            return
        # request.begin, inlined: this runs for every request, and most read no
        # flag. Built without __init__ (a Python frame), watched by class
        # default, the contextvar's methods bound once: measured with callgrind
        # under uvicorn, these cut what a wrapped Starlette app that reads no
        # flag pays over bare from 16k instructions a request to about 9k.
        if not self._engine.ready:
            await start_engine(self.client)
        flags = new(flags_class)
        flags._client = self.client
        flags._scope = scope
        flags._send = send
        # Stored although the class has them as defaults: on 3.11 a read that
        # falls through to a class attribute is a generic lookup, and send and
        # the end of the request read these. This and the plain ``del`` below
        # took 1.0k instructions (of 10.1k) off a request that reads no flag.
        flags._status = flags._held = flags._minted = None
        scope[SCOPE_KEY] = flags
        token = enter(flags)
        try:
            if self._diagnostics is not None and self._is_diagnostics(scope):
                await self._serve_diagnostics(flags, receive)
            else:
                await self.app(scope, receive, flags._sending)
        except asyncio.CancelledError:
            # The client went away: the view's own work still counts.
            request.finish(flags)
            raise
        except BaseException:
            request.finish(flags, failed=True)
            raise
        else:
            if flags._held:  # no response started (the app sent nothing)
                request.finish(flags)
        finally:
            leave(token)
            # scope -> Flags -> scope is a reference cycle: left in place, every
            # request's scope, and all it holds, would wait for the garbage
            # collector (measured: half of the middleware's cost on a request
            # that reads no flag). The app has returned, so the request is
            # over; a task it left running still has current_flags().
            try:  # noqa: SIM105 (suppress() is a context manager per request)
                del scope[SCOPE_KEY]
            except KeyError:  # the app took it out itself
                pass

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything but a request or a websocket: passed through untouched."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
        else:
            await self.app(scope, receive, send)

    # -- lifespan -------------------------------------------------------------------

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and not self._engine.started():
                await start_engine(self.client)  # ready before the first request, not in it
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Before the server hears "complete" and stops the process.
                try:
                    await _in_thread(self.client.close)
                except Exception as exc:
                    self.client.report(exc, "close")
            await send(message)

        return lifespan_send

    # -- diagnostics ----------------------------------------------------------------

    def _is_diagnostics(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        path: str = scope.get("path", "")
        root: str = self._diagnostics_root
        return path.startswith(root) or path.startswith(scope.get("root_path", "") + root)

    async def _serve_diagnostics(self, flags: _ScopeFlags, receive: Receive) -> None:
        """The diagnostics page is a WSGI app: rendered in a thread (it reads SQLite)."""
        environ = flags._environ
        send = flags._sending
        body = await _read_body(receive)
        wsgi = environ.wsgi(body=body)
        wsgi[SCOPE_KEY] = flags
        if not self._diagnostics.handles(wsgi):  # refused or another path: the app answers
            await self.app(environ.scope, _replay(body, receive), send)
            return
        status, headers, page = await _in_thread(self._diagnostics.render, wsgi)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": page, "more_body": False})


class _ScopeView:
    """``_ScopeFlags._environ``: the request's ScopeEnviron, made on first read.

    A non-data descriptor: the first read stores the view in the instance's
    ``__dict__``, which every later read finds first, as a plain attribute (a
    property would run a Python function on each of a new visitor's dozen
    reads). A request that reads no flag never makes it.
    """

    def __get__(self, flags: _ScopeFlags | None, owner: type) -> Any:
        if flags is None:
            return self
        environ = flags.__dict__["_environ"] = ScopeEnviron(flags._scope, flags._client.proxy_hops)
        return environ


class _ScopeFlags(Flags):
    """One ASGI request's Flags: reads its WSGI-style environ from the scope on first use."""

    _watched = True  # the middleware sees the response start
    _scope: Scope
    _send: Send  # the server's send, which _sending wraps

    # The WSGI-style view of the scope, made on the first flag read and then an
    # ordinary attribute (see _ScopeView).
    _environ: ScopeEnviron = _ScopeView()  # type: ignore[assignment]

    def _sending(self, message: Message) -> Awaitable[None]:
        """The send the app gets: the response start settles held events and may set the cookie.

        A bound method rather than a closure (cheaper to make, for every
        request), handing back the server's awaitable: no coroutine of its own
        for every message. It reads this request's Flags, never the
        contextvar: send may run in another context (streaming bodies, task
        groups).
        """
        if self._status is None and message["type"] == "http.response.start":
            minted = False
            if self._held or self._minted is not None:
                started = _started(self, message, message["status"])
                minted = started is not message  # a new browser's cookie was added
                message = started
            else:  # what request.respond does when nothing is held or minted
                self._status = message["status"]
            read = self._gates is not None or self._configs is not None  # request.read_flags
            if read or minted:
                message = _private(message, vary=read)
        return self._send(message)


class _SocketFlags(_ScopeFlags):
    """One websocket connection's Flags, from the handshake to the end.

    The handshake's answer is the status: accepting is success (101), a close
    before it refuses the connection (servers answer 403), and a denial
    response (the ``websocket.http.response`` extension) has its own. Events
    a view logged before the answer wait for it; after, they are logged at
    once. A new visitor's stableID is made at the accept, if no flag was read
    before it, and set by a header on it.
    """

    _refused = False  # @feature_gate answered the handshake itself

    def _sending(self, message: Message) -> Awaitable[None]:
        if self._status is None:
            kind = message["type"]
            if kind == "websocket.accept":
                if self._stable_id is None:
                    self._settle_stable_id()
                message = _started(self, message, 101)
            elif kind == "websocket.http.response.start":
                message = _started(self, message, message["status"])
            elif kind == "websocket.close":
                request.respond(self, 403)
        elif self._refused:
            # The framework answering a handshake @feature_gate already
            # refused (a close, or its own rejection): the server would
            # take a second answer for an error.
            return _nothing()
        return self._send(message)

    def _settle_stable_id(self) -> None:
        """The stableID, minted now for a visitor without the cookie, whether or
        not the view has read a flag: most read after accepting (Litestar's
        ``websocket_listener`` accepts before the view runs), when no header can
        carry a new ID, and each connection would be a new unit (a new user's
        trial: six connections, six units). Cheap beside a handshake."""
        try:
            found = identity.stable_id_of(self._client, self._environ)
        except Exception as exc:  # the accept goes out without our cookie, never broken
            self._client.report(exc, "identity")
            return
        if found is not None:  # None under a random override: re-rolled with the userID
            self._stable_id, self._minted = found

    async def _refuse(self, status: int) -> None:
        """@feature_gate's denial: the handshake refused, with ``status`` where the
        server can send a response (the denial-response extension), else by a close
        (which servers answer with 403). Not the framework's exception: frameworks
        answer an HTTP exception raised in a websocket handler differently (a 500
        from some), and a close means the same to all."""
        if self._status is not None:  # answered already: nothing left to refuse
            return
        if "websocket.http.response" in (self._scope.get("extensions") or {}):
            await self._sending(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await self._sending(
                {"type": "websocket.http.response.body", "body": b"feature not available"}
            )
        else:
            await self._sending({"type": "websocket.close", "code": 1008})
        self._refused = True


async def _nothing() -> None:
    pass


def _started(flags: _ScopeFlags, message: Message, status: int) -> Message:
    """The response start, or handshake answer, when events are held or a stableID
    minted: a new message when a new browser's cookie is added, else the same one.
    The caching headers are the HTTP path's (no cache keeps a 101)."""
    if request.respond(flags, status) is not None:  # a new browser
        cookie = request.cookie(flags, secure=flags._scope.get("scheme") in ("https", "wss"))
        if cookie is not None:
            headers = list(message.get("headers", ()))
            headers.append((b"set-cookie", cookie.encode("latin-1")))
            return {**message, "headers": headers}
    return message


def _private(message: Message, *, vary: bool) -> Message:
    """The response start with the caching headers of a response that depends on its visitor."""
    headers = list(message.get("headers", ()))
    line, uncached = request.caching_changes(
        ((key.decode("latin-1"), value.decode("latin-1")) for key, value in headers), vary=vary
    )
    if line is not None and line >= 0:
        key, value = headers[line]
        headers[line] = (key, value + b", Cookie")
    elif line is not None:
        headers.append((b"vary", b"Cookie"))
    if uncached:
        headers.append((b"cache-control", request.PRIVATE.encode()))
    return {**message, "headers": headers}


async def get_flags() -> Flags:
    """A FastAPI dependency: ``flags: Annotated[Flags, Depends(get_flags)]``.

    Async, so FastAPI calls it on the event loop rather than in a thread.
    """
    try:
        return current_flags()
    except NoRequestError as exc:  # named as the app calls it
        raise NoRequestError(str(exc).replace("current_flags()", "Depends(get_flags)", 1)) from None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's receive, with the body that was already read given back first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect when the client leaves

    return replay


async def start_engine(client: Flagware) -> None:
    """Start this process's SDK in a thread, not on the event loop (ASGI and
    Django's async chain await this before a request while it is not running).

    Started by the first flag read, it ran on the loop and froze every
    request in the process: 0.8 s for the local engine on a loaded machine,
    and with an unreachable Statsig API the whole init_timeout (3.7 s) for
    requests that read no flag. Requests arriving meanwhile wait here too
    (the engine's lock), with the loop free.
    """
    try:
        await _in_thread(client.engine.server)
    except Exception as exc:  # evaluating reports it again, and serves defaults
        client.report(exc, "engine start")


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work off the event loop (asyncio); inline under other loops."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
