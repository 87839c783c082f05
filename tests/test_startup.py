"""The Statsig API base URL a client accepts (flagware/settings.py): a new
user's trial of Statsig mode found any STATSIG_API taken."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from flagware import ConfigurationError, Flagware
from flagware import settings as flagware_settings
from flagware.events.model import Event
from flagware.testing import isolate
from tests.statsig_stub import StatsigStub


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STATSIG_SERVER_SECRET", "STATSIG_API", "FLAGWARE_SPEC", "FLAGWARE_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(flagware_settings, "_warned_apis", set(), raising=False)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="flagware")
    return caplog


def said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flagware" and r.levelno == level]


def statsig(tmp_path: Path, **options: Any) -> Flagware:
    options = {"statsig_secret": "secret-test", "init_timeout": 1, **options}
    return Flagware(hash_key="k", event_store=tmp_path / "outbox.db", **options)


# -- STATSIG_API ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("127.0.0.1:18080", "it must start with http:// or https://"),
        ("http//127.0.0.1:18080/v1", "it must start with http:// or https://"),
        ("ftp://relay.internal/v1", "it must start with http:// or https://"),
        ("http:///v1", "it has no host"),
        (
            "http://relay.internal:80a/v1",
            "its port is not a number (encode / and @ in a login as %2F and %40)",
        ),
        ("http://relay internal/v1", "it has spaces or control characters"),
        ("https://relay.internal/v1#x", "it must be a base URL, without ? or #"),
    ],
)
@pytest.mark.parametrize("source", ["env", "argument"])
def test_a_statsig_api_that_is_no_http_base_url_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, problem: str, source: str
) -> None:
    """It raised a bare ValueError from inside delivery, or nothing at all under
    isolation (no delivery), where the SDK then served defaults."""
    if source == "env":
        monkeypatch.setenv("STATSIG_API", value)
    name = "STATSIG_API" if source == "env" else "statsig_api"
    with pytest.raises(ConfigurationError) as raised:
        statsig(tmp_path, **({} if source == "env" else {"statsig_api": value}))
    assert str(raised.value) == (
        f"{name} must be Statsig's API base URL, such as https://statsigapi.net/v1,"
        f" not {value!r}: {problem}"
    )
    with isolate(), pytest.raises(ConfigurationError):
        statsig(tmp_path, **({} if source == "env" else {"statsig_api": value}))


def test_a_login_in_a_bad_statsig_api_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        statsig(tmp_path, statsig_api="http://relay:pa/ss@relay.internal:x/v1")
    assert "pa" not in str(raised.value).replace("parked", "")
    assert "'http://***@relay.internal:x/v1'" in str(raised.value)


def test_a_statsig_api_without_v1_is_warned_of_once_with_what_it_does(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    """Both engines and delivery append Statsig's /v1 paths to the base: without
    /v1 the specs never loaded and every batch was refused (404) and parked."""
    with StatsigStub() as stub:
        base = stub.url.removesuffix("/v1")
        for _ in range(2):
            with statsig(tmp_path, statsig_api=base + "/") as fw:
                fw.log(Event("clicked", {"userID": "u"}))
                assert fw.statsig_api == base
                assert fw.engine.specs_time() is None  # the stub's specs never came
        [warning] = said(logged, logging.WARNING)[:1]
        assert warning == (
            f"flagware: statsig_api {base} does not end in /v1: specs are asked of"
            f" {base}/download_config_specs and events sent to {base}/log_event, which"
            " Statsig's API (https://statsigapi.net/v1) and its relays serve under /v1;"
            " unless a proxy there rewrites paths, no specs load (defaults are served)"
            " and every event batch is refused and parked"
        )
        assert sum("does not end in /v1" in m for m in logged.messages) == 1
        assert stub.received == []
        logged.clear()
        with statsig(tmp_path, statsig_api=stub.url) as fw:
            assert fw.engine.specs_time() is not None
            fw.log(Event("clicked", {"userID": "u"}))
        assert not any("/v1" in m for m in said(logged, logging.WARNING))
        assert stub.received
