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
from typing import NamedTuple

from flagware import __version__ as FLAGWARE_VERSION
from flagware.events.endpoint import Endpoint, tunnel_login_refused


class Sdk(NamedTuple):
    """The SDK that evaluated the events, as their batches name it (``statsigMetadata``,
    headers): Statsig files exposures by the SDK that made them."""

    type: str
    version: str

    @property
    def user_agent(self) -> str:
        return (
            f"flagware/{FLAGWARE_VERSION} python/{platform.python_version()}"
            f" statsig-sdk-type/{self.type} statsig-sdk-version/{self.version}"
            " statsig-service/unknown"
        )


def _version(package: str, fallback: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return fallback


LEGACY = Sdk("py-server", _version("statsig", "0.72.1"))
# What Core's own log_event sends (measured, 0.24.2: "statsig-server-core-python"
# and the package's version); batches of the Core engine said "py-server" and
# the legacy SDK's version, whichever SDK had evaluated them.
CORE = Sdk("statsig-server-core-python", _version("statsig-python-core", "0.24.2"))
SDKS = {"legacy": LEGACY, "core": CORE}  # by Engine.sdk


def headers(
    secret: str, session_id: str, attempts: int, count: int, sdk: Sdk = LEGACY
) -> dict[str, str]:
    """What the SDK sends (statsig/http_worker.py _prepare_headers, batch_event_queue.py)."""
    return {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Accept-Encoding": "gzip",
        "User-Agent": sdk.user_agent,
        "STATSIG-API-KEY": secret,
        "STATSIG-CLIENT-TIME": str(round(time.time() * 1000)),
        "STATSIG-SERVER-SESSION-ID": session_id,
        "STATSIG-SDK-TYPE": sdk.type,
        "STATSIG-SDK-VERSION": sdk.version,
        "STATSIG-RETRY": str(attempts),
        "STATSIG-EVENT-COUNT": str(count),
        "x-request-service": "unknown",
    }


def body(payloads: list[str], session_id: str, sdk: Sdk = LEGACY) -> bytes:
    """The gzip ``log_event`` body. Stored payloads are already wire JSON: join, no re-encode."""
    metadata = json.dumps(
        {
            "sdkVersion": sdk.version,
            "sdkType": sdk.type,
            "languageVersion": platform.python_version(),
            "sessionID": session_id,
            # Not read by Statsig's SDKs; says which flagware sent them, for support.
            "flagwareVersion": FLAGWARE_VERSION,
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
