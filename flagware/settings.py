"""What a client's options may be: their defaults, the environment variables
behind them, the checks they pass at start-up, and the local hash key."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal

from flagware.events.store import Store, redact

log = logging.getLogger("flagware")

DEFAULT_SPEC = "flagware.toml"
DEFAULT_EVENT_STORE = ".flagware/events.db"
DEFAULT_STATSIG_API = "https://statsigapi.net/v1"
ENGINES = ("legacy", "core")
EngineChoice = Literal["legacy", "core"]


class ConfigurationError(ValueError):
    """flagware was configured in a way that cannot work; raised at start-up."""


def env(name: str) -> str | None:
    """An environment variable's value; None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def check_options(
    *,
    exposure_dedupe: float,
    proxy_hops: int,
    diagnostics: Any,
    diagnostics_path: str,
    diagnostics_token: str | None,
) -> None:
    # Types too: a value from settings or the environment may be a string,
    # which failed later with a bare TypeError.
    if not _number(exposure_dedupe) or not exposure_dedupe >= 0:  # also NaN
        raise ConfigurationError(
            f"exposure_dedupe must be 0 (off) or more seconds, not {exposure_dedupe!r}"
        )
    if not _number(proxy_hops) or proxy_hops != int(proxy_hops) or proxy_hops < 0:
        raise ConfigurationError(
            f"proxy_hops must be a whole number, 0 or more, not {proxy_hops!r}"
        )
    if not isinstance(diagnostics_path, str):
        raise ConfigurationError(f"diagnostics_path must be a string, not {diagnostics_path!r}")
    if diagnostics_token is not None and not isinstance(diagnostics_token, str):
        raise ConfigurationError("diagnostics_token must be a string")
    if diagnostics not in (False, True, "debug"):
        raise ConfigurationError('diagnostics must be False, True or "debug"')
    if not diagnostics_path.strip("/"):
        raise ConfigurationError("diagnostics_path must not be '/': it would hide the app")
    if diagnostics_token is not None and len(diagnostics_token) < 16:
        raise ConfigurationError(
            "diagnostics_token must be at least 16 characters (e.g. `python -c 'import "
            "secrets; print(secrets.token_urlsafe(32))'`)"
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def engine_choice(engine: str | None) -> EngineChoice:
    """The SDK that evaluates: the argument, else ``FLAGWARE_ENGINE``, else legacy."""
    engine = engine or env("FLAGWARE_ENGINE") or "legacy"
    if engine not in ENGINES:
        raise ConfigurationError(f"engine must be 'legacy' or 'core', not {engine!r}")
    if engine == "core":
        from flagware.engine.core import require_core

        try:
            require_core()
        except ImportError as exc:
            raise ConfigurationError(str(exc)) from None
    return "core" if engine == "core" else "legacy"


def check_statsig(secret: str, hash_key: str | bytes | None) -> str | bytes:
    """The hash key the Statsig engine needs, once the secret looks like one."""
    if not secret.startswith("secret-"):
        raise ConfigurationError(
            "statsig_secret must be a Statsig server secret key (it starts with 'secret-')"
        )
    if not secret.isprintable() or any(c.isspace() for c in secret):
        raise ConfigurationError(  # never echo the secret: it ends in logs
            "statsig_secret has spaces or control characters inside: copy the key again"
        )
    if hash_key is None:
        raise ConfigurationError(
            "the Statsig engine needs a hash key, so the same visitor gets the same "
            "userID in every process and nothing reversible is sent: set "
            "FLAGWARE_HASH_KEY (e.g. `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`) or pass hash_key="
        )
    return hash_key


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:  # an HMAC under "" is as weak as a plain hash of the IP
        raise ConfigurationError(
            f"the hash key file {path} is empty; delete it to make a new one (visitor IDs"
            " change) or write the key you used before into it"
        )
    return key


def local_hash_key(store: Store, location: str, *, shared: bool) -> str:
    """The local engine's key: made once, kept beside the event store (mode 0600),
    or in a shared store's ``meta``, so every host gives a visitor the same ID."""
    if shared:
        try:
            return store.init_meta("hash_key", secrets.token_hex(32))
        except Exception as exc:
            raise ConfigurationError(
                f"cannot read the shared hash key from {redact(location)} ({exc});"
                " set FLAGWARE_HASH_KEY on every host, or make the store reachable"
            ) from exc
    path = Path(location).parent / "hash_key"
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # Written whole under another name, then linked into place: a link either
    # makes the complete file or fails because one exists. Created in place,
    # another worker starting at that moment read it still empty and used ""
    # as its key (7 of 200 trials with six processes), so one visitor had two IDs.
    fd, tmp = tempfile.mkstemp(prefix=".hash_key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.link(tmp, path)
    except FileExistsError:  # another process made it first: use theirs
        return _read_key(path)
    finally:
        os.unlink(tmp)
    log.warning(
        "flagware: created a hash key for visitor IDs at %s; keep it (IDs change without "
        "it) or set FLAGWARE_HASH_KEY",
        path,
    )
    return key
