"""What a client says as it is made (flagware/startup.py), and the Statsig API
base URL it accepts (flagware/settings.py): a new user's trial of Statsig mode
could not tell from the log which mode and SDK a process ran, ran the local
spec without a word while a secret was set, and took any STATSIG_API."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from flagware import ConfigurationError, Flagware
from flagware import settings as flagware_settings
from flagware.events.model import Event
from flagware.shared_key import key_id
from flagware.testing import isolate
from tests.statsig_stub import StatsigStub

SDK = {"legacy": "the legacy statsig SDK", "core": "Statsig's Core SDK"}
ENGINE = os.environ.get("FLAGWARE_ENGINE") or "legacy"  # CI runs the suite on both


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


# -- the line that says which mode and SDK ------------------------------------


def test_the_local_spec_is_named_with_its_sdk_in_one_info_line(
    make_client: Any, spec_file: Path, logged: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fw = make_client()
    assert said(logged, logging.INFO) == [
        f"flagware: flags from the local spec {spec_file}, evaluated by {SDK[fw.engine_sdk]};"
        f" events stored in {tmp_path / 'events.db'}; hash key id {key_id(fw.hash_key)}"
    ]
    assert said(logged, logging.WARNING) == []


def test_a_relative_store_is_named_by_its_absolute_path(
    spec_file: Path, tmp_path: Path, logged: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """A Celery worker started from another folder wrote a second store there,
    and the line said only ".flagware/events.db" (a new user's trial)."""
    monkeypatch.chdir(tmp_path)
    with Flagware(spec=spec_file, event_store="var/events.db", hash_key="k"):
        pass
    [line] = said(logged, logging.INFO)
    assert f"; events stored in {tmp_path / 'var' / 'events.db'};" in line


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_statsig_is_named_with_its_api_and_sdk_and_no_secret(
    tmp_path: Path, logged: pytest.LogCaptureFixture, engine: str
) -> None:
    with StatsigStub() as stub:
        api = stub.url.replace("http://", "http://relay:pw@")  # a login: never shown
        with statsig(tmp_path, statsig_api=api, engine=engine) as fw:
            fw.log(Event("clicked", {"userID": "u"}))
        shown = stub.url.replace("http://", "http://***@")
        assert said(logged, logging.INFO)[0] == (
            f"flagware: flags from Statsig at {shown}, evaluated by {SDK[engine]}; events"
            f" stored in {tmp_path / 'outbox.db'} and delivered to Statsig; hash key id"
            f" {key_id(b'k')}"
        )
    text = "\n".join(logged.messages)
    assert "secret-test" not in text and "pw" not in text


def test_under_isolation_the_line_says_nothing_is_delivered(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    with isolate(), statsig(tmp_path, statsig_api="http://127.0.0.1:9/v1", init_timeout=0):
        pass
    [line] = said(logged, logging.INFO)
    assert line.endswith("(isolated for tests: nothing is delivered)"), line


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_under_isolation_a_client_on_statsig_downloads_nothing(tmp_path: Path, engine: str) -> None:
    """A user's suite with STATSIG_SERVER_SECRET set reached statsigapi.net: the
    secret left the CI runner, and unforced flags took the console's values,
    so runs were not the same (a new user's trial). Isolated, a client on
    Statsig downloads nothing and serves defaults unless a flag is forced."""
    import socket
    import time

    from flagware.testing import override_gate

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    api = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"

    def connections(seconds: float) -> int:
        accepted, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
        for conn in accepted:
            conn.close()
        return len(accepted)

    try:
        with isolate(), statsig(tmp_path, statsig_api=api, engine=engine, init_timeout=0) as fw:
            flags = fw.flags_for(user_id="u-1")
            assert flags.gate("any_gate") is False
            assert flags.experiment("any_experiment").group is None
            with override_gate("any_gate"):
                assert fw.flags_for(user_id="u-2").gate("any_gate") is True
            assert connections(1.5) == 0
        # The same client outside the isolation does download (what the test can see).
        with statsig(tmp_path, statsig_api=api, engine=engine, init_timeout=0) as fw:
            assert fw.flags_for(user_id="u-1").gate("any_gate") is False  # starts the engine
            assert connections(3) > 0
    finally:
        listener.close()


def test_a_key_other_than_the_one_that_last_wrote_the_store_is_said(
    tmp_path: Path,
    spec_file: Path,
    logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Moving to Statsig with a fresh FLAGWARE_HASH_KEY gave every visitor a new
    userID without a word (a new user's trial). A check against the hash_key
    file beside the store was wrong when a one-off script had made that file,
    and its advice changed every userID (a re-check trial): the store records
    which key last wrote it."""
    store = tmp_path / "events.db"

    def run(**options: Any) -> None:
        with Flagware(spec=spec_file, event_store=store, **options) as fw:
            fw.log(Event("visit", {"userID": "u"}))
            fw.flush()

    run(hash_key="team-key")
    run()  # a script without the key: makes a hash_key file, and says so
    created = said(logged, logging.WARNING)[0]
    assert created.startswith("flagware: created a hash key")
    assert created.endswith(
        " (beside an existing store: its events so far were hashed with another key);"
        " keep it (IDs change without it) or set FLAGWARE_HASH_KEY"
    )
    [changed] = said(logged, logging.WARNING)[1:]
    assert changed.startswith(f"flagware: the event store {store} was last written by")
    logged.clear()
    run(hash_key="team-key")  # the app again: its key differs from the last writer's
    run(hash_key="team-key")  # ...said once: the new key is now the recorded one
    [changed] = said(logged, logging.WARNING)
    assert "same visitor has another userID" in changed and "team-key" not in changed
    # Both keys' fingerprints: on many hosts the one that says it may be right
    # (a multi-host trial); each process's start line names its own.
    script_key = (tmp_path / "hash_key").read_bytes().strip()
    ids = f"(key id {key_id(script_key)}; this process's is {key_id(b'team-key')})"
    assert ids in changed
    monkeypatch.setenv("FLAGWARE_HASH_KEY", "team-key")
    logged.clear()
    run()
    assert said(logged, logging.WARNING) == []


# -- a secret set and ignored -------------------------------------------------


def test_an_explicit_spec_beside_the_secret_warns_that_the_secret_is_ignored(
    make_client: Any,
    spec_file: Path,
    logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-from-env")
    assert make_client().engine_name == "local"  # explicit arguments still win
    [warning] = said(logged, logging.WARNING)
    assert warning.startswith("flagware: STATSIG_SERVER_SECRET is set but ignored")
    assert str(spec_file) in warning and "leave the spec out" in warning
    assert "secret-from-env" not in "\n".join(logged.messages)


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_secret_warns_that_it_is_ignored_for_the_local_spec(
    tmp_path: Path,
    spec_file: Path,
    logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    blank: str,
) -> None:
    monkeypatch.setenv("STATSIG_SERVER_SECRET", blank)
    monkeypatch.setenv("FLAGWARE_SPEC", str(spec_file))
    with Flagware.from_env(hash_key="k", event_store=tmp_path / "e.db") as fw:
        assert fw.engine_name == "local"
    assert said(logged, logging.WARNING) == [
        "flagware: STATSIG_SERVER_SECRET is set but empty, so it is ignored and flags come"
        f" from the local spec {spec_file}; set it to the server secret to use Statsig, or"
        " unset it"
    ]


def test_an_empty_secret_is_named_before_a_missing_spec_file(
    tmp_path: Path, logged: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app meant for Statsig whose secret came through empty (an unset
    variable in a Docker env file) has no spec file either: "spec file not
    found" alone sent the user looking for a file they never meant to have."""
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="spec file not found"):
        Flagware.from_env(hash_key="k", event_store=tmp_path / "e.db")
    (warning,) = said(logged, logging.WARNING)
    assert warning.startswith("flagware: STATSIG_SERVER_SECRET is set but empty")


def test_no_secret_warning_where_it_is_not_ignored_or_under_isolation(
    make_client: Any,
    tmp_path: Path,
    spec_file: Path,
    logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "")
    make_client()  # an empty variable beside an explicit spec: nothing was meant by it
    monkeypatch.setenv("STATSIG_SERVER_SECRET", "secret-ci")
    with isolate():  # tests with spec= where CI has a secret: the normal case
        Flagware(spec=spec_file).close()
    assert said(logged, logging.WARNING) == []


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
