"""What a client's options may be: their defaults, the environment variables
behind them, the checks they pass at start-up, and the local hash key."""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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


def check_options(**options: Any) -> None:
    """Raise one ConfigurationError naming every bad value among ``options``
    (those of :data:`CHECKED_DEFAULTS` given), so a fix is not found one
    restart at a time. ``Flagware(...)`` and Django's ``manage.py check`` call it."""
    problems = option_problems(**options)
    if problems:
        raise ConfigurationError("; ".join(problems))


#: The options whose values are checked, with Flagware's defaults.
CHECKED_DEFAULTS: dict[str, Any] = {
    "exposure_dedupe": 60.0,
    "proxy_hops": 0,
    "diagnostics": False,
    "diagnostics_path": "/_flagware/",
    "diagnostics_token": None,
    "cookie_name": "flagware_id",
    "cookie_max_age": 365 * 24 * 3600,
    "tier": None,
    "init_timeout": 3.0,
    "shutdown_timeout": 5.0,
    "flush_interval": 0.2,
    "max_queue": 50_000,
}

# RFC 6265's cookie-name token: what a browser keeps and sends back unchanged.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def option_problems(**options: Any) -> list[str]:
    """Every bad value among ``options``, worded for the log and ``manage.py check``.

    Types too: a value from settings or the environment may be a string,
    which failed later with a bare TypeError, or worse was taken (a negative
    max_queue dropped every event; a cookie name with a space broke only the
    cookie, logged at each request).
    """
    o = {**CHECKED_DEFAULTS, **options}
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    def seconds(name: str, *, zero: bool) -> None:
        value = o[name]
        ok = _number(value) and (value >= 0 if zero else value > 0)  # False for NaN too
        need(ok, f"{name} must be {'0 or more' if zero else 'more than 0'} seconds, not {value!r}")

    def whole(name: str, least: int) -> None:
        value = o[name]
        ok = _number(value) and math.isfinite(value) and value == int(value) and value >= least
        need(ok, f"{name} must be a whole number, {least} or more, not {value!r}")

    value = o["exposure_dedupe"]
    need(
        _number(value) and value >= 0,
        f"exposure_dedupe must be 0 (off) or more seconds, not {value!r}",
    )
    whole("proxy_hops", 0)
    seconds("init_timeout", zero=True)  # 0: the first request never waits for specs
    seconds("shutdown_timeout", zero=True)
    seconds("flush_interval", zero=False)
    whole("max_queue", 1)
    whole("cookie_max_age", 1)
    name = o["cookie_name"]
    need(
        isinstance(name, str) and _COOKIE_NAME.fullmatch(name) is not None,
        f"cookie_name must be a cookie name (letters, digits, - _ . and no spaces), not {name!r}",
    )
    tier = o["tier"]
    need(tier is None or isinstance(tier, str), f"tier must be a string, not {tier!r}")
    path, token, diagnostics = o["diagnostics_path"], o["diagnostics_token"], o["diagnostics"]
    if not isinstance(path, str):
        problems.append(f"diagnostics_path must be a string, not {path!r}")
    elif not path.strip("/"):
        problems.append("diagnostics_path must not be '/': it would hide the app")
    if token is not None and not isinstance(token, str):
        problems.append("diagnostics_token must be a string")
    elif token is not None and len(token) < 16:
        problems.append(
            "diagnostics_token must be at least 16 characters (it comes from"
            " FLAGWARE_DIAGNOSTICS_TOKEN when not given; e.g. `python -c 'import "
            "secrets; print(secrets.token_urlsafe(32))'`)"
        )
    need(diagnostics in (False, True, "debug"), 'diagnostics must be False, True or "debug"')
    return problems


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


def flag_source(
    spec: str | os.PathLike[str] | None, secret: str | None
) -> tuple[str | os.PathLike[str] | None, str | None]:
    """Where the flags come from: ``(spec, None)`` for the local engine or
    ``(None, secret)`` for Statsig. Explicit arguments win over the
    environment; with neither, ``STATSIG_SERVER_SECRET``, then ``FLAGWARE_SPEC``
    or the default spec."""
    if spec is not None and secret is not None:
        raise ConfigurationError("pass either spec= (local engine) or statsig_secret=, not both")
    if spec is None and secret is None:
        secret = env("STATSIG_SERVER_SECRET")
    if secret is None:
        return spec if spec is not None else env("FLAGWARE_SPEC") or DEFAULT_SPEC, None
    # Read from a file (a Kubernetes or Docker secret) it often ends in a
    # newline, which http.client refuses in a header, echoing the secret.
    return None, secret.strip()


def check_statsig(secret: str, hash_key: str | bytes | None) -> str | bytes:
    """The hash key the Statsig engine needs, once the secret looks like one."""
    check_secret(secret)
    if hash_key is None:
        raise ConfigurationError(
            "the Statsig engine needs a hash key, so the same visitor gets the same "
            "userID in every process and nothing reversible is sent: set "
            "FLAGWARE_HASH_KEY (e.g. `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`) or pass hash_key=; moving from the local "
            "engine, its key keeps every visitor's userID: the file hash_key beside its "
            'event store (FLAGWARE_HASH_KEY="$(cat .flagware/hash_key)")'
        )
    return hash_key


def check_secret(secret: str) -> None:
    """A Statsig server secret, or ConfigurationError (never echoing it)."""
    if not secret.startswith("secret-"):
        raise ConfigurationError(
            "statsig_secret must be a Statsig server secret key (it starts with 'secret-')"
        )
    if not secret.isprintable() or any(c.isspace() for c in secret):
        raise ConfigurationError(  # never echo the secret: it ends in logs
            "statsig_secret has spaces or control characters inside: copy the key again"
        )


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:  # an HMAC under "" is as weak as a plain hash of the IP
        raise ConfigurationError(
            f"the hash key file {path} is empty; delete it to make a new one (visitor IDs"
            " change) or write the key you used before into it"
        )
    return key


def local_hash_key(location: str) -> str:
    """The local engine's key: made once, kept beside the event store (mode 0600).
    A shared store keeps it in its ``meta`` table (flagware.shared_key).

    A key that cannot be read or made is a ConfigurationError naming the file
    and the ways out: no key can be invented that every worker would share,
    and a raw PermissionError on a temporary file's name told a new user's
    trial nothing (its first deploy's folder was not the app's to write)."""
    path = Path(location).parent / "hash_key"
    try:
        return _made_key(path, store_exists=os.path.exists(location))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read or make the hash key for visitor IDs at {path.absolute()}:"
            f" {exc.strerror or exc}. Let the app write {path.parent.absolute()}, or set"
            " FLAGWARE_HASH_KEY (or hash_key=) to a key of your own"
            ' (`python -c "import secrets; print(secrets.token_hex(32))"`)'
        ) from exc


def _made_key(path: Path, *, store_exists: bool) -> str:
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
    # The absolute path: a relative one read the same from any working
    # directory, and a server started from another folder made a second store
    # and key there, giving every visitor a new ID (a new user's trial).
    log.warning(
        "flagware: created a hash key for visitor IDs at %s%s; keep it (IDs change"
        " without it) or set FLAGWARE_HASH_KEY",
        path.absolute(),
        # Not "a new store" beside one that holds events (a re-check trial: a
        # one-off script run without the app's FLAGWARE_HASH_KEY).
        " (beside an existing store: its events so far were hashed with another key)"
        if store_exists
        else ("" if path.is_absolute() else " (a new store, in the working directory)"),
    )
    return key


_warned_apis: set[str] = set()  # base URLs without /v1 this process has warned of


def shown_url(url: str) -> str:
    """``url`` for messages: whatever precedes an ``@`` after the scheme (a login,
    or part of a password with an unencoded ``/``) becomes ``***``."""
    scheme, sep, rest = url.partition("//")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def statsig_api_problem(api: str) -> str | None:
    """What makes ``api`` no base URL for Statsig's API, or None.

    Unchecked, ``127.0.0.1:18080`` (no scheme) or ``http//x`` failed with a bare
    ValueError from deep inside delivery, or, where nothing is delivered (tests),
    at the SDK's first download, logged and served as defaults.
    """
    if not api.isprintable() or any(c.isspace() for c in api):
        return "it has spaces or control characters"
    try:
        parts = urlsplit(api)
    except ValueError as exc:  # "Invalid IPv6 URL": nothing of the value in it
        return str(exc)
    try:
        parts.port  # noqa: B018 (raises for a port that is no number)
    except ValueError:  # its message quotes the "port": maybe half a password
        return "its port is not a number (encode / and @ in a login as %2F and %40)"
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it has no host"
    if parts.query or parts.fragment:  # every SDK appends paths to it
        return "it must be a base URL, without ? or #"
    return None


def statsig_api_given(given: str | None) -> tuple[str, str]:
    """The option that names the Statsig API base (``statsig_api``, else the
    ``STATSIG_API`` variable), and the base it gives, else Statsig's own; unchecked."""
    name = "statsig_api" if given else "STATSIG_API"
    return name, (given or env("STATSIG_API") or DEFAULT_STATSIG_API).strip().rstrip("/")


def statsig_api_url(given: str | None) -> str:
    """The Statsig API base URL: ``given`` (``statsig_api=``), else ``STATSIG_API``,
    else Statsig's own; a ConfigurationError naming the option and the value
    (without any login in it) when it is no http(s) base URL.

    A path that does not end in ``/v1`` is warned of, once a process, not
    refused: a proxy may map paths of its own to Statsig's.
    """
    name, api = statsig_api_given(given)
    problem = statsig_api_problem(api)
    if problem is not None:
        raise ConfigurationError(
            f"{name} must be Statsig's API base URL, such as {DEFAULT_STATSIG_API}, not"
            f" {shown_url(api)!r}: {problem}"
        )
    # Both engines and delivery append Statsig's v1 paths to the base
    # (download_config_specs, log_event; Core's v2 specs path replaces the /v1),
    # so a base without it 404s on every request to Statsig or a relay.
    if not urlsplit(api).path.endswith("/v1") and api not in _warned_apis:
        _warned_apis.add(api)
        shown = shown_url(api)
        log.warning(
            "flagware: %s %s does not end in /v1: specs are asked of %s/download_config_specs"
            " and events sent to %s/log_event, which Statsig's API (%s) and its relays serve"
            " under /v1; unless a proxy there rewrites paths, no specs load (defaults are"
            " served) and every event batch is refused and parked",
            name,
            shown,
            shown,
            shown,
            DEFAULT_STATSIG_API,
        )
    return api
