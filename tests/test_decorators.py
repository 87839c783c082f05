"""log_event, feature_gate and experiment on Flask views, plain functions, methods, async."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest
from flask import Flask, Response, abort
from werkzeug.test import Client

from flagware import FlagwareMiddleware, current_flags, experiment, feature_gate, log_event
from flagware.decorators import status_of
from flagware.overrides import Config


def names(client: Any) -> list[str]:
    client.flush()
    return [
        e["event"] for e in client.store.iter_events() if not e["event"].startswith("statsig::")
    ]


def custom(client: Any) -> list[dict[str, Any]]:
    client.flush()
    return [e for e in client.store.iter_events() if not e["event"].startswith("statsig::")]


@pytest.fixture
def app(client: Any) -> Flask:
    app = Flask(__name__)
    app.wsgi_app = FlagwareMiddleware(app.wsgi_app, client)  # type: ignore[method-assign]
    return app


@pytest.mark.parametrize(
    ("result", "status"),
    [
        ("body", None),
        (("body", 201), 201),
        (("body", 404, {"X": "y"}), 404),
        (("body", "503 Unavailable"), 503),
        (("body", {"X": "y"}), None),
        (Response("x", status=302), 302),
        ({"json": True}, None),
    ],
)
def test_status_of(result: Any, status: int | None) -> None:
    assert status_of(result) == status


def test_log_event_on_success_only(app: Flask, client: Any) -> None:
    @app.get("/ok")
    @log_event("visited_signup")
    def ok() -> str:
        return "ok"

    @app.get("/missing")
    @log_event("missing")
    def missing() -> Any:
        return "nope", 404

    @app.get("/aborts")
    @log_event("aborts")
    def aborts() -> Any:
        abort(403)

    @app.get("/raises")
    @log_event("raises")
    def raises() -> Any:
        raise RuntimeError("boom")

    @app.get("/redirect")
    @log_event("redirected")
    def redirect() -> Any:
        return Response("", status=302)

    http = Client(app)
    assert http.get("/ok").status_code == 200
    assert http.get("/missing").status_code == 404
    assert http.get("/aborts").status_code == 403
    assert http.get("/raises").status_code == 500
    assert http.get("/redirect").status_code == 302
    assert names(client) == ["visited_signup", "redirected"]


def test_log_event_on_call_logs_before_the_view(app: Flask, client: Any) -> None:
    @app.get("/")
    @log_event("attempted", on="call")
    def view() -> Any:
        raise RuntimeError("fails after logging")

    Client(app).get("/")
    assert names(client) == ["attempted"]


def test_value_and_metadata_constants_and_callables(
    app: Flask, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/const")
    @log_event("purchase", value=9.5, metadata={"plan": "pro"})
    def const() -> str:
        return "ok"

    @app.get("/derived")
    @log_event("derived", value=lambda r: len(r), metadata=lambda r: {"body": r})
    def derived() -> str:
        return "hello"

    @app.get("/broken")
    @log_event("broken", value=lambda r: 1 / 0)
    def broken() -> str:
        return "still served"

    http = Client(app)
    assert http.get("/const").status_code == 200
    assert http.get("/derived").status_code == 200
    assert http.get("/broken").text == "still served"
    events = {e["event"]: e for e in custom(client)}
    assert events["purchase"]["value"] == 9.5 and events["purchase"]["metadata"] == {"plan": "pro"}
    assert events["derived"]["value"] == 5 and events["derived"]["metadata"] == {"body": "hello"}
    assert events["broken"]["value"] is None  # logged all the same: nothing is lost
    assert client.errors["log_event value of 'broken'"] == 1
    [said] = [r.getMessage() for r in caplog.records if "log_event" in r.getMessage()]
    assert said == (
        "flagware: log_event value of 'broken' failed (the event is logged without its value;"
        " logged once, counted in Flagware.errors)"
    )


def test_an_event_that_cannot_be_stored_is_refused_alone(app: Flask, client: Any) -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic

    @app.get("/")
    @log_event("visited")
    def index() -> str:
        flags = current_flags()
        flags.log_event("before")
        flags.log_event("cyclic", metadata={"bad": cyclic})  # encoded when logged: refused
        flags.log_event("after")
        return "served"

    assert Client(app).get("/").text == "served"
    assert [e["event"] for e in custom(client)] == ["before", "after", "visited"]
    assert client.errors["log_event"] == 1


def test_feature_gate_guards_with_a_status_or_a_callable(app: Flask, client: Any) -> None:
    @app.get("/open")
    @feature_gate("everyone")
    def open_() -> str:
        return "in"

    @app.get("/closed")
    @feature_gate("nobody")
    def closed() -> str:
        return "in"

    @app.get("/teapot")
    @feature_gate("nobody", otherwise=418)
    def teapot() -> str:
        return "in"

    @app.get("/custom/<name>")
    @feature_gate("nobody", otherwise=lambda name: (f"sorry {name}", 200))
    def custom_(name: str) -> str:
        return "in"

    http = Client(app)
    assert http.get("/open").text == "in"
    assert http.get("/closed").status_code == 404
    assert http.get("/teapot").status_code == 418
    assert http.get("/custom/ann").text == "sorry ann"


def test_experiment_passes_the_assignment(app: Flask, client: Any) -> None:
    @app.get("/")
    @experiment("button_color")
    def view(experiment: Config) -> str:
        return f"{experiment.group}:{experiment.get('color')}"

    @app.get("/named")
    @experiment("button_color", arg="exp")
    def named(exp: Config) -> str:
        assert exp is current_flags().experiment("button_color")
        return exp.group or ""

    http = Client(app)
    assert http.get("/").text in ("Control:blue", "Red:red")
    assert http.get("/named").text in ("Control", "Red")


def test_decorators_stack_and_work_on_methods(app: Flask, client: Any) -> None:
    class Views:
        prefix = "v"

        @log_event("method_view")
        @experiment("button_color")
        def show(self, experiment: Config) -> str:
            return f"{self.prefix}:{experiment.get('color')}"

        @classmethod
        @log_event("class_view")
        def cls_view(cls) -> str:
            return cls.prefix

    views = Views()
    app.add_url_rule("/m", "m", views.show)
    app.add_url_rule("/c", "c", Views.cls_view)
    http = Client(app)
    assert http.get("/m").text in ("v:blue", "v:red")
    assert http.get("/c").text == "v"
    assert names(client) == ["method_view", "class_view"]


def test_decorators_go_above_classmethod_and_staticmethod_too(app: Flask, client: Any) -> None:
    class Views:
        prefix = "v"

        @log_event("class_view")
        @classmethod
        def cls_view(cls) -> str:
            return cls.prefix

        @feature_gate("nobody")
        @staticmethod
        def closed() -> str:
            return "in"

        @feature_gate("nobody")
        def closed_method(self) -> str:
            return "in"

    app.add_url_rule("/c", "c", Views.cls_view)
    app.add_url_rule("/s", "s", Views.closed)
    app.add_url_rule("/m", "m", Views().closed_method)
    http = Client(app)
    assert http.get("/c").text == "v"
    assert http.get("/s").status_code == 404
    assert http.get("/m").status_code == 404  # self is not mistaken for a Django request
    assert names(client) == ["class_view"]


def test_wrappers_look_like_the_view() -> None:
    def view(request: Any, experiment: Config, a: int = 1) -> str:
        """The view's docstring."""
        return "x"

    view.csrf_exempt = True  # type: ignore[attr-defined]  # what Django's decorator sets
    wrapped: Any = log_event("x")(feature_gate("g")(experiment("button_color")(view)))
    assert wrapped.__name__ == "view" and wrapped.__doc__ == "The view's docstring."
    assert wrapped.csrf_exempt is True
    assert inspect.unwrap(wrapped) is view  # FastAPI reads the view's globals there
    assert list(inspect.signature(wrapped).parameters) == ["request", "a"]
    # What Pyramid reads to call a view with the request alone: no __wrapped__.
    assert inspect.getfullargspec(log_event("y")(lambda request: "x")).args == ["request"]

    @experiment("first", arg="first")
    @experiment("second", arg="second")
    def both(first: Config, second: Config, keep: str) -> str:
        return keep

    assert list(inspect.signature(both).parameters) == ["keep"]
    assert both(keep="k") == "k"  # outside a request: defaults, the view still runs


def test_async_views(app: Flask, client: Any) -> None:
    @log_event("async_visit", value=lambda r: len(r))
    @feature_gate("everyone")
    @experiment("button_color")
    async def view(experiment: Config) -> str:
        await asyncio.sleep(0)
        current_flags().log_event("inside_async")
        return experiment.get("color")

    @feature_gate("nobody")
    async def closed() -> str:
        return "in"

    assert inspect.iscoroutinefunction(view)  # frameworks dispatch on this
    app.add_url_rule("/a", "a", view)
    app.add_url_rule("/closed", "closed", closed)
    http = Client(app)
    assert http.get("/a").text in ("blue", "red")
    assert http.get("/closed").status_code == 404
    events = custom(client)
    assert [e["event"] for e in events] == ["inside_async", "async_visit"]
    assert events[1]["value"] in (3, 4)


def test_outside_a_request_views_still_run_and_warn_once(caplog: Any) -> None:
    @log_event("x")
    @experiment("button_color")
    def plain(experiment: Config) -> str:
        return f"ran {experiment.group} {experiment.params}"

    @feature_gate("new_signup", otherwise=lambda: "gate closed")
    def gated() -> str:
        return "in"

    with caplog.at_level(logging.WARNING, logger="flagware"):
        assert plain() == "ran None {}"
        assert plain() == "ran None {}"
        assert gated() == "gate closed"
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("@log_event('x')" in w for w in warnings) == 1
    assert all("FlagwareMiddleware" in w for w in warnings)


def test_log_event_rejects_a_bad_on() -> None:
    with pytest.raises(ValueError, match="'success' or 'call'"):
        log_event("x", on="later")  # type: ignore[arg-type]
