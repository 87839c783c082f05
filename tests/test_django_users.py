"""Who the user is in Django's async chain (ASGI): Django's AsyncClient runs the
same middleware chain as uvicorn, so the views here run as they do under it.

A new user's trial of Django 5.2 with Django REST framework under uvicorn
found three things: a token client was its account under gunicorn's sync
workers and the hash of its IP under uvicorn; a custom ``user_id`` resolver
reading ``request.user`` fell back to the IP in async views, with a
``SynchronousOnlyOperation`` in the log; and every request of a signed-in
visitor ran the session and user queries, on views that read no flag too.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django_settings import MIDDLEWARE, configure, flagware_settings, migrate

configure()

from asgiref.sync import markcoroutinefunction  # noqa: E402
from django.contrib.auth import alogin, get_user_model  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.authentication import BasicAuthentication  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from flagware import current_flags  # noqa: E402
from flagware.identity import hash_ip  # noqa: E402

PASSWORD = "a long enough password"


class TokenWhoami(APIView):
    authentication_classes = (BasicAuthentication,)

    def get(self, request: Request) -> Response:
        return Response({"user_id": current_flags().user_id, "drf_user": request.user.pk})


async def awhoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user_id": current_flags().user_id})


async def alogin_then_whoami(request: HttpRequest) -> JsonResponse:
    await alogin(request, await get_user_model().objects.aget(username="ada"))
    return JsonResponse({"user_id": current_flags().user_id})


def user_loaded(request: HttpRequest) -> JsonResponse:
    """A sync view that reads no flag: was the user loaded for it?"""
    loaded = hasattr(request, "_acached_user") or hasattr(request, "_cached_user")
    return JsonResponse({"loaded": loaded})


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user_id": current_flags().user_id})


def username(request: HttpRequest) -> str | None:
    """A custom resolver as a project writes it: it reads request.user."""
    user = request.user
    return user.get_username() if user.is_authenticated else None


class ReadsFlagsEarly:
    """An async middleware after flagware's that reads a flag before the view."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[Any]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> Any:
        request.early_user_id = current_flags().user_id  # type: ignore[attr-defined]
        return await self.get_response(request)


urlpatterns = [
    path("drf/whoami", TokenWhoami.as_view()),
    path("awhoami", awhoami),
    path("alogin", alogin_then_whoami),
    path("loaded", user_loaded),
    path("whoami", whoami),
]


@pytest.fixture(autouse=True)
def urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__):
        yield


@pytest.fixture
def user() -> Iterator[Any]:
    migrate()
    user = get_user_model().objects.create_user(username="ada", password=PASSWORD)  # type: ignore[attr-defined]
    yield user
    user.delete()


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_a_user_django_rest_framework_authenticates_is_the_user_id_in_both_chains(
    tmp_path: Path, spec_file: Path, user: Any
) -> None:
    for client in flagware_settings(tmp_path, spec_file):
        headers = basic("ada", PASSWORD)
        sync = Client().get("/drf/whoami", headers=headers).json()
        chain = asyncio.run(AsyncClient().get("/drf/whoami", headers=headers)).json()
        assert sync == chain == {"user_id": str(user.pk), "drf_user": user.pk}
        assert client.errors["user_id resolver"] == 0


def test_a_login_in_an_async_view_is_the_user_id_after_it(
    tmp_path: Path, spec_file: Path, user: Any
) -> None:
    for client in flagware_settings(tmp_path, spec_file):
        response = asyncio.run(AsyncClient().get("/alogin"))
        assert response.json() == {"user_id": str(user.pk)}
        assert client.errors["user_id resolver"] == 0


def test_a_custom_resolver_reads_request_user_in_an_async_view(
    tmp_path: Path, spec_file: Path, user: Any
) -> None:
    for client in flagware_settings(tmp_path, spec_file, user_id=username):
        http = AsyncClient()
        http.force_login(user)
        assert asyncio.run(http.get("/awhoami")).json() == {"user_id": "ada"}
        assert client.errors["user_id resolver"] == 0


def test_a_sync_view_reading_no_flag_loads_no_user_in_the_async_chain(
    tmp_path: Path, spec_file: Path, user: Any
) -> None:
    for client in flagware_settings(tmp_path, spec_file):
        http = AsyncClient()
        http.force_login(user)
        assert asyncio.run(http.get("/loaded")).json() == {"loaded": False}
        # One that reads a flag loads the user in its thread, as under WSGI.
        assert asyncio.run(http.get("/whoami")).json() == {"user_id": str(user.pk)}
        assert client.errors["user_id resolver"] == 0


def test_a_flag_read_on_the_event_loop_before_the_view_says_why_the_user_is_missing(
    tmp_path: Path, spec_file: Path, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = [*MIDDLEWARE, f"{__name__}.ReadsFlagsEarly"]
    with override_settings(MIDDLEWARE=middleware):
        for client in flagware_settings(tmp_path, spec_file):
            http = AsyncClient()
            http.force_login(user)
            with caplog.at_level(logging.ERROR, logger="flagware"):
                response = asyncio.run(http.get("/awhoami"))
            assert response.json() == {"user_id": hash_ip(b"test-key", "127.0.0.1")}
            assert client.errors["user_id resolver"] == 1
            assert "await request.auser() before reading flags there" in caplog.text
