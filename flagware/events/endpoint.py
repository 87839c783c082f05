"""The way to a URL for flagware's own HTTP (delivery; Core's specs download):
directly, or through the proxy the environment names.

The variables are read as requests (the ``statsig`` SDK's client) reads them,
so both engines' traffic takes the same way: ``HTTPS_PROXY`` for https (a
``CONNECT`` tunnel, TLS end to end), ``HTTP_PROXY`` for http (the absolute
form), ``ALL_PROXY`` for either, ``NO_PROXY`` (names and their subdomains,
``host:port``, CIDR ranges, ``*`` alone); lowercase before uppercase. They are read
once, when an endpoint is made (at startup): a bad value is an error then,
not a failure on every send.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import ssl
import sys
import urllib.request
from urllib.parse import SplitResult, unquote, urlsplit

_SECRET = "check the server secret (statsig_secret or STATSIG_SERVER_SECRET)"
# Refusals that configuration causes and fixes, and what to check.
REFUSED = {
    401: _SECRET,
    403: _SECRET + " and any proxy or firewall on the way",
    407: "the proxy wants a login (user:password in its URL)",
}


def http_problem(status: int, where: str = "") -> str:
    """``HTTP 401 /v1/log_event: check the server secret ...``: a failed answer as
    logged and shown by ``flagware status``, with what to check when configuration
    causes it. ``where`` follows the status (a route, the answer's text)."""
    hint = REFUSED.get(status)
    return f"HTTP {status}{where}: {hint}" if hint else f"HTTP {status}{where}"


def tunnel_login_refused(exc: OSError) -> bool:
    """Whether an https proxy answered ``CONNECT`` with 407, its login refused.

    http.client raises ``OSError("Tunnel connection failed: 407 ...")`` then,
    not a response; told apart, it gets the 407's hint and handling. Other
    refusals of the tunnel stay connection errors: retried, the proxy named.
    """
    return str(exc).startswith("Tunnel connection failed: 407")


class Endpoint:
    """One URL and the way to it, fixed when made."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        # Always explicit: http.client splits a port-less IPv6 literal at its last colon.
        self.port = parts.port or (443 if self.https else 80)
        self.proxy = environment_proxy(parts.scheme, self.host, self.port)
        tunnel = self.proxy is not None and self.https
        if tunnel and ":" in self.host and sys.version_info < (3, 13):
            # Before 3.13 http.client writes "CONNECT ::1:443", which no proxy reads.
            raise ValueError("an IPv6 address through an https proxy needs Python 3.13")
        auth: dict[str, str] = {}
        if self.proxy is not None and self.proxy.username is not None:
            login = f"{unquote(self.proxy.username)}:{unquote(self.proxy.password or '')}"
            auth["Proxy-Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        # What each request carries for the proxy: a tunnel's login goes with CONNECT.
        self.headers = {} if tunnel else auth
        self._tunnel_headers = auth if tunnel else {}
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if self.proxy is not None and not self.https:  # the proxy forwards by the whole URL
            path = f"http://{parts.netloc.rpartition('@')[2]}{path}"
        self.path = path  # a request's target; a query of its own is appended with "&"
        # For log lines: a failure through a proxy may be the proxy's, not Statsig's.
        self.route = ""
        if self.proxy is not None:
            self.route = f" through the proxy {self.proxy.hostname}:{self.proxy.port or 80}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection (opened on its first request)."""
        host, port = self.host, self.port
        if self.proxy is not None:
            host, port = self.proxy.hostname or "", self.proxy.port or 80
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl_context())
            if self.proxy is not None:
                conn.set_tunnel(self.host, self.port, headers=self._tunnel_headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn


def environment_proxy(scheme: str, host: str, port: int) -> SplitResult | None:
    """The proxy for ``scheme://host:port`` that the environment names; None to
    connect directly. Raises ValueError, naming the variable only (its value may
    hold a password), for a proxy flagware cannot use."""
    proxies = urllib.request.getproxies_environment()
    name = scheme if proxies.get(scheme) else "all"
    proxy = proxies.get(name)
    if not proxy or bypassed(host, port, proxies.get("no", "")):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # "host:3128" is common
    variable = f"{name}_proxy"  # the one set: lowercase wins, as in urllib and requests
    if variable not in os.environ:
        variable = variable.upper()
    if parts.scheme != "http":
        # TLS to the proxy, then TLS to Statsig inside it: http.client cannot.
        raise ValueError(f"flagware connects through http:// proxies only; {variable} is not one")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        parts = parts._replace(netloc="")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        # Most often a password with "/", "?" or "#" not percent-encoded: cut there,
        # the rest would be sent as the proxy's host and port.
        raise ValueError(
            f"{variable} is not a proxy URL (http://user:password@host:port; encode"
            " reserved characters in the password as %XX)"
        )
    return parts


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` covers host:port, as requests reads it."""
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if no_proxy.strip() == "*":  # alone, as curl and urllib read it
        return True
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if "/" in entry:  # a CIDR range
            try:
                if address is not None and address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if entry.startswith("["):  # [v6]:port
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:  # host:port
            name, _, entry_port = entry.partition(":")
        else:
            name, entry_port = entry, ""
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if host == name or (address is None and host.endswith(f".{name}")):
            return True
    return False


_ssl: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """One default context a process: building one reads the CA bundle (milliseconds)."""
    global _ssl
    if _ssl is None:
        _ssl = ssl.create_default_context()
    return _ssl
