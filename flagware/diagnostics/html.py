"""HTML fragments of the page; every value is escaped here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

from flagware.events.stats import format_age
from flagware.outages import is_outage

if TYPE_CHECKING:
    from flagware.client import Flagware


def _delivery(client: Flagware) -> str:
    """Statsig delivery for the whole store (waiting, parked, the last failed send since a
    batch was delivered); nothing for the local engine."""
    if client.delivery is None:
        return ""
    try:
        stats = client.delivery_stats()
    except Exception as exc:
        # The store away: the page says so, and the writer reports it. Reported
        # here too, it logged "diagnostics failed" while the page worked (a trial).
        if not is_outage(exc):
            client.report(exc, "diagnostics")
        return ' &middot; Statsig delivery <span class="off" id="delivery">unknown</span>'
    parked = f", {stats.parked:,} parked" if stats.parked else ""
    waiting = f"{stats.backlog:,} waiting{parked}"
    html = f' &middot; Statsig delivery: <span id="delivery">{waiting}</span>'
    if stats.last_failure is not None:
        failure = f"last failure: {stats.last_failure} ({format_age(stats.last_failure_age)} ago)"
        html += f' <span class="off" id="delivery-failure">{escape(failure)}</span>'
    return html


def _event_rows(events: list[dict[str, Any]] | None, stable_id: str) -> str:
    if events is None:  # the store cannot be read: the summary above says why
        return (
            '<tr id="no-events"><td colspan="5" class="off">the event store cannot be read'
            " now (see above)</td></tr>"
        )
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
        text = resources.files("flagware.diagnostics").joinpath("page.html").read_text("utf-8")
        _page_template = Template(text)
    return _page_template


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
