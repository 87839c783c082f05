"""The diagnostics WSGI app: routes, the page, the events feed."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from flagware import identity, proxies, qa
from flagware.diagnostics import override
from flagware.diagnostics.events import POLL_LIMIT, _read_events, stored_summary, tail_events
from flagware.diagnostics.html import (
    _delivery,
    _event_rows,
    _live_verdict,
    _template,
    _unavailable,
)
from flagware.diagnostics.http import (
    _configured_token,
    _csp,
    _harden,
    _is_local,
    _not_found,
    _query,
    _redirect,
    _same,
    _script_name,
)
from flagware.diagnostics.visitor import assignments, visitor_rows
from flagware.events.store import request_reads
from flagware.flags import Flags
from flagware.outages import is_outage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from flagware.client import Flagware

__all__ = ["DEFAULT_PATH", "DiagnosticsApp"]

DEFAULT_PATH = "/_flagware/"
COOKIE = "flagware_diagnostics"
COOKIE_MAX_AGE = 8 * 3600  # a working day; the token brings it back
POLL_SECONDS = 1.5
TAIL = 50  # events on the page when it opens
KEEP = 200  # rows the page keeps as new ones arrive
LISTED_NAMES = 100  # gates and experiments listed from the Statsig specs


_FAIL = '<span class="off">fail</span>'


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
        # Requests are routed here on the real peer (access is judged on it), so
        # the page applies the trusted hops itself, by the middleware's rule: the
        # visitor's userID and country must be the app's.
        self._hops = int(getattr(client, "proxy_hops", 0) or 0)

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
        if self._hops:
            proxies.proxy_fix(environ, self._hops)
        self.client.writer.check_hung()  # a hung write keeps the reads below off the database
        with request_reads():  # a hung database held each poll 10 s (a trial)
            return self._serve(environ, start_response)

    def render(self, environ: WSGIEnvironment) -> tuple[int, list[tuple[str, str]], bytes]:
        """The whole response at once, for adapters that are not WSGI (ASGI, Django)."""
        started: list[Any] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            started[:] = [int(status[:3]), list(headers)]
            return lambda data: None

        result = self(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return started[0], started[1], body

    def _serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # Checked again: the middleware asks handles() first, but nothing stops
        # a caller from mounting this app on its own.
        if not self.handles(environ):
            return _not_found()(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST" and environ.get("PATH_INFO") == self.prefix + "override":
            response = self._override(environ)
        elif method not in ("GET", "HEAD"):
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
        if rest == "override":  # the form posts here; a GET goes back to the page
            return _redirect(environ, self.prefix)
        return _not_found()

    def _override(self, environ: WSGIEnvironment) -> Response:
        flags: Flags | None = environ.get("flagware.flags")
        if flags is None:
            return _not_found()
        gate_names, _, _ = self._names()
        return override.handle_post(
            self.client,
            flags,
            environ,
            gate_names,
            self._groups(),
            _script_name(environ) + self.prefix,
        )

    def _groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            return qa.experiment_groups(self.client.engine)
        except Exception as exc:  # Statsig specs not downloaded yet: gates only
            self.client.report(exc, "diagnostics")
            return {}

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
        gates, experiments, gates_note, experiments_note = assignments(
            self.client, flags, self._names() if flags is not None else ([], [], "")
        )
        stable_id = flags.stable_id if flags is not None else ""
        html = _template().substitute(
            nonce=nonce,
            engine=escape(self.client.engine.kind),
            sdk=escape(self.client.engine.sdk),
            specs=self._specs(),
            stored=stored_summary(self.client),
            delivery=_delivery(self.client),
            visitor=visitor_rows(environ, flags),
            gates=gates,
            gates_note=gates_note,
            experiments=experiments,
            experiments_note=experiments_note,
            events=_event_rows(events, stable_id),
            last_id=max((e["id"] for e in events or ()), default=0),
            stable_id=escape(stable_id),
            poll_ms=int(POLL_SECONDS * 1000),
            poll_seconds=f"{POLL_SECONDS:g}",
            keep=KEEP,
            results=self._results(),
            override=self._override_section(flags),
        )
        response = Response(html, mimetype="text/html")
        response.headers["Content-Security-Policy"] = _csp(nonce)
        return response

    def _override_section(self, flags: Flags | None) -> str:
        if flags is None:
            return '<p class="muted">Needs the flagware middleware.</p>'
        gate_names, _, _ = self._names()
        return override.section(self.client, flags, gate_names, self._groups())

    def _specs(self) -> str:
        """Which specs this process serves: Statsig's may not have come yet."""
        try:
            time_ms = self.client.engine.specs_time()
        except Exception as exc:
            self.client.report(exc, "diagnostics")
            time_ms = None
        if time_ms is None:
            shown = '<span class="off" id="specs">no specs yet: serving defaults</span>'
        else:
            when = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
            shown = f'specs of <span id="specs">{when:%Y-%m-%d %H:%M:%S} UTC</span>'
        return shown + self._specs_outage() + self._refused()

    def _refused(self) -> str:
        """Edits of started experiments this process refuses: the page showed
        the recorded definition as if the file said it, and only the log told
        of the edit (an operator's trial)."""
        refused = getattr(self.client.engine, "refused", None) or []
        return "".join(
            # Each says how it is served meanwhile: as it started, as its
            # restart recorded it, or as shipped (said "as started" of all).
            f' · <span class="off specs-refused">refused: {escape(message)}</span>'
            for message in refused
        )

    def _specs_outage(self) -> str:
        """Failing downloads, as the log said them: the page showed the specs'
        time and nothing else through a Statsig outage (a new user's trial)."""
        downloads = self.client.engine.specs_log()
        if downloads is None or downloads.failing_since is None:
            return ""
        start = datetime.fromtimestamp(downloads.failing_since, tz=UTC)
        return (
            f' · <span class="off" id="specs-failing">downloads from'
            f" {escape(downloads.base)} failing since {start:%H:%M:%S} UTC"
            f" ({downloads.outage_failures} failed since; last: {escape(downloads.last_reason)})"
            "</span>"
        )

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
                results = compute_results(spec, name, self.client.event_store)
                charts = "".join(render_chart_svg(m) for m in results.metrics)
            except Exception as exc:
                # ResultsError says why in words (no events yet, unknown metric),
                # and so does a store out of reach (the writer logs the outage);
                # anything else is a bug worth counting, never a broken page.
                if type(exc).__name__ != "ResultsError" and not is_outage(exc):
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

    def _tail(self) -> list[dict[str, Any]] | None:
        return tail_events(self._store_path(), TAIL)

    def _store_path(self) -> str:
        return self.client.event_store  # a SQLite path or a postgresql:// URL
