"""``@feature_gate`` under Falcon, Bottle and Pyramid, served over loopback.

Each answers only its own HTTP exceptions: werkzeug's ``NotFound``, which
flagware raised for every WSGI app but Django's, was a 500 with a logged
traceback under all three. The middleware tells the framework by the app it
wraps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bottle
import falcon
import pytest
from conftest import SPEC
from framework_checks import assert_denials, assert_open_route
from servers import fetch, wsgi_server

from flagware import Flagware, FlagwareMiddleware, current_flags, feature_gate, log_event

with warnings.catch_warnings():
    # WebOb (under Pyramid) imports the stdlib cgi module, deprecated since 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyramid.config import Configurator


def falcon_app() -> Any:
    class Gated:
        @feature_gate("nobody")
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"gated": "open"}

    class Forbidden:
        @feature_gate("nobody", otherwise=403)
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"gated": "open"}

    class Open:
        @feature_gate("everyone")
        @log_event("visited_signup")
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"group": current_flags().experiment("button_color").group}

    class Redirect:
        @log_event("signed_up")
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise falcon.HTTPFound("/open")

    class Refused:
        @log_event("refused")
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise falcon.HTTPBadRequest()

    app = falcon.App()
    app.add_route("/gated", Gated())
    app.add_route("/forbidden", Forbidden())
    app.add_route("/open", Open())
    app.add_route("/redirect", Redirect())
    app.add_route("/refused", Refused())
    return app


def bottle_app() -> Any:
    app = bottle.Bottle()

    @app.get("/gated")
    @feature_gate("nobody")
    def gated() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/forbidden")
    @feature_gate("nobody", otherwise=403)
    def forbidden() -> dict[str, str]:
        return {"gated": "open"}

    @app.get("/open")
    @feature_gate("everyone")
    @log_event("visited_signup")
    def open_() -> dict[str, Any]:
        return {"group": current_flags().experiment("button_color").group}

    @app.get("/redirect")
    @log_event("signed_up")
    def redirect() -> None:
        bottle.redirect("/open")  # raises: a 303 for HTTP/1.1 clients

    @app.get("/refused")
    @log_event("refused")
    def refused() -> None:
        bottle.abort(400)

    return app


def pyramid_app() -> Any:
    @feature_gate("nobody")
    def gated(request: Any) -> dict[str, str]:
        return {"gated": "open"}

    @feature_gate("nobody", otherwise=403)
    def forbidden(request: Any) -> dict[str, str]:
        return {"gated": "open"}

    @feature_gate("everyone")
    @log_event("visited_signup")
    def open_(request: Any) -> dict[str, Any]:
        return {"group": current_flags().experiment("button_color").group}

    from pyramid.httpexceptions import HTTPBadRequest, HTTPFound

    @log_event("signed_up")
    def redirect(request: Any) -> None:
        raise HTTPFound("/open")

    @log_event("refused")
    def refused(request: Any) -> None:
        raise HTTPBadRequest()

    views = {"gated": gated, "forbidden": forbidden, "open": open_}
    views |= {"redirect": redirect, "refused": refused}
    with Configurator() as config:
        for name, view in views.items():
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name, renderer="json")
        return config.make_wsgi_app()


FRAMEWORKS: dict[str, Callable[[], Any]] = {
    "falcon": falcon_app,
    "bottle": bottle_app,
    "pyramid": pyramid_app,
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Flagware]]:
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    try:
        with wsgi_server(FlagwareMiddleware(FRAMEWORKS[request.param](), client)) as port:
            yield port, client
    finally:
        client.close()


def test_feature_gate_answers_with_the_serving_frameworks_own_exception(
    served: tuple[int, Flagware], caplog: pytest.LogCaptureFixture
) -> None:
    assert_denials(*served, caplog.records)


def test_an_allowed_view_runs_logs_and_keeps_its_group(served: tuple[int, Flagware]) -> None:
    assert_open_route(*served)


def test_a_raised_redirect_is_a_success_and_a_raised_error_is_not(
    served: tuple[int, Flagware],
) -> None:
    """Pyramid's HTTPFound, Bottle's redirect() and Falcon's HTTPFound are
    raised: the signup a redirect ends logged nothing (a new user's trial).
    The status the client got decides, as for a returned response."""
    port, client = served
    assert fetch(port, "/redirect").status in (302, 303)
    assert fetch(port, "/refused").status == 400
    client.flush()
    assert [e["event"] for e in client.store.iter_events()] == ["signed_up"]


def test_the_framework_is_found_through_bound_methods_and_wrapping_middlewares() -> None:
    from flask import Flask
    from werkzeug.local import LocalProxy
    from werkzeug.middleware.proxy_fix import ProxyFix

    from flagware.denials import framework

    flask_app = Flask(__name__)
    assert framework(flask_app.wsgi_app) == "werkzeug"  # the README's placement
    assert framework(ProxyFix(falcon_app())) == "falcon"  # through .app
    assert framework(bottle_app()) == "bottle"

    class Kept:  # a hand-written middleware (a trial's, before a Falcon app)
        def __init__(self, application: Any) -> None:
            self.application = application

        def __call__(self, environ: Any, start_response: Any) -> Any:
            return self.application(environ, start_response)

    assert framework(Kept(Kept(falcon_app()))) == "falcon"

    class Loop:  # a chain that comes back to itself ends
        def __init__(self) -> None:
            self.app = self

    assert framework(Loop()) is None
    # A proxy that raises on every attribute (outside its context) is no framework.
    unbound: Any = LocalProxy(lambda: (_ for _ in ()).throw(RuntimeError("no context")))
    assert framework(unbound) is None
