"""``@log_event(on="success")`` is decided by the status the client got, in every framework.

Falcon and Bottle set the status on a response object, Pyramid renderers on
``request.response``, Flask error handlers and ``after_request`` hooks change
it after the view returned: the view's return value cannot tell, the
middleware's ``start_response`` can. (Django's ``TemplateResponse`` and
FastAPI's injected ``Response`` are in test_django_responses.py and
test_asgi.py.)
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import bottle
import falcon
import pytest
from flask import Flask
from flask import request as flask_request
from werkzeug.test import Client

with warnings.catch_warnings():
    # WebOb (under Pyramid) imports the stdlib cgi module, deprecated since 3.11;
    # the warning is WebOb's to fix, and the import is this module's only use.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyramid.config import Configurator

from flagware import FlagwareMiddleware, current_flags, log_event
from flagware.asgi import FlagwareMiddleware as AsgiMiddleware


def custom(client: Any) -> list[str]:
    client.flush()
    return sorted(
        e["event"] for e in client.store.iter_events() if not e["event"].startswith("statsig")
    )


def test_falcon_status_on_the_response_object(client: Any) -> None:
    class Missing:
        @log_event("falcon_missing")
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.status = falcon.HTTP_404
            resp.media = {"missing": True}

    class Found:
        @log_event("falcon_found")
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            current_flags().gate("everyone")
            resp.media = {"found": True}

    app = falcon.App()
    app.add_route("/missing", Missing())
    app.add_route("/found", Found())
    http = Client(FlagwareMiddleware(app, client))
    assert http.get("/missing").status_code == 404
    found = Client(FlagwareMiddleware(app, client)).get("/found")
    assert found.status_code == 200 and found.headers["Set-Cookie"].startswith("flagware_id=")
    assert custom(client) == ["falcon_found"]


def test_bottle_status_on_the_thread_local_response(client: Any) -> None:
    app = bottle.Bottle()

    @app.get("/fails")
    @log_event("bottle_fails")
    def fails() -> str:
        bottle.response.status = 500
        return "failed"

    @app.get("/works")
    @log_event("bottle_works")
    def works() -> str:
        return "works"

    http = Client(FlagwareMiddleware(app, client))
    assert http.get("/fails").status_code == 500
    assert http.get("/works").status_code == 200
    assert custom(client) == ["bottle_works"]


def test_pyramid_renderer_status_on_request_response(client: Any) -> None:
    @log_event("pyramid_missing")
    def missing(request: Any) -> dict[str, Any]:
        request.response.status = 404
        return {"missing": True}

    @log_event("pyramid_found")
    def found(request: Any) -> dict[str, Any]:
        return {"found": True}

    with Configurator() as config:
        config.add_route("missing", "/missing")
        config.add_route("found", "/found")
        config.add_view(missing, route_name="missing", renderer="json")
        config.add_view(found, route_name="found", renderer="json")
        app = config.make_wsgi_app()
    http = Client(FlagwareMiddleware(app, client))
    assert http.get("/missing").status_code == 404
    assert http.get("/found").json == {"found": True}
    assert custom(client) == ["pyramid_found"]


def test_flask_error_handlers_and_after_request_hooks(client: Any) -> None:
    app = Flask(__name__)
    app.wsgi_app = FlagwareMiddleware(app.wsgi_app, client)  # type: ignore[method-assign]

    @log_event("step_done")  # a plain function called by the view: returns normally
    def step() -> str:
        return "done"

    @app.errorhandler(LookupError)
    def sorry(exc: Exception) -> tuple[str, int]:
        return "sorry, something broke", 500

    @app.get("/later-raises")
    def later_raises() -> str:
        step()
        raise LookupError("after the logged step")

    @app.get("/hooked")
    @log_event("hooked")
    def hooked() -> str:
        return "fine so far"

    @app.after_request
    def unavailable(response: Any) -> Any:
        if flask_request.path == "/hooked":  # e.g. a quota check after the view
            response.status_code = 503
        return response

    @app.get("/fine")
    @log_event("fine")
    def fine() -> str:
        step()
        return "ok"

    http = Client(app)
    assert http.get("/later-raises").status_code == 500
    assert http.get("/hooked").status_code == 503
    assert http.get("/fine").status_code == 200
    assert custom(client) == ["fine", "step_done"]


def test_a_lazy_wsgi_app_settles_at_its_late_start_response(client: Any) -> None:
    @log_event("lazy")
    def work() -> str:
        return "ok"

    def app(status: str) -> Any:
        def wsgi(environ: Any, start_response: Any) -> Iterable[bytes]:
            work()

            def body() -> Iterator[bytes]:  # start_response from inside the body
                start_response(status, [])
                yield b"made"

            return body()

        return wsgi

    assert Client(FlagwareMiddleware(app("201 Created"), client)).get("/").status_code == 201
    assert Client(FlagwareMiddleware(app("502 Bad Gateway"), client)).get("/").status_code == 502
    assert custom(client) == ["lazy"]


@pytest.mark.parametrize(
    ("status", "logged"),
    [
        ("200 OK", True),  # werkzeug's own line, known in advance
        ("299 Made Up", True),  # learnt on first sight
        ("418 I'm a teapot", False),
        ("599 Whatever", False),
        ("abc Broken", False),  # no code: taken as 500, never a crash
        ("\u00b200 Superscript", False),  # isdigit() but not a code
    ],
)
def test_any_wsgi_status_line_decides_success(client: Any, status: str, logged: bool) -> None:
    from flagware.request import status_code, status_codes

    @log_event("done")
    def work() -> None:
        pass

    def wsgi(environ: Any, start_response: Any) -> Iterable[bytes]:
        work()
        start_response(status, [])
        return [b"x"]

    for _ in range(2):  # once parsed, once from the cache
        Client(FlagwareMiddleware(wsgi, client)).get("/")
    assert custom(client) == ["done", "done"] * logged
    assert status_codes[status] == status_code(status)
    assert (status_codes[status] < 400) == logged


def test_status_lines_learnt_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from flagware import request

    monkeypatch.setattr(request, "status_codes", {"200 OK": 200})
    for i in range(600):
        assert request.status_code(f"404 Missing {i}") == 404
    assert len(request.status_codes) == 512


def test_plain_functions_outside_a_request_behave_as_before(client: Any) -> None:
    @log_event("outside")
    def helper() -> tuple[str, int]:
        return "x", 500

    assert helper() == ("x", 500)  # runs, warns once, logs nothing
    assert custom(client) == []


# -- ASGI: responses that never start ------------------------------------------------


def drive(app: Any, *, cancel_after: float | None = None) -> list[Any]:
    sent: list[Any] = []

    async def go() -> None:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        task = asyncio.ensure_future(app(scope, receive, send))
        if cancel_after is None:
            await task
            return
        await asyncio.sleep(cancel_after)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    return sent


def test_asgi_client_gone_mid_request_still_logs_what_the_view_did(client: Any) -> None:
    @log_event("signed_up")
    async def view() -> str:
        return "ok"

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await view()  # the signup happened
        await asyncio.sleep(30)  # ...and the client went away before the page

    async def failing_app(scope: Any, receive: Any, send: Any) -> None:
        await view()
        raise RuntimeError("render failed")  # the server answers 500

    assert drive(AsgiMiddleware(slow_app, client), cancel_after=0.05) == []
    with pytest.raises(RuntimeError):
        drive(AsgiMiddleware(failing_app, client))
    assert custom(client) == ["signed_up"]


def test_falcon_asgi_app_status_on_the_response_object(client: Any) -> None:
    import falcon.asgi

    class Missing:
        @log_event("falcon_asgi_missing")
        async def on_get(self, req: Any, resp: Any) -> None:
            current_flags().gate("everyone")
            resp.status = falcon.HTTP_404

    class Found:
        @log_event("falcon_asgi_found")
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {"found": True}

    app = falcon.asgi.App()
    app.add_route("/missing", Missing())
    app.add_route("/found", Found())
    wrapped = AsgiMiddleware(app, client)
    statuses = []
    for path in ("/missing", "/found"):
        sent: list[Any] = []

        async def go(path: str = path, sent: list[Any] = sent) -> None:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "query_string": b"",
                "headers": [(b"host", b"example.test")],
                "client": ("192.0.2.1", 1234),
                "server": ("example.test", 80),
            }

            async def receive() -> Any:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Any) -> None:
                sent.append(message)

            await wrapped(scope, receive, send)

        asyncio.run(go())
        statuses.append(sent[0]["status"])
    assert statuses == [404, 200]
    assert custom(client) == ["falcon_asgi_found"]
