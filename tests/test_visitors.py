"""Exposures only from visitors: HEAD/OPTIONS, prefetches, bots and the app's own filter."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from servers import fetch, uvicorn_server
from werkzeug.test import Client
from werkzeug.wrappers import Response

from flagware import FlagwareMiddleware, current_flags
from flagware.asgi import FlagwareMiddleware as AsgiMiddleware
from flagware.visitors import is_bot, skip_reason

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BOTS = [
    GOOGLEBOT,
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
    "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Twitterbot/1.0",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; "
    "+https://openai.com/gptbot)",
]


@pytest.mark.parametrize("agent", BOTS)
def test_bots_and_crawlers_are_recognised(agent: str) -> None:
    assert is_bot(agent)
    assert skip_reason({"REQUEST_METHOD": "GET", "HTTP_USER_AGENT": agent}, None) == "bot"


@pytest.mark.parametrize("agent", [CHROME, IPHONE, FIREFOX])
def test_browsers_are_visitors(agent: str) -> None:
    assert not is_bot(agent)
    assert skip_reason({"REQUEST_METHOD": "GET", "HTTP_USER_AGENT": agent}, None) is None


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({"REQUEST_METHOD": "HEAD"}, "method"),
        ({"REQUEST_METHOD": "OPTIONS"}, "method"),
        ({"REQUEST_METHOD": "GET", "HTTP_SEC_PURPOSE": "prefetch"}, "prefetch"),
        ({"REQUEST_METHOD": "GET", "HTTP_SEC_PURPOSE": "prefetch;prerender"}, "prefetch"),
        ({"REQUEST_METHOD": "GET", "HTTP_PURPOSE": "prefetch"}, "prefetch"),
        ({"REQUEST_METHOD": "GET", "HTTP_X_MOZ": "prefetch"}, "prefetch"),
        ({"REQUEST_METHOD": "GET", "HTTP_X_PURPOSE": "preview"}, "prefetch"),
        ({"REQUEST_METHOD": "POST", "HTTP_USER_AGENT": CHROME}, None),
        ({"REQUEST_METHOD": "GET", "HTTP_USER_AGENT": "x" * 10_000}, None),
    ],
)
def test_requests_that_show_nobody_a_page(environ: dict[str, str], reason: str | None) -> None:
    assert skip_reason(environ, None) == reason


def app(environ: Any, start_response: Any) -> Any:
    flags = current_flags()
    body = {"gate": flags.gate("everyone"), "group": flags.experiment("button_color").group}
    return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


def exposures(client: Any) -> list[dict[str, Any]]:
    client.flush()
    return [e for e in client.store.iter_events() if e["event"].startswith("statsig::")]


def test_non_visitors_get_their_values_and_log_no_exposure(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    http = Client(FlagwareMiddleware(app, client))
    with caplog.at_level(logging.WARNING, "flagware"):
        bot = http.get("/", headers={"User-Agent": GOOGLEBOT})
        http.get("/", headers={"User-Agent": "Python-urllib/3.11"})  # said once a client
    said = [r.getMessage() for r in caplog.records if "by bots" in r.getMessage()]
    assert said == [
        f"flagware: flag reads by bots log no exposures (User-Agent {GOOGLEBOT[:80]!r}); browsers'"
        " do, and fw.skipped_exposures counts the rest (README: Exposures only from visitors)"
    ]
    assert bot.json["gate"] is True and bot.json["group"] in ("Control", "Red")
    assert http.head("/", headers={"User-Agent": CHROME}).status_code == 200
    assert http.options("/", headers={"User-Agent": CHROME}).status_code == 200
    http.get("/", headers={"User-Agent": CHROME, "Sec-Purpose": "prefetch"})
    assert exposures(client) == []
    assert client.skipped_exposures == {"bot": 4, "method": 4, "prefetch": 2}
    person = Client(FlagwareMiddleware(app, client)).get("/", headers={"User-Agent": CHROME})
    assert person.status_code == 200
    assert len(exposures(client)) == 2


def test_exposure_filter_adds_the_apps_own_rule(make_client: Any) -> None:
    client = make_client(exposure_filter=lambda environ: environ["PATH_INFO"] != "/healthz")
    http = Client(FlagwareMiddleware(app, client))
    assert http.get("/healthz").json["gate"] is True
    assert exposures(client) == [] and client.skipped_exposures == {"filter": 2}
    http.get("/page")
    assert {e["event"] for e in exposures(client)} == {
        "statsig::gate_exposure",
        "statsig::config_exposure",
    }


def test_a_broken_exposure_filter_is_reported_and_loses_nothing(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(environ: Any) -> bool:
        raise RuntimeError("filter bug")

    client = make_client(exposure_filter=broken)
    with caplog.at_level(logging.ERROR, logger="flagware"):
        response = Client(FlagwareMiddleware(app, client)).get("/")
    assert response.status_code == 200
    assert len(exposures(client)) == 2 and client.errors["exposure filter"] == 1
    # What it leaves in place, not "serving defaults" (a new user's trial).
    [said] = [r.getMessage() for r in caplog.records]
    assert "flags are evaluated as usual, and their exposures logged" in said


def test_under_uvicorn_bots_and_head_requests_log_no_exposure(make_client: Any) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def page(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"gate": current_flags().gate("everyone")})

    client = make_client()
    asgi = AsgiMiddleware(Starlette(routes=[Route("/", page, methods=["GET", "HEAD"])]), client)
    with uvicorn_server(asgi) as port:
        assert fetch(port, "/", headers={"User-Agent": GOOGLEBOT}).json() == {"gate": True}
        assert fetch(port, "/", method="HEAD", headers={"User-Agent": CHROME}).status == 200
        assert exposures(client) == []
        fetch(port, "/", headers={"User-Agent": CHROME})
    assert len(exposures(client)) == 1
    assert client.skipped_exposures == {"bot": 1, "method": 1}


# -- repeats: a visitor shown the same thing again is not exposed again --------


def test_a_returning_visitor_is_exposed_once_a_window(make_client: Any) -> None:
    client = make_client()
    browser = Client(FlagwareMiddleware(app, client))  # keeps its cookie: one visitor
    first = browser.get("/", headers={"User-Agent": CHROME}).json
    for _ in range(4):
        assert browser.get("/", headers={"User-Agent": CHROME}).json == first
    assert sorted(e["event"] for e in exposures(client)) == [
        "statsig::config_exposure",
        "statsig::gate_exposure",
    ]
    assert client.skipped_exposures == {"repeat": 8}
    # Another visitor is another key.
    Client(FlagwareMiddleware(app, client)).get("/", headers={"User-Agent": CHROME})
    assert len(exposures(client)) == 4


def test_a_changed_value_or_group_is_exposed_at_once(
    make_client: Any, flagware_overrides: Any
) -> None:
    client = make_client()
    browser = Client(FlagwareMiddleware(app, client))
    for gate, group in [(True, "Red"), (False, "Red"), (False, "Control"), (False, "Control")]:
        flagware_overrides.gate("everyone", gate)
        flagware_overrides.experiment("button_color", {}, group=group)
        browser.get("/")
    logged = exposures(client)
    gates = [e["metadata"]["gateValue"] for e in logged if e["event"].endswith("gate_exposure")]
    assert gates == ["true", "false"]
    assert [e["group"] for e in logged if e["exposure"] == "button_color"] == ["Red", "Control"]
    assert client.skipped_exposures == {"repeat": 4}


def test_exposures_repeat_once_the_window_ends(make_client: Any) -> None:
    import time

    client = make_client(exposure_dedupe=0.3)
    browser = Client(FlagwareMiddleware(app, client))
    browser.get("/")
    browser.get("/")
    assert len(exposures(client)) == 2
    time.sleep(0.35)
    browser.get("/")
    assert len(exposures(client)) == 4


def test_exposure_dedupe_zero_exposes_every_request(make_client: Any) -> None:
    client = make_client(exposure_dedupe=0)
    browser = Client(FlagwareMiddleware(app, client))
    for _ in range(3):
        browser.get("/")
    assert len(exposures(client)) == 6 and client.skipped_exposures == {}


@pytest.mark.parametrize("window", [-1, float("nan")])
def test_exposure_dedupe_must_be_a_number_of_seconds(make_client: Any, window: float) -> None:
    from flagware import ConfigurationError

    with pytest.raises(ConfigurationError, match="exposure_dedupe"):
        make_client(exposure_dedupe=window)


def test_repeats_forget_everything_past_their_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    from flagware.visitors import Repeats

    monkeypatch.setattr(Repeats, "LIMIT", 3)
    skipped: Counter[str] = Counter()
    repeats = Repeats(60.0, skipped)
    assert [repeats.first(k) for k in ("a", "b", "a", "c")] == [True, True, False, True]
    # Three keys held: the fourth starts afresh, so memory stays bounded.
    assert [repeats.first(k) for k in ("d", "a", "d")] == [True, True, False]
    assert skipped == {"repeat": 2}


def test_a_reloaded_spec_and_a_new_capture_expose_everyone_anew(
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from flagware.engine import local
    from flagware.testing import capture_events

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    client = make_client()
    browser = Client(FlagwareMiddleware(app, client))
    browser.get("/")
    browser.get("/")
    assert len(exposures(client)) == 2
    written = spec_file.read_text()
    spec_file.write_text(written.replace("rollout = 50", "rollout = 60"))
    os.utime(spec_file, (1, 1))
    browser.get("/")  # a gate edit: the values read are the same, still repeats
    assert len(exposures(client)) == 2
    restarted = written.replace('"red"', '"crimson"').replace(
        'unit = "stableID"', 'unit = "stableID"\nrestart = true'
    )
    spec_file.write_text(restarted)
    os.utime(spec_file, (2, 2))
    browser.get("/")  # reads the new spec: a restarted experiment counts from here
    assert len(exposures(client)) == 4
    with capture_events() as captured:
        browser.get("/")
    assert len(captured.exposures) == 2


def test_a_restart_exposes_everyone_anew_again_once_its_window_opens(
    make_client: Any, spec_file: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit first exposed in a restart's settling seconds (before its window
    opens) was remembered, and not logged again when it came back within the
    dedupe window: a trial's window left out 37 of 100 returning browsers."""
    import os
    import time

    from flagware.engine import local
    from flagware.results import sql

    monkeypatch.setattr(local, "RELOAD_CHECK_INTERVAL", 0.0)
    monkeypatch.setattr(sql, "SETTLE_MS", 300)  # the window opens 0.3 s after the restart
    client = make_client()
    browser = Client(FlagwareMiddleware(app, client))
    browser.get("/")
    written = spec_file.read_text()
    spec_file.write_text(
        written.replace('"red"', '"crimson"').replace(
            'unit = "stableID"', 'unit = "stableID"\nrestart = true'
        )
    )
    os.utime(spec_file, (2, 2))
    browser.get("/")  # the restart: exposed anew, in its settling time
    browser.get("/")
    assert len(exposures(client)) == 4
    time.sleep(0.35)
    browser.get("/")  # the window is open: logged again, counted in it
    browser.get("/")
    assert len(exposures(client)) == 6
