"""The ASGI middleware under Quart, Litestar, Sanic, BlackSheep and Falcon, served by uvicorn.

The README's "any other ASGI 3 app is wrapped the same way", checked where
frameworks differ: each answers only its own HTTP exceptions (any other with a
500), so ``@feature_gate`` must raise the one of the framework serving the
request, whatever else is installed (Starlette is, here: Quart answered
Starlette's exception with a 500). Sanic, BlackSheep and Quart put no app in
the scope: the middleware tells them by the app it wraps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SPEC
from framework_checks import assert_denials, assert_open_route
from servers import fetch, uvicorn_server

from flagware import Flagware, current_flags, feature_gate, log_event
from flagware.asgi import FlagwareMiddleware

quart = pytest.importorskip("quart")
litestar = pytest.importorskip("litestar")
sanic = pytest.importorskip("sanic")
blacksheep = pytest.importorskip("blacksheep")
falcon_asgi = pytest.importorskip("falcon.asgi")


def quart_app() -> Any:
    app = quart.Quart(__name__)

    @app.get("/gated")
    @feature_gate("nobody")
    async def gated() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/forbidden")
    @feature_gate("nobody", otherwise=403)
    async def forbidden() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/open")
    @feature_gate("everyone")
    @log_event("visited_signup")
    async def open_() -> dict[str, Any]:
        return {"gated": "open", "group": current_flags().experiment("button_color").group}

    return app


def litestar_app(**options: Any) -> Any:
    @litestar.get("/gated")
    @feature_gate("nobody")
    async def gated() -> dict[str, str]:
        return {"gated": "open"}

    @litestar.get("/forbidden")
    @feature_gate("nobody", otherwise=403)
    async def forbidden() -> dict[str, str]:
        return {"gated": "open"}

    @litestar.get("/open")
    @feature_gate("everyone")
    @log_event("visited_signup")
    async def open_() -> dict[str, Any]:
        return {"gated": "open", "group": current_flags().experiment("button_color").group}

    # No logging_config: Litestar's default configures the root logger (INFO),
    # which would outlive this test.
    return litestar.Litestar([gated, forbidden, open_], logging_config=None, **options)


_sanic_apps = iter(range(1_000_000))  # Sanic refuses a second app of the same name


def sanic_app() -> Any:
    # No configure_logging: Sanic's would configure loggers for every later test.
    app = sanic.Sanic(f"flagware_test_{next(_sanic_apps)}", configure_logging=False)
    app.config.TOUCHUP = False  # it rewrites Sanic's class once; a second app's start failed

    @app.get("/gated")
    @feature_gate("nobody")
    async def gated(request: Any) -> Any:
        return sanic.json({"gated": "open"})

    @app.get("/forbidden")
    @feature_gate("nobody", otherwise=403)
    async def forbidden(request: Any) -> Any:
        return sanic.json({"gated": "open"})

    @app.get("/open")
    @feature_gate("everyone")
    @log_event("visited_signup")
    async def open_(request: Any) -> Any:
        group = current_flags().experiment("button_color").group
        return sanic.json({"gated": "open", "group": group})

    return app


def blacksheep_app() -> Any:
    app = blacksheep.Application()

    @app.router.get("/gated")
    @feature_gate("nobody")
    async def gated() -> Any:
        return blacksheep.json({"gated": "open"})

    @app.router.get("/forbidden")
    @feature_gate("nobody", otherwise=403)
    async def forbidden() -> Any:
        return blacksheep.json({"gated": "open"})

    @app.router.get("/open")
    @feature_gate("everyone")
    @log_event("visited_signup")
    async def open_() -> Any:
        group = current_flags().experiment("button_color").group
        return blacksheep.json({"gated": "open", "group": group})

    return app


def falcon_app() -> Any:
    class Gated:
        @feature_gate("nobody")
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {"gated": "open"}

    class Forbidden:
        @feature_gate("nobody", otherwise=403)
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {"gated": "open"}

    class Open:
        @feature_gate("everyone")
        @log_event("visited_signup")
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {
                "gated": "open",
                "group": current_flags().experiment("button_color").group,
            }

    app = falcon_asgi.App()
    app.add_route("/gated", Gated())
    app.add_route("/forbidden", Forbidden())
    app.add_route("/open", Open())
    return app


FRAMEWORKS: dict[str, Callable[[], Any]] = {
    "quart": quart_app,
    "litestar": litestar_app,
    "sanic": sanic_app,
    "blacksheep": blacksheep_app,
    "falcon": falcon_app,
}


def wrapped(name: str, client: Flagware) -> Any:
    """The app wrapped whole, or the framework's own way where the README names one."""
    if name == "quart, app.asgi_app":  # as Flask's wsgi_app; Quart's test client goes through it
        app = quart_app()
        app.asgi_app = FlagwareMiddleware(app.asgi_app, client)
        return app
    if name == "litestar, middleware=":  # Litestar calls the factory with app= by keyword
        from litestar.middleware import DefineMiddleware

        return litestar_app(middleware=[DefineMiddleware(FlagwareMiddleware, client=client)])
    return FlagwareMiddleware(FRAMEWORKS[name](), client)


@pytest.fixture(params=[*sorted(FRAMEWORKS), "quart, app.asgi_app", "litestar, middleware="])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Flagware]]:
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    app = wrapped(request.param, client)
    try:
        # Sanic and BlackSheep start their app in the lifespan's startup.
        with uvicorn_server(app, lifespan="on") as port:
            yield port, client
    finally:
        client.close()


def test_feature_gate_answers_with_the_serving_frameworks_own_exception(
    served: tuple[int, Flagware], caplog: pytest.LogCaptureFixture
) -> None:
    assert_denials(*served, caplog.records)


def test_flags_cookie_and_events_through_the_middleware(served: tuple[int, Flagware]) -> None:
    assert_open_route(*served)


def test_the_denial_is_chosen_by_the_app_serving_not_by_what_is_installed() -> None:
    # Litestar answered werkzeug's exception with a 500 where Starlette was not
    # installed (a fresh venv); here Starlette is, so the choice is checked directly.
    from fastapi import FastAPI
    from litestar.exceptions import HTTPException as LitestarHTTPException
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.errors import ServerErrorMiddleware
    from werkzeug.exceptions import Forbidden, NotFound

    from flagware.denials import for_app, for_scope, framework

    exc = for_app(litestar_app())(404)
    assert isinstance(exc, LitestarHTTPException) and exc.status_code == 404
    for app in (FastAPI(), Starlette(), ServerErrorMiddleware(Starlette())):
        exc = for_app(app)(403)
        assert isinstance(exc, StarletteHTTPException) and exc.status_code == 403
    # FastAPI's own subclass, so a handler registered on either sees it.
    assert type(for_app(FastAPI())(403)).__module__ == "fastapi.exceptions"
    assert type(for_app(Starlette())(403)) is StarletteHTTPException
    assert framework(quart_app()) == "werkzeug"  # Quart answers werkzeug's, as Flask
    assert isinstance(for_app(quart_app())(403), Forbidden)
    assert framework(None) is None  # no framework said which it is
    # The app an ASGI framework puts in its scope is looked up by class alone.
    assert isinstance(for_scope(FastAPI())(404), StarletteHTTPException)  # type: ignore[misc]
    assert for_scope(ServerErrorMiddleware(Starlette())) is None
    assert for_scope(None) is None
    from flagware.flags import Flags

    assert isinstance(Flags._deny(404), NotFound)  # outside a middleware


def test_an_app_flagware_does_not_know_gets_werkzeugs_denial_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def unknown_framework(scope: Any, receive: Any, send: Any) -> None:
        @feature_gate("nobody")
        async def view() -> None:
            raise AssertionError("a denied view runs")

        try:
            await view()
        except Exception as exc:  # what such a framework does with any exception
            status = 500 if type(exc).__module__ != "werkzeug.exceptions" else 404
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": type(exc).__name__.encode()})

    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    try:
        with uvicorn_server(FlagwareMiddleware(unknown_framework, client)) as port:
            replies = [fetch(port, "/") for _ in range(2)]
    finally:
        client.close()
    assert [(r.status, r.body) for r in replies] == [(404, b"NotFound")] * 2
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1 and "function" in warnings[0] and "otherwise=" in warnings[0]


@pytest.mark.parametrize("placement", ["add_middleware", "around"])
def test_fastapi_500_from_an_escaped_exception_and_the_cookie(
    tmp_path: Path, placement: str
) -> None:
    """Starlette's ServerErrorMiddleware answers an exception that escapes the
    endpoint, and it sits outside every add_middleware one: that 500 carries no
    cookie. Wrapped around the app, flagware sees it and sets the cookie."""
    from fastapi import FastAPI

    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    api = FastAPI()

    @api.get("/boom")
    @log_event("visited_signup")
    async def boom() -> None:
        current_flags().gate("new_signup")
        raise RuntimeError("the view failed")

    app: Any = api
    if placement == "add_middleware":
        api.add_middleware(FlagwareMiddleware, client=client)
    else:
        app = FlagwareMiddleware(api, client)
    try:
        with uvicorn_server(app) as port:
            reply = fetch(port, "/boom")
        client.flush()
        events = list(client.store.iter_events())
    finally:
        client.close()
    assert reply.status == 500
    [exposure] = events  # the exposure is kept, the failed view's event dropped
    assert exposure["event"] == "statsig::gate_exposure"
    if placement == "around":
        assert reply.minted() == exposure["stable_id"]
    else:
        assert reply.minted() is None  # as the README says: wrap around the app


def test_quarts_test_client_goes_through_a_wrapped_asgi_app(tmp_path: Path) -> None:
    """Quart's test client calls ``app.asgi_app``, never a wrapper around the app."""
    import asyncio

    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    app = wrapped("quart, app.asgi_app", client)

    async def visit() -> tuple[int, str, int]:
        test = app.test_client()
        opened = await test.get("/open")
        denied = await test.get("/gated")
        return opened.status_code, opened.headers.get("set-cookie", ""), denied.status_code

    try:
        status, cookie, denied = asyncio.run(visit())
        client.flush()
        names = sorted(e["event"] for e in client.store.iter_events())
    finally:
        client.close()
    assert (status, denied) == (200, 404) and cookie.startswith("flagware_id=")
    assert "visited_signup" in names


def test_fastapi_streamed_body_and_background_task_see_the_requests_flags(
    tmp_path: Path,
) -> None:
    """Under ASGI both run inside the middleware's call, so current_flags()
    is the request's there (the README's NoRequestError note is WSGI's), and
    their events carry the visitor whose cookie the view's read set."""
    from fastapi import BackgroundTasks, FastAPI
    from fastapi.responses import StreamingResponse

    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    api = FastAPI()

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        current_flags().gate("everyone")  # the first read: mints the cookie's stableID

        async def body() -> Any:
            yield b"one,"
            current_flags().log_event("streamed")
            yield b"two"

        tasks = BackgroundTasks()
        tasks.add_task(lambda: current_flags().log_event("in_background"))
        return StreamingResponse(body(), background=tasks)

    api.add_middleware(FlagwareMiddleware, client=client)
    try:
        with uvicorn_server(api) as port:
            reply = fetch(port, "/stream")
        client.flush()
        events = {e["event"]: e["stable_id"] for e in client.store.iter_events()}
    finally:
        client.close()
    assert (reply.status, reply.body) == (200, b"one,two")
    assert events == dict.fromkeys(
        ["statsig::gate_exposure", "streamed", "in_background"], reply.minted()
    )
    assert client.errors["stableID after response start"] == 0
