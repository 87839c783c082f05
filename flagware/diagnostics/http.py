"""Access rules and HTTP helpers: tokens, loopback checks, hardened responses."""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from werkzeug.wrappers import Response

from flagware import identity

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware

TOKEN_ENV = "FLAGWARE_DIAGNOSTICS_TOKEN"
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
_FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


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
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
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
