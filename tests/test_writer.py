"""EventWriter: the request path's queue and the background writer thread."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flagware.events.model import Event
from flagware.events.store import EventStore
from flagware.events.writer import EventWriter


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path / "events.db")
    yield s
    s.close()


def event(i: int) -> Event:
    return Event("e", {"userID": "u"}, metadata={"uid": i})


def uids(store: EventStore) -> list[int]:
    return [row["metadata"]["uid"] for row in store.iter_events()]


def test_background_thread_stores_within_the_flush_interval(store: EventStore) -> None:
    stored = threading.Event()
    writer = EventWriter(store, flush_interval=0.05, on_stored=lambda n: stored.set())
    writer.put(event(0))
    assert stored.wait(2)
    assert uids(store) == [0]
    writer.close()


def test_close_stores_everything_queued(store: EventStore) -> None:
    writer = EventWriter(store, deliver=True, flush_interval=60)
    for i in range(12_000):  # more than one transaction's worth
        writer.put(event(i))
    writer.close()
    assert uids(store) == list(range(12_000))
    assert store.stats().backlog == 12_000  # deliver=True: pending for Statsig
    assert writer.stored == 12_000


def test_put_is_cheap(store: EventStore) -> None:
    writer = EventWriter(store, flush_interval=60)
    e = event(0)
    writer.put(e)
    start = time.perf_counter()
    for _ in range(10_000):
        writer.put(e)
    per_put = (time.perf_counter() - start) / 10_000
    writer.close()
    assert per_put < 50e-6  # a queue put, not a disk write


def test_a_failed_write_keeps_the_events(store: EventStore) -> None:
    errors: list[str] = []
    writer = EventWriter(store, flush_interval=60, on_error=lambda exc, where: errors.append(where))
    writer.put(event(0))
    real = store.append

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    store.append = broken  # type: ignore[method-assign]
    assert writer.flush() == 0
    assert errors == ["event store"]
    store.append = real  # type: ignore[method-assign]
    assert writer.flush() == 1
    writer.close()
    assert uids(store) == [0]


def test_after_fork_parent_keeps_its_buffer_and_child_starts_fresh(store: EventStore) -> None:
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
