"""The diagnostics page: who you are, what you get, and the events as they arrive.

``Flagware(diagnostics=True)`` makes :class:`FlagwareMiddleware` serve it under
``/_flagware/`` (``diagnostics_path``). It shows this visitor's IDs and
country (never the IP), each gate's value and each experiment's group and
params for this visitor, the latest stored events (exposures included),
refreshed by a small inline script polling ``events.json``, and each
experiment's results chart.

Access (the page reveals every visitor's events, so it is closed by default):

- with a token (``diagnostics_token`` or ``FLAGWARE_DIAGNOSTICS_TOKEN``), only
  requests presenting it: ``?token=...`` once (answered with a redirect that
  drops it from the URL and sets an HttpOnly, SameSite=Strict cookie scoped to
  the page's path), the cookie, or ``Authorization: Bearer ...``;
- without a token, anyone when ``diagnostics="debug"``, else only requests
  from this machine: a loopback peer, a loopback ``Host`` (so a DNS-rebinding
  page in the developer's browser cannot read it) and no forwarding headers (a
  reverse proxy on the same host makes every visitor look local).

A refused request is not answered by this page at all: :meth:`handles` says
no and the app answers the path as if diagnostics were off, so nobody can
probe for the page.

Evaluations on this page go straight to the engine and log no exposures, so
looking at the page never puts the developer into an experiment's results.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from flagware import identity
from flagware.events.store import connect

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from flagware.client import Flagware
    from flagware.flags import Flags

__all__ = ["DEFAULT_PATH", "DiagnosticsApp"]

DEFAULT_PATH = "/_flagware/"
TOKEN_ENV = "FLAGWARE_DIAGNOSTICS_TOKEN"
COOKIE = "flagware_diagnostics"
COOKIE_MAX_AGE = 8 * 3600  # a working day; the token brings it back
POLL_SECONDS = 1.5
TAIL = 50  # events on the page when it opens
KEEP = 200  # rows the page keeps as new ones arrive
POLL_LIMIT = 200  # events per poll; the next poll fetches the rest
LISTED_NAMES = 100  # gates and experiments listed from the Statsig specs

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
_FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
_HIDDEN_IP = "[ip hidden]"


class DiagnosticsApp:
    """The WSGI app behind the diagnostics path; built by the middleware when enabled."""

    def __init__(self, client: Flagware) -> None:
        self.client = client
        # getattr: these options may not exist on older clients; defaults are the safe ones.
        path = getattr(client, "diagnostics_path", None) or DEFAULT_PATH
        self.root = "/" + path.strip("/")  # "/_flagware"
        if self.root == "/":
            raise ValueError("diagnostics_path must not be '/': the page would hide the whole app")
        self.prefix = self.root + "/"
        self.debug = getattr(client, "diagnostics", False) == "debug"
        token = _configured_token(client)
        self._token = token.encode() if token else None
        # The cookie holds a digest of the token, not the token: rotating the
        # token ends every session, and a copied cookie does not reveal it.
        self._cookie_value = (
            hmac.new(self._token, b"flagware diagnostics session", hashlib.sha256).hexdigest()
            if self._token
            else None
        )
        # The middleware routes here before its ProxyFix, so apply the same
        # trusted hops: the visitor's userID and country must be the app's.
        hops = int(getattr(client, "proxy_hops", 0) or 0)
        self._app: WSGIApplication = ProxyFix(self._serve, x_for=hops) if hops else self._serve

    # -- access -------------------------------------------------------------------

    def handles(self, environ: WSGIEnvironment) -> bool:
        """Whether this request is for the page and may see it (a prefix check first)."""
        path: str = environ.get("PATH_INFO", "")
        if path != self.root and not path.startswith(self.prefix):
            return False
        return self.allowed(environ)

    def allowed(self, environ: WSGIEnvironment) -> bool:
        if self._token is not None:
            return self._presented_token(environ) is not None
        return self.debug or _is_local(environ)

    def _presented_token(self, environ: WSGIEnvironment) -> str | None:
        """How the request proved it knows the token ("query", "header", "cookie"), or None."""
        assert self._token is not None and self._cookie_value is not None
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), self._token):
            return "header"
        # The query before the cookie: a link with the token always gets the
        # redirect that takes it out of the address bar and history.
        query = _query(environ).get("token")
        if query is not None and _same(query, self._token):
            return "query"
        cookie = identity.read_cookie(environ, COOKIE)
        if cookie is not None and _same(cookie, self._cookie_value.encode()):
            return "cookie"
        return None

    # -- WSGI -----------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self._app(environ, start_response)

    def _serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # Checked again: the middleware asks handles() first, but nothing stops
        # a caller from mounting this app on its own.
        if not self.handles(environ):
            return _not_found()(environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            response = Response("method not allowed\n", 405, mimetype="text/plain")
            response.headers["Allow"] = "GET, HEAD"
        else:
            response = self._route(environ)
            if self._token is not None and self._presented_token(environ) == "query":
                self._start_session(environ, response)
        _harden(response)
        return response(environ, start_response)

    def _route(self, environ: WSGIEnvironment) -> Response:
        path: str = environ.get("PATH_INFO", "")
        if path == self.root:
            return _redirect(environ, self.prefix)  # relative URLs need the slash
        rest = path[len(self.prefix) :]
        if rest == "":
            return self._page(environ)
        if rest == "events.json":
            return self._events_json(environ)
        return _not_found()

    def _start_session(self, environ: WSGIEnvironment, response: Response) -> None:
        """Trade ``?token=`` for a cookie; the page's script drops it from the address bar.

        The page is served on this very request, not after a redirect: a
        redirect that follows a link from another site (the token pasted in a
        chat) would not carry a SameSite=Strict cookie.
        """
        response.set_cookie(
            COOKIE,
            self._cookie_value or "",
            max_age=COOKIE_MAX_AGE,
            path=_script_name(environ) + self.prefix,
            secure=environ.get("wsgi.url_scheme") == "https",
            httponly=True,
            samesite="Strict",
        )

    # -- the page ---------------------------------------------------------------------

    def _page(self, environ: WSGIEnvironment) -> Response:
        flags: Flags | None = environ.get("flagware.flags")
        nonce = secrets.token_urlsafe(16)
        events = self._tail()
        gates, experiments, gates_note, experiments_note = self._assignments(flags)
        stable_id = flags.stable_id if flags is not None else ""
        html = _template().substitute(
            nonce=nonce,
            engine=escape(self.client.engine.kind),
            count=self._count(),
            visitor=self._visitor_rows(environ, flags),
            gates=gates,
            gates_note=gates_note,
            experiments=experiments,
            experiments_note=experiments_note,
            events=_event_rows(events, stable_id),
            last_id=max((e["id"] for e in events), default=0),
            stable_id=escape(stable_id),
            poll_ms=int(POLL_SECONDS * 1000),
            poll_seconds=f"{POLL_SECONDS:g}",
            keep=KEEP,
            results=self._results(),
        )
        response = Response(html, mimetype="text/html")
        response.headers["Content-Security-Policy"] = _csp(nonce)
        return response

    def _visitor_rows(self, environ: WSGIEnvironment, flags: Flags | None) -> str:
        if flags is None:
            return _row("IDs", '<span class="muted">no flagware request (no middleware)</span>')
        ip = identity.client_ip(environ)
        country = identity.country_of(ip) if ip else None
        rows = [
            _row("userID", _code(_scrub(flags.user_id))),
            _row("stableID", _code(flags.stable_id)),
            _row("country", escape(country or "unknown")),
            _row("IP address", '<span class="muted">not shown (hashed into userID)</span>'),
            _row("user agent", escape(environ.get("HTTP_USER_AGENT", "") or "none")),
        ]
        return "".join(rows)

    def _assignments(self, flags: Flags | None) -> tuple[str, str, str, str]:
        """Rows for gates and experiments, evaluated for this visitor without exposures."""
        if flags is None:
            return "", "", "", ""
        gate_names, experiment_names, note = self._names()
        engine = self.client.engine
        user = flags.statsig_user()
        gates, experiments = [], []
        for name in gate_names:
            try:
                result = engine.gate(user, name)
                value = (
                    '<span class="on">pass</span>'
                    if result.value
                    else ('<span class="off">fail</span>')
                )
                gates.append(_cells(escape(name), value, _code(result.rule_id)))
            except Exception as exc:
                gates.append(_cells(escape(name), _error(exc), ""))
        for name in experiment_names:
            try:
                result = engine.config(user, name)
                group = (
                    escape(result.group)
                    if result.group
                    else ('<span class="muted">not in the experiment</span>')
                )
                experiments.append(_cells(escape(name), group, _code(_json(result.params))))
            except Exception as exc:
                experiments.append(_cells(escape(name), _error(exc), ""))
        if not gates:
            gates.append(_cells('<span class="muted">none</span>', "", ""))
        if not experiments:
            experiments.append(_cells('<span class="muted">none</span>', "", ""))
        return "".join(gates), "".join(experiments), note, note

    def _names(self) -> tuple[list[str], list[str], str]:
        """Gate and experiment names: the local spec's, else the Statsig specs in memory."""
        spec = getattr(self.client.engine, "spec", None)
        if spec is not None:
            return list(spec.gates), list(spec.experiments), ""
        note = (
            '<p class="muted">From the Statsig specs this process has downloaded'
            f" (first {LISTED_NAMES} of each); evaluated here without exposures.</p>"
        )
        try:
            gates, experiments = self.client.engine.names()
        except Exception as exc:
            self.client.report(exc, "diagnostics")
            return [], [], '<p class="muted">The Statsig specs are not available yet.</p>'
        gates, experiments = gates[:LISTED_NAMES], experiments[:LISTED_NAMES]
        return gates, experiments, note

    def _results(self) -> str:
        spec = getattr(self.client.engine, "spec", None)
        if spec is None:
            return _unavailable("with the Statsig engine, read results in the Statsig console")
        if not spec.experiments:
            return '<p class="muted">The spec has no experiments.</p>'
        try:
            from flagware.results.compute import compute_results
            from flagware.results.render import render_chart_svg
        except ImportError:
            return _unavailable("this flagware has no results module")
        sections = []
        for name in spec.experiments:
            try:
                results = compute_results(spec, name, self.client.event_store_path)
                charts = "".join(render_chart_svg(m) for m in results.metrics)
            except Exception as exc:
                # ResultsError says why in words (no events yet, unknown metric);
                # anything else is a bug worth counting, never a broken page.
                if type(exc).__name__ != "ResultsError":
                    self.client.report(exc, "diagnostics results")
                sections.append(f"<h3>{escape(name)}</h3>" + _unavailable(str(exc)))
                continue
            sections.append(
                f'<section class="experiment-results" data-experiment="{escape(name)}">'
                + _live_verdict(name, results)
                + (charts or '<p class="muted">No metrics in the spec\'s catalog.</p>')
                + "</section>"
            )
        return "".join(sections)

    # -- events ---------------------------------------------------------------------------

    def _events_json(self, environ: WSGIEnvironment) -> Response:
        raw = _query(environ).get("after", "0")
        try:
            after = int(raw)
        except ValueError:
            return Response(
                '{"error": "after must be an event id"}', 400, mimetype="application/json"
            )
        events = _read_events(self._store_path(), after=max(after, 0), limit=POLL_LIMIT)
        last = max((e["id"] for e in events), default=after)
        body = json.dumps({"events": events, "last_id": last}, default=str)
        # Escaped so the JSON can never be sniffed or pasted into markup as HTML.
        body = body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return Response(body, mimetype="application/json")

    def _tail(self) -> list[dict[str, Any]]:
        return _read_events(self._store_path(), tail=TAIL)

    def _count(self) -> int:
        path = self._store_path()
        if not path.is_file():
            return 0
        conn = connect(path, readonly=True)
        try:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    def _store_path(self) -> Path:
        return Path(self.client.event_store_path)


# -- reading the store ---------------------------------------------------------------------

_EVENT_COLUMNS = "id, time, event, user_id, stable_id, value, metadata, exposure, group_name"


def _read_events(
    path: Path, *, after: int = 0, limit: int = POLL_LIMIT, tail: int | None = None
) -> list[dict[str, Any]]:
    """Events newer than ``after`` (oldest first), or the newest ``tail`` of them.

    A short-lived read-only connection per call: the page is polled from
    whatever thread the server picks, and the client's store keeps one
    connection per thread until it closes, which would pile up here.
    """
    if not path.is_file():
        return []
    conn = connect(path, readonly=True)
    try:
        if tail is not None:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?", (tail,)
            ).fetchall()
            rows.reverse()
        else:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
    except sqlite3.Error:
        return []  # a store still being created: nothing to show yet
    finally:
        conn.close()
    return [_event(row) for row in rows]


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[0],
        "time": row[1],
        "event": _scrub(row[2]),
        "user_id": _scrub(row[3]),
        "stable_id": row[4],
        "value": _scrub(_loads(row[5])),
        "metadata": _scrub(_loads(row[6])),
        "exposure": row[7],
        "group": row[8],
    }


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _scrub(value: Any) -> Any:
    """Replace any string that is an IP address: the store holds none, but apps log metadata."""
    if isinstance(value, str):
        return _HIDDEN_IP if _is_ip(value) else value
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _is_ip(text: str) -> bool:
    if not 2 < len(text) < 46 or not ("." in text or ":" in text):
        return False  # cheap rejection for the common case
    try:
        ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return False
    return True


# -- HTML fragments --------------------------------------------------------------------------


def _event_rows(events: list[dict[str, Any]], stable_id: str) -> str:
    if not events:
        return '<tr id="no-events"><td colspan="5" class="muted">no events yet</td></tr>'
    rows = []
    for e in reversed(events):  # newest first, as the script adds them
        you = ' class="you"' if stable_id and e["stable_id"] == stable_id else ""
        rows.append(
            f'<tr{you} data-id="{int(e["id"])}">'
            f"<td>{_time(e['time'])}</td><td>{escape(str(e['event']))}</td>"
            f'<td class="id" title="{escape(_text(e["user_id"]))}">'
            f"{escape(_short_id(_text(e['user_id'])))}</td>"
            f"<td>{escape(_text(e['value']))}</td>"
            f'<td class="mono">{escape(_text(e["metadata"]))}</td></tr>'
        )
    return "".join(rows)


def _text(value: Any) -> str:
    """What the script shows for a value, so both renderings agree."""
    if value is None:
        return ""
    return value if isinstance(value, str) else _json(value)


def _short_id(text: str) -> str:
    """IDs are 32 hex digits: the first 12 tell visitors apart; the tooltip has the rest."""
    return text[:12] + "\u2026" if len(text) > 16 else text


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _time(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _row(label: str, value_html: str) -> str:
    return f"<tr><th>{escape(label)}</th><td>{value_html}</td></tr>"


def _cells(*cells_html: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells_html) + "</tr>"


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>" if text else ""


def _error(exc: BaseException) -> str:
    return f'<span class="off">error: {escape(type(exc).__name__)}</span>'


def _unavailable(reason: str) -> str:
    return f'<p class="muted results-unavailable">results unavailable: {escape(reason)}</p>'


_page_template: Template | None = None


def _template() -> Template:
    global _page_template
    if _page_template is None:
        text = resources.files("flagware").joinpath("diagnostics_page.html").read_text("utf-8")
        _page_template = Template(text)
    return _page_template


# -- HTTP helpers ------------------------------------------------------------------------------


def _configured_token(client: Flagware) -> str | None:
    if hasattr(client, "diagnostics_token"):  # the client read the environment itself
        token = getattr(client, "diagnostics_token", None)
    else:
        token = os.environ.get(TOKEN_ENV)
    token = (token or "").strip()
    return token or None


def _same(presented: str, expected: bytes) -> bool:
    try:
        return hmac.compare_digest(presented.encode(), expected)
    except UnicodeEncodeError:  # lone surrogates from a hostile query string
        return False


def _query(environ: WSGIEnvironment) -> dict[str, str]:
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def _is_local(environ: WSGIEnvironment) -> bool:
    """A request from this machine's own browser, not relayed and not rebound."""
    if any(environ.get(h) for h in _FORWARDING_HEADERS):
        return False
    ip = identity.client_ip(environ)
    if ip is None or not ipaddress.ip_address(ip).is_loopback:
        return False
    return _is_loopback_host(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))


def _is_loopback_host(host: str) -> bool:
    if host.startswith("["):  # [::1]:8000
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    name = name.lower().rstrip(".")
    if name in _LOOPBACK_HOSTS or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _script_name(environ: WSGIEnvironment) -> str:
    return str(environ.get("SCRIPT_NAME", "")).rstrip("/")


def _redirect(environ: WSGIEnvironment, path: str) -> Response:
    response = Response("", 303)
    response.headers["Location"] = _script_name(environ) + path
    return response


def _not_found() -> Response:
    return Response("Not Found\n", 404, mimetype="text/plain")


def _csp(nonce: str) -> str:
    return (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _harden(response: Response) -> None:
    """Headers every diagnostics response carries (the page sets its own CSP)."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Cache-Control"] = "no-store"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["X-Robots-Tag"] = "noindex"


def _live_verdict(name: str, results: Any) -> str:
    """The heading with the verdict, only where reading it at every refresh is valid.

    This page recomputes results on every load. A sequential experiment's
    intervals hold at every look; a fixed-horizon verdict read this way would
    call noise significant far more often than alpha, so only a block (which
    needs no significance: SRM, stale guardrails, crossovers) is shown live.
    """
    if results.sequential or results.verdict == "blocked":
        verdict = escape(results.verdict)
        return (
            f'<h3>{escape(name)} &middot; <span class="verdict {verdict}">{verdict}</span></h3>'
            f'<p class="muted">{escape("; ".join(results.reasons))}</p>'
        )
    return (
        f"<h3>{escape(name)} &middot; "
        '<span class="verdict fixed-horizon">fixed horizon</span></h3>'
        '<p class="muted">Analysed at a fixed horizon: the verdict is valid once the'
        " planned sample is reached, so it is not shown live (read it then with"
        " <code>flagware results</code>). Set <code>sequential = true</code> on the"
        " experiment to watch an always-valid verdict here.</p>"
    )
