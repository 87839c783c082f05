"""The Statsig engine end to end: specs from a loopback Statsig API, events delivered to it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import Client

from flagware import Flagware, FlagwareMiddleware, current_flags
from flagware.spec import compile_dcs, parse_spec
from tests.statsig_stub import StatsigStub

SPEC = {
    "gates": {"everyone": {"rollout": 100}},
    "experiments": {
        "button_color": {
            "unit": "stableID",
            "groups": [
                {"name": "Control", "weight": 50, "params": {"color": "blue"}},
                {"name": "Red", "weight": 50, "params": {"color": "red"}},
            ],
        }
    },
}


def seed_view(environ: Any, start_response: Any) -> Any:
    flags = current_flags()
    gate = flags.gate("everyone")
    color = flags.experiment("button_color").get("color", "none")
    flags.log_event("visited_signup", metadata={"page": "signup"})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{gate} {color}".encode()]


@pytest.fixture
def stub() -> Any:
    with StatsigStub(dcs=compile_dcs(parse_spec(SPEC))) as stub:
        yield stub


def test_specs_are_served_and_events_and_exposures_arrive(stub: Any, tmp_path: Any) -> None:
    fw = Flagware(
        statsig_secret="secret-test",
        statsig_api=stub.url,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
    )
    http = Client(FlagwareMiddleware(seed_view, fw))
    try:
        bodies = [
            http.get("/", environ_base={"REMOTE_ADDR": f"198.51.100.{i}"}).text for i in range(20)
        ]
    finally:
        fw.close()
    assert {b.split()[0] for b in bodies} == {"True"}  # the served gate, not the default
    assert {b.split()[1] for b in bodies} <= {"blue", "red"}

    names = [e["eventName"] for e in stub.events]
    assert names.count("visited_signup") == 20
    assert names.count("statsig::gate_exposure") == 20
    assert names.count("statsig::config_exposure") == 20
    gate = next(e for e in stub.events if e["eventName"] == "statsig::gate_exposure")
    assert gate["metadata"] == {
        "gate": "everyone",
        "gateValue": "true",
        "ruleID": gate["metadata"]["ruleID"],
    }
    assert gate["user"]["customIDs"]["stableID"] and "ip" not in gate["user"]
    config = next(e for e in stub.events if e["eventName"] == "statsig::config_exposure")
    assert config["metadata"]["config"] == "button_color"
    assert config["metadata"]["rulePassed"] == "true"
    headers = stub.received[0].headers
    assert headers["STATSIG-API-KEY"] == "secret-test"


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_batches_name_the_sdk_that_evaluated_them(stub: Any, tmp_path: Any, engine: str) -> None:
    """Statsig files exposures by the SDK that sent them: the Core engine's
    batches said "py-server" with the legacy SDK's version. They name Core as
    Core's own log_event does, and flagware's version beside it."""
    import importlib.metadata

    import flagware

    if engine == "core":
        pytest.importorskip("statsig_python_core")
    fw = Flagware(
        statsig_secret="secret-test",
        statsig_api=stub.url,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
        engine=engine,  # type: ignore[arg-type]
    )
    try:
        Client(FlagwareMiddleware(seed_view, fw)).get("/")
    finally:
        fw.close()
    package, sdk_type = {
        "legacy": ("statsig", "py-server"),
        "core": ("statsig-python-core", "statsig-server-core-python"),
    }[engine]
    expected = (sdk_type, importlib.metadata.version(package))
    assert stub.received
    for batch in stub.received:
        assert (batch.metadata["sdkType"], batch.metadata["sdkVersion"]) == expected
        assert batch.metadata["flagwareVersion"] == flagware.__version__
        headers = batch.headers
        assert (headers["STATSIG-SDK-TYPE"], headers["STATSIG-SDK-VERSION"]) == expected
        assert f"statsig-sdk-type/{sdk_type} " in headers["User-Agent"]
        assert headers["User-Agent"].startswith(f"flagware/{flagware.__version__} ")


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def legacy_client(stub: Any, tmp_path: Any) -> Flagware:
    return Flagware(
        statsig_secret="secret-test",
        statsig_api=stub.url,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
        engine="legacy",
    )


def test_a_legacy_spec_download_outage_is_one_line_and_one_on_recovery(
    stub: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a Statsig outage the legacy SDK logged a 400-character warning at
    each failed spec download (every 10 s, in every worker) while flagware said
    nothing of the last specs it served, nor of the recovery. Now: one line each
    way, as on Core, failures counted, and the SDK's warning once per outage."""
    from statsig import globals as sdk_globals

    # The SDK mutes its own logger when unittest is imported (pytest imports it).
    monkeypatch.setattr(sdk_globals.logger.logger, "_disabled", False)
    caplog.set_level(logging.INFO)
    fw = legacy_client(stub, tmp_path)
    engine: Any = fw.engine
    engine.sync_interval = 0.1
    http = Client(FlagwareMiddleware(seed_view, fw))
    try:
        assert http.get("/").text.startswith("True ")  # the downloaded specs
        specs = engine.specs
        for outage in (1, 2):
            stub.specs_status = 500
            _until(lambda n=4 * outage: stub.spec_failures >= n and specs.failures >= n)
            assert http.get("/").text.startswith("True ")  # the last specs, still
            stub.specs_status = None
            _until(lambda: not specs.failing)
        for _ in range(2):  # anything else the SDK says is left alone
            sdk_globals.logger.warning("Request to http://elsewhere/v1/x failed with error E")
    finally:
        fw.close()

    ours = [r.getMessage() for r in caplog.records if r.name == "flagware"]
    ours = [line for line in ours if "Statsig specs" in line]
    assert len(ours) == 4, ours
    for failed, recovered in (ours[0:2], ours[2:4]):
        assert failed.startswith(f"flagware: could not download Statsig specs from {stub.url}/")
        assert "(HTTP 500); serving the last ones until a download works" in failed
        assert recovered == (
            f"flagware: Statsig specs download from {stub.url}/download_config_specs works again"
        )
    sdk = [r for r in caplog.records if r.name == "statsig.sdk"]
    failed_downloads = [r for r in sdk if "download_config_specs" in r.getMessage()]
    assert len(failed_downloads) == 2  # the first of each outage; 8 or more failed
    assert len([r for r in sdk if "elsewhere" in r.getMessage()]) == 2
    assert all("secret-test" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_specs_that_are_not_json_are_said_in_one_line(
    stub: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    """A parser's error quoted the body over four lines (a trial's relay
    answering 200 with a broken document); a log line is one line."""
    caplog.set_level(logging.INFO)
    stub.specs_body = b'{"this is": not json\n\n  at all'
    fw = Flagware(
        statsig_secret="secret-test",
        statsig_api=stub.url,
        hash_key="k",
        engine=engine,
        event_store=tmp_path / "e.db",
        init_timeout=1,
    )
    try:
        engine_ = fw.engine
        assert engine_.gate(engine_.user({"userID": "u"}), "anything").value is False
        _until(lambda: any("could not download" in r.getMessage() for r in caplog.records))
    finally:
        fw.close()
    [said] = [r.getMessage() for r in caplog.records if "could not download" in r.getMessage()]
    assert "\n" not in said and "serving defaults until a download works" in said, said


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_under_the_test_isolation_no_download_is_said_to_have_failed(
    stub: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    """The isolation downloads nothing: the legacy SDK's local mode read as a
    failed download, and a test run logged "could not download Statsig specs
    from https://statsigapi.net..." as if the secret had been used (a new
    user's trial; strace showed no connection)."""
    from flagware.testing import isolate

    caplog.set_level(logging.INFO)
    with (
        isolate(),
        Flagware(statsig_secret="secret-test", statsig_api=stub.url, engine=engine) as fw,
    ):
        assert Client(FlagwareMiddleware(seed_view, fw)).get("/").status_code == 200
        assert fw.engine.specs_log() is None or fw.engine.specs_log().failures == 0
    assert not [r for r in caplog.records if "Statsig specs" in r.getMessage()]
    assert stub.spec_requests == 0


def test_specs_unwatchable_still_serve(
    stub: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watching the SDK's downloads reads its internals: were they to move (a
    new statsig release), the engine still starts and serves the specs."""
    from flagware.engine import legacy_specs

    def moved(*args: Any) -> None:
        raise AttributeError("'SpecUpdater' object has no attribute 'get_config_spec'")

    monkeypatch.setattr(legacy_specs, "watch", moved)
    fw = legacy_client(stub, tmp_path)
    try:
        http = Client(FlagwareMiddleware(seed_view, fw))
        assert http.get("/").text.startswith("True ")  # the downloaded specs
    finally:
        fw.close()


def test_unreachable_api_delays_start_by_at_most_init_timeout(tmp_path: Any) -> None:
    with StatsigStub() as dead:
        url = dead.url
    fw = Flagware(
        statsig_secret="secret-test",
        statsig_api=url,  # nothing listens there any more
        hash_key="k",
        event_store=tmp_path / "outbox.db",
        init_timeout=0.5,
        shutdown_timeout=0,
    )
    http = Client(FlagwareMiddleware(seed_view, fw))
    try:
        started = time.monotonic()
        first = http.get("/", environ_base={"REMOTE_ADDR": "198.51.100.1"})
        elapsed = time.monotonic() - started
        assert first.text == "False none"  # defaults until specs arrive
        assert elapsed < 2.0
        started = time.monotonic()
        assert http.get("/").text == "False none"
        assert time.monotonic() - started < 0.2  # only the first request of a process waits
        assert sum(fw.errors.values()) == 0
    finally:
        fw.close()
    # Nothing was lost: the events wait in the outbox for the next process.
    from flagware.events.store import EventStore

    with EventStore(tmp_path / "outbox.db") as store:
        assert store.count() == 6


def _sdk_exception_attempts(server: Any, refused: list[str]) -> list[str]:
    """Make the SDK's error boundary report an error; return the refusals it caused."""
    before = len(refused)
    server._errorBoundary.log_exception("flagware-test", RuntimeError("boom"), log_mode="none")
    server._errorBoundary._executor.shutdown(wait=True)  # let a submitted POST run
    return refused[before:]


@pytest.mark.skipif(
    os.environ.get("FLAGWARE_ENGINE") == "core",
    reason="the legacy SDK's error boundary; Core's network is traced in test_core_engine.py",
)
def test_the_sdk_never_posts_its_exceptions_to_the_internet(
    make_client: Any, no_internet: list[str]
) -> None:
    """The SDK's error boundary POSTs to a hard-coded statsigapi.net address.

    flagware's engines start the SDK with disable_all_logging, which stops it;
    the control shows that the offline guard would catch the attempt.
    """
    from statsig.statsig_options import StatsigOptions
    from statsig.statsig_server import StatsigServer

    client = make_client()
    ours = client.engine.server()
    assert _sdk_exception_attempts(ours, no_internet) == []

    control = StatsigServer()
    control.initialize("secret-control", StatsigOptions(local_mode=True, disable_diagnostics=True))
    try:
        attempts = _sdk_exception_attempts(control, no_internet)
    finally:
        control.shutdown()
    assert any("statsigapi.net" in attempt for attempt in attempts)


def test_a_new_process_delivers_the_backlog_and_reports_it(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Events left undelivered by one client go out with the next one's first
    event, and the client reports the same figures as `flagware status`. The
    first client's close() says what it left; the second's, nothing."""
    with StatsigStub() as dead:
        url = dead.url
    first = Flagware(
        statsig_secret="secret-test",
        statsig_api=url,  # unreachable: everything stays in the outbox
        hash_key="k",
        event_store=tmp_path / "outbox.db",
        shutdown_timeout=0.2,
        init_timeout=0.2,
    )
    http = Client(FlagwareMiddleware(seed_view, first))
    for i in range(10):
        http.get("/", environ_base={"REMOTE_ADDR": f"198.51.100.{i}"})
    first.close()
    stats = first.delivery_stats()
    assert (stats.backlog, stats.delivered) == (30, 0)
    left = [r.getMessage() for r in caplog.records if "not yet delivered" in r.getMessage()]
    assert len(left) == 1 and left[0].startswith("flagware: the event store holds 30 events")
    caplog.clear()
    assert stats.oldest_age is not None and stats.oldest_age >= 0

    with StatsigStub(dcs=compile_dcs(parse_spec(SPEC))) as stub:
        second = Flagware(
            statsig_secret="secret-test",
            statsig_api=stub.url,
            hash_key="k",
            event_store=tmp_path / "outbox.db",
            delivery_options={"poll_interval": 0.1},
        )
        try:
            Client(FlagwareMiddleware(seed_view, second)).get("/")
            assert stub.wait_for_events(33, timeout=10)
            second.flush()
            deadline = time.monotonic() + 5
            while second.delivery_stats().backlog and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = second.delivery_stats()
            assert (stats.backlog, stats.delivered, stats.parked, stats.dropped) == (0, 33, 0, 0)
        finally:
            second.close()
        assert len(stub.events) == 33
    assert not [r for r in caplog.records if "not yet delivered" in r.getMessage()]


def test_the_engine_lists_the_downloaded_experiments_and_their_groups(
    stub: Any, tmp_path: Any
) -> None:
    """What the diagnostics page and the QA override read, on either engine."""
    fw = Flagware(
        statsig_secret="secret-test",
        statsig_api=stub.url,
        hash_key="k",
        event_store=tmp_path / "outbox.db",
    )
    try:
        assert fw.engine.names() == (["everyone"], ["button_color"])
        assert fw.engine.experiment_groups() == {
            "button_color": {"Control": {"color": "blue"}, "Red": {"color": "red"}}
        }
    finally:
        fw.close()


def test_close_with_a_statsig_api_that_hangs_stays_within_a_containers_grace(
    tmp_path: Any,
) -> None:
    """An API that accepts connections and never answers held close() for
    about 20 s (the drain, 5 s more for delivery's threads, and the legacy
    SDK joining its download threads for up to 10 s), past Docker's 10 s
    grace. close() now takes shutdown_timeout, a second for delivery's
    threads and at most 2 s for the SDK; the events stay in the store."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nothing ever answers
    fw = Flagware(
        statsig_secret="secret-x",
        statsig_api=f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
        init_timeout=0.5,
        shutdown_timeout=1,
        hash_key="k",
        event_store=tmp_path / "events.db",
    )
    try:
        client = Client(FlagwareMiddleware(seed_view, fw))
        assert client.get("/").status_code == 200  # served on defaults
        fw.flush()
        time.sleep(0.5)  # delivery has sent its batch into the silence
        started = time.monotonic()
        fw.close()
        took = time.monotonic() - started
    finally:
        silent.close()
    assert took < 1 + 1 + 2 + 1.5  # shutdown_timeout, delivery, the SDK, slack
    assert fw.delivery_stats().backlog >= 1  # kept for the next process to send
