"""flagware.django: middleware, decorators, template tags, Jinja2 and system checks.

Django's test Client, AsyncClient and RequestFactory against the real local
engine; the views and URLs below are this module's (``ROOT_URLCONF = __name__``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django_settings import AUTH_MIDDLEWARE, MIDDLEWARE, configure, flagware_settings

configure()

from asgiref.sync import iscoroutinefunction  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.checks import run_checks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.template import engines  # noqa: E402
from django.test import AsyncClient, Client, RequestFactory, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402

from flagware import Flagware, current_flags, experiment, feature_gate, log_event  # noqa: E402
from flagware.django import FlagwareMiddleware, checks, conf  # noqa: E402
from flagware.django.templatetags import flagware as tags  # noqa: E402
from flagware.flags import NoRequestError, _current  # noqa: E402
from flagware.identity import hash_ip  # noqa: E402
from flagware.overrides import Config  # noqa: E402
from flagware.settings import ConfigurationError  # noqa: E402

HEX32 = re.compile(r"[0-9a-f]{32}")

# -- views ----------------------------------------------------------------------


def describe() -> dict[str, Any]:
    """Plain code a view calls: it finds the request's flags through the contextvar."""
    flags = current_flags()
    exp = flags.experiment("button_color")
    return {
        "user_id": flags.user_id,
        "stable_id": flags.stable_id,
        "gate": flags.gate("everyone"),
        "group": exp.group,
        "color": exp.get("color"),
    }


def whoami(request: HttpRequest) -> JsonResponse:
    flags = current_flags()
    assert request.flags is flags  # type: ignore[attr-defined]
    assert request.META["flagware.flags"] is flags
    return JsonResponse(describe())


async def awhoami(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)  # across an await, still this request's flags
    assert request.flags is current_flags()  # type: ignore[attr-defined]
    return JsonResponse(describe())


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("plain")


@log_event("paid", value=9.5, metadata={"plan": "pro"})
def logged(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@log_event("missing")
def logged_404(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=404)


@log_event("raised")
def logged_raises(request: HttpRequest) -> HttpResponse:
    raise Http404("nope")


@feature_gate("everyone")
def gated_in(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


@feature_gate("nobody")
def gated_out(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


@feature_gate("nobody", otherwise=403)
def gated_403(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


@experiment("button_color")
def with_experiment(request: HttpRequest, experiment: Config) -> HttpResponse:
    return HttpResponse(f"{experiment.group}:{experiment.get('color')}")


@log_event("async_event")
@feature_gate("everyone")
@experiment("button_color", arg="exp")
async def async_decorated(request: HttpRequest, exp: Config) -> HttpResponse:
    await asyncio.sleep(0)
    return HttpResponse(f"{exp.group}:{exp.get('color')}")


@feature_gate("nobody")
async def async_gated_out(request: HttpRequest) -> HttpResponse:
    return HttpResponse("in")


class DirectView(View):
    @log_event("cbv_direct")
    @experiment("button_color")
    def get(self, request: HttpRequest, experiment: Config) -> HttpResponse:
        return HttpResponse(str(experiment.get("color")))


@method_decorator(log_event("cbv_method_decorator"), name="get")
@method_decorator(feature_gate("nobody"), name="post")
class MethodDecoratedView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(current_flags().stable_id)

    def post(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("in")


@method_decorator(feature_gate("nobody"), name="dispatch")
class DispatchGatedView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("in")


class AsyncMethodView(View):
    @method_decorator(log_event("cbv_async"))
    async def get(self, request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(0)
        return HttpResponse(current_flags().stable_id)

    @method_decorator(feature_gate("nobody", otherwise=403))
    async def post(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("in")


TAGS = (
    '{% load flagware %}{% gate "everyone" as yes %}{% gate "nobody" as no %}'
    '{% gate "everyone" as again %}{% experiment "button_color" as exp %}'
    "{{ yes }} {{ no }} {{ again }} {{ exp.group }} {{ exp.params.color }}"
)
JINJA = (
    "{{ gate('everyone') }} {{ gate('nobody') }} "
    "{% set exp = experiment('button_color') %}{{ exp.group }} {{ exp.params.color }} "
    "{{ flags.stable_id == request.flags.stable_id }}"
)


def tags_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(engines["django"].from_string(TAGS).render(request=request))


def jinja_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(engines["jinja2"].from_string(JINJA).render(request=request))


urlpatterns = [
    path("whoami", whoami),
    path("awhoami", awhoami),
    path("plain", plain),
    path("logged", logged),
    path("logged_404", logged_404),
    path("logged_raises", logged_raises),
    path("gated_in", gated_in),
    path("gated_out", gated_out),
    path("gated_403", gated_403),
    path("experiment", with_experiment),
    path("async_decorated", async_decorated),
    path("async_gated_out", async_gated_out),
    path("cbv/direct", DirectView.as_view()),
    path("cbv/method_decorator", MethodDecoratedView.as_view()),
    path("cbv/async", AsyncMethodView.as_view()),
    path("cbv/dispatch", DispatchGatedView.as_view()),
    path("tags", tags_view),
    path("jinja", jinja_view),
]

# -- fixtures -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__):
        yield


@pytest.fixture
def fw(tmp_path: Path, spec_file: Path) -> Iterator[Any]:
    """settings.FLAGWARE on a fresh store; the process's client for this test."""
    yield from flagware_settings(tmp_path, spec_file)


def cookie_of(response: Any) -> Any:
    return response.cookies.get("flagware_id")


# -- the middleware -------------------------------------------------------------


def test_importing_flagware_django_needs_no_settings() -> None:
    code = (
        "import sys, flagware.django\n"
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules)\n"
        "from flagware.django import FlagwareMiddleware\n"
        "assert FlagwareMiddleware.async_capable and FlagwareMiddleware.sync_capable\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_middleware_with_request_factory_sync(fw: Any) -> None:
    seen: dict[str, Any] = {}

    def get_response(request: HttpRequest) -> HttpResponse:
        seen["flags"] = current_flags()
        seen["stable_id"] = request.flags.stable_id  # type: ignore[attr-defined]
        return HttpResponse("ok")

    middleware = FlagwareMiddleware(get_response)
    assert not iscoroutinefunction(middleware)
    request = RequestFactory().get("/")
    response = middleware(request)
    assert seen["flags"] is request.flags  # type: ignore[attr-defined]
    assert response.cookies["flagware_id"].value == seen["stable_id"]
    assert _current.get() is None


def test_middleware_with_request_factory_async(fw: Any) -> None:
    seen: dict[str, Any] = {}

    async def get_response(request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(0)
        seen["flags"] = current_flags()
        return HttpResponse(describe()["stable_id"])

    middleware = FlagwareMiddleware(get_response)
    assert iscoroutinefunction(middleware)
    request = RequestFactory().get("/")
    response = asyncio.run(middleware(request))
    assert seen["flags"] is request.flags  # type: ignore[attr-defined]
    assert response.cookies["flagware_id"].value == response.content.decode()


@pytest.mark.parametrize("reads", [False, True])
def test_a_finished_request_leaves_no_reference_cycle(fw: Any, reads: bool) -> None:
    # request.META holds the Flags; a Flags that has not read all it needs holds
    # META. Freed by reference counting alone, with the collector off, once the
    # request and response go: nothing of the request waits for a collection.
    import gc
    import weakref

    def get_response(request: HttpRequest) -> HttpResponse:
        if reads:
            current_flags().gate("everyone")
        return HttpResponse("ok")

    middleware = FlagwareMiddleware(get_response)
    request = RequestFactory().get("/")
    gc.collect()
    gc.disable()
    try:
        response = middleware(request)
        assert response.status_code == 200
        flags = weakref.ref(request.flags)  # type: ignore[attr-defined]
        assert request.META["flagware.flags"] is flags()  # still there for later middleware
        del request, response
        assert flags() is None
    finally:
        gc.enable()


def test_contextvar_is_reset_when_the_view_raises(fw: Any) -> None:
    def get_response(request: HttpRequest) -> HttpResponse:
        current_flags().gate("everyone")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        FlagwareMiddleware(get_response)(RequestFactory().get("/"))
    assert _current.get() is None


def test_current_flags_outside_a_request_names_the_django_middleware() -> None:
    with pytest.raises(NoRequestError, match=r"flagware\.django\.FlagwareMiddleware"):
        current_flags()


def test_first_visit_mints_a_cookie_the_same_request_sees(fw: Any) -> None:
    http = Client(REMOTE_ADDR="203.0.113.7")
    first = http.get("/whoami")
    body = first.json()
    cookie = cookie_of(first)
    assert cookie.value == body["stable_id"] and HEX32.fullmatch(body["stable_id"])
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax"
    assert cookie["secure"] == "" and cookie["path"] == "/"
    assert cookie["max-age"] == fw.cookie_max_age
    assert body["user_id"] == hash_ip(b"test-key", "203.0.113.7")
    # The browser sends it back: same IDs and group, no new cookie.
    second = http.get("/whoami")
    assert second.json() == body
    assert "flagware_id" not in second.cookies


def test_cookie_is_secure_on_https(fw: Any) -> None:
    response = Client().get("/whoami", secure=True)
    assert cookie_of(response)["secure"] is True


def test_cookie_name_and_max_age_come_from_settings(tmp_path: Path, spec_file: Path) -> None:
    for _ in flagware_settings(tmp_path, spec_file, cookie_name="vid", cookie_max_age=60):
        response = Client().get("/whoami")
        assert response.cookies["vid"].value == response.json()["stable_id"]
        assert response.cookies["vid"]["max-age"] == 60


def test_a_request_that_reads_no_flags_gets_no_cookie_and_no_events(
    fw: Any, flagware_events: Any
) -> None:
    response = Client().get("/plain")
    assert response.content == b"plain"
    assert "flagware_id" not in response.cookies
    assert flagware_events == []


def test_async_view_through_the_sync_client(fw: Any) -> None:
    response = Client().get("/awhoami")
    assert response.json()["stable_id"] == cookie_of(response).value


def test_async_view_through_the_async_client(fw: Any) -> None:
    async def visit() -> Any:
        http = AsyncClient()
        first = await http.get("/awhoami")
        second = await http.get("/awhoami")
        return first, second

    first, second = asyncio.run(visit())
    assert first.json()["stable_id"] == cookie_of(first).value
    assert second.json() == first.json()
    assert "flagware_id" not in second.cookies


def test_concurrent_async_requests_keep_their_own_flags(fw: Any) -> None:
    async def visit() -> list[Any]:
        return list(await asyncio.gather(*(AsyncClient().get("/awhoami") for _ in range(8))))

    responses = asyncio.run(visit())
    ids = [r.json()["stable_id"] for r in responses]
    assert len(set(ids)) == 8
    assert ids == [cookie_of(r).value for r in responses]


# -- who the user is ------------------------------------------------------------


def test_anonymous_visitors_are_the_hash_of_their_ip(fw: Any) -> None:
    response = Client(REMOTE_ADDR="198.51.100.4").get("/whoami")
    assert response.json()["user_id"] == hash_ip(b"test-key", "198.51.100.4")


def test_logged_in_user_is_the_user_id(fw: Any, user: Any) -> None:
    http = Client()
    http.force_login(user)
    assert http.get("/whoami").json()["user_id"] == str(user.pk)


def test_logged_in_user_in_an_async_view(fw: Any, user: Any) -> None:
    http = AsyncClient()
    http.force_login(user)
    response = asyncio.run(http.get("/awhoami"))
    assert response.json()["user_id"] == str(user.pk)
    assert fw.errors["user_id resolver"] == 0


def test_default_resolver_with_request_factory(fw: Any) -> None:
    request = RequestFactory().get("/")
    request.user = SimpleNamespace(is_authenticated=True, pk=42)  # type: ignore[assignment]
    response = FlagwareMiddleware(lambda r: HttpResponse(current_flags().user_id))(request)
    assert response.content == b"42"
    request = RequestFactory().get("/")
    request.user = SimpleNamespace(is_authenticated=False, pk=None)  # type: ignore[assignment]
    response = FlagwareMiddleware(lambda r: HttpResponse(current_flags().user_id))(request)
    assert HEX32.fullmatch(response.content.decode())


def test_a_failing_async_user_load_is_reported_and_never_breaks_the_request(
    fw: Any,
) -> None:
    async def auser() -> Any:
        raise RuntimeError("session store down")

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(current_flags().user_id)

    async def get_response(request: HttpRequest) -> HttpResponse:
        await middleware.process_view(request, view, (), {})  # as Django's handler does
        return await view(request)

    middleware = FlagwareMiddleware(get_response)
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.5")
    request.auser = auser  # type: ignore[attr-defined]
    response = asyncio.run(middleware(request))
    assert response.content.decode() == hash_ip(b"test-key", "192.0.2.5")
    assert fw.errors["user_id resolver"] == 1


def user_from_header(request: HttpRequest) -> str | None:
    return request.headers.get("X-User")


def account_tier(request: HttpRequest) -> dict[str, str]:
    return {"tier": request.headers.get("X-Tier", "free")}


def broken_resolver(request: HttpRequest) -> str:
    raise RuntimeError("resolver bug")


def test_custom_resolvers_from_dotted_paths(
    tmp_path: Path, spec_file: Path, flagware_events: Any
) -> None:
    options = {
        "user_id": f"{__name__}.user_from_header",
        "user_custom": account_tier,
        "user_custom_ids": f"{__name__}.company_ids",
    }
    for _ in flagware_settings(tmp_path, spec_file, **options):
        response = Client().get(
            "/logged", headers={"X-User": "u-7", "X-Tier": "pro", "X-Company": "acme"}
        )
    assert response.status_code == 200
    [event] = flagware_events.named("paid")
    assert event.user_id == "u-7"
    assert event.user["custom"] == {"tier": "pro"}
    assert event.user["customIDs"] == {"stableID": event.stable_id, "companyID": "acme"}


def company_ids(request: HttpRequest) -> dict[str, str | None]:
    return {"companyID": request.headers.get("X-Company")}


def test_user_id_none_uses_the_ip_even_when_logged_in(
    tmp_path: Path, spec_file: Path, user: Any
) -> None:
    for _ in flagware_settings(tmp_path, spec_file, user_id=None):
        http = Client(REMOTE_ADDR="192.0.2.1")
        http.force_login(user)
        assert http.get("/whoami").json()["user_id"] == hash_ip(b"test-key", "192.0.2.1")


def test_a_failing_resolver_is_reported_and_never_breaks_the_request(
    tmp_path: Path, spec_file: Path, caplog: Any
) -> None:
    for client in flagware_settings(tmp_path, spec_file, user_id=broken_resolver):
        with caplog.at_level(logging.ERROR, logger="flagware"):
            response = Client(REMOTE_ADDR="192.0.2.9").get("/whoami")
        assert response.status_code == 200
        assert response.json()["user_id"] == hash_ip(b"test-key", "192.0.2.9")
        assert client.errors["user_id resolver"] == 1
    assert "user_id resolver" in caplog.text


def test_proxy_hops_trust_only_the_configured_hop(tmp_path: Path, spec_file: Path) -> None:
    for _ in flagware_settings(tmp_path, spec_file, proxy_hops=1):
        http = Client(REMOTE_ADDR="10.0.0.1")
        forwarded = {"X-Forwarded-For": "6.6.6.6, 203.0.113.50"}
        response = http.get("/whoami", headers=forwarded)
        assert response.json()["user_id"] == hash_ip(b"test-key", "203.0.113.50")
        request = response.wsgi_request
        assert request.META["REMOTE_ADDR"] == "10.0.0.1"  # the app's own view is untouched


# -- decorators -----------------------------------------------------------------


def test_log_event_on_function_views(fw: Any, flagware_events: Any) -> None:
    http = Client()
    assert http.get("/logged").status_code == 200
    assert http.get("/logged_404").status_code == 404
    assert http.get("/logged_raises").status_code == 404
    assert flagware_events.names() == ["paid"]
    [event] = flagware_events
    assert event.value == 9.5 and event.metadata == {"plan": "pro"}
    assert event.stable_id is not None and event.user_id is not None


def test_feature_gate_on_function_views(fw: Any) -> None:
    http = Client()
    assert http.get("/gated_in").content == b"in"
    assert http.get("/gated_out").status_code == 404
    assert http.get("/gated_403").status_code == 403


def test_experiment_passes_the_assignment(fw: Any) -> None:
    response = Client().get("/experiment")
    group, color = response.content.decode().split(":")
    assert (group, color) in {("Control", "blue"), ("Red", "red")}


def test_decorated_async_views(fw: Any, flagware_events: Any) -> None:
    async def visit() -> Any:
        http = AsyncClient()
        return await http.get("/async_decorated"), await http.get("/async_gated_out")

    ok, denied = asyncio.run(visit())
    assert ok.content.decode() in {"Control:blue", "Red:red"}
    assert denied.status_code == 404
    assert flagware_events.names() == ["async_event"]
    assert Client().get("/async_decorated").status_code == 200  # and under WSGI


def test_class_based_view_methods(fw: Any, flagware_events: Any) -> None:
    http = Client()
    assert http.get("/cbv/direct").content in {b"blue", b"red"}
    response = http.get("/cbv/method_decorator")
    assert response.content.decode() == http.cookies["flagware_id"].value
    assert http.post("/cbv/method_decorator").status_code == 404
    assert flagware_events.names() == ["cbv_direct", "cbv_method_decorator"]


def test_async_class_based_view_methods(fw: Any, flagware_events: Any) -> None:
    async def visit() -> Any:
        http = AsyncClient()
        return await http.get("/cbv/async"), await http.post("/cbv/async")

    ok, denied = asyncio.run(visit())
    assert ok.content.decode() == cookie_of(ok).value  # a fresh client: minted here
    assert denied.status_code == 403
    assert flagware_events.names() == ["cbv_async"]


# -- templates ------------------------------------------------------------------


def test_template_tags(fw: Any, flagware_events: Any) -> None:
    response = Client().get("/tags")
    yes, no, again, group, color = response.content.decode().split(" ")
    assert (yes, no, again) == ("True", "False", "True")
    assert (group, color) in {("Control", "blue"), ("Red", "red")}
    # Each flag is evaluated and exposed once per request, however often it is read.
    exposures = [e.metadata["gate"] for e in flagware_events.named("statsig::gate_exposure")]
    assert sorted(exposures) == ["everyone", "nobody"]
    assert len(flagware_events.named("statsig::config_exposure")) == 1


def test_template_tags_outside_a_request_render_defaults(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(tags, "_warned", set())
    template = engines["django"].from_string(TAGS)
    with caplog.at_level(logging.WARNING, logger="flagware"):
        assert template.render() == "False False False None "
        template.render()
    assert caplog.text.count("outside a request") == 1


def test_jinja2_globals(fw: Any) -> None:
    response = Client().get("/jinja")
    yes, no, group, color, same = response.content.decode().split(" ")
    assert (yes, no, same) == ("True", "False", "True")
    assert (group, color) in {("Control", "blue"), ("Red", "red")}


def test_jinja2_outside_a_request_renders_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tags, "_warned", {"template"})
    template = engines["jinja2"].from_string(
        "{{ gate('x') }} {{ experiment('x').group }} [{{ flags.stable_id }}]"
    )
    assert template.render() == "False None []"


# -- settings and checks --------------------------------------------------------


def check_ids(**settings: Any) -> list[str]:
    with override_settings(**settings):
        return [str(m.id) for m in checks.check_settings() + checks.check_middleware()]


DEMO_URLS = "examples.django_demo.demo.urls"  # this module's views read the tests' own spec


@override_settings(ROOT_URLCONF=DEMO_URLS)
def test_the_test_settings_pass_every_check() -> None:
    assert run_checks(tags=["flagware"]) == []


def test_check_warns_of_views_decorated_with_flags_the_spec_lacks(spec_file: Path) -> None:
    """A misspelt @feature_gate answered 404 to everyone, said once in the log
    at the first request (a trial): the check names each routed view, method
    decorators included, before any request."""
    lacking = spec_file.parent / "lacking.toml"
    lacking.write_text(
        spec_file.read_text().replace("[gates.nobody]", "[gates.nobdy]")
        + '\n[experiments.nobody]\ngroups = [{ name = "A", weight = 100 }]\n'
    )
    with override_settings(FLAGWARE={"spec": spec_file}):
        assert run_checks(tags=["flagware"]) == []  # every name defined
    with override_settings(FLAGWARE={"spec": lacking}):
        said = [m for m in run_checks(tags=["flagware"]) if m.id == "flagware.W006"]
    assert [m.msg.partition(" is decorated")[0] for m in said] == [
        "test_django.AsyncMethodView.post",
        "test_django.DispatchGatedView.dispatch",  # once, by its class (a re-check)
        "test_django.MethodDecoratedView.post",
        "test_django.async_gated_out",
        "test_django.gated_403",
        "test_django.gated_out",
    ]
    assert said[-1].msg == (
        f"test_django.gated_out is decorated with @feature_gate('nobody'), which {lacking}"
        " does not define (did you mean 'nobdy'?): it reads False for every request"
    )
    assert said[-1].hint == "'nobody' is an experiment: read it with @experiment"
    # Experiments too, under stacked decorators and on a class-based view's method.
    renamed = spec_file.parent / "renamed.toml"
    renamed.write_text(spec_file.read_text().replace("experiments.button_color", "experiments.b"))
    with override_settings(FLAGWARE={"spec": renamed}):
        said = [m.msg for m in run_checks(tags=["flagware"]) if m.id == "flagware.W006"]
    assert [m.partition(" is decorated")[0] for m in said] == [
        "test_django.DirectView.get",
        "test_django.async_decorated",
        "test_django.with_experiment",
    ]
    assert said[0].endswith(
        "@experiment('button_color'), which " + f"{renamed} does not"
        " define: it serves its defaults to every request"
    )
    with override_settings(FLAGWARE={"statsig_secret": "secret-x", "hash_key": "k"}):
        assert [m for m in run_checks(tags=["flagware"]) if m.id == "flagware.W006"] == []


def test_check_warns_of_templates_reading_flags_the_spec_lacks(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt {% gate %} read False for every visitor, said once in the
    log at the first render: W007 names the file and line before any
    request, in Django templates that load flagware's tags (or have them as
    builtins) and Jinja2 templates under flagware's environment. Read as
    rendering reads them: not in comments, verbatim or raw blocks, page text,
    or where another library's tag of the same name was loaded (a re-check's
    12 false warnings of 24)."""
    django_dir, jinja_dir, other_dir, loaded = (tmp_path / d for d in ("t", "j", "o", "l"))
    (django_dir / "shop").mkdir(parents=True)
    (tmp_path / "abtest_tags.py").write_text(
        "from django import template\nregister = template.Library()\n"
        "@register.simple_tag\ndef gate(name):\n    return name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    page = django_dir / "shop" / "page.html"
    page.write_text(
        '{% load static flagware %}\n<p>\n{% gate "nobdy" as a %}{% gate "nobdy" as b %}\n'
        "{% experiment \"button_colour\" as exp %}{% gate 'button_color' as c %}"
        '{% gate "nobody" as d %}{% gate name as e %}\n'
        '{# {% gate "commented" as x %} #}{% comment "why" %}{% gate "in_comment" as y %}'
        '{% endcomment %}\n{% verbatim %}{% gate "verbatim" as z %}{% endverbatim %}\n'
        '{% load abtest %}{% gate "theirs" %}{% experiment "ours_too" as w %}\n'
        '{% load gate from flagware %}{% gate "ours_again" as v %}\n'
    )
    (django_dir / "unloaded.html").write_text('{% gate "elsewhere" as g %}')  # not our tag
    jinja_dir.mkdir()
    (jinja_dir / "page.j2").write_text(
        '{{ flags.gate("nobdy") }}\n{{ experiment("x").group }}\n{# gate("c") #}'
        '{% raw %}{{ gate("r") }}{% endraw %}<p>gate("t")</p>{{ other.gate("o") }}'
    )
    other_dir.mkdir()
    (other_dir / "page.j2").write_text('{{ gate("theirs") }}')  # another Jinja2 environment
    loaded.mkdir()  # found through an explicit loaders list, no DIRS
    (loaded / "cached.html").write_text('{% load flagware %}\n{% gate "cached_gate" as g %}')
    filesystem = ("django.template.loaders.filesystem.Loader", [str(loaded)])
    templates = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [django_dir],
            "OPTIONS": {"libraries": {"abtest": "abtest_tags"}},
        },
        {
            "BACKEND": "django.template.backends.jinja2.Jinja2",
            "DIRS": [jinja_dir],
            "OPTIONS": {"environment": "flagware.django.jinja2.environment"},
        },
        {"BACKEND": "django.template.backends.jinja2.Jinja2", "DIRS": [other_dir], "NAME": "o"},
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "NAME": "cached",
            "OPTIONS": {"loaders": [("django.template.loaders.cached.Loader", [filesystem])]},
        },
    ]
    with override_settings(FLAGWARE={"spec": spec_file}, TEMPLATES=templates):
        said = [m for m in run_checks(tags=["flagware"]) if m.id == "flagware.W007"]
    assert [m.msg.partition(", which")[0] for m in said] == [
        f"{jinja_dir / 'page.j2'}:1: gate(...) reads gate 'nobdy'",
        f"{jinja_dir / 'page.j2'}:2: experiment(...) reads experiment 'x'",
        f"{loaded / 'cached.html'}:2: {{% gate %}} reads gate 'cached_gate'",
        f"{page}:3: {{% gate %}} reads gate 'nobdy'",  # once per file and flag
        f"{page}:4: {{% experiment %}} reads experiment 'button_colour'",
        f"{page}:4: {{% gate %}} reads gate 'button_color'",
        f"{page}:7: {{% experiment %}} reads experiment 'ours_too'",  # abtest has no experiment
        f"{page}:8: {{% gate %}} reads gate 'ours_again'",
    ]
    assert said[1].hint == "define experiments.x in the spec, or fix the name"
    said = said[3:]
    assert said[0].msg.endswith(
        f"which {spec_file} does not define (did you mean 'nobody'?): it reads False for"
        " every request"
    )
    assert said[1].msg.endswith(
        "(did you mean 'button_color'?): it serves its defaults to every request"
    )
    assert said[2].hint == "'button_color' is an experiment: read it with {% experiment %}"
    builtin = [{**templates[0], "OPTIONS": {"builtins": ["flagware.django.templatetags.flagware"]}}]
    with override_settings(FLAGWARE={"spec": spec_file}, TEMPLATES=builtin):
        said = [m for m in run_checks(tags=["flagware"]) if m.id == "flagware.W007"]
    assert [m.msg.partition(":")[0] for m in said].count(str(django_dir / "unloaded.html")) == 1
    with override_settings(
        FLAGWARE={"statsig_secret": "secret-x", "hash_key": "k"}, TEMPLATES=templates
    ):
        assert [m for m in run_checks(tags=["flagware"]) if m.id == "flagware.W007"] == []


def test_check_statsig_without_a_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLAGWARE_HASH_KEY", raising=False)
    assert check_ids(FLAGWARE={"statsig_secret": "secret-x"}) == ["flagware.E001"]
    with override_settings(FLAGWARE={"statsig_secret": "secret-x"}):
        (error,) = checks.check_settings()
    # The local engine's key keeps the userIDs a move to Statsig would otherwise change.
    assert ".flagware/hash_key" in str(error.hint)
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-from-env")
    assert check_ids(FLAGWARE={}) == ["flagware.E001"]
    assert check_ids(FLAGWARE={"hash_key": "k"}) == []
    monkeypatch.setenv("FLAGWARE_HASH_KEY", "k")
    assert check_ids(FLAGWARE={}) == []


def test_check_a_statsig_api_flagware_would_refuse(
    monkeypatch: pytest.MonkeyPatch, spec_file: Path
) -> None:
    settings = {"statsig_secret": "secret-x", "hash_key": "k"}
    assert check_ids(FLAGWARE={**settings, "statsig_api": "127.0.0.1:18080"}) == ["flagware.E005"]
    monkeypatch.setenv("STATSIG_API", "http//relay")
    with override_settings(FLAGWARE=settings):
        [error] = checks.check_settings()
    assert error.id == "flagware.E005" and "STATSIG_API" in error.msg and "http//relay" in error.msg
    monkeypatch.setenv("STATSIG_API", "http://relay:8080/v1")
    assert check_ids(FLAGWARE=settings) == []
    monkeypatch.setenv("STATSIG_API", "http//relay")
    assert check_ids(FLAGWARE={"spec": spec_file}) == []  # local: the API is not read


@override_settings(ROOT_URLCONF=DEMO_URLS)
def test_check_deploy_warns_of_development_settings(spec_file: Path) -> None:
    """``check --deploy`` said nothing of a page open to anyone (a trial)."""
    assert run_checks(tags=["flagware"], include_deployment_checks=True) == []
    development = {"spec": spec_file, "diagnostics": "debug", "allow_random_override": True}
    with override_settings(FLAGWARE=development):
        deploy = [m.id for m in run_checks(tags=["flagware"], include_deployment_checks=True)]
        assert run_checks(tags=["flagware"]) == []  # only under --deploy
    assert deploy == ["flagware.W003", "flagware.W004"]
    with override_settings(FLAGWARE={"spec": spec_file, "diagnostics": True}):
        assert run_checks(tags=["flagware"], include_deployment_checks=True) == []


def test_check_missing_spec(tmp_path: Path) -> None:
    with override_settings(FLAGWARE={"spec": tmp_path / "nope.toml"}):
        [error] = checks.check_settings()
    assert error.id == "flagware.E002"
    assert str(tmp_path / "nope.toml") in error.msg


def test_check_invalid_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gates.x]\nrollout = 'half'\n")
    with override_settings(FLAGWARE={"spec": bad}):
        [error] = checks.check_settings()
    assert error.id == "flagware.E003"
    assert "rollout" in error.msg


def test_check_a_setting_named_like_flagware(spec_file: Path) -> None:
    with override_settings(FLAGWAR={"spec": spec_file}):
        del settings.FLAGWARE  # only inside override_settings' block
        [warning, *_] = checks.check_settings()
    assert warning.id == "flagware.W002"
    assert warning.msg == (
        "settings.FLAGWAR is not read by flagware: its settings are settings.FLAGWARE"
    )
    with override_settings(FLAGS={"spec": spec_file}):
        del settings.FLAGWARE
        assert "flagware.W002" not in [m.id for m in checks.check_settings()]


def test_a_client_from_misspelled_settings_names_the_key(spec_file: Path) -> None:
    """uvicorn and gunicorn run no system checks: a typo in settings.FLAGWARE
    stopped the server with a bare ``TypeError: Flagware.__init__() got an
    unexpected keyword argument 'flush_intervl'`` (a new user's trial)."""
    from django.core.exceptions import ImproperlyConfigured

    from flagware.django import conf

    with pytest.raises(
        ImproperlyConfigured,
        match=r"^settings.FLAGWARE has unknown keys: flush_intervl \(did you mean"
        r" 'flush_interval'\?\) \(keys are Flagware\(\.\.\.\) arguments: ",
    ):
        conf.build_client({"spec": spec_file, "flush_intervl": 1})


def test_check_settings_shape(spec_file: Path) -> None:
    assert check_ids(FLAGWARE=["spec"]) == ["flagware.E005"]
    assert check_ids(FLAGWARE={"spec": spec_file, "specs": "x"}) == ["flagware.E005"]
    with override_settings(FLAGWARE={"spec": spec_file, "event_stor": "x", "zzz": 1}):
        [error] = checks.check_settings()
    assert error.msg == (
        "settings.FLAGWARE has unknown keys: event_stor (did you mean 'event_store'?), zzz"
    )
    assert check_ids(FLAGWARE={"spec": spec_file, "statsig_secret": "secret-x"}) == [
        "flagware.E005"
    ]
    assert check_ids(FLAGWARE={"spec": spec_file, "user_id": "no.such.resolver"}) == [
        "flagware.E006"
    ]
    assert check_ids(FLAGWARE={"spec": spec_file, "user_custom": 42}) == ["flagware.E006"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"diagnostics_token": "short"}, "diagnostics_token must be at least 16 characters"),
        ({"exposure_dedupe": "sixty"}, "exposure_dedupe must be 0 (off) or more seconds, not"),
        ({"proxy_hops": 1.5}, "proxy_hops must be a whole number, 0 or more, not 1.5"),
        ({"diagnostics": "yes"}, 'diagnostics must be False, True or "debug"'),
        # Taken before (a negative max_queue dropped every event), or refused
        # only at the first request, or only logged at each one.
        ({"max_queue": -1}, "max_queue must be a whole number, 1 or more, not -1"),
        ({"flush_interval": -5}, "flush_interval must be more than 0 seconds, not -5"),
        ({"init_timeout": "x"}, "init_timeout must be 0 or more seconds, not 'x'"),
        ({"shutdown_timeout": -1}, "shutdown_timeout must be 0 or more seconds, not -1"),
        ({"cookie_max_age": "abc"}, "cookie_max_age must be a whole number, 1 or more"),
        ({"cookie_name": "bad name;"}, "cookie_name must be a cookie name"),
        ({"tier": 5}, "tier must be a string, not 5"),
        ({"engine": "cor"}, "engine must be 'legacy' or 'core', not 'cor'"),
        # Passed the check, and every worker refused to start (a new user's trial).
        ({"event_store": "mysql://u:pw@h/db"}, "event_store mysql://u:***@h/db: mysql:// is not"),
        (
            {"event_store": "postgresql://u:p@ss@h/db"},
            "event_store postgresql://u:***@h/db: the password has a character that must be",
        ),
    ],
)
def test_check_values_flagware_would_refuse(
    spec_file: Path, option: dict[str, Any], message: str
) -> None:
    """A value Flagware(...) refuses passed the check and failed the first request."""
    with override_settings(FLAGWARE={"spec": spec_file, **option}):
        [error] = checks.check_settings()
    assert error.id == "flagware.E005"
    assert error.msg.startswith("settings.FLAGWARE: ") and message in error.msg
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Flagware(
            **{
                "spec": spec_file,
                "hash_key": "k",
                "event_store": spec_file.parent / "e.db",
                **option,
            }
        )


def test_check_names_the_environment_for_a_store_url_from_it(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL from $FLAGWARE_EVENT_STORE was reported as settings.FLAGWARE's (a trial)."""
    monkeypatch.setenv("FLAGWARE_EVENT_STORE", "mysql://u:pw@h/db")
    with override_settings(FLAGWARE={"spec": spec_file}):
        [error] = checks.check_settings()
    assert error.id == "flagware.E005"
    assert error.msg.startswith("$FLAGWARE_EVENT_STORE: event_store mysql://u:***@h/db: mysql://")


def test_check_lists_every_bad_value_and_a_bad_secret(spec_file: Path) -> None:
    """Only the first bad value was reported: a fix at a time, a restart each."""
    bad = {"spec": spec_file, "max_queue": 0, "tier": 5, "engine": "cor"}
    with override_settings(FLAGWARE=bad):
        errors = checks.check_settings()
    assert [e.id for e in errors] == ["flagware.E005"] * 3
    assert [e.msg.split(": ")[1].split(" ")[0] for e in errors] == ["max_queue", "tier", "engine"]
    with override_settings(FLAGWARE={"statsig_secret": "abc-123", "hash_key": "k"}):
        [error] = checks.check_settings()
    assert "statsig_secret must be a Statsig server secret key" in error.msg
    with pytest.raises(ConfigurationError, match=r"max_queue must be .*; tier must be"):
        Flagware(hash_key="k", event_store=spec_file.parent / "e.db", **bad)


def test_the_checked_defaults_are_flagwares() -> None:
    from flagware.settings import CHECKED_DEFAULTS

    parameters = inspect.signature(Flagware.__init__).parameters
    assert {k: parameters[k].default for k in CHECKED_DEFAULTS} == CHECKED_DEFAULTS


def test_check_middleware_order(spec_file: Path) -> None:
    ours = "flagware.django.FlagwareMiddleware"
    flagware = {"spec": spec_file}
    assert check_ids(FLAGWARE=flagware, MIDDLEWARE=[ours, AUTH_MIDDLEWARE]) == ["flagware.W005"]
    assert check_ids(FLAGWARE=flagware, MIDDLEWARE=[AUTH_MIDDLEWARE, ours]) == []
    assert check_ids(FLAGWARE=flagware, MIDDLEWARE=[ours]) == []  # no users, no order
    assert check_ids(FLAGWARE=flagware, MIDDLEWARE=[AUTH_MIDDLEWARE]) == ["flagware.W001"]
    assert check_ids(FLAGWARE=flagware, MIDDLEWARE=MIDDLEWARE) == []


def test_the_middleware_placed_before_auth_says_so_when_it_loads(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn and gunicorn run no system checks: placed before the auth
    middleware, async views logged a SynchronousOnlyOperation traceback and
    nothing about the order (a new user's trial)."""
    from flagware.django import middleware

    ours = "flagware.django.FlagwareMiddleware"
    monkeypatch.setattr(middleware, "_said_misplaced", False)
    with override_settings(FLAGWARE={"spec": spec_file}, MIDDLEWARE=[ours, AUTH_MIDDLEWARE]):
        FlagwareMiddleware(lambda r: HttpResponse())
        FlagwareMiddleware(lambda r: HttpResponse())  # once a process
    [said] = [r for r in caplog.records if "flagware.W005" in r.getMessage()]
    assert said.levelname == "WARNING"
    assert said.getMessage() == (
        "flagware: FlagwareMiddleware comes before AuthenticationMiddleware, so a flag read by"
        " a middleware between them is read without the logged-in user (the request is then"
        " identified by its IP or stableID); views are not affected (flagware.W005): move"
        f' "{ours}" after "{AUTH_MIDDLEWARE}"'
    )
    caplog.clear()
    monkeypatch.setattr(middleware, "_said_misplaced", False)
    with override_settings(FLAGWARE={"spec": spec_file}, MIDDLEWARE=MIDDLEWARE):
        FlagwareMiddleware(lambda r: HttpResponse())
    assert "W005" not in caplog.text


def test_bad_settings_fail_when_the_middleware_loads() -> None:
    with override_settings(FLAGWARE="spec.toml"), pytest.raises(ImproperlyConfigured):
        FlagwareMiddleware(lambda r: HttpResponse())


def test_changing_settings_builds_a_new_client(tmp_path: Path, spec_file: Path) -> None:
    first = conf.get_client()
    assert conf.get_client() is first
    for client in flagware_settings(tmp_path, spec_file):
        assert client is not first and conf.get_client() is client
    assert client._closed  # the override's client is closed when it ends
