"""The HTTP side of delivery: Statsig's ``log_event`` body, headers' constants, and
one keep-alive connection per sender thread (to an ``Endpoint``)."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import importlib.metadata
import json
import platform
import time
from email.utils import parsedate_to_datetime

from flagware.events.endpoint import Endpoint, tunnel_login_refused

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
        except OSError as exc:
            self.close()  # the connection's state is unknown: never reuse it
            if not tunnel_login_refused(exc):
                raise
            return 407, b"", None  # the https proxy's answer to CONNECT
        except BaseException:
            self.close()
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
