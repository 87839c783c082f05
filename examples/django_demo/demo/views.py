"""The seed lab's views: tasks, a signup page with a button-colour experiment,
a gated banner and server-side events."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from flagware import log_event

TASKS = [
    {"id": 1, "title": "Read the lab handout", "done": True},
    {"id": 2, "title": "Wrap the app with flagware", "done": True},
    {"id": 3, "title": "Ship the red button?", "done": False},
]


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect("/signup")


@require_GET
def tasks(request: HttpRequest) -> JsonResponse:
    flags = request.flags  # type: ignore[attr-defined]  # the same object as current_flags()
    return JsonResponse(
        {
            "tasks": TASKS,
            "new_signup": flags.gate("new_signup"),
            "button_color": flags.experiment("button_color").get("color", "blue"),
        }
    )


@require_GET
@log_event("visited_signup")
def signup(request: HttpRequest) -> HttpResponse:
    # The template reads the gate and the experiment with {% gate %} and
    # {% experiment %}; each is evaluated and exposed once for this request.
    return render(request, "demo/signup.html")


@require_POST
@log_event("signup_clicked")
def signup_click(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
