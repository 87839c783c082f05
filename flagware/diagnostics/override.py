"""The QA override on the diagnostics page: the form, and the POST that mints the cookie.

Only someone who may open the page (a token, or this machine) can post the
form, and the post must come from the page itself: a CSRF token bound to the
browser's stableID, and the browser's own ``Sec-Fetch-Site``/``Origin`` when
it sends them. The cookie it sets is signed (see :mod:`flagware.qa`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from werkzeug.wrappers import Response

from flagware import qa

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware
    from flagware.flags import Flags

DURATIONS = {"15": "15 minutes", "60": "1 hour", "480": "8 hours"}
MAX_BODY = 64 * 1024


def csrf_token(key: bytes, stable_id: str) -> str:
    return hmac.new(key, b"flagware qa csrf\x00" + stable_id.encode(), hashlib.sha256).hexdigest()


def section(
    client: Flagware,
    flags: Flags,
    gate_names: list[str],
    groups: dict[str, dict[str, dict[str, Any]]],
) -> str:
    """The override form, with the active override (if any) and a way to clear it."""
    current = flags._qa_override()
    token = csrf_token(client.hash_key, flags.stable_id)
    rows = []
    for name in gate_names:
        chosen = current.gates.get(name) if current else None
        options = _options(
            [("", "as evaluated"), ("pass", "pass"), ("fail", "fail")],
            "" if chosen is None else ("pass" if chosen else "fail"),
        )
        rows.append(_field("gate", name, options))
    for name, named_groups in groups.items():
        chosen_group = current.groups.get(name, "") if current else ""
        choices = [("", "as evaluated"), *((g, g) for g in named_groups)]
        rows.append(_field("experiment", name, _options(choices, chosen_group)))
    active = '<p class="muted" id="override-status">No override: you see what visitors see.</p>'
    if current:
        until = datetime.fromtimestamp(current.expires, tz=UTC).strftime("%H:%M UTC")
        forced = [f"gate {g} = {'pass' if v else 'fail'}" for g, v in current.gates.items()]
        forced += [f"{e} = {g}" for e, g in current.groups.items()]
        active = (
            f'<p id="override-status"><span class="pill">override active until {until}</span> '
            f"{escape('; '.join(forced))}. Exposures of this browser carry ruleID "
            "<code>override</code> and are left out of results.</p>"
        )
    durations = _options(list(DURATIONS.items()), "60")
    return (
        f"{active}"
        '<form method="post" action="override" id="override-form">'
        f'<input type="hidden" name="csrf" value="{token}">'
        f'<table id="override">{"".join(rows)}</table>'
        f'<p><label>for <select name="minutes">{durations}</select></label> '
        '<button type="submit" name="action" value="apply" id="override-apply">'
        "Force for this browser</button> "
        '<button type="submit" name="action" value="clear" id="override-clear">'
        "Clear override</button></p></form>"
    )


def _field(kind: str, name: str, options: str) -> str:
    field = escape(f"{kind}:{name}")
    return (
        f"<tr><th>{escape(kind)}</th><td><code>{escape(name)}</code></td>"
        f'<td><select name="{field}" aria-label="{field}">{options}</select></td></tr>'
    )


def _options(choices: list[tuple[str, str]], selected: str) -> str:
    return "".join(
        f'<option value="{escape(value)}"{" selected" if value == selected else ""}>'
        f"{escape(label)}</option>"
        for value, label in choices
    )


def handle_post(
    client: Flagware,
    flags: Flags,
    environ: WSGIEnvironment,
    gate_names: list[str],
    groups: dict[str, dict[str, dict[str, Any]]],
    page_url: str,
) -> Response:
    """Apply or clear the override, then back to the page (303)."""
    if not _same_origin(environ):
        return Response("cross-site request refused\n", 403, mimetype="text/plain")
    if not client.hash_key:  # a shared store's key is unread: nothing could be signed
        return Response("the hash key is not available yet\n", 503, mimetype="text/plain")
    form = _form(environ)
    expected = csrf_token(client.hash_key, flags.stable_id)
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        return Response("stale form: reload the page\n", 403, mimetype="text/plain")
    secure = environ.get("wsgi.url_scheme") == "https"
    response = Response("", 303)
    response.headers["Location"] = page_url
    gates = {
        name: form[f"gate:{name}"] == "pass"
        for name in gate_names
        if form.get(f"gate:{name}") in ("pass", "fail")
    }
    chosen = {
        name: form[f"experiment:{name}"]
        for name, named_groups in groups.items()
        if form.get(f"experiment:{name}") in named_groups
    }
    if form.get("action") == "clear" or not (gates or chosen):
        response.headers.add("Set-Cookie", qa.clear_header(secure=secure))
        return response
    minutes = form.get("minutes", "60")
    seconds = int(minutes) * 60 if minutes in DURATIONS else qa.DEFAULT_SECONDS
    override = qa.QAOverride(gates=gates, groups=chosen, expires=int(time.time()) + seconds)
    value = qa.sign(client.hash_key, override)
    response.headers.add("Set-Cookie", qa.cookie_header(value, secure=secure, max_age=seconds))
    return response


def _form(environ: WSGIEnvironment) -> dict[str, str]:
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_BODY)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def _same_origin(environ: WSGIEnvironment) -> bool:
    """Refuse posts another site made this browser send (the CSRF token is the other half)."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None:  # every current browser sends it, and a page cannot forge it
        return bool(site == "same-origin")
    # The page's no-referrer policy makes browsers send "Origin: null" on posts.
    origin: str | None = environ.get("HTTP_ORIGIN")
    if origin is None or origin == "null":
        return True
    return bool(urlsplit(origin).netloc == environ.get("HTTP_HOST", ""))
