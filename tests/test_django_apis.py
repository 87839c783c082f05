"""The decorators under Django REST framework and django-ninja, the real packages.

A gate's denial must reach each framework's own exception handling, so a
client gets the JSON error the rest of the API answers and a handler the
project registered sees it (a new user's trial: ``otherwise=403`` was an
empty ``text/html`` response that neither DRF's handler nor Ninja's saw).
Plain Django views are here too, for the statuses Django has exceptions for.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_settings import configure, flagware_settings

configure()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from ninja import NinjaAPI  # noqa: E402
from rest_framework.decorators import api_view  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView, exception_handler  # noqa: E402
from rest_framework.viewsets import ViewSet  # noqa: E402

from flagware import experiment, feature_gate, log_event  # noqa: E402
from flagware.identity import hash_ip  # noqa: E402
from flagware.overrides import Config  # noqa: E402

# What a project's own DRF exception handler saw: the denials must reach it.
seen_by_handler: list[tuple[str, int]] = []


def recording_handler(exc: Exception, context: dict[str, Any]) -> Any:
    response = exception_handler(exc, context)
    seen_by_handler.append((type(exc).__name__, getattr(response, "status_code", 0)))
    return response


# -- Django REST framework ------------------------------------------------------


class Signup(APIView):
    @log_event("api_signup")
    @experiment("button_color")
    def get(self, request: Request, experiment: Config) -> Response:
        # DRF's Request proxies the HttpRequest's attributes, flagware's too.
        flags = request.flags  # type: ignore[attr-defined]
        return Response({"color": experiment.get("color"), "user_id": flags.user_id})

    @feature_gate("nobody", otherwise=403)
    def post(self, request: Request) -> Response:
        return Response({"in": True})

    @feature_gate("nobody")
    def put(self, request: Request) -> Response:
        return Response({"in": True})

    @feature_gate("nobody", otherwise=410)
    def delete(self, request: Request) -> Response:
        return Response({"in": True})

    @feature_gate("everyone", otherwise=403)
    def patch(self, request: Request) -> Response:
        return Response({"in": True})


@api_view(["GET"])
@feature_gate("nobody", otherwise=403)
def drf_function(request: Request) -> Response:
    return Response({"in": True})


class Plans(ViewSet):
    @feature_gate("nobody", otherwise=403)
    def list(self, request: Request) -> Response:
        return Response([])


# -- django-ninja ---------------------------------------------------------------

api = NinjaAPI(urls_namespace="flagware-tests")


@api.get("/color")
@log_event("ninja_color")
@experiment("button_color")
def ninja_color(request: HttpRequest, experiment: Config) -> dict[str, Any]:
    return {"color": experiment.get("color"), "group": experiment.group}


@api.get("/forbidden")
@feature_gate("nobody", otherwise=403)
def ninja_forbidden(request: HttpRequest) -> dict[str, Any]:
    return {"in": True}


@api.get("/missing")
@feature_gate("nobody")
def ninja_missing(request: HttpRequest) -> dict[str, Any]:
    return {"in": True}


@api.get("/aforbidden")
@feature_gate("nobody", otherwise=403)
async def ninja_async_forbidden(request: HttpRequest) -> dict[str, Any]:
    return {"in": True}


@api.get("/allowed")
@feature_gate("everyone", otherwise=403)
def ninja_allowed(request: HttpRequest) -> dict[str, Any]:
    return {"in": True}


# -- plain Django ---------------------------------------------------------------


@feature_gate("nobody", otherwise=403)
def plain_403(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


@feature_gate("nobody", otherwise=403)
async def plain_async_403(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


@feature_gate("nobody", otherwise=400)
def plain_400(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


@feature_gate("nobody", otherwise=410)
def plain_410(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


def project_403(request: HttpRequest, exception: Exception) -> HttpResponse:
    return HttpResponse("the project's 403 page", status=403)


urlpatterns = [
    path("drf/signup", Signup.as_view()),
    path("drf/function", drf_function),
    path("drf/plans", Plans.as_view({"get": "list"})),
    path("ninja/", api.urls),
    path("plain/403", plain_403),
    path("plain/a403", plain_async_403),
    path("plain/400", plain_400),
    path("plain/410", plain_410),
]


@pytest.fixture(autouse=True)
def urls() -> Iterator[None]:
    seen_by_handler.clear()
    rest = {"EXCEPTION_HANDLER": f"{__name__}.recording_handler"}
    with override_settings(ROOT_URLCONF=__name__, REST_FRAMEWORK=rest):
        yield


@pytest.fixture
def fw(tmp_path: Path, spec_file: Path) -> Iterator[Any]:
    yield from flagware_settings(tmp_path, spec_file)


def detail(response: Any) -> Any:
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    return response.json()["detail"]


def test_drf_denials_reach_its_exception_handler_as_json(fw: Any) -> None:
    http = Client()
    forbidden, missing, gone = (
        http.post("/drf/signup"),
        http.put("/drf/signup"),
        http.delete("/drf/signup"),
    )
    assert (forbidden.status_code, detail(forbidden)) == (403, "feature not available")
    assert (missing.status_code, detail(missing)) == (404, "feature not available")
    assert (gone.status_code, detail(gone)) == (410, "feature not available")
    assert seen_by_handler == [("PermissionDenied", 403), ("Http404", 404), ("APIException", 410)]
    for url in ("/drf/function", "/drf/plans"):  # @api_view, a viewset
        response = http.get(url)
        assert (response.status_code, detail(response)) == (403, "feature not available")
    assert http.patch("/drf/signup").json() == {"in": True}  # the gate passes: the view runs


def test_drf_views_log_and_pass_the_experiment(fw: Any, flagware_events: Any) -> None:
    body = Client(REMOTE_ADDR="192.0.2.44").get("/drf/signup").json()
    assert body["color"] in {"blue", "red"}
    assert body["user_id"] == hash_ip(b"test-key", "192.0.2.44")
    assert flagware_events.names() == ["api_signup"]


@pytest.mark.parametrize("debug", [False, True])
def test_ninja_denials_are_its_json_errors(fw: Any, debug: bool) -> None:
    # Under DEBUG Ninja answers an exception it has no handler for (Django's
    # own PermissionDenied among them) with a 500 and a traceback.
    with override_settings(DEBUG=debug):
        http = Client()
        forbidden, missing = http.get("/ninja/forbidden"), http.get("/ninja/missing")
        aforbidden = asyncio.run(AsyncClient().get("/ninja/aforbidden"))
        allowed = http.get("/ninja/allowed")
    assert (forbidden.status_code, detail(forbidden)) == (403, "feature not available")
    assert (aforbidden.status_code, detail(aforbidden)) == (403, "feature not available")
    assert missing.status_code == 404 and detail(missing).startswith("Not Found")
    assert allowed.json() == {"in": True}


def test_ninja_operations_log_and_hide_the_experiment_argument(
    fw: Any, flagware_events: Any
) -> None:
    body = Client().get("/ninja/color").json()
    assert (body["group"], body["color"]) in {("Control", "blue"), ("Red", "red")}
    assert flagware_events.names() == ["ninja_color"]
    parameters = api.get_openapi_schema()["paths"]["/ninja/color"]["get"].get("parameters", [])
    assert [p["name"] for p in parameters] == []  # no "experiment" query parameter


def test_plain_django_views_get_django_s_own_handlers(
    fw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    http = Client()
    with caplog.at_level(logging.WARNING, "django.request"):
        forbidden = http.get("/plain/403")
        aforbidden = asyncio.run(AsyncClient().get("/plain/a403"))
    assert forbidden.status_code == 403 and b"403 Forbidden" in forbidden.content
    assert aforbidden.status_code == 403 and b"403 Forbidden" in aforbidden.content
    # One line each, as for any 4xx response: a raised PermissionDenied is
    # logged with its traceback, every denial (a trial: 21 lines each).
    said = [(r.getMessage(), r.exc_info) for r in caplog.records]
    assert said == [("Forbidden: /plain/403", None), ("Forbidden: /plain/a403", None)]
    module = sys.modules[__name__]
    module.handler403 = project_403  # type: ignore[attr-defined]  # a project's own 403 view
    try:
        custom = http.get("/plain/403")
    finally:
        del module.handler403  # type: ignore[attr-defined]
    assert (custom.status_code, custom.content) == (403, b"the project's 403 page")
    assert http.get("/plain/400").status_code == 400
    gone = http.get("/plain/410")
    assert (gone.status_code, gone.content) == (410, b"")
