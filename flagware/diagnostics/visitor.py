"""The page's visitor section: this request's IDs, and every gate and experiment
evaluated for it without exposures."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from flagware import identity
from flagware.diagnostics.events import _scrub
from flagware.diagnostics.html import _cells, _code, _error, _json, _row
from flagware.overrides import OVERRIDE_RULE, Config

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware
    from flagware.flags import Flags


def visitor_rows(environ: WSGIEnvironment, flags: Flags | None) -> str:
    """Rows for this visitor's IDs, country and user agent; the address never shown."""
    if flags is None:
        return _row("IDs", '<span class="muted">no flagware request (no middleware)</span>')
    ip = identity.client_ip(environ)
    country = identity.country_of(ip) if ip else None
    rows = [
        _row("userID", _code(_scrub(flags.user_id))),
        _row("stableID", _code(flags.stable_id)),
        _row("country", escape(country or "unknown")),
        _row("IP address", f'<span class="muted">{address_note(flags.user_id, ip)}</span>'),
        _row("user agent", escape(environ.get("HTTP_USER_AGENT", "") or "none")),
    ]
    return "".join(rows)


def assignments(
    client: Flagware, flags: Flags | None, names: tuple[list[str], list[str], str]
) -> tuple[str, str, str, str]:
    """Rows for gates and experiments, evaluated for this visitor without exposures."""
    if flags is None:
        return "", "", "", ""
    gate_names, experiment_names, note = names
    engine = client.engine
    user = flags.statsig_user()
    gates, experiments = [], []
    for name in gate_names:
        try:
            forced = flags._forced_gate(name)  # a QA or test override, shown as such
            if forced is None:
                result = engine.gate(user, name)
                passed, rule_id = result.value, result.rule_id
            else:
                passed, rule_id = forced, OVERRIDE_RULE
            value = '<span class="on">pass</span>' if passed else '<span class="off">fail</span>'
            gates.append(_cells(escape(name), value, _code(rule_id)))
        except Exception as exc:
            gates.append(_cells(escape(name), _error(exc), ""))
    for name in experiment_names:
        try:
            config = flags._forced_config(name)
            if config is None:
                result = engine.config(user, name)
                config = Config(name, result.params, group=result.group)
            group = (
                escape(config.group)
                if config.group
                else ('<span class="muted">not in the experiment</span>')
            )
            if config.rule_id == OVERRIDE_RULE:
                group += ' <span class="pill">override</span>'
            experiments.append(_cells(escape(name), group, _code(_json(config.params))))
        except Exception as exc:
            experiments.append(_cells(escape(name), _error(exc), ""))
    if not gates:
        gates.append(_cells('<span class="muted">none</span>', "", ""))
    if not experiments:
        experiments.append(_cells('<span class="muted">none</span>', "", ""))
    return "".join(gates), "".join(experiments), note, note


def address_note(user_id: str, ip: str | None) -> str:
    """What became of the address: hashed into the userID, unless it was not."""
    if not user_id.startswith("s-"):
        return "not shown (hashed into userID)"
    if ip:  # an address, and still the cookie: a shared store's hash key is unread
        return "not shown, not hashed: the hash key is unread yet (userID from the stableID)"
    return "none usable (userID from the stableID)"
