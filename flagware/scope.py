"""An ASGI scope seen as the WSGI environ flagware's request core reads.

The identity, targeting and visitor rules read ``REMOTE_ADDR``,
``HTTP_COOKIE``, ``PATH_INFO``... so the ASGI middleware hands them the same
keys, built from the scope once per request that reads a flag.
"""

from __future__ import annotations

import io
from collections.abc import MutableMapping
from typing import Any

from flagware import proxies

Scope = MutableMapping[str, Any]

# Header names as the environ keys them (b"user-agent" -> "HTTP_USER_AGENT"),
# learnt as they come: a site's requests carry a few dozen names, so each is
# decoded and reformatted once, not on every request. Bounded, so a client
# inventing names cannot grow it; past the bound, names are reformatted each time.
_HEADER_KEYS: dict[bytes, str] = {}
_MAX_HEADER_KEYS = 512


def _header_key(raw_name: bytes) -> str:
    name = raw_name.decode("latin-1").upper().replace("-", "_")
    key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name
    if len(_HEADER_KEYS) < _MAX_HEADER_KEYS:
        _HEADER_KEYS[raw_name] = key
    return key


class ScopeEnviron(dict[str, Any]):
    """The WSGI keys the core reads (``REMOTE_ADDR``, ``HTTP_COOKIE``...) from a scope.

    A plain dict once made, so the dozen reads a new visitor's flags make are
    C calls, not a Python method each. Made on the first flag read (see
    ``_ScopeFlags._environ``): a request that reads no flag never pays for
    walking its headers. ``environ["asgi.scope"]`` and ``.scope`` are the scope.
    """

    __slots__ = ("scope",)

    def __init__(self, scope: Scope, hops: int = 0) -> None:
        self.scope = scope
        client = scope.get("client")
        peer = client[0] if client else ""
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        # Starlette's get_route_path: the root only at a segment boundary
        # ("/apiary" under "/api" is not "ary"); uvicorn keeps it in path.
        if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
            path = path[len(root) :]
        server = scope.get("server") or ("", 80)
        super().__init__(
            {
                "REQUEST_METHOD": scope.get("method", "GET"),
                "SCRIPT_NAME": root,
                "PATH_INFO": path,
                "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
                "SERVER_NAME": str(server[0]),
                "SERVER_PORT": str(server[1]),
                "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
                "wsgi.url_scheme": scope.get("scheme", "http"),
                "asgi.scope": scope,
                "flagware.peer": peer,
            }
        )
        keys = _HEADER_KEYS
        for raw_name, raw_value in scope.get("headers", ()):
            key = keys.get(raw_name) or _header_key(raw_name)
            value = raw_value.decode("latin-1")
            if key in self:  # repeated headers are joined in order, never overwritten
                value = self[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            self[key] = value
        trusted = proxies.forwarded_for(self.get("HTTP_X_FORWARDED_FOR"), hops)
        self["REMOTE_ADDR"] = trusted or peer

    def wsgi(self, body: bytes = b"") -> dict[str, Any]:
        """A full WSGI environ (for the diagnostics app), with the peer's own address."""
        environ = dict(self)
        environ["REMOTE_ADDR"] = environ.pop("flagware.peer")
        environ.update(
            {
                "wsgi.version": (1, 0),
                "wsgi.input": io.BytesIO(body),
                "wsgi.errors": io.StringIO(),
                "wsgi.multithread": True,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
                "CONTENT_LENGTH": str(len(body)),
            }
        )
        return environ
