"""Reading what proxies forwarded: ``X-Forwarded-For`` and ``-Proto``.

Shared by the WSGI, ASGI and Django adapters and by identity's check that a
proxy is not being ignored; it imports nothing of flagware's, so any of them
may import it. A wrong ``proxy_hops`` is silent by nature (every visitor
shares the proxy's userID, and nothing fails), so each way of getting it
wrong that a request can show is said once a process.
"""

from __future__ import annotations

import logging
from typing import Any

from werkzeug.http import parse_list_header

log = logging.getLogger("flagware")


def rightmost(header: str) -> str | None:
    """The last non-empty item of ``X-Forwarded-For``: what the nearest proxy saw."""
    if '"' not in header:
        # The common case: taken without splitting the whole header (this
        # runs on every request behind one proxy).
        last = header[header.rfind(",") + 1 :].strip()
        if last:
            return last
    values = _items(header)
    return values[-1] if values else None


def forwarded_for(header: str | None, hops: int) -> str | None:
    """The client address as the ``hops``-th trusted proxy saw it, or None.

    The same rule as werkzeug's ``ProxyFix(x_for=hops)``: count from the right,
    because the left of ``X-Forwarded-For`` is whatever the client sent.
    """
    if not header or hops <= 0:
        return None
    if hops == 1:
        found = rightmost(header)
        if found:
            return found
        _say_too_few_hops(0, hops)
        return None
    values = _items(header)
    if len(values) >= hops:
        return values[-hops]
    _say_too_few_hops(len(values), hops)
    return None


def _items(header: str) -> list[str]:
    if '"' in header:  # quoted items (never seen from real proxies): werkzeug's parser
        return parse_list_header(header)
    return [v.strip() for v in header.split(",") if v.strip()]


_said_too_few = False
_said_waitress = False


def _say_if_waitress(server: object, hops: int) -> None:
    """waitress removes X-Forwarded-For unless the request came from its
    ``trusted_proxy``, so ``proxy_hops`` found nothing to read and every
    visitor had the proxy's userID, without a word (a new user's trial)."""
    global _said_waitress
    if not (isinstance(server, str) and server.startswith("waitress")):
        return
    _said_waitress = True
    log.warning(
        "flagware: proxy_hops = %d, but waitress passed a request without X-Forwarded-For:"
        " it removes the header unless the request came from its trusted_proxy, so behind"
        " a proxy every visitor has the proxy's address. Use waitress's own rule instead:"
        " trusted_proxy and trusted_proxy_headers = x-forwarded-for, with proxy_hops = 0"
        " (waitress then rewrites the address itself; if it is set already, proxy_hops"
        " = 0 is all that is left; said once a process)",
        hops,
    )


def _say_too_few_hops(found: int, hops: int) -> None:
    """A wrong ``proxy_hops`` was silent (a new user's trial): with more hops
    than proxies, every visitor kept the proxy's address, one userID for all."""
    global _said_too_few
    if _said_too_few:
        return
    _said_too_few = True
    log.warning(
        "flagware: proxy_hops = %d, but a request came with %d X-Forwarded-For"
        " address(es); its identity is the address that connected. If fewer proxies"
        " than that stand in front of the app, every visitor shares the proxy's userID,"
        " and one that sends its own X-Forwarded-For picks its identity: set proxy_hops"
        " to the number of proxies that append to X-Forwarded-For",
        hops,
        found,
    )


def proxy_fix(environ: dict[str, Any], hops: int) -> None:
    """What ``werkzeug.middleware.proxy_fix.ProxyFix(app, x_for=hops)`` does, in place.

    The WSGI middleware applied that ProxyFix to every request; done inline it
    costs about half as much, which matters to apps that never read a flag. Same
    result (the suite compares the two): ``REMOTE_ADDR`` from ``hops`` trusted
    ``X-Forwarded-For`` values, ``wsgi.url_scheme`` from one trusted
    ``X-Forwarded-Proto`` (ProxyFix's default), the originals kept under
    ``werkzeug.proxy_fix.orig``.
    """
    get = environ.get
    environ["werkzeug.proxy_fix.orig"] = {
        "REMOTE_ADDR": get("REMOTE_ADDR"),
        "wsgi.url_scheme": get("wsgi.url_scheme"),
        "HTTP_HOST": get("HTTP_HOST"),
        "SERVER_NAME": get("SERVER_NAME"),
        "SERVER_PORT": get("SERVER_PORT"),
        "SCRIPT_NAME": get("SCRIPT_NAME"),
    }
    forwarded = get("HTTP_X_FORWARDED_FOR")
    address = forwarded_for(forwarded, hops)
    if address:
        environ["REMOTE_ADDR"] = address
    elif forwarded is None and not _said_waitress:
        _say_if_waitress(get("SERVER_SOFTWARE"), hops)
    proto = get("HTTP_X_FORWARDED_PROTO")
    if proto:
        scheme = rightmost(proto)
        if scheme:
            environ["wsgi.url_scheme"] = scheme
