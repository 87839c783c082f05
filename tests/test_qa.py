"""The QA override: a signed cookie from the diagnostics page forcing one browser's values."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from servers import fetch, uvicorn_server
from werkzeug.test import Client
from werkzeug.wrappers import Response

from flagware import FlagwareMiddleware, current_flags
from flagware.asgi import FlagwareMiddleware as AsgiMiddleware
from flagware.qa import COOKIE, QAOverride, read, sign

KEY = b"test-key"
LOCAL = {"Host": "localhost"}


def environ_with(value: str) -> dict[str, str]:
    return {"HTTP_COOKIE": f"other=1; {COOKIE}={value}"}


def test_signed_cookie_round_trip_and_every_way_to_reject_it() -> None:
    override = QAOverride({"new_signup": True}, {"button_color": "Red"}, int(time.time()) + 60)
    value = sign(KEY, override)
    assert read(KEY, environ_with(value)) == override
    assert read(b"another-key", environ_with(value)) is None  # only this server mints them
    payload, mac = value.split(".")
    assert read(KEY, environ_with(payload + "." + mac[::-1])) is None
    forged = sign(b"attacker", QAOverride({}, {"button_color": "Control"}, 2**40))
    assert read(KEY, environ_with(forged.split(".")[0] + "." + mac)) is None
    assert read(KEY, environ_with(value), now=time.time() + 120) is None  # expired
    for garbage in ("", "x", "a.b", "!!!.%%%", "\u00e9.\u00e9"):
        assert read(KEY, environ_with(garbage)) is None
    assert read(KEY, {}) is None


def app(environ: Any, start_response: Any) -> Any:
    flags = current_flags()
    exp = flags.experiment("button_color")
    body = {"gate": flags.gate("nobody"), "group": exp.group, "color": exp.get("color")}
    return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


class LocalClient(Client):
    """A browser on this machine: a loopback peer (the Host header comes with each request)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("environ_base", {"REMOTE_ADDR": "127.0.0.1"})
        return super().open(*args, **kwargs)


def local_client(client: Any) -> Client:
    return LocalClient(FlagwareMiddleware(app, client))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no override form on the page"
    return found.group(1)


def qa_cookie(headers: Any) -> str | None:
    for value in headers.getlist("Set-Cookie"):
        if value.startswith(COOKIE + "="):
            return str(value)
    return None


def test_the_page_mints_the_cookie_and_requests_carrying_it_are_forced(make_client: Any) -> None:
    client = make_client(diagnostics=True)
    http = local_client(client)
    natural = http.get("/").json
    chosen = "Red" if natural["group"] == "Control" else "Control"
    page = http.get("/_flagware/", headers=LOCAL)
    assert page.status_code == 200 and 'id="override-form"' in page.text
    form = {
        "csrf": csrf_of(page.text),
        "gate:nobody": "pass",
        "experiment:button_color": chosen,
        "minutes": "15",
        "action": "apply",
    }
    # Another site's page making this browser post, and a stale or missing token: refused.
    cross = http.post(
        "/_flagware/override", data=form, headers={**LOCAL, "Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403
    stale = http.post("/_flagware/override", data={**form, "csrf": "0" * 64}, headers=LOCAL)
    assert stale.status_code == 403
    assert http.get("/").json == natural

    done = http.post(
        "/_flagware/override", data=form, headers={**LOCAL, "Sec-Fetch-Site": "same-origin"}
    )
    assert done.status_code == 303 and done.headers["Location"] == "/_flagware/"
    cookie = qa_cookie(done.headers)
    assert cookie is not None and "HttpOnly" in cookie and "Max-Age=900" in cookie
    forced = http.get("/").json
    assert forced == {"gate": True, "group": chosen, "color": {"Red": "red"}.get(chosen, "blue")}
    page = http.get("/_flagware/", headers=LOCAL).text
    assert "override active" in page and f"button_color = {chosen}" in page

    client.flush()
    exposures = [e for e in client.store.iter_events() if e["event"].startswith("statsig::")]
    rules = [e["metadata"]["ruleID"] for e in exposures]
    assert rules[:2] != ["override", "override"] and rules[-2:] == ["override", "override"]

    cleared = http.post("/_flagware/override", data={**form, "action": "clear"}, headers=LOCAL)
    assert cleared.status_code == 303 and "Max-Age=0" in (qa_cookie(cleared.headers) or "")
    assert http.get("/").json == natural


def test_only_known_names_and_groups_are_accepted(make_client: Any) -> None:
    client = make_client(diagnostics=True)
    http = local_client(client)
    csrf = csrf_of(http.get("/_flagware/", headers=LOCAL).text)
    form = {"csrf": csrf, "experiment:button_color": "Purple", "gate:unknown": "pass"}
    response = http.post("/_flagware/override", data=form, headers=LOCAL)
    assert response.status_code == 303 and "Max-Age=0" in (qa_cookie(response.headers) or "")


def test_the_override_is_refused_to_whoever_may_not_open_the_page(make_client: Any) -> None:
    client = make_client(diagnostics=True)
    http = Client(FlagwareMiddleware(app, client))
    response = http.post(
        "/_flagware/override", data={"csrf": "x"}, environ_base={"REMOTE_ADDR": "203.0.113.4"}
    )
    # Not the page: the app answers (here, with its flags), and no cookie is set.
    assert response.status_code == 200 and qa_cookie(response.headers) is None


def test_through_the_asgi_middleware_under_uvicorn(make_client: Any) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def page(request: Request) -> JSONResponse:
        return JSONResponse({"group": current_flags().experiment("button_color").group})

    client = make_client(diagnostics=True)
    asgi = AsgiMiddleware(Starlette(routes=[Route("/", page)]), client)
    stable = {"Cookie": "flagware_id=" + "c" * 32}
    with uvicorn_server(asgi) as port:
        natural = fetch(port, "/", headers=stable).json()["group"]
        chosen = "Red" if natural == "Control" else "Control"
        html = fetch(port, "/_flagware/", headers=stable).text
        body = f"csrf={csrf_of(html)}&experiment%3Abutton_color={chosen}&action=apply"
        headers = {**stable, "Content-Type": "application/x-www-form-urlencoded"}
        done = fetch(
            port, "/_flagware/override", method="POST", headers=headers, body=body.encode()
        )
        assert done.status == 303
        value = done.minted(COOKIE)
        assert value is not None
        cookie = {"Cookie": f"flagware_id={'c' * 32}; {COOKIE}={value}"}
        assert fetch(port, "/", headers=cookie).json()["group"] == chosen
