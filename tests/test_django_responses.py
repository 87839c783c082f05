"""flagware.django: success decided by the final response, the diagnostics page through
the Django middleware, and the logged-in user in async views under WSGI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_settings import configure, flagware_settings, migrate

configure()

from django.contrib.auth import get_user_model  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.template import engines  # noqa: E402
from django.template.response import TemplateResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.views import View  # noqa: E402

from flagware import current_flags, log_event  # noqa: E402


class Boom:
    @property
    def explode(self) -> str:
        raise RuntimeError("template bug")


PAGE = engines["django"].from_string("<p>{{ word }}</p>")
BROKEN = engines["django"].from_string("<p>{{ boom.explode }}</p>")


@log_event("rendered")
def rendered(request: HttpRequest) -> TemplateResponse:
    current_flags().gate("everyone")
    return TemplateResponse(request, PAGE, {"word": "fine"})


@log_event("broken")
def broken(request: HttpRequest) -> TemplateResponse:
    current_flags().gate("everyone")
    # Returned as a 200, rendered (and failing) only after the decorator returned.
    return TemplateResponse(request, BROKEN, {"boom": Boom()})


@log_event("abroken")
async def abroken(request: HttpRequest) -> TemplateResponse:
    return TemplateResponse(request, BROKEN, {"boom": Boom()})


def whoami(request: HttpRequest) -> JsonResponse:
    flags = current_flags()
    return JsonResponse({"user_id": flags.user_id, "stable_id": flags.stable_id})


async def awhoami(request: HttpRequest) -> JsonResponse:
    flags = current_flags()
    return JsonResponse({"user_id": flags.user_id})


class AsyncWhoami(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"user_id": current_flags().user_id})


def group(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"group": current_flags().experiment("button_color").group})


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the app's own page", status=404)


urlpatterns = [
    path("rendered", rendered),
    path("broken", broken),
    path("abroken", abroken),
    path("whoami", whoami),
    path("awhoami", awhoami),
    path("cbv", AsyncWhoami.as_view()),
    path("_flagware/", plain),
    path("group", group),
]


@pytest.fixture(autouse=True)
def urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__):
        yield


@pytest.fixture
def fw(tmp_path: Path, spec_file: Path) -> Iterator[Any]:
    yield from flagware_settings(tmp_path, spec_file)


def custom(client: Any) -> list[str]:
    client.flush()
    return [e["event"] for e in client.store.iter_events() if not e["event"].startswith("statsig")]


def test_a_page_that_read_flags_varies_by_cookie_and_a_new_cookie_is_private(
    fw: Any,
) -> None:
    """A shared cache keyed on the URL served one visitor's group to the next
    (a Flask trial); a first visit's response also carries the new cookie."""
    http = Client()
    first = http.get("/group")
    assert first["Vary"] == "Cookie" and first["Cache-Control"] == "private"
    again = http.get("/group")  # a returning visitor: still their own page
    assert again["Vary"] == "Cookie" and again["Cache-Control"] == "private"


def test_template_response_that_fails_while_rendering_is_not_a_success(fw: Any) -> None:
    http = Client(raise_request_exception=False)
    assert http.get("/rendered").status_code == 200
    assert http.get("/broken").status_code == 500
    response = asyncio.run(AsyncClient(raise_request_exception=False).get("/abroken"))
    assert response.status_code == 500
    assert custom(fw) == ["rendered"]


def test_logged_in_user_in_async_views_under_wsgi(fw: Any) -> None:
    migrate()
    user = get_user_model().objects.create_user(username="grace", password="x")  # type: ignore[attr-defined]
    try:
        http = Client()  # Django's WSGI handler: async views run in their own loop
        http.force_login(user)
        for url in ("/whoami", "/awhoami", "/cbv"):
            assert http.get(url).json()["user_id"] == str(user.pk), url
        anonymous = Client(REMOTE_ADDR="198.51.100.9")
        assert anonymous.get("/awhoami").json()["user_id"] != str(user.pk)
    finally:
        user.delete()
    assert fw.errors["user_id resolver"] == 0


@pytest.fixture
def diagnostics(tmp_path: Path, spec_file: Path) -> Iterator[Any]:
    yield from flagware_settings(tmp_path, spec_file, diagnostics=True)


LOCAL = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "localhost"}


def test_diagnostics_page_through_the_django_middleware(diagnostics: Any) -> None:
    stable_id = "b" * 32
    http = Client(**LOCAL)
    http.cookies["flagware_id"] = stable_id
    page = http.get("/_flagware/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "flagware diagnostics" in text and stable_id in text
    assert "nonce-" in page["Content-Security-Policy"] and page["Cache-Control"] == "no-store"
    feed = http.get("/_flagware/events.json", {"after": "0"})
    assert feed.status_code == 200 and "events" in feed.json()


def test_diagnostics_page_under_the_async_handler_with_a_token(
    tmp_path: Path, spec_file: Path
) -> None:
    token = "t" * 24
    for _ in flagware_settings(tmp_path, spec_file, diagnostics=True, diagnostics_token=token):
        http = AsyncClient()  # its Host is always "testserver": a token, not loopback
        page = asyncio.run(http.get("/_flagware/", headers={"Authorization": f"Bearer {token}"}))
        assert page.status_code == 200 and b"flagware diagnostics" in page.content
        refused = asyncio.run(http.get("/_flagware/", headers={"Authorization": "Bearer nope"}))
        assert refused.content == b"the app's own page"


def test_the_pages_cookies_reach_djangos_test_client(tmp_path: Path, spec_file: Path) -> None:
    """Set as headers, the page's cookies were invisible to Django's test client
    (it reads response.cookies), and a second one replaced the first: a test
    could neither stay signed in to the page nor keep a QA override."""
    import re
    from urllib.parse import urlencode

    token = "t" * 24
    options = {"diagnostics": True, "diagnostics_token": token}
    for _ in flagware_settings(tmp_path, spec_file, **options):
        http = Client(HTTP_HOST="testserver")  # not loopback: the token decides
        assert http.get("/_flagware/").content == b"the app's own page"
        assert http.get("/_flagware/", {"token": token}).status_code == 200
        page = http.get("/_flagware/")  # the cookie the token set signs this browser in
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.content.decode())
        assert csrf is not None
        natural = http.get("/group").json()["group"]
        chosen = "Red" if natural == "Control" else "Control"
        form = {"csrf": csrf.group(1), "experiment:button_color": chosen, "minutes": "15"}
        done = http.post(
            "/_flagware/override",
            urlencode({**form, "action": "apply"}),
            content_type="application/x-www-form-urlencoded",
            headers={"Sec-Fetch-Site": "same-origin"},
        )
        assert done.status_code == 303 and "flagware_qa" in done.cookies
        assert http.get("/group").json()["group"] == chosen
        http.post(
            "/_flagware/override",
            urlencode({**form, "action": "clear"}),
            content_type="application/x-www-form-urlencoded",
            headers={"Sec-Fetch-Site": "same-origin"},
        )
        assert http.get("/group").json()["group"] == natural


def test_diagnostics_refused_requests_reach_the_app(diagnostics: Any) -> None:
    remote = Client(REMOTE_ADDR="203.0.113.7", HTTP_HOST="localhost").get("/_flagware/")
    assert remote.status_code == 404 and remote.content == b"the app's own page"
    relayed = Client(**LOCAL, HTTP_X_FORWARDED_FOR="203.0.113.7").get("/_flagware/")
    assert relayed.content == b"the app's own page"


def test_a_refused_large_post_to_the_page_gets_the_apps_answer(diagnostics: Any) -> None:
    """The body was read before the access check: Django refused a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE with 400 where the app answers 404."""
    remote = Client(REMOTE_ADDR="203.0.113.7", HTTP_HOST="localhost")
    big = "x=" + "a" * (3 * 1024 * 1024)
    response = remote.post(
        "/_flagware/override", big, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 404


def test_diagnostics_off_by_default(fw: Any) -> None:
    assert Client(**LOCAL).get("/_flagware/").content == b"the app's own page"


def not_health_checks(request: HttpRequest) -> bool:
    return request.path != "/rendered"


def test_exposure_filter_from_settings_takes_the_request(tmp_path: Path, spec_file: Path) -> None:
    dotted = f"{__name__}.not_health_checks"
    for client in flagware_settings(tmp_path, spec_file, exposure_filter=dotted):
        assert Client().get("/rendered").status_code == 200  # reads a gate: filtered out
        assert client.skipped_exposures == {"filter": 1}
        client.flush()
        assert [e["event"] for e in client.store.iter_events()] == ["rendered"]
        broken = Client(raise_request_exception=False).get("/broken")  # reads it too: exposed
        assert broken.status_code == 500
        client.flush()
        assert [e["event"] for e in client.store.iter_events()] == [
            "rendered",
            "statsig::gate_exposure",
        ]
