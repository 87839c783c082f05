"""The ASGI middleware under Quart and Litestar, served by a real uvicorn.

The README's "any other ASGI 3 app (Quart, Litestar, ...) is wrapped the same
way", checked where frameworks differ: each answers only its own HTTP
exceptions, so ``@feature_gate`` must raise the one of the framework serving
the request, whatever else is installed (Starlette is, here: Quart answered
Starlette's exception with a 500).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SPEC
from servers import fetch, uvicorn_server

from flagware import Flagware, current_flags, feature_gate, log_event
from flagware.asgi import FlagwareMiddleware

quart = pytest.importorskip("quart")
litestar = pytest.importorskip("litestar")


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


def litestar_app() -> Any:
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
    return litestar.Litestar([gated, forbidden, open_], logging_config=None)


FRAMEWORKS: dict[str, Callable[[], Any]] = {"quart": quart_app, "litestar": litestar_app}


@pytest.fixture(params=sorted(FRAMEWORKS))
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Flagware]]:
    spec = tmp_path / "flagware.toml"
    spec.write_text(SPEC)
    client = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key=b"frameworks")
    app = FlagwareMiddleware(FRAMEWORKS[request.param](), client)
    try:
        with uvicorn_server(app) as port:
            yield port, client
    finally:
        client.close()


def test_feature_gate_answers_with_the_serving_frameworks_own_exception(
    served: tuple[int, Flagware],
) -> None:
    port, client = served
    assert fetch(port, "/gated").status == 404
    assert fetch(port, "/forbidden").status == 403
    assert client.errors == {}  # a denial is an answer, not a failure


def test_flags_cookie_and_events_through_the_middleware(served: tuple[int, Flagware]) -> None:
    port, client = served
    reply = fetch(port, "/open")
    assert reply.status == 200, reply.body
    stable_id = reply.minted()
    assert stable_id is not None
    group = reply.json()["group"]
    assert group in ("Control", "Red")
    again = fetch(port, "/open", headers={"Cookie": f"flagware_id={stable_id}"})
    assert again.json()["group"] == group and again.minted() is None
    client.flush()
    names = sorted(e["event"] for e in client.store.iter_events())
    assert names == [
        "statsig::config_exposure",
        "statsig::gate_exposure",
        "visited_signup",
        "visited_signup",
    ]


def test_the_denial_is_chosen_by_the_app_in_the_scope_not_by_what_is_installed() -> None:
    # Litestar answered werkzeug's exception with a 500 where Starlette was not
    # installed (a fresh venv); here Starlette is, so the choice is checked directly.
    from fastapi import FastAPI
    from litestar.exceptions import HTTPException as LitestarHTTPException
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from flagware.decorators import _asgi_denial

    denial = _asgi_denial(litestar_app(), 404)
    assert isinstance(denial, LitestarHTTPException) and denial.status_code == 404
    for app in (FastAPI(), Starlette()):
        denial = _asgi_denial(app, 403)
        assert isinstance(denial, StarletteHTTPException) and denial.status_code == 403
    assert _asgi_denial(quart_app(), 404) is None  # Quart answers werkzeug's, as Flask
    assert _asgi_denial(None, 404) is None  # no framework said which it is


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
