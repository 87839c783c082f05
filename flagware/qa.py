"""The QA override: one browser forced into a chosen group or gate value, for a while.

A developer or QA person picks values on the diagnostics page (which only
they can open: a token or this machine); the page answers with a cookie that
carries the choice, its expiry and an HMAC under the client's ``hash_key``.
Only the server can mint one, so a visitor cannot choose their own group by
editing a cookie. Requests carrying a valid one get the forced values; their
exposures are still logged, with ``ruleID`` ``"override"`` (as Statsig's own
overrides), and results leave those out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.http import dump_cookie

from flagware import identity

if TYPE_CHECKING:
    from flagware.engine import Engine

__all__ = ["COOKIE", "QAOverride", "experiment_groups", "group_params", "read", "sign"]

COOKIE = "flagware_qa"
DEFAULT_SECONDS = 3600  # an hour of looking at a group; the page renews it
MAX_ENTRIES = 64
_CONTEXT = b"flagware qa override v1\x00"  # keeps these MACs apart from the IP hashes


@dataclass(frozen=True)
class QAOverride:
    gates: dict[str, bool] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # experiment -> group name
    expires: int = 0  # unix seconds

    def __bool__(self) -> bool:
        return bool(self.gates or self.groups)


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, _CONTEXT + payload.encode("ascii"), hashlib.sha256).hexdigest()[:32]


def sign(key: bytes, override: QAOverride) -> str:
    """The cookie value: base64url JSON, a dot, and its MAC."""
    data = {"g": override.gates, "e": override.groups, "x": override.expires}
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    payload = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return f"{payload}.{_mac(key, payload)}"


def read(key: bytes, environ: Mapping[str, Any], *, now: float | None = None) -> QAOverride | None:
    """The request's override, or None: absent, tampered, malformed or expired."""
    raw = identity.read_cookie(environ, COOKIE)  # type: ignore[arg-type]
    if not raw or "." not in raw:
        return None
    payload, _, mac = raw.rpartition(".")
    try:
        if not hmac.compare_digest(mac.encode("ascii"), _mac(key, payload).encode("ascii")):
            return None
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (UnicodeError, ValueError, binascii.Error):
        return None
    if not isinstance(data, dict):
        return None
    gates, groups, expires = data.get("g"), data.get("e"), data.get("x")
    if not isinstance(gates, dict) or not isinstance(groups, dict) or not isinstance(expires, int):
        return None
    if expires < (time.time() if now is None else now):
        return None
    return QAOverride(
        gates={str(k): bool(v) for k, v in gates.items() if isinstance(v, bool)},
        groups={str(k): v for k, v in groups.items() if isinstance(v, str)},
        expires=expires,
    )


def cookie_header(value: str, *, secure: bool, max_age: int) -> str:
    return dump_cookie(
        COOKIE, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="Lax"
    )


def clear_header(*, secure: bool) -> str:
    return dump_cookie(
        COOKIE, "", max_age=0, expires=0, path="/", secure=secure, httponly=True, samesite="Lax"
    )


def experiment_groups(engine: Engine) -> dict[str, dict[str, dict[str, Any]]]:
    """Each experiment's groups and their params: the local spec's, or Statsig's specs."""
    return engine.experiment_groups()


def group_params(engine: Engine, experiment: str, group: str) -> dict[str, Any] | None:
    """The params a group of ``experiment`` gets, or None if it has no such group."""
    params = experiment_groups(engine).get(experiment, {}).get(group)
    return None if params is None else dict(params)
