"""EventWriter: the request path's queue and the background writer thread, on both backends."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagware.events.model import Event
from flagware.events.store import Store, open_store
from flagware.events.writer import EventWriter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    s = open_store(store_location)
    yield s
    s.close()


def event(i: int) -> Event:
    return Event("e", {"userID": "u"}, metadata={"uid": i})


def uids(store: Store) -> list[int]:
    return [row["metadata"]["uid"] for row in store.iter_events()]


def test_background_thread_stores_within_the_flush_interval(store: Store) -> None:
    stored = threading.Event()
    writer = EventWriter(store, flush_interval=0.05, on_stored=lambda n: stored.set())
    writer.put(event(0))
    assert stored.wait(2)
    assert uids(store) == [0]
    writer.close()


def test_close_stores_everything_queued(store: Store) -> None:
    writer = EventWriter(store, deliver=True, flush_interval=60)
    for i in range(12_000):  # more than one transaction's worth
        writer.put(event(i))
    writer.close()
    assert uids(store) == list(range(12_000))
    assert store.stats().backlog == 12_000  # deliver=True: pending for Statsig
    assert writer.stored == 12_000


def test_a_flush_interrupted_by_one_on_its_own_thread_is_not_waited_for(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a SIGTERM handler does when it interrupts this thread's own flush
    # (after a first SIGTERM each event is stored as it is logged): the inner
    # flush waited for the outer one's lock, up to its timeout.
    writer = EventWriter(store, flush_interval=60)
    real, inner = store.append_rows, []

    def append_rows(rows: Any) -> Any:
        if not inner:
            writer.put(event(1))  # logged by the interrupting handler
            started = time.monotonic()
            inner.append((writer.flush(timeout=5), time.monotonic() - started))
        return real(rows)

    monkeypatch.setattr(store, "append_rows", append_rows)
    writer.put(event(0))
    assert writer.flush(timeout=5) == 2  # the outer flush stores the inner one's event too
    [(stored, waited)] = inner
    assert stored == 0 and waited < 0.5
    assert uids(store) == [0, 1]
    writer.close()


def test_put_is_cheap(store: Store) -> None:
    """A put is a queue put: no store write on the way, and it takes microseconds."""
    writers: set[int] = set()
    real = store.append_rows

    def recording(*args: Any, **kwargs: Any) -> Any:
        writers.add(threading.get_ident())
        return real(*args, **kwargs)

    store.append_rows = recording  # type: ignore[method-assign]
    writer = EventWriter(store, flush_interval=60)
    e = event(0)
    writer.put(e)
    blocks = []
    for _ in range(8):  # 4,000 puts, below the burst wake: nothing contends for the GIL
        start = time.perf_counter()
        for _ in range(500):
            writer.put(e)
        blocks.append((time.perf_counter() - start) / 500)
    assert not writers  # nothing was written while the puts ran: no tick, no burst
    writer.close()
    assert writer.stored == 4_001 and writers
    # The best block: a shared, noisy machine only ever makes a block slower. About 2 us here;
    # a disk write per put would be hundreds.
    assert min(blocks) < 50e-6


def test_a_failed_write_keeps_the_events(store: Store) -> None:
    errors: list[str] = []
    writer = EventWriter(store, flush_interval=60, on_error=lambda exc, where: errors.append(where))
    writer.put(event(0))
    real = store.append_rows

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    store.append_rows = broken  # type: ignore[method-assign]
    assert writer.flush() == 0
    assert errors == ["event store"]
    store.append_rows = real  # type: ignore[method-assign]
    assert writer.flush() == 1
    writer.close()
    assert uids(store) == [0]


def test_after_fork_parent_keeps_its_buffer_and_child_starts_fresh(store: Store) -> None:
    writer = EventWriter(store, flush_interval=60)
    for i in range(100):
        writer.put(event(i))  # buffered, not stored, at the fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            writer.put(event(1000))
            writer.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.put(event(100))
    writer.close()
    assert sorted(uids(store)) == [*range(101), 1000]  # each event once


class Failing:
    """A store that refuses writes while ``failing`` is set, and records flush starts."""

    def __init__(self, store: Store, *, delay: float = 0.0) -> None:
        self.store = store
        self.failing = False
        self.delay = delay
        self.starts: list[float] = []

    def append_rows(self, rows: list[tuple[Any, ...]]) -> None:
        self.starts.append(time.monotonic())
        time.sleep(self.delay)
        if self.failing:
            raise OSError("disk full")
        self.store.append_rows(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_full_queue_drops_counts_and_logs_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    failing = Failing(store)
    failing.failing = True
    writer = EventWriter(failing, flush_interval=60, max_queue=100)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="flagware"):
        for i in range(60):
            writer.put(event(i))
        assert writer.flush() == 0  # refused: the 60 are held, and count against the cap
        for i in range(60, 200):
            writer.put(event(i))
    assert writer.dropped == 200 - 100
    assert len([r for r in caplog.records if "queue is full" in r.getMessage()]) == 1
    failing.failing = False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flagware"):
        assert writer.flush() == 100
    assert uids(store) == list(range(100))  # the first 100, in order; the rest counted
    assert store.stats().queue_dropped == 100  # recorded once the store took writes
    assert writer.pending_drops() == 0
    # One line for the outage's end, saying both what waited and what was lost
    # (there were two, one of them without the outage's length).
    [ended] = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(
        r"flagware: the event store takes writes again after \d+\.\d s; the 100 events that"
        r" waited or came meanwhile are stored; 100 that found the queue full were dropped"
        r" \(counted in queue_dropped\)",
        ended,
    )
    writer.close()


def test_a_queue_that_overflowed_with_the_store_up_says_so_when_it_has_room(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """No outage to end: the drops are counted and the line does not speak of one."""
    writer = EventWriter(store, flush_interval=60, max_queue=10)
    for i in range(15):
        writer.put(event(i))
    assert "queue is full" in caplog.records[-1].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flagware"):
        assert writer.flush() == 10
        assert writer.flush() == 0  # nothing new: said once
    assert [r.getMessage() for r in caplog.records] == [
        "flagware: the event queue has room again; 5 that found the queue full were dropped"
        " (counted in queue_dropped)"
    ]
    assert store.stats().queue_dropped == 5
    writer.close()


def test_flushes_keep_a_fixed_cadence_when_a_flush_is_slow(store: Store) -> None:
    slow = Failing(store, delay=0.12)
    writer = EventWriter(slow, flush_interval=0.2)  # type: ignore[arg-type]
    end = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < end:
        writer.put(event(i))
        i += 1
        time.sleep(0.005)
    writer.close()
    gaps = [b - a for a, b in zip(slow.starts, slow.starts[1:-1], strict=False)]
    assert len(gaps) >= 4
    # Each flush is due 0.2 s after the previous one STARTED (not 0.32 s: after it ended).
    assert sorted(gaps)[len(gaps) // 2] < 0.26, gaps


MEMORY = """
import sys, threading, time
sys.path.insert(0, {root!r})
from flagware import Flagware
from flagware.events.model import Event

fw = Flagware(spec={spec!r}, event_store={store!r}, hash_key="k", max_queue=20_000,
              flush_interval=0.05, handle_sigterm=False)

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def load(stop):
    i = 0
    while not stop.is_set():
        fw.log(Event("clicked", {{"userID": f"u{{i}}", "userAgent": "x" * 200}},
                     metadata={{"uid": i, "plan": "pro"}}))
        i += 1
        if i % 200 == 0:
            time.sleep(0.001)

stop = threading.Event()
threads = [threading.Thread(target=load, args=(stop,)) for _ in range(3)]
for t in threads:
    t.start()
time.sleep(1.5)
before = rss_mb()
time.sleep(3)
after = rss_mb()
stop.set()
for t in threads:
    t.join()
print(before, after, fw.writer.dropped, flush=True)
"""


def test_memory_stays_flat_while_the_store_is_unwritable(tmp_path: Path, spec_file: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # the store's directory cannot be created: every write fails
    script = MEMORY.format(root=str(ROOT), spec=str(spec_file), store=str(blocker / "events.db"))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    before, after, dropped = proc.stdout.split()
    print("rss MB", before, after, "dropped", dropped)
    assert int(dropped) > 10_000  # under load, and dropping: the queue is full
    assert float(after) - float(before) < 5, (before, after)  # MB over 3 s of load
    assert "queue is full" in proc.stderr and proc.stderr.count("queue is full") == 1


def test_queued_events_leave_the_garbage_collector_alone(store: Store) -> None:
    """Queued events wait as rows of strings and numbers, which the collector
    stops tracking at its first pass: events waiting for a flush must not pile
    up in the oldest generation and bring on full collections of the app."""
    import gc

    writer = EventWriter(store, flush_interval=60)
    user = {"userID": "u", "customIDs": {"stableID": "s" * 32}, "userAgent": "Mozilla/5.0"}
    gc.collect()
    before = len(gc.get_objects())
    for i in range(5000):  # as a request logs them: an exposure and an event a user
        writer.put(Event("e", dict(user), metadata={"uid": i}, secondary_exposures=[]))
    gc.collect()
    grew = len(gc.get_objects()) - before
    writer.close()
    assert grew < 100, f"{grew} objects tracked for 5,000 queued events"
    assert uids(store) == list(range(5000))


def test_an_event_is_stored_as_it_was_when_logged(store: Store) -> None:
    writer = EventWriter(store, flush_interval=60)
    tags = ["first"]
    user = {"userID": "u"}
    writer.put(Event("e", user, metadata={"uid": 0, "tags": tags}))
    tags.append("later")  # the caller's own objects, changed before the flush
    user["userID"] = "someone else"
    writer.close()
    [row] = store.iter_events()
    assert row["metadata"] == {"uid": 0, "tags": ["first"]}
    assert row["user_id"] == "u"


def test_an_event_that_cannot_be_encoded_is_refused_alone(store: Store) -> None:
    writer = EventWriter(store, flush_interval=60)
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    writer.put(event(0))
    with pytest.raises((ValueError, RecursionError)):  # the caller reports it
        writer.put(Event("e", {"userID": "u"}, metadata={"uid": 1, "bad": cyclic}))
    writer.put(event(2))
    assert writer.flush() == 2  # the batch around it is stored
    writer.close()
    assert uids(store) == [0, 2]


def test_stopping_waits_for_a_store_that_is_briefly_away_then_says_what_is_left(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM handed on to a server that may end the process without exit
    handlers (uvicorn's workers): close() never runs there, so stopping()
    waits for the store as close() would, and says what it could not store."""
    writer = EventWriter(store, flush_interval=60)
    real = store.append_rows
    back_at = time.monotonic() + 0.6

    def away(rows: Any) -> Any:
        if time.monotonic() < back_at:
            raise OSError("the database is away")
        return real(rows)

    monkeypatch.setattr(store, "append_rows", away)
    for i in range(30):
        writer.put(event(i))
    writer.stopping(3.0)
    assert uids(store) == list(range(30))
    assert "could not be stored" not in caplog.text

    back_at = time.monotonic() + 60  # away for good
    for i in range(30, 40):
        writer.put(event(i))
    started = time.monotonic()
    writer.stopping(0.5)
    assert 0.5 <= time.monotonic() - started < 2.5
    [said] = [r for r in caplog.records if "within 0.5 s of SIGTERM" in r.getMessage()]
    assert said.getMessage().startswith("flagware: 10 queued events could not be stored")
    # Requests still in flight log on, stored as they come (shutdown.draining):
    # their events are counted too, the total at most once a second.
    monkeypatch.setattr("flagware.events.shutdown.draining", True)
    writer.put(event(40))
    writer.put(event(41))
    held = [r.getMessage() for r in caplog.records if "held in all," in r.getMessage()]
    assert held == [
        "flagware: now 11 events held in all, those said before included (the store still"
        " refuses writes after SIGTERM); lost if this process ends first"
    ]
    monkeypatch.setattr("flagware.events.shutdown.draining", False)
    started = time.monotonic()
    writer.close(timeout=5)  # the SIGTERM waited it out already: one more try
    assert time.monotonic() - started < 1.5
    assert "12 events held in all could not be stored before exit: lost" in caplog.text


@pytest.mark.parametrize("fault", ["refusal", "outage"])
def test_a_store_that_refuses_writes_is_tried_less_and_less_often(
    postgres: Any, fault: str, spec_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every flush tried the store, five connections a second a process: with a
    wrong password PostgreSQL logged 3,299 refusals in a Django trial, and the
    log line read as an outage that would pass. Tries now back off (to 2 s for
    an outage, 30 s for a refusal), and a refusal says what to check."""
    from flagware import Flagware

    if fault == "refusal":  # the server answers: no such database
        base, _, query = postgres.admin_url.partition("?")
        url = f"{base.rpartition('/')[0]}/flagware_no_such_database?{query}"
    else:  # nothing listens there
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"postgresql://flagware@127.0.0.1:{port}/flagware"
    caplog.set_level(logging.ERROR, logger="flagware")
    fw = Flagware(spec=spec_file, event_store=url, hash_key="k", handle_sigterm=False)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3.2:
            fw.log_event("hit", user_id="u")  # keeps the queue busy, as requests would
            time.sleep(0.01)
        tries = fw.errors["event store"]
    finally:
        fw.writer.close(0)
        fw.close()
    # At 0.2 s a try, 16; backing off from 0.4 s: 0.4, 1.2, 2.8 (then 6 s or 4.8 s).
    assert 2 <= tries <= 4, tries
    said = [r.getMessage() for r in caplog.records]
    refusals = [line for line in said if "database refuses its URL" in line]
    if fault == "refusal":  # one cause, said once, wherever it was met first
        assert len(refusals) == 1, said
    else:  # an outage: each place says what it leaves in place
        assert not refusals and len([line for line in said if "event store failed" in line]) == 1


def test_flush_with_wait_says_what_it_could_not_store(
    spec_file: Path, store_location: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RQ's worker ends each job with os._exit, and the README says to end a job
    with fw.flush(): it returned at once, with nothing said, while the store
    refused writes (a Django trial: 5 of 5 events lost). It returns what is
    left, and with ``wait`` tries again for that long and says so."""
    from flagware import Flagware

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    away = f"postgresql://flagware@127.0.0.1:{port}/flagware"
    caplog.set_level(logging.ERROR, logger="flagware")
    for location, left in ((store_location, 0), (away, 5)):
        fw = Flagware(spec=spec_file, event_store=location, hash_key="k", handle_sigterm=False)
        try:
            for i in range(5):
                fw.log_event("job_done", user_id=f"u{i}")
            assert fw.flush() == left
            started = time.monotonic()
            assert fw.flush(wait=0.6) == left
            assert (time.monotonic() - started >= 0.6) is bool(left)
        finally:
            fw.writer.close(0)
            fw.close()
    said = [r.getMessage() for r in caplog.records if "stored within" in r.getMessage()]
    assert said == [
        "flagware: 5 events could not be stored within 0.6 s (the store refuses writes); they"
        " wait in this process's memory, and a process that ends now loses them"
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_say_its_parents_write_hangs(store: Store) -> None:
    """A child forked while its parent's writer was inside a write inherits
    that write's state; its first diagnostics request asked whether a write
    hangs before the child had a writer of its own."""
    errors: list[str] = []
    writer = EventWriter(store, on_error=lambda exc, where: errors.append(str(exc)))
    writer.put(Event("e", {"userID": "u"}))
    writer.flush()
    writer._writing, writer._write_began = 1, 0.0  # the parent, mid-write, long ago
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: asked before it queued anything
        writer.check_hung()
        os.write(write, str(len(errors)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"0"
    writer.check_hung()  # the parent's own: said
    assert errors and "has not returned" in errors[0]
    writer._writing = 0
    writer.close()
