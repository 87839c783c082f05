"""flagware.asgi.FlagwareMiddleware on FastAPI and Starlette, under a real uvicorn.

The same behaviours the WSGI tests check: identity, the cookie on the minting
response only, lazy flags, one exposure per name per request, decorators,
events stored, overrides and the diagnostics page; plus thread-pool endpoints,
dependency injection through the decorators, and the lifespan close.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import json
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from conftest import SPEC
from fastapi import Depends, FastAPI, Query, Response
from servers import Reply, fetch, uvicorn_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from flagware import Flagware, current_flags, experiment, feature_gate, log_event
from flagware.asgi import FlagwareMiddleware, get_flags
from flagware.flags import Flags, NoRequestError
from flagware.identity import hash_ip
from flagware.overrides import Config, overrides

KEY = b"asgi-test-key"


def describe(flags: Flags) -> dict[str, Any]:
    exp = flags.experiment("button_color")
    return {
        "user_id": flags.user_id,
        "stable_id": flags.stable_id,
        "gate": flags.gate("new_signup"),
        "group": exp.group,
        "color": exp.get("color", "none"),
        "current": current_flags() is flags,
    }


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"plain": "yes"}

    @app.get("/flags")
    async def flags_async(flags: Annotated[Flags, Depends(get_flags)]) -> dict[str, Any]:
        await asyncio.sleep(0.005)  # let other requests interleave on the loop
        return describe(flags)

    @app.get("/sync")
    def flags_sync() -> dict[str, Any]:  # run in anyio's thread pool
        return describe(current_flags())

    @app.get("/memo")
    async def memo() -> dict[str, Any]:
        flags = current_flags()
        values = {flags.gate("new_signup") for _ in range(5)}
        groups = {flags.experiment("button_color").group for _ in range(5)}
        flags.log_event("clicked", value=1, metadata={"plan": "pro"})
        return {"values": len(values), "groups": len(groups), "stable_id": flags.stable_id}

    @app.get("/visit")
    @log_event("visited", value=lambda result: result["n"])
    async def visit(n: int = Query(...)) -> dict[str, Any]:
        return {"n": n, "stable_id": current_flags().stable_id}

    @app.get("/visit-sync")
    @log_event("visited_sync")
    def visit_sync(n: int) -> dict[str, Any]:
        return {"n": n, "stable_id": current_flags().stable_id}

    @app.get("/not-found")
    @log_event("not_found")
    async def not_found(response: Response) -> dict[str, Any]:
        # The status lives on the injected response: only the middleware sees it.
        response.status_code = 404
        return {"stable_id": current_flags().stable_id}

    @app.get("/gated")
    @feature_gate("nobody")
    async def gated() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/open")
    @feature_gate("everyone")
    def open_() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/exp")
    @experiment("button_color")
    async def exp(experiment: Config, q: str = "x") -> dict[str, Any]:
        return {"group": experiment.group, "color": experiment.get("color"), "q": q}

    @app.get("/exp-sync")
    @experiment("button_color", arg="assignment")
    def exp_sync(assignment: Config, q: int = 0) -> dict[str, Any]:
        return {"group": assignment.group, "q": q}

    return app


def starlette_app() -> Starlette:
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    async def flags_async(request: Request) -> JSONResponse:
        await asyncio.sleep(0.005)
        flags = request.scope["flagware.flags"]
        return JSONResponse(describe(flags))

    def flags_sync(request: Request) -> JSONResponse:
        return JSONResponse(describe(current_flags()))

    async def memo(request: Request) -> JSONResponse:
        flags = current_flags()
        values = {flags.gate("new_signup") for _ in range(5)}
        groups = {flags.experiment("button_color").group for _ in range(5)}
        flags.log_event("clicked", value=1, metadata={"plan": "pro"})
        body = {"values": len(values), "groups": len(groups), "stable_id": flags.stable_id}
        return JSONResponse(body)

    @log_event("visited", value=lambda response: int(json.loads(response.body)["n"]))
    async def visit(request: Request) -> JSONResponse:
        n = int(request.query_params["n"])
        return JSONResponse({"n": n, "stable_id": current_flags().stable_id})

    @log_event("visited_sync")
    def visit_sync(request: Request) -> JSONResponse:
        n = int(request.query_params["n"])
        return JSONResponse({"n": n, "stable_id": current_flags().stable_id})

    @log_event("not_found")
    async def not_found(request: Request) -> JSONResponse:
        return JSONResponse({"stable_id": current_flags().stable_id}, status_code=404)

    @feature_gate("nobody")
    async def gated(request: Request) -> JSONResponse:
        return JSONResponse({"gated": "open"})

    @feature_gate("everyone")
    def open_(request: Request) -> JSONResponse:
        return JSONResponse({"gated": "open"})

    @experiment("button_color")
    async def exp(request: Request, experiment: Config) -> JSONResponse:
        q = request.query_params.get("q", "x")
        return JSONResponse({"group": experiment.group, "color": experiment.get("color"), "q": q})

    @experiment("button_color", arg="assignment")
    def exp_sync(request: Request, assignment: Config) -> JSONResponse:
        q = int(request.query_params.get("q", "0"))
        return JSONResponse({"group": assignment.group, "q": q})

    routes = [
        Route("/plain", plain),
        Route("/flags", flags_async),
        Route("/sync", flags_sync),
        Route("/memo", memo),
        Route("/visit", visit),
        Route("/visit-sync", visit_sync),
        Route("/not-found", not_found),
        Route("/gated", gated),
        Route("/open", open_),
        Route("/exp", exp),
        Route("/exp-sync", exp_sync),
    ]
    return Starlette(routes=routes)


FRAMEWORKS = {"fastapi": fastapi_app, "starlette": starlette_app}


class Served:
    def __init__(self, port: int, client: Flagware) -> None:
        self.port = port
        self.client = client

    def get(self, path: str, **kwargs: Any) -> Reply:
        return fetch(self.port, path, **kwargs)

    def events(self, stable_id: str | None = None) -> list[dict[str, Any]]:
        self.client.flush()
        return [
            e
            for e in self.client.store.iter_events()
            if stable_id is None or e["stable_id"] == stable_id
        ]


@pytest.fixture(scope="module", params=sorted(FRAMEWORKS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(request.param)
    spec = tmp / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp / "events.db", hash_key=KEY, diagnostics=True)
    app = FRAMEWORKS[request.param]()
    app.add_middleware(FlagwareMiddleware, client=client)
    try:
        with uvicorn_server(app) as port:
            yield Served(port, client)
    finally:
        client.close()


def test_request_that_reads_no_flag_gets_no_cookie_and_no_events(served: Served) -> None:
    before = len(served.events())
    reply = served.get("/plain")
    assert reply.status == 200 and reply.cookies() == []
    assert len(served.events()) == before


@pytest.mark.parametrize("path", ["/flags", "/sync"])
def test_identity_and_cookie_on_the_minting_response_only(served: Served, path: str) -> None:
    first = served.get(path)
    body = first.json()
    assert first.status == 200
    assert body["current"] is True  # scope["flagware.flags"] / the dependency is current_flags()
    assert first.minted() == body["stable_id"]
    [cookie] = first.cookies()
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert body["user_id"] == hash_ip(KEY, "127.0.0.1")
    assert body["color"] == {"Control": "blue", "Red": "red"}[body["group"]]
    again = served.get(path, headers={"Cookie": f"flagware_id={body['stable_id']}"})
    assert again.json() == body and again.cookies() == []


def test_concurrent_requests_keep_their_own_flags(served: Served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: served.get("/flags" if i % 2 else "/sync"), range(16)))
    ids = [r.json()["stable_id"] for r in replies]
    assert len(set(ids)) == 16 and ids == [r.minted() for r in replies]


def test_one_exposure_per_name_per_request(served: Served) -> None:
    body = served.get("/memo").json()
    assert body["values"] == body["groups"] == 1
    events = served.events(body["stable_id"])
    assert sorted(e["event"] for e in events) == [
        "clicked",
        "statsig::config_exposure",
        "statsig::gate_exposure",
    ]
    clicked = next(e for e in events if e["event"] == "clicked")
    assert clicked["value"] == 1 and clicked["metadata"] == {"plan": "pro"}


@pytest.mark.parametrize(("path", "name"), [("/visit", "visited"), ("/visit-sync", "visited_sync")])
def test_log_event_on_endpoints_with_injected_parameters(
    served: Served, path: str, name: str
) -> None:
    reply = served.get(f"{path}?n=7")
    assert reply.status == 200 and reply.json()["n"] == 7
    [event] = served.events(reply.json()["stable_id"])
    assert event["event"] == name
    if name == "visited":
        assert event["value"] == 7


def test_fastapi_still_validates_parameters_through_the_decorators(make_client: Any) -> None:
    app = fastapi_app()
    app.add_middleware(FlagwareMiddleware, client=make_client())
    with uvicorn_server(app) as port:
        assert fetch(port, "/visit").status == 422  # n is required: FastAPI saw the parameter
        assert fetch(port, "/exp-sync?q=notanint").status == 422
        assert fetch(port, "/exp-sync?q=5").json()["q"] == 5
    # FastAPI reads the view's own signature, less the injected experiment.
    schema = app.openapi()["paths"]["/exp"]["get"]["parameters"]
    assert [p["name"] for p in schema] == ["q"]


def test_success_is_decided_by_the_status_the_client_got(served: Served) -> None:
    reply = served.get("/not-found")
    assert reply.status == 404
    assert served.events(reply.json()["stable_id"]) == []


def test_feature_gate_and_experiment_decorators(served: Served) -> None:
    assert served.get("/gated").status == 404
    assert served.get("/open").json() == {"gated": "open"}
    for path in ("/exp?q=hi", "/exp-sync?q=3"):
        reply = served.get(path)
        assert reply.status == 200, reply.body
        body = reply.json()
        assert body["group"] in ("Control", "Red")
        assert body["q"] in ("hi", 3)
        [exposure] = served.events(reply.minted())
        assert exposure["event"] == "statsig::config_exposure"
        assert exposure["group"] == body["group"]


def test_test_overrides_apply_and_still_expose(served: Served) -> None:
    overrides.configs["button_color"] = Config(
        "button_color", {"color": "green"}, group="Green", rule_id="override"
    )
    try:
        body = served.get("/flags").json()
    finally:
        overrides.clear()
    assert body["group"] == "Green" and body["color"] == "green"
    [exposure] = [
        e for e in served.events(body["stable_id"]) if e["event"] == "statsig::config_exposure"
    ]
    assert exposure["metadata"]["ruleID"] == "override"


def test_diagnostics_page_is_served_through_the_asgi_middleware(served: Served) -> None:
    cookie = {"Cookie": "flagware_id=" + "a" * 32}
    page = served.get("/_flagware/", headers={"Host": "127.0.0.1", **cookie})
    assert page.status == 200 and "flagware diagnostics" in page.text
    assert "a" * 32 in page.text  # this visitor's stableID
    assert page.header("Content-Security-Policy") is not None
    events = served.get("/_flagware/events.json?after=0", headers={"Host": "localhost"})
    assert events.status == 200 and "events" in events.json()
    # A request relayed by a proxy is not local: the app answers, as if there were no page.
    relayed = served.get("/_flagware/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert relayed.status == 404 and "flagware diagnostics" not in relayed.text


def test_outside_a_request_current_flags_raises() -> None:
    with pytest.raises(NoRequestError, match="FlagwareMiddleware"):
        current_flags()
    # The dependency says what the app called (it said "current_flags()").
    with pytest.raises(NoRequestError, match=r"^Depends\(get_flags\) was called outside a"):
        asyncio.run(get_flags())


# -- protocol details, driven in-process ------------------------------------------------


def run_asgi(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[Any]:
    sent: list[Any] = []

    async def go() -> None:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            if queue:
                return queue.pop(0)
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(go())
    return sent


def http_scope(path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("10.1.2.3", 5000),
        "server": ("example.test", 443),
    }


def test_a_websocket_has_flags_and_lifespan_passes_through(make_client: Any) -> None:
    client = make_client()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], "flagware.flags" in scope))
        try:
            current_flags()
        except NoRequestError:
            seen.append("no flags")
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
        else:
            await send({"type": "websocket.close", "code": 1000})

    wrapped = FlagwareMiddleware(app, client)
    run_asgi(wrapped, {"type": "websocket", "path": "/ws", "headers": []}, [])
    assert seen == [("websocket", True)]  # the connection's own Flags
    assert not client._closed
    sent = run_asgi(
        wrapped, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert client._closed  # closed before the server heard "complete"


@pytest.mark.parametrize("reads", [False, True])
def test_a_finished_request_leaves_no_reference_cycle(make_client: Any, reads: bool) -> None:
    # Freed by reference counting alone, with the collector off: nothing of the
    # request waits for a garbage collection (each one costs every request).
    client = make_client()
    refs: list[weakref.ref[Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        flags = scope["flagware.flags"]
        assert flags is current_flags()
        if reads:
            flags.gate("new_signup")
        refs.append(weakref.ref(flags))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = http_scope("/", [(b"user-agent", b"Mozilla/5.0")])
    gc.collect()
    gc.disable()
    try:
        sent = run_asgi(FlagwareMiddleware(app, client), scope, [])
        assert sent[0]["status"] == 200
        assert refs[0]() is None  # the Flags is gone: the scope no longer links to it
        assert "flagware.flags" not in scope  # the request is over
    finally:
        gc.enable()


def test_an_app_that_takes_the_scope_key_out_itself(make_client: Any) -> None:
    client = make_client()
    held: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        held.append(scope.pop("flagware.flags"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = http_scope("/", [(b"user-agent", b"Mozilla/5.0")])
    sent = run_asgi(FlagwareMiddleware(app, client), scope, [])
    assert sent[0]["status"] == 200 and held[0] is not None
    assert "flagware.flags" not in scope
    assert not client.errors


def test_secure_cookie_repeated_headers_and_proxy_hops(make_client: Any) -> None:
    client = make_client(proxy_hops=1)
    bodies: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        flags = current_flags()
        bodies.append((flags.user_id, flags.stable_id, scope["client"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    headers = [
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"x-forwarded-for", b"203.0.113.5"),  # a second header line: joined, rightmost wins
        (b"cookie", b"other=1"),
    ]
    sent = run_asgi(FlagwareMiddleware(app, client), http_scope(headers=headers), [])
    user_id, stable_id, peer = bodies[0]
    assert user_id == hash_ip(b"test-key", "203.0.113.5")
    assert peer == ("10.1.2.3", 5000)  # the scope's client is never rewritten
    start = sent[0]
    assert start["headers"][0] == (b"x-a", b"1")
    [cookie] = [v for k, v in start["headers"] if k == b"set-cookie"]
    assert cookie.startswith(f"flagware_id={stable_id};".encode()) and b"Secure" in cookie


def test_a_response_that_read_flags_varies_by_cookie(make_client: Any) -> None:
    """As under WSGI (test_middleware.py): Vary: Cookie when a flag was read,
    private when a flag was read or a cookie set and the app said nothing."""
    client = make_client()

    async def reads(request: Request) -> PlainTextResponse:
        current_flags().gate("everyone")
        return PlainTextResponse("x", headers={"vary": "Accept-Encoding"})

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    app = Starlette(routes=[Route("/reads", reads), Route("/plain", plain)])
    wrapped = FlagwareMiddleware(app, client=client)
    body = [{"type": "http.request", "body": b""}]
    sent = run_asgi(wrapped, http_scope("/reads"), body)[0]["headers"]
    names = [name for name, _ in sent]
    assert names.count(b"vary") == 1 and names.count(b"cache-control") == 1
    first = dict(sent)
    assert first[b"vary"] == b"Accept-Encoding, Cookie" and first[b"cache-control"] == b"private"
    cookie = first[b"set-cookie"].split(b";")[0]
    again = run_asgi(wrapped, http_scope("/reads", headers=[(b"cookie", cookie)]), body)
    headers = dict(again[0]["headers"])
    assert (
        headers[b"vary"] == b"Accept-Encoding, Cookie" and headers[b"cache-control"] == b"private"
    )
    plain_headers = dict(run_asgi(wrapped, http_scope("/plain"), body)[0]["headers"])
    assert b"vary" not in plain_headers and b"cache-control" not in plain_headers

    async def two_lines(scope: Any, receive: Any, send: Any) -> None:
        current_flags().gate("everyone")
        lines = [(b"vary", b"Accept-Encoding"), (b"vary", b"cookie")]
        await send({"type": "http.response.start", "status": 200, "headers": lines})
        await send({"type": "http.response.body", "body": b"x"})

    # A raw app's two Vary lines, the second naming Cookie: not named again (a trial).
    sent = run_asgi(FlagwareMiddleware(two_lines, client), http_scope("/"), body)[0]["headers"]
    assert [v for k, v in sent if k == b"vary"] == [b"Accept-Encoding", b"cookie"]


def test_a_mounted_sub_app_wrapped_twice_shares_one_flags(make_client: Any) -> None:
    client = make_client()
    seen: list[Any] = []

    async def inner(request: Request) -> PlainTextResponse:
        flags = current_flags()
        seen.append(flags)
        flags.gate("everyone")
        return PlainTextResponse("inner")

    sub = Starlette(routes=[Route("/x", inner)])
    sub.add_middleware(FlagwareMiddleware, client=client)
    outer = Starlette(routes=[Mount("/sub", app=sub)])
    outer.add_middleware(FlagwareMiddleware, client=client)
    sent = run_asgi(outer, http_scope("/sub/x"), [{"type": "http.request", "body": b""}])
    cookies = [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    assert len(cookies) == 1 and len(seen) == 1
    client.flush()
    assert [e["event"] for e in client.store.iter_events()] == ["statsig::gate_exposure"]


def test_lifespan_shutdown_under_uvicorn_closes_the_client(
    make_client: Any, tmp_path: Path
) -> None:
    client = make_client()
    app = fastapi_app()
    app.add_middleware(FlagwareMiddleware, client=client)
    with uvicorn_server(app, lifespan="on") as port:
        stable_id = fetch(port, "/memo").json()["stable_id"]
    assert client._closed
    from flagware.events.store import EventStore

    with EventStore(client.event_store_path) as store:
        mine = [e["event"] for e in store.iter_events() if e["stable_id"] == stable_id]
    assert sorted(mine) == ["clicked", "statsig::config_exposure", "statsig::gate_exposure"]


def test_random_override_and_resolvers_see_the_scope(make_client: Any) -> None:
    client = make_client(
        allow_random_override=True,
        user_id=lambda environ: environ["HTTP_X_USER"] + "@" + environ["asgi.scope"]["client"][0],
    )
    seen: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        flags = current_flags()
        seen.append((flags.user_id, flags.stable_id))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = FlagwareMiddleware(app, client)
    run_asgi(wrapped, http_scope(headers=[(b"x-user", b"u-42")]), [])
    rolled = http_scope(headers=[(b"x-user", b"u-42")])
    rolled["query_string"] = b"random=1"
    sent = run_asgi(wrapped, rolled, [])
    assert seen[0][0] == "u-42@10.1.2.3"
    assert seen[1][0] == seen[1][1] and len(seen[1][0]) == 32  # re-rolled for this request
    assert not [v for k, v in sent[0]["headers"] if k == b"set-cookie"]  # never stored


@pytest.mark.parametrize("status", [200, 500])
def test_success_events_wait_for_the_status_and_a_quiet_request_builds_nothing(
    make_client: Any, status: int
) -> None:
    from flagware.flags import listeners

    client = make_client()
    seen: list[Any] = []
    made: list[Flags] = []

    @log_event("visited_signup")
    def signup() -> str:
        return "ok"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        made.append(current_flags())
        if scope["path"] == "/signup":
            signup()  # held: its success is the status the client gets
            assert [e.name for e in seen] == []
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    listeners.append(seen.append)
    try:
        wrapped = FlagwareMiddleware(app, client)
        run_asgi(wrapped, http_scope("/quiet"), [])
        quiet = made[0]
        # Nothing read: the environ view of the scope was never built, nothing
        # held, and the status still recorded (a streamed body's events follow it).
        assert "_environ" not in vars(quiet)
        assert quiet._held is None and quiet._status == status
        run_asgi(wrapped, http_scope("/signup"), [])
    finally:
        listeners.remove(seen.append)
    assert [e.name for e in seen] == (["visited_signup"] if status < 400 else [])
    assert made[1]._held is None and not made[1]._watched  # settled: later events follow


def _http_scope(path: str = "/", root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": root_path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"user-agent", b"Mozilla/5.0")],
        "client": ("203.0.113.9", 5000),
        "server": ("testserver", 80),
        "scheme": "http",
        "http_version": "1.1",
    }


async def _call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def _reads_a_gate(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].removeprefix("lifespan.")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    current_flags().gate("new_signup")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_sdk_starts_in_a_thread_so_the_event_loop_never_waits(tmp_path: Path) -> None:
    """The first flag read started the SDK on the event loop, freezing every
    request in the process: 0.8 s for the local engine on a loaded machine,
    and the whole init_timeout with an unreachable Statsig API (a new user's
    trial: an SSE stream and a 404 stalled 3.7 s). Here the API accepts
    connections and never answers; a task ticking on the loop must keep ticking."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing ever answers
    api = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    fw = Flagware(
        statsig_secret="secret-x",
        statsig_api=api,
        init_timeout=1,
        hash_key="k",
        shutdown_timeout=0,
        event_store=tmp_path / "events.db",
    )
    app = FlagwareMiddleware(_reads_a_gate, fw)

    async def main() -> tuple[float, float, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = loop.time()
            while not done.is_set():
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - last)
                last = loop.time()

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        sent = await _call(app, _http_scope())
        took = time.monotonic() - started
        done.set()
        await ticker
        return took, max(gaps, default=took), sent

    try:
        took, longest_gap, sent = asyncio.run(main())
    finally:
        silent.close()  # first: close() would wait out its 3 s bound on hanging requests
        fw.close()
    assert sent[0]["status"] == 200  # served, with defaults
    assert took >= 0.9  # the request did wait for init_timeout...
    assert longest_gap < 0.5  # ...but the loop went on meanwhile


def test_lifespan_startup_starts_the_sdk_before_the_first_request(make_client: Any) -> None:
    fw = make_client()
    app = FlagwareMiddleware(_reads_a_gate, fw)

    async def main() -> list[bool]:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        seen: list[bool] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":  # what the server hears
                seen.append(fw.engine.started())

        assert not fw.engine.started()
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        return seen

    assert asyncio.run(main()) == [True]


@pytest.mark.parametrize(
    ("path", "root_path", "route_path"),
    [
        ("/api/x", "/api", "/x"),
        ("/apiary/x", "/api", "/apiary/x"),  # was "ary/x": the root cut mid-segment
        ("/healthz", "/health", "/healthz"),  # was "z": a filter on "/healthz" missed it
        ("/api", "/api", ""),
        ("/x", "", "/x"),
        ("/other", "/api", "/other"),  # hypercorn leaves path alone when it does not start so
    ],
)
def test_path_info_strips_the_root_path_as_starlette_routes_do(
    path: str, root_path: str, route_path: str
) -> None:
    """``route_path`` is what Starlette's router matches (starlette._utils.get_route_path)."""
    from flagware.scope import ScopeEnviron

    environ = ScopeEnviron(_http_scope(path, root_path))
    assert environ["PATH_INFO"] == route_path
    assert environ["SCRIPT_NAME"] == root_path


def test_a_second_lifespan_in_one_process_stores_its_events(make_client: Any) -> None:
    """Each lifespan's end closes the client (each ``with TestClient(app)`` runs
    one). Used again, the client logged into a writer nobody closed: the second
    run's 5 events were lost at exit (a new user's trial)."""
    fw = make_client()

    @log_event("viewed_pricing")
    async def pricing(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/pricing", pricing)])
    app.add_middleware(FlagwareMiddleware, client=fw)

    async def lifespan(requests: int) -> None:
        """Startup, the requests, shutdown: what a server (or TestClient) does."""
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        said: asyncio.Queue[str] = asyncio.Queue()

        async def send(message: dict[str, Any]) -> None:
            await said.put(message["type"])

        task = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        )
        await inbox.put({"type": "lifespan.startup"})
        assert await said.get() == "lifespan.startup.complete"
        for _ in range(requests):
            await _call(app, _http_scope("/pricing"))
        await inbox.put({"type": "lifespan.shutdown"})
        assert await said.get() == "lifespan.shutdown.complete"
        await task

    def stored() -> int:
        return sum(e["event"] == "viewed_pricing" for e in fw.store.iter_events())

    asyncio.run(lifespan(1))
    assert stored() == 1  # the lifespan's end closed the client: stored
    asyncio.run(lifespan(5))
    assert stored() == 6  # closed again, so stored again


def test_a_stable_id_made_after_the_response_started_is_counted_and_logged_once(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A flag first read in a streaming body (server-sent events) mints a
    stableID no cookie can carry: every such request was a new unit, silently
    (a new user's trial). Now it is logged once and counted."""
    fw = make_client()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        group = current_flags().experiment("button_color").group or "-"
        await send({"type": "http.response.body", "body": group.encode()})

    app = FlagwareMiddleware(stream, fw)
    with caplog.at_level(logging.WARNING, logger="flagware"):
        first = asyncio.run(_call(app, _http_scope()))
        asyncio.run(_call(app, _http_scope()))
    assert not [h for h in first[0]["headers"] if h[0] == b"set-cookie"]
    assert fw.errors["stableID after response start"] == 2
    [said] = [r.getMessage() for r in caplog.records if "stableID" in r.getMessage()]
    assert "after the response started" in said and "read a flag before" in said


def test_the_wsgi_middleware_refuses_an_asgi_app_at_once(make_client: Any) -> None:
    """``from flagware import FlagwareMiddleware`` in a FastAPI app (a new user's
    trial) built fine, then answered every request with a 500 TypeError."""
    from fastapi import FastAPI

    from flagware import FlagwareMiddleware as WSGIMiddleware

    app = FastAPI()
    app.add_middleware(WSGIMiddleware, client=make_client())
    with pytest.raises(TypeError, match=r"use flagware\.asgi\.FlagwareMiddleware"):
        # Starlette builds its middleware stack on the first request.
        run_asgi(app, http_scope(), [{"type": "http.request"}])

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match="this one is ASGI"):
        WSGIMiddleware(raw, make_client())


def test_a_handler_on_fastapis_http_exception_sees_the_denial(make_client: Any) -> None:
    """A new user's trial registered its handler on ``fastapi.HTTPException``;
    Starlette's exception (its base) bypassed it. FastAPI's reaches both."""
    from fastapi import HTTPException
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI()
    seen: list[str] = []

    @app.exception_handler(HTTPException)
    async def fastapi_handler(request: Request, exc: HTTPException) -> JSONResponse:
        seen.append(type(exc).__module__)
        return JSONResponse({"denied": exc.status_code}, status_code=exc.status_code)

    @app.get("/gated")
    @feature_gate("nobody", otherwise=403)
    async def gated() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/gated-sync")
    @feature_gate("nobody")
    def gated_sync() -> dict[str, str]:
        return {"gated": "open"}

    with uvicorn_server(FlagwareMiddleware(app, make_client())) as port:
        replies = [fetch(port, path) for path in ("/gated", "/gated-sync")]
    assert [(r.status, json.loads(r.body)) for r in replies] == [
        (403, {"denied": 403}),
        (404, {"denied": 404}),
    ]
    assert seen == ["fastapi.exceptions"] * 2
    assert issubclass(HTTPException, StarletteHTTPException)  # handlers on either see it


def test_an_async_otherwise_on_a_plain_view_is_refused_when_decorated() -> None:
    """FastAPI answered such a denial with a 500: nothing awaits what a plain
    view returns. The mistake now shows at import, not on the first denial."""

    async def sorry() -> dict[str, str]:
        return {"sorry": "yes"}

    def view() -> dict[str, str]:
        return {"in": "yes"}

    class Sorry:
        async def __call__(self) -> dict[str, str]:
            return {"sorry": "yes"}

    for async_callable in (sorry, functools.partial(sorry), Sorry()):
        with pytest.raises(TypeError, match=r"otherwise= is async but the view .*view.* is not"):
            feature_gate("nobody", otherwise=async_callable)(view)

    async def async_view() -> dict[str, str]:
        return {"in": "yes"}

    assert inspect.iscoroutinefunction(feature_gate("nobody", otherwise=sorry)(async_view))
