"""Leases on the outbox: renewed while a send is in flight, short when the sender dies.

The heartbeat is tested on both backends in one process, and on PostgreSQL
with two processes where the first runs in its own PID namespace (to flagware,
another host: its dead PID cannot be seen, only its lease running out).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from flagware.events.delivery import Delivery
from flagware.events.leases import Leases
from flagware.events.model import Event
from flagware.events.store import DELIVERED, Store, lease_owner, open_store
from tests.statsig_stub import StatsigStub

ROOT = Path(__file__).resolve().parent.parent
# Seconds: short, so the tests wait for it (the default is 15), yet a third of
# it, the heartbeat, leaves a loaded machine two seconds of slack.
LEASE = 4.0
QUICK = 2.0  # in one process, where nothing else competes for the heartbeat


def events(n: int) -> list[Event]:
    return [Event("clicked", {"userID": f"u{i}"}, metadata={"uid": f"e{i}"}) for i in range(n)]


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    with open_store(store_location) as s:
        s.append(events(20), deliver=True)
        yield s


def leases(store: Store, stop: threading.Event, errors: list[BaseException]) -> Leases:
    return Leases(
        store,
        lease=QUICK,
        max_age=86400,
        persist_for=5,
        stop=stop,
        report=lambda exc, where: errors.append(exc),
    )


def test_renew_extends_only_a_lease_its_owner_still_holds(store: Store) -> None:
    batch = store.claim("other-host:1/1/n/0", limit=100, lease=1, max_age=86400)
    assert batch is not None and len(batch) == 20
    assert store.renew(batch, lease=LEASE)
    time.sleep(1.2)  # past the first lease, within the renewed one
    assert store.claim("someone-else/2/n/0", limit=100, lease=1, max_age=86400) is None
    assert store.settle(batch, DELIVERED) == 20
    assert not store.renew(batch, lease=LEASE)  # settled: nothing left to renew


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(str(tmp_path / "events.db")) as s:
        s.append(events(20), deliver=True)
        yield s


def test_the_heartbeat_keeps_a_slow_send_leased_and_stops_with_the_sender(
    sqlite_store: Store,
) -> None:
    # One backend is enough: the heartbeat is the same code over either, and
    # each dialect's renewal is tested above and in the two-process test below.
    store = sqlite_store
    stop, errors = threading.Event(), []
    mine = leases(store, stop, errors)
    mine.start()
    try:
        batch = mine.claim(100)
        assert batch is not None and len(batch) == 20
        # A send slower than two leases: the heartbeat renews it every lease / 3 s.
        deadline = time.monotonic() + 2 * QUICK
        while time.monotonic() < deadline:
            assert store.claim("rival/1/n/0", limit=100, lease=1, max_age=86400) is None
            time.sleep(0.25)
        assert mine.renewals >= 3
        assert mine.lost == 0
    finally:
        assert mine.close(10)
    # The sender is gone (no heartbeat): the lease runs out, and the batch goes
    # to the next sender as a possible resend.
    taken = None
    deadline = time.monotonic() + QUICK + 5
    while taken is None and time.monotonic() < deadline:
        time.sleep(0.1)
        taken = store.claim("rival/1/n/1", limit=100, lease=60, max_age=86400)
    assert taken is not None and len(taken) == 20
    assert taken.attempts == 1
    assert errors == []
    # Its first owner's outcome now changes nothing.
    assert store.settle(batch, DELIVERED) == 0


def test_a_lease_found_taken_over_is_counted_and_no_longer_renewed(store: Store) -> None:
    stop, errors = threading.Event(), []
    mine = leases(store, stop, errors)
    batch = mine.claim(100)
    assert batch is not None
    # As if its heartbeat had stalled past the lease: another sender took it.
    store.release(batch, failed=False)
    assert store.claim(lease_owner("rival", 0), limit=100, lease=60, max_age=86400)
    mine.heartbeat = 0
    assert mine.renew_due() == 0
    assert mine.lost == 1
    assert mine.renew_due() == 0  # forgotten: not tried again
    assert mine.lost == 1


# -- two processes, one of them "on another host" ----------------------------------

SENDER = """
import sys, time
sys.path.insert(0, {root!r})
from flagware.events.delivery import Delivery
d = Delivery({store!r}, secret="secret-a", api={api!r}, lease={lease}, request_timeout=120,
             poll_interval=0.2)
d.wake()
time.sleep(300)
"""


def other_host() -> list[str]:
    """A command prefix that runs a process in its own PID namespace, as a
    container on another host would be (its PID means nothing here)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    prefix = ["unshare", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:  # an unprivileged user namespace, where the kernel allows one
        prefix[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    return prefix


def test_a_dead_hosts_batch_is_resent_after_the_short_lease(postgres_url: str) -> None:
    prefix = other_host()
    with open_store(postgres_url) as store:
        store.append(events(50), deliver=True)
    with StatsigStub() as stalls, StatsigStub() as good:
        stalls.blackhole_for(300)  # A's request hangs, its batch leased and in flight
        script = SENDER.format(root=str(ROOT), store=postgres_url, api=stalls.url, lease=LEASE)
        a = subprocess.Popen(
            [*prefix, sys.executable, "-c", script],
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        b = Delivery(postgres_url, secret="secret-b", api=good.url, lease=LEASE, poll_interval=0.2)
        try:
            deadline = time.monotonic() + 60
            while stalls.blackholed < 1:
                assert a.poll() is None, a.communicate()[0].decode()
                assert time.monotonic() < deadline, "A never sent its batch"
                time.sleep(0.05)
            b.wake()
            # A is alive and its send hangs past its lease: its heartbeat keeps
            # the batch, so B sends nothing.
            time.sleep(1.5 * LEASE)
            assert good.requests == 0
            assert a.poll() is None
            os.killpg(a.pid, signal.SIGKILL)  # the host goes away mid-send
            killed = time.monotonic()
            assert good.wait_for_events(50, timeout=60)
            waited = time.monotonic() - killed
        finally:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
            a.communicate(timeout=30)  # and closes its pipe
            b.close()
        print(f"re-sent {waited:.2f} s after the SIGKILL (lease {LEASE} s)")
        # Not at once (another host's PID cannot be checked) and not after the
        # old 90 s lease: within the short lease plus B's poll interval.
        assert LEASE / 3 <= waited <= LEASE + 3
        assert good.ids() == Counter(f"e{i}" for i in range(50))  # each once
        # All flagged as resends (B's two threads may split the batch between them).
        assert {r.headers["STATSIG-RETRY"] for r in good.received} == {"1"}
    with open_store(postgres_url) as store:
        stats = store.stats()
    assert (stats.backlog, stats.delivered) == (0, 50)
