"""The Flask extension shares and closes clients: app factories do not leak."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flagware import current_flags
from flagware.events.store import EventStore
from flagware.flask import FlaskFlagware, _shared, get_client


def resources() -> tuple[int, int]:
    """Threads and open file descriptors of this process."""
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


def open_files() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed while listing
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(found)


@pytest.fixture(autouse=True)
def no_shared_clients() -> Iterator[None]:
    yield
    for entry in list(_shared.values()):
        entry.client.close()
    _shared.clear()


def create_app(spec: Path, store: Path) -> Flask:
    """A factory as in the Flask tutorial: a new app, configured, per call."""
    app = Flask(__name__)
    app.config["FLAGWARE"] = {"spec": spec, "event_store": store, "hash_key": "k"}
    FlaskFlagware(app)

    @app.get("/")
    def home() -> str:
        flags = current_flags()
        flags.log_event("home")
        return str(flags.gate("everyone"))

    return app


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds through /proc")
def test_a_thousand_app_factories_keep_threads_and_fds_flat(
    spec_file: Path, tmp_path: Path
) -> None:
    store = tmp_path / "events.db"
    for i in range(1000):
        app = create_app(spec_file, store)
        assert app.test_client().get("/").text == "True"
        if i == 9:
            # Both SQLite connections open: the writer thread's (it stores what
            # is queued every flush_interval) and this thread's (flush()).
            app.test_client().get("/")
            time.sleep(3 * get_client(app).writer.flush_interval)
            app.test_client().get("/")
            get_client(app).flush()
            gc.collect()  # what earlier tests left is not counted against this one
            baseline, files = resources(), open_files()
    client = get_client(app)
    client.flush()
    threads, fds = resources()
    # Flat: nothing more than after the first ten apps (before the change,
    # every app added a thread and two descriptors).
    assert threads <= baseline[0] and fds <= baseline[1], Counter(open_files()) - Counter(files)
    assert client.store.count() == 2 * 1002  # one exposure and one event per request: none lost
    assert len(_shared) == 1


def test_clients_of_discarded_apps_are_closed(spec_file: Path, tmp_path: Path) -> None:
    gc.collect()
    before = resources()
    apps = [create_app(spec_file, tmp_path / f"{i}.db") for i in range(20)]
    for app in apps:
        assert app.test_client().get("/").text == "True"
    clients = {id(get_client(app)): get_client(app) for app in apps}
    assert len(clients) == 20 and resources()[0] >= before[0] + 20  # a writer thread each
    del apps, app
    gc.collect()
    last = create_app(spec_file, tmp_path / "last.db")  # the next factory call closes them
    assert all(client._closed for client in clients.values())
    assert resources()[0] <= before[0]  # the new client has not started a thread yet
    for client in clients.values():  # closing stored what each app logged
        with EventStore(client.event_store_path) as store:
            assert store.count() == 2
    assert not get_client(last)._closed


def test_an_app_still_alive_keeps_its_client(spec_file: Path, tmp_path: Path) -> None:
    a = create_app(spec_file, tmp_path / "a.db")
    b = create_app(spec_file, tmp_path / "b.db")
    a.test_client().get("/")
    del b
    gc.collect()
    create_app(spec_file, tmp_path / "c.db")
    assert not get_client(a)._closed
    assert a.test_client().get("/").text == "True"


def test_a_client_passed_in_is_never_shared_or_closed(client: Any) -> None:
    app = Flask(__name__)
    FlaskFlagware(app, client=client)
    del app
    gc.collect()
    create_app(client.engine.path, client.event_store_path.with_name("other.db"))
    assert not client._closed
