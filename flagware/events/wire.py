"""flagware's HTTP: Statsig's ``log_event`` body, headers' constants, one keep-alive
connection per sender thread, and the way to a URL (directly, or through the proxy
the environment names)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import importlib.metadata
import json
import platform
import ssl
import time
import urllib.request
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, unquote, urlsplit

# NO_PROXY as urllib reads it on every platform (typeshed does not list it).
_bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]

SDK_TYPE = "py-server"  # events are the SDK's own, so Statsig files them as such


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("statsig")
    except importlib.metadata.PackageNotFoundError:
        return "0.72.1"


SDK_VERSION = _sdk_version()


USER_AGENT = (
    f"flagware python/{platform.python_version()} statsig-sdk-type/{SDK_TYPE}"
    f" statsig-sdk-version/{SDK_VERSION} statsig-service/unknown"
)


def headers(secret: str, session_id: str, attempts: int, count: int) -> dict[str, str]:
    """What the SDK sends (statsig/http_worker.py _prepare_headers, batch_event_queue.py)."""
    return {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Accept-Encoding": "gzip",
        "User-Agent": USER_AGENT,
        "STATSIG-API-KEY": secret,
        "STATSIG-CLIENT-TIME": str(round(time.time() * 1000)),
        "STATSIG-SERVER-SESSION-ID": session_id,
        "STATSIG-SDK-TYPE": SDK_TYPE,
        "STATSIG-SDK-VERSION": SDK_VERSION,
        "STATSIG-RETRY": str(attempts),
        "STATSIG-EVENT-COUNT": str(count),
        "x-request-service": "unknown",
    }


def body(payloads: list[str], session_id: str) -> bytes:
    """The gzip ``log_event`` body. Stored payloads are already wire JSON: join, no re-encode."""
    metadata = json.dumps(
        {
            "sdkVersion": SDK_VERSION,
            "sdkType": SDK_TYPE,
            "languageVersion": platform.python_version(),
            "sessionID": session_id,
        }
    )
    text = '{"events":[' + ",".join(payloads) + '],"statsigMetadata":' + metadata + "}"
    # Level 6 compresses within a few percent of 9 at a fraction of the CPU.
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def environment_proxy(scheme: str, host: str) -> SplitResult | None:
    """The proxy for ``scheme://host`` that the environment names (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, in either case), read as requests
    (the statsig SDK's client) and curl read it; None to connect directly."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or _bypass(host, proxies):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # "host:3128" is common
    if parts.scheme != "http" or not parts.hostname:
        # TLS to the proxy, then TLS to Statsig inside it: http.client cannot.
        raise ValueError(
            f"flagware connects through http:// proxies only; {scheme}_proxy is"
            f" {parts.scheme}://{parts.hostname or ''}"
        )
    return parts


class Endpoint:
    """One URL and the way to it, fixed when made: directly, or through the
    environment's proxy (a CONNECT tunnel for https, the absolute form for http)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.proxy = environment_proxy(parts.scheme, self.host)
        auth: dict[str, str] = {}
        if self.proxy is not None and self.proxy.username is not None:
            login = f"{unquote(self.proxy.username)}:{unquote(self.proxy.password or '')}"
            auth["Proxy-Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        tunnel = self.proxy is not None and self.https
        # What each request carries for the proxy: a tunnel's credentials go with CONNECT.
        self.headers = {} if tunnel else auth
        self._tunnel_headers = auth if tunnel else {}
        path = parts.path or "/"
        if self.proxy is not None and not self.https:  # the proxy forwards by the whole URL
            path = f"http://{parts.netloc.rpartition('@')[2]}{path}"
        self.path = path

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection (opened on its first request)."""
        host, port = self.host, self.port
        if self.proxy is not None:
            host, port = self.proxy.hostname or "", self.proxy.port or 80
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_ssl_context())
            if self.proxy is not None:
                conn.set_tunnel(self.host, self.port, headers=self._tunnel_headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn


class Sender:
    """One keep-alive HTTP connection, owned by one worker thread."""

    def __init__(self, endpoint: Endpoint, *, timeout: float):
        self._endpoint, self._timeout = endpoint, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = self._endpoint.connect(self._timeout)
        return self._conn

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float | None]:
        """Status, body and Retry-After (seconds) of one POST; raises on transport errors."""
        endpoint = self._endpoint
        conn = self._connection()
        try:
            conn.request("POST", endpoint.path, body=body, headers=headers | endpoint.headers)
            response = conn.getresponse()
            reply = response.read()
        except BaseException:
            self.close()  # the connection's state is unknown: never reuse it
            raise
        if response.getheader("Content-Encoding") == "gzip":
            with contextlib.suppress(OSError, EOFError):  # it is only for the log line
                reply = gzip.decompress(reply)
        if response.will_close:
            self.close()
        return response.status, reply, retry_after(response.getheader("Retry-After"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_ssl: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _ssl
    if _ssl is None:
        _ssl = ssl.create_default_context()
    return _ssl


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
