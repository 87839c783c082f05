"""System checks (``manage.py check --tag flagware``): configuration mistakes
reported with a fix before the first request, not as a failing page.

- flagware.E001: the Statsig engine without a hash key
- flagware.E002: the local spec file is missing
- flagware.E003: the local spec file is invalid
- flagware.E005: settings.FLAGWARE is not a dict of Flagware(...) arguments, or a value
  Flagware(...) would refuse
- flagware.E006: a user resolver or the exposure filter cannot be imported or is not callable
- flagware.W001: flagware.django is installed but its middleware is not
- flagware.W002: settings.FLAGWARE is not set, and a setting named like it is
- flagware.W005: FlagwareMiddleware is placed before AuthenticationMiddleware (it was
  E004: views get the user whatever the order; a middleware between them does not)
- flagware.W006: a view decorated with a gate or an experiment the local spec does not define
- flagware.W007: a template reading a gate or an experiment the local spec does not define
  (template_checks.py)
- flagware.W003 (``check --deploy``): ``diagnostics="debug"`` opens the page to anyone
- flagware.W004 (``check --deploy``): ``allow_random_override`` lets anyone pick a group
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from flagware.django import conf
from flagware.events.store import open_store, redact
from flagware.names import decorator_reads, undefined_flags, view_flags
from flagware.settings import (
    CHECKED_DEFAULTS,
    DEFAULT_SPEC,
    DEFAULT_STATSIG_API,
    ConfigurationError,
    check_secret,
    engine_choice,
    option_problems,
    shown_url,
    statsig_api_given,
    statsig_api_problem,
)
from flagware.settings import env as _env
from flagware.spec import Spec, SpecError, load_spec

OUR_MIDDLEWARE = {
    "flagware.django.FlagwareMiddleware",
    "flagware.django.middleware.FlagwareMiddleware",
}
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


@register("flagware")
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    try:
        options = conf.options()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="flagware.E005")]
    errors: list[CheckMessage] = _misspelled_setting()
    unknown = conf.unknown_keys(options)
    if unknown:
        errors.append(Error(unknown, hint=conf.KEYS_HINT, id="flagware.E005"))
    # The values Flagware(...) checks itself, every one of them, so that a bad
    # one fails here, not at a worker's start or (logged only) at each request.
    values = {key: options[key] for key in CHECKED_DEFAULTS if key in options}
    values["diagnostics_token"] = options.get("diagnostics_token") or _env(
        "FLAGWARE_DIAGNOSTICS_TOKEN"
    )
    problems = option_problems(**values)
    try:
        engine_choice(options.get("engine"))
    except ConfigurationError as exc:
        problems.append(str(exc))
    store = options.get("event_store")
    if store:
        problems += _store_problems(store)
    else:  # from the environment: said so, not blamed on the settings (a trial)
        env_problems = _store_problems(_env("FLAGWARE_EVENT_STORE"))
        errors += [Error(f"$FLAGWARE_EVENT_STORE: {p}", id="flagware.E005") for p in env_problems]
    secret = options.get("statsig_secret")
    if isinstance(secret, str) and options.get("spec") is None:
        try:
            check_secret(secret.strip())  # E001 says it when the hash key is missing
        except ConfigurationError as exc:
            problems.append(str(exc))
    errors += [Error(f"settings.{conf.SETTING}: {p}", id="flagware.E005") for p in problems]
    for key in ("user_id", "user_custom", "user_custom_ids", "exposure_filter"):
        try:
            conf.load_resolver(options.get(key), key)
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="flagware.E006"))

    spec, secret = options.get("spec"), options.get("statsig_secret")
    if spec is not None and secret is not None:
        errors.append(
            Error(
                f"settings.{conf.SETTING} sets both spec and statsig_secret",
                hint="spec selects the local engine, statsig_secret selects Statsig: keep one",
                id="flagware.E005",
            )
        )
        return errors
    path = _local_spec(options)
    if path is None:
        errors += _check_hash_key(options) + _check_api(options.get("statsig_api"))
    else:
        errors += _check_spec(path)
    return errors


def _local_spec(options: dict[str, Any]) -> Path | None:
    """The local spec's path, as Flagware(...) decides; None on Statsig."""
    spec, secret = options.get("spec"), options.get("statsig_secret")
    if spec is None and secret is None:
        secret = _env("STATSIG_SERVER_SECRET")
    if spec is None and secret is not None:
        return None
    return Path(spec or _env("FLAGWARE_SPEC") or DEFAULT_SPEC)


def local_spec() -> Spec | None:
    """The local spec the app serves, loaded (raises what E002-E005 say); None on Statsig."""
    path = _local_spec(conf.options())
    return None if path is None else load_spec(path)


@register("flagware", checks.Tags.urls)
def check_views(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Views in the URLconf decorated with a gate or an experiment the local
    spec does not define: each reads False (a gate's view answers 404 to
    everyone) or the defaults, said only once in the log at the first request
    (a trial's misspelt ``@feature_gate``). On Statsig the console's names are
    not known here."""
    from django.urls import get_resolver

    try:
        spec = local_spec()
        patterns = get_resolver().url_patterns  # imports the views, as Django's URL checks do
    except Exception:  # E002, E003, E005 or Django's own URL checks say it
        return []
    if spec is None:
        return []
    reads = decorator_reads(sorted(set(_flags_read(patterns))))
    return [checks.Warning(m, hint=h, id="flagware.W006") for m, h in undefined_flags(spec, reads)]


def _flags_read(patterns: Iterable[Any]) -> Iterator[tuple[str, tuple[str, str]]]:
    """(view, flag) for each flag a routed view's decorators read
    (``method_decorator`` copies the attribute to the method it makes)."""
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):  # an include()
            yield from _flags_read(pattern.url_patterns)
            continue
        callback = pattern.callback
        where = f"{callback.__module__}.{getattr(callback, '__qualname__', callback)}"
        yield from view_flags(callback, where)


def _store_problems(location: Any) -> list[str]:
    """What ``Flagware(...)`` refuses in ``event_store`` at a worker's start,
    found without connecting: a scheme no store reads (``mysql://`` passed the
    check and stopped every worker: a new user's trial), a malformed
    PostgreSQL URL, or psycopg missing for one."""
    if location is None:
        return []
    try:
        open_store(os.fspath(location))
    except (ValueError, ImportError, TypeError) as exc:
        return [f"event_store {redact(str(location))}: {exc}"]
    return []


def _misspelled_setting() -> list[CheckMessage]:
    """A warning when FLAGWARE is unset and a setting a letter off it is set
    (``FLAGWAR``): its options were silently not read."""
    if hasattr(settings, conf.SETTING):
        return []
    names = [name for name in dir(settings) if name.isupper()]
    close = difflib.get_close_matches(conf.SETTING, names, n=1, cutoff=0.8)
    if not close:
        return []
    return [
        checks.Warning(
            f"settings.{close[0]} is not read by flagware: its settings are"
            f" settings.{conf.SETTING}",
            hint=f"rename {close[0]} to {conf.SETTING}",
            id="flagware.W002",
        )
    ]


def _check_hash_key(options: dict[str, Any]) -> list[CheckMessage]:
    if options.get("hash_key") is not None or _env("FLAGWARE_HASH_KEY"):
        return []
    return [
        Error(
            "the Statsig engine needs a hash key: without it userIDs differ between "
            "processes and the hashed IPs are not secret",
            hint=f"set FLAGWARE_HASH_KEY or settings.{conf.SETTING}['hash_key'] to a long "
            "random secret (python -c 'import secrets; print(secrets.token_hex(32))'); "
            "moving from the local engine, its key keeps every visitor's userID: the file "
            "hash_key beside its event store (.flagware/hash_key by default)",
            id="flagware.E001",
        )
    ]


def _check_api(given: Any) -> list[CheckMessage]:
    """E005 for a Statsig API base URL Flagware(...) would refuse."""
    if given is not None and not isinstance(given, str):
        problem: str | None = f"statsig_api must be a string, not {given!r}"
    else:
        name, api = statsig_api_given(given)
        problem = statsig_api_problem(api)
        if problem is not None:
            problem = f"{name} is not an http(s) base URL ({shown_url(api)!r}): {problem}"
    if problem is None:
        return []
    return [
        Error(
            f"settings.{conf.SETTING}: {problem}",
            hint=f"Statsig's is {DEFAULT_STATSIG_API}; a relay's ends in /v1 too",
            id="flagware.E005",
        )
    ]


def _check_spec(path: Path) -> list[CheckMessage]:
    if not path.is_file():
        return [
            Error(
                f"flagware spec file not found: {path.absolute()}",
                hint=f"create it, or set settings.{conf.SETTING}['spec'] to its absolute "
                "path (e.g. BASE_DIR / 'flagware.toml'); a relative path is read from the "
                "working directory",
                id="flagware.E002",
            )
        ]
    try:
        load_spec(path)
    except SpecError as exc:
        return [Error(f"invalid flagware spec: {exc}", id="flagware.E003")]
    return []


@register("flagware")
def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    middleware = [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    ours = [i for i, path in enumerate(middleware) if path in OUR_MIDDLEWARE]
    if not ours:
        return [
            checks.Warning(
                "flagware.django is installed but its middleware is not in MIDDLEWARE, so "
                "views have no request.flags and current_flags() raises",
                hint=f'add "flagware.django.FlagwareMiddleware" after "{AUTH_MIDDLEWARE}"',
                id="flagware.W001",
            )
        ]
    if AUTH_MIDDLEWARE in middleware and ours[0] < middleware.index(AUTH_MIDDLEWARE):
        # A warning: flags are read lazily, in the view, when every middleware's
        # request phase has run, so views get the user whatever the order (as
        # an error this stopped `migrate` for a working app, a re-check found).
        return [
            checks.Warning(
                "FlagwareMiddleware comes before AuthenticationMiddleware, so a flag read by"
                " a middleware between them is read without the logged-in user (the request"
                " is then identified by its IP or stableID); views are not affected",
                hint=f'move "{middleware[ours[0]]}" after "{AUTH_MIDDLEWARE}"',
                id="flagware.W005",
            )
        ]
    return []


@register("flagware", checks.Tags.security, deploy=True)
def check_deploy(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Development settings ``check --deploy`` should catch, as Django's own
    catch ``DEBUG``: each is fine on a laptop and a leak in production."""
    try:
        options = conf.options()
    except ImproperlyConfigured:  # check_settings says so (E005)
        return []
    found: list[CheckMessage] = []
    if options.get("diagnostics") == "debug":
        found.append(
            checks.Warning(
                f'settings.{conf.SETTING}["diagnostics"] is "debug": the diagnostics page'
                " answers anyone, with every visitor's latest events",
                hint="use diagnostics=True (loopback only) with a diagnostics_token in production",
                id="flagware.W003",
            )
        )
    if options.get("allow_random_override"):
        found.append(
            checks.Warning(
                f'settings.{conf.SETTING}["allow_random_override"] is set: any visitor can'
                " pick their group with ?random=1, which skews the results",
                hint="leave it unset in production",
                id="flagware.W004",
            )
        )
    return found
