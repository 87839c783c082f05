"""The event store on both backends: appends, reads, the delivery leases and counters."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagware.events.model import Event
from flagware.events.store import (
    DELIVERED,
    DROPPED,
    PARKED,
    PENDING,
    EventStore,
    Store,
    is_postgres_url,
    lease_owner,
    not_a_store,
    open_store,
)
from flagware.events.store import sqlite as sqlite_store
from flagware.events.store.base import EVENT_COLUMNS


def events(n: int, *, start: int = 0, age: float = 0.0) -> list[Event]:
    t = int((time.time() - age) * 1000)
    return [
        Event("e", {"userID": f"u{i}"}, value=i, metadata={"uid": i}, time=t)
        for i in range(start, start + n)
    ]


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    s = open_store(store_location)
    yield s
    s.close()


def states(store: Store) -> dict[int | None, int]:
    rows = store._conn().execute("SELECT delivery, count(*) FROM events GROUP BY delivery")
    return dict(rows.fetchall())


def test_append_and_read(store: Store) -> None:
    store.append(events(3), deliver=False)
    rows = list(store.iter_events())
    assert [r["value"] for r in rows] == [0, 1, 2]
    assert rows[0]["user_id"] == "u0" and rows[0]["metadata"] == {"uid": 0}
    assert store.count() == 3
    assert states(store) == {None: 3}  # local only: never delivered


def test_events_read_newest_first_in_pages_from_the_end(store: Store) -> None:
    """``flagware events --tail 20`` read a million rows to keep the last 20 (5.2 s)."""
    store.append(events(2500), deliver=False)  # three pages
    ids = [r["id"] for r in store.iter_events()]
    newest = list(store.iter_events(newest_first=True))
    assert [r["id"] for r in newest] == ids[::-1]
    assert [r["value"] for r in newest[:3]] == [2499, 2498, 2497]
    assert [r["value"] for r in store.iter_events(newest_first=True, limit=2)] == [2499, 2498]
    later = store.iter_events(newest_first=True, after_id=ids[2496])
    assert [r["value"] for r in later] == [2499, 2498, 2497]  # stops at after_id


def test_events_read_back_their_custom_ids(store: Store) -> None:
    """``flagware events`` showed no custom IDs, so a companyID experiment could
    not be audited from the command line (a new user's B2B trial)."""
    users = [
        {"userID": "u", "customIDs": {"stableID": "s", "companyID": "acme", "orgID": 7}},
        {"userID": "u", "customIDs": {"stableID": "s:1"}},  # a colon in the stableID
        {"userID": "u", "customIDs": {"stableID": "s"}},
        {"userID": "u"},
        {"userID": "u", "customIDs": {"companyID": 'a"b,c'}},
    ]
    store.append([Event("x", user) for user in users], deliver=False)
    assert [r["custom_ids"] for r in store.iter_events()] == [
        {"companyID": "acme", "orgID": 7},
        None,
        None,
        None,
        {"companyID": 'a"b,c'},
    ]


def test_batch_rows_keep_every_event_and_its_exact_wire_payload(store: Store) -> None:
    # The writer encodes a request's shared user once and inserts in chunks:
    # 307 events are 256 + 32 + 16 + 2 + 1 rows, each stored as Event.payload().
    user = {"userID": 'é"\u2028', "customIDs": {"stableID": "s"}, "userAgent": "Moz 😀"}
    odd: list[Event] = [
        Event("statsig::gate_exposure", user, metadata={"gate": "g"}, secondary_exposures=[]),
        Event("x", user, value=2.5, metadata={"a": [1, {"b": None}], "t": object()}),
        Event("y", user, value="20", secondary_exposures=[{"gate": "g", "gateValue": "true"}]),
        Event("z", {"userID": None}, value=True),
    ]
    batch = [*odd, *events(300), *odd[:3]]
    store.append(batch, deliver=True)
    payloads = [r[0] for r in store._conn().execute("SELECT payload FROM events ORDER BY id")]
    assert payloads == [e.payload() for e in batch]
    rows = list(store.iter_events())
    assert [r["event"] for r in rows] == [e.name for e in batch]
    assert rows[1]["metadata"] == {"a": [1, {"b": None}], "t": str(batch[1].metadata["t"])}  # type: ignore[index]
    assert states(store) == {PENDING: 307}


def test_a_batch_that_fails_midway_stores_none_of_it(store: Store) -> None:
    # Row 300 breaks NOT NULL, in the second statement of the batch: the
    # append fails whole, leaving no transaction open, and the writer keeps
    # the batch to try again (its rows must not be stored twice).
    batch = events(400)
    batch[300].name = None  # type: ignore[assignment]
    with pytest.raises(Exception, match=r"(?i)not.null"):
        store.append(batch)
    assert store.count() == 0
    store.append(events(2))
    assert store.count() == 2


def test_sqlite_batches_keep_no_statement_journal(tmp_path: Path) -> None:
    # A batch's metric events land on random pages of events_by_user. With
    # SQLite's default ABORT, each multi-row INSERT also copied every page it
    # changed into a statement journal spilled to a temporary file: as many
    # writes again. OR FAIL keeps none (the transaction undoes a failure).
    class AbortStore(EventStore):
        def _insert(self, conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
            for start in range(0, len(rows), 256):
                chunk = rows[start : start + 256]
                marks = ", ".join(["(" + ", ".join("?" * len(chunk[0])) + ")"] * len(chunk))
                sql = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES {marks}"
                conn.execute(sql, [value for row in chunk for value in row])

    writes = {}
    for name, store_class in (("abort", AbortStore), ("now", EventStore)):
        store = store_class(tmp_path / f"{name}.db")
        writes[name] = _io_of_batches(store, batches=5, users=10**9)["syscw"]
        store.close()
    assert writes["now"] < 0.6 * writes["abort"], writes


def test_sqlite_checkpoints_its_wal_less_often_than_sqlites_default(tmp_path: Path) -> None:
    # Metric events land on random pages of events_by_user, and later batches
    # change most of them again: checkpointing every WAL_CHECKPOINT_PAGES copies
    # each such page back into the database once rather than several times.
    class DefaultCheckpoints(EventStore):
        def _connect(self) -> sqlite3.Connection:
            conn = super()._connect()
            conn.execute("PRAGMA wal_autocheckpoint=1000")  # SQLite's default
            return conn

    written = {}
    for name, store_class in (("default", DefaultCheckpoints), ("now", EventStore)):
        store = store_class(tmp_path / f"{name}.db")
        written[name] = _io_of_batches(store, batches=40, users=20_000)["wchar"]
        wal_limit = store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        store.close()
    assert wal_limit == sqlite_store.WAL_CHECKPOINT_PAGES
    assert written["now"] < 0.95 * written["default"], written


@pytest.mark.parametrize("limited", [True, False])
def test_the_wal_file_shrinks_back_after_a_long_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limited: bool
) -> None:
    """A reader's snapshot keeps the WAL from being emptied, so appends grow it;
    once the read ends and a checkpoint empties it, the file is cut back to
    JOURNAL_SIZE_LIMIT instead of keeping its largest size. Small sizes, scaled
    down from the real ones (16 and 32 MB); ``limited=False`` is the control."""
    monkeypatch.setattr(sqlite_store, "WAL_CHECKPOINT_PAGES", 100)
    monkeypatch.setattr(sqlite_store, "JOURNAL_SIZE_LIMIT", 800 * 1024 if limited else -1)
    store = EventStore(tmp_path / "events.db")
    wal = tmp_path / "events.db-wal"

    def append(batches: int) -> None:
        for _ in range(batches):
            store.append([Event("visited", {"userID": f"u{n}"}, value=n) for n in range(300)])

    append(5)
    reader = sqlite3.connect(tmp_path / "events.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM events").fetchone()  # a snapshot, held
    append(20)
    grown = wal.stat().st_size
    reader.execute("COMMIT")
    reader.close()
    append(10)  # checkpoints run again, and the WAL starts over
    left = wal.stat().st_size
    store.close()
    assert grown > 3 * 1024 * 1024
    if limited:  # the limit, plus what was appended since the WAL started over
        assert left <= 2 * 800 * 1024, (grown, left)
    else:
        assert left >= grown


def _io_of_batches(store: Store, *, batches: int, users: int) -> dict[str, int]:
    """Write calls and bytes written (Linux /proc) for ``batches`` appends of
    600 visits (0.2 s of 200 requests) from ``users`` random users, into a
    store of 30,000 such visits."""

    def visits(seed: int, n: int) -> list[Event]:
        rng = random.Random(seed)
        return [Event("visited", {"userID": f"u{rng.randrange(users)}"}) for _ in range(n)]

    def counters() -> dict[str, int]:
        with open("/proc/self/io") as lines:
            return {key: int(value) for key, value in (line.split(": ") for line in lines)}

    for seed in range(10):
        store.append(visits(seed, 3000))
    before = counters()
    for seed in range(10, 10 + batches):
        store.append(visits(seed, 600))
    after = counters()
    return {key: after[key] - before[key] for key in ("syscw", "wchar")}


def test_a_new_store_waits_for_another_process_switching_it_to_wal(tmp_path: Path) -> None:
    """Two processes opening one new store at once (Celery pool children,
    gunicorn workers whose first events came together): SQLite answers the
    second switch to WAL "database is locked" at once, without its busy
    timeout, when the other holds a write lock on the file. It is waited out."""
    path = tmp_path / "events.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")  # the new file, still in rollback-journal mode
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    threading.Timer(0.3, other.execute, ["COMMIT"]).start()
    started = time.monotonic()
    conn = sqlite_store.connect(path)  # refused at once before: "database is locked"
    try:
        assert time.monotonic() - started >= 0.25
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
        other.close()


def test_missing_values_are_stored_as_null(store: Store) -> None:
    store.append([Event("e", {"userID": None}), Event("f", {"userID": "u"}, value=0)])
    nullable = ("user_id", "value", "metadata", "exposure", "delivery")
    columns = ", ".join(f"{column} IS NULL" for column in nullable)
    rows = store._conn().execute(f"SELECT {columns} FROM events ORDER BY id").fetchall()
    null = [[bool(v) for v in row] for row in rows]
    assert null == [[True] * 5, [False, False, True, True, True]]


def test_none_skips_the_adapter_protocol_on_311_and_an_apps_own_adapter_is_kept() -> None:
    # Python 3.11's sqlite3 raises and clears an AttributeError for every None
    # it binds, unless an adapter for None is registered (flagware's is {}.get).
    script = """
import sqlite3, sys
key = (type(None), sqlite3.PrepareProtocol)
def mine(value):
    return None
if sys.argv[1] == "app-first":
    sqlite3.register_adapter(type(None), mine)
import flagware.events.store.sqlite
adapter = sqlite3.adapters.get(key)
print("mine" if adapter is mine else "none" if adapter is None else adapter.__qualname__)
"""
    seen = {
        order: subprocess.run(
            [sys.executable, "-c", script, order], capture_output=True, text=True, check=True
        ).stdout.strip()
        for order in ("flagware-only", "app-first")
    }
    expected = "dict.get" if sys.version_info < (3, 12) else "none"
    assert seen == {"flagware-only": expected, "app-first": "mine"}


def test_meta(store: Store) -> None:
    assert store.get_meta("x") is None
    store.set_meta("x", "1")
    store.set_meta("x", "2")
    assert store.get_meta("x") == "2"


def test_old_store_gains_lease_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL,"
        " event TEXT NOT NULL, user_id TEXT, stable_id TEXT, value TEXT, value_num REAL,"
        " metadata TEXT, exposure TEXT, group_name TEXT, payload TEXT NOT NULL,"
        " delivery INTEGER);"
        "INSERT INTO events (time, event, payload, delivery) VALUES (1, 'old', '{}', 0);"
    )
    conn.commit()
    conn.close()
    store = EventStore(path)
    batch = store.claim("me", limit=10, lease=60, max_age=1e12)
    assert batch is not None and batch.payloads == ["{}"]
    store.close()


def test_old_store_trades_its_name_index_for_events_by_user(tmp_path: Path) -> None:
    """0.1.0's stores had an index on the event name; a writer of this version
    replaces it with the indexes results read, and results use them."""
    path = tmp_path / "old.db"
    store = EventStore(path)
    store.append(events(3))
    store.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX events_by_user; DROP INDEX events_non_numeric;"
        " CREATE INDEX events_by_name ON events (event);"
    )
    conn.close()
    store = EventStore(path)
    assert store.count() == 3  # connects: the schema is brought up to date
    store.close()
    conn = sqlite3.connect(path)
    indexes = {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    plan = " ".join(
        str(row[3])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM events"
            " WHERE event = 'e' AND exposure IS NULL AND user_id = 'u' AND time > 0"
        )
    )
    conn.close()
    assert {"events_by_user", "events_non_numeric"} <= indexes
    assert "events_by_name" not in indexes
    assert "COVERING INDEX events_by_user" in plan


def test_claims_are_exclusive_until_settled(store: Store) -> None:
    store.append(events(25), deliver=True)
    a = store.claim("a", limit=10, lease=60, max_age=3600)
    b = store.claim("b", limit=10, lease=60, max_age=3600)
    c = store.claim("c", limit=10, lease=60, max_age=3600)
    assert a and b and c
    assert (len(a), len(b), len(c)) == (10, 10, 5)
    assert store.claim("d", limit=10, lease=60, max_age=3600) is None
    assert store.claimable() == 0
    assert store.settle(a, DELIVERED) == 10
    assert store.settle(a, DELIVERED) == 0  # settling twice changes nothing
    store.settle(b, PARKED)
    store.release(c, failed=True)
    again = store.claim("e", limit=10, lease=60, max_age=3600)
    assert again is not None and len(again) == 5 and again.attempts == 1
    stats = store.stats()
    assert (stats.backlog, stats.delivered, stats.parked, stats.retried) == (5, 10, 10, 1)
    assert states(store) == {PENDING: 5, DELIVERED: 10, PARKED: 10}


def test_a_park_records_its_failure_and_a_delivery_clears_it(store: Store) -> None:
    store.append(events(20), deliver=True)
    a = store.claim("a", limit=10, lease=60, max_age=3600)
    b = store.claim("b", limit=10, lease=60, max_age=3600)
    assert a and b
    store.settle(a, PARKED, '{"time": 1, "text": "HTTP 404"}')
    assert store.stats().last_failure == '{"time": 1, "text": "HTTP 404"}'
    store.settle(b, DELIVERED)
    assert store.stats().last_failure == ""


def test_unpark_makes_parked_events_pending_and_uncounts_them(store: Store) -> None:
    assert store.unpark() == (0, None)
    store.append(events(15), deliver=True)
    parked = store.claim("a", limit=10, lease=60, max_age=3600)
    assert parked is not None
    store.settle(parked, PARKED)
    count, oldest = store.unpark()
    assert count == 10 and oldest is not None and oldest <= int(time.time() * 1000)
    assert states(store) == {PENDING: 15}
    assert store.stats().parked == 0
    again = store.claim("b", limit=20, lease=60, max_age=3600)
    assert again is not None and len(again) == 15 and again.attempts == 0  # none went out


def test_expired_lease_is_claimable_and_old_owner_cannot_settle(store: Store) -> None:
    store.append(events(5), deliver=True)
    stale = store.claim("a", limit=10, lease=-1, max_age=3600)  # already expired
    assert stale is not None
    fresh = store.claim("b", limit=10, lease=60, max_age=3600)
    assert fresh is not None and len(fresh) == 5
    assert fresh.attempts == 1  # the dead lease may have been sent: this is a retry
    assert store.settle(stale, DELIVERED) == 0  # the lease moved on: no double count
    assert store.settle(fresh, DELIVERED) == 5
    assert store.stats().delivered == 5


def test_old_events_are_dropped_at_claim(store: Store) -> None:
    store.append(events(3, age=7200), deliver=True)
    store.append(events(2, start=3), deliver=True)
    batch = store.claim("a", limit=10, lease=60, max_age=3600)
    assert batch is not None
    assert batch.expired == 3 and len(batch) == 2
    assert states(store)[DROPPED] == 3
    assert store.stats().dropped == 3


def test_dead_process_lease_is_released(store: Store) -> None:
    store.append(events(4), deliver=True)
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(proc.stdout)
    owner = lease_owner("n", 1).replace(f"/{os.getpid()}/", f"/{dead_pid}/")
    assert store.claim(owner, limit=10, lease=600, max_age=3600) is not None
    mine = store.claim(lease_owner("n", 2), limit=10, lease=600, max_age=3600)
    assert mine is None
    store.append(events(1, start=4), deliver=True)
    live = store.claim(lease_owner("n", 3), limit=10, lease=600, max_age=3600)  # ours: alive
    assert live is not None
    assert store.release_dead_leases() == 4
    assert store.claimable() == 4
    again = store.claim(lease_owner("n", 4), limit=10, lease=600, max_age=3600)
    assert again is not None and again.attempts == 1  # it may have been sent: a retry


def test_other_host_lease_waits_for_expiry(store: Store) -> None:
    store.append(events(2), deliver=True)
    assert store.claim("elsewhere/1/x/1", limit=10, lease=600, max_age=3600)
    assert store.release_dead_leases() == 0
    assert store.claimable() == 0


def test_stats_oldest_pending(store: Store) -> None:
    assert store.stats().oldest_pending_ms is None
    store.append(events(1, age=30), deliver=True)
    oldest = store.stats().oldest_pending_ms
    assert oldest is not None and 29 <= time.time() - oldest / 1000 < 40


def test_a_forked_child_opens_its_own_connection(store: Store) -> None:
    store.append(events(1), deliver=False)
    parent_conn = store._conn()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            child_conn = store._conn()
            store.append(events(1, start=1), deliver=False)
            code = 0 if child_conn is not parent_conn and store.count() == 2 else 3
            store.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._conn() is parent_conn
    assert store.count() == 2


def test_concurrent_claims_take_disjoint_batches(store: Store) -> None:
    store.append(events(500), deliver=True)
    taken: list[list[str]] = []

    def sender(name: str) -> None:
        n = 0
        while (batch := store.claim(f"{name}/{n}", limit=7, lease=60, max_age=3600)) is not None:
            taken.append(batch.payloads)
            store.settle(batch, DELIVERED)
            n += 1
        store.close_thread()

    threads = [threading.Thread(target=sender, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    payloads = [p for batch in taken for p in batch]
    assert len(payloads) == len(set(payloads)) == 500
    assert store.stats().delivered == 500 and store.claimable() == 0


def test_an_ended_threads_connection_is_closed(store: Store) -> None:
    """Django's runserver runs a request a thread: a view reading the store left
    its thread's connection open, two files a request, until none were left."""
    store.append(events(3))
    counts: list[int] = []

    def read() -> None:
        counts.append(store.count())  # opens this thread's connection, never closed by it

    for _ in range(40):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert counts == [3] * 40
    # The ended threads' connections are closed at a new thread's first call.
    assert len(store._all) <= 3  # type: ignore[attr-defined]
    # A live thread keeps its own across other threads' first calls.
    mine = store._conn()  # type: ignore[attr-defined]
    read()
    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert store._conn() is mine and store.count() == 3  # type: ignore[attr-defined]


def test_meta_init_keeps_the_first_value_and_counters_add(store: Store) -> None:
    assert store.init_meta("k", "first") == "first"
    assert store.init_meta("k", "second") == "first"
    store.add_to_counter("queue_dropped", 3)
    store.add_to_counter("queue_dropped", 4)
    assert store.stats().queue_dropped == 7


def test_named_queries_match_between_dialects() -> None:
    from flagware.events.store.postgres import PostgresStore

    own = {"schema", "exists"}  # each backend's; PostgreSQL's schema comes in steps
    steps = {"schema_current", "schema_exists", "create_schema"}
    assert set(EventStore.queries) - own == set(PostgresStore.queries) - own - steps


def test_cli_reads_either_backend_and_never_creates_a_store(
    store_location: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from flagware.cli import main
    from flagware.events.store import store_exists

    assert main(["events", "--store", store_location]) == 2
    err = capsys.readouterr().err
    if store_location.startswith("postgresql://"):  # reached: not an outage (a trial read one)
        assert "no event store in the database at" in err
        assert err.rstrip().endswith(
            " yet: it answers, but nothing has been logged to it (flagware makes its tables at"
            " the first write, as `flagware check` says)"
        )
    else:
        assert "no event store at" in err
    # `status` on a database that answers, before the app's first event: a
    # freshly deployed app, 0 for a monitor (exit 2 turned one red, a trial).
    # A missing SQLite file stays an error: most likely a mistyped path.
    postgres = store_location.startswith("postgresql://")
    assert main(["status", "--format", "json", "--store", store_location]) == (0 if postgres else 2)
    out = capsys.readouterr().out
    if postgres:
        figures = json.loads(out)
        assert (figures["stored"], figures["backlog"], figures["newest_event_time"]) == (0, 0, None)
        assert main(["status", "--store", store_location]) == 0
        said = capsys.readouterr().out
        assert "stored:             0 events\n" in said and "nothing stored yet" in said
    assert not store_exists(store_location)  # reading created nothing
    with open_store(store_location) as store:
        store.append(events(2), deliver=True)
    assert main(["events", "--store", store_location]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["value"] for line in lines] == [0, 1]
    assert main(["status", "--store", store_location]) == 0
    out = capsys.readouterr().out
    assert "backlog:            2\n" in out and "queue dropped:" in out


def test_urls_are_shown_without_their_password() -> None:
    from flagware.events.store import redact

    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("postgresql://app@db/x") == "postgresql://app@db/x"
    assert redact("/var/lib/app/events.db") == "/var/lib/app/events.db"
    # Passwords that were not percent-encoded, as a new user typed them.
    assert redact("postgresql://shop:ab/cd@127.0.0.1:55432/db") == (
        "postgresql://shop:***@127.0.0.1:55432/db"
    )
    assert redact("postgres://shop:abc@hunter2@host/db") == "postgres://shop:***@host/db"
    assert redact("postgresql://h/db?user=u&password=pw&x=1") == (
        "postgresql://h/db?user=u&password=***&x=1"
    )
    assert redact("host=db password = xyz port=5432") == "host=db password = ***"


def test_a_libpq_string_given_as_a_store_is_not_echoed_with_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flagware.cli import main

    assert main(["events", "--store", "host=db user=shop password=xyz"]) == 2
    assert capsys.readouterr().err == (
        "flagware events: no event store at host=db user=shop password=***\n"
    )


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        # psycopg's parse errors quoted these (a new user's trial, every command
        # and the app's log), and an unencoded "@" sent "ss" to DNS as a host.
        ("postgresql://app:WrOng Secret9@127.0.0.1:1/app", ["WrOng", "Secret9"]),
        ("postgresql://app@127.0.0.1:1/app?password=ab cSecret9", ["cSecret9"]),
        ("postgresql://app:ab%zzSecret9@127.0.0.1:1/app", ["zzSecret9"]),
        ("postgresql://app:p@ss/w0rd@127.0.0.1:1/app", ["'ss'", "w0rd"]),
    ],
)
def test_a_url_psycopg_cannot_read_is_refused_without_its_password(
    url: str, secrets: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flagware import ConfigurationError, Flagware
    from flagware.cli import main

    assert main(["status", "--store", url]) == 2
    said = capsys.readouterr().err
    assert said.startswith("flagware status: cannot open postgresql://app") and "encoded" in said
    with pytest.raises(ConfigurationError) as refused:
        Flagware(spec=tmp_path / "absent.toml", event_store=url, hash_key="k")
    for secret in secrets:
        assert secret not in said and secret not in str(refused.value)


def test_store_urls_of_other_schemes_are_refused_or_read_as_postgresql(tmp_path: Path) -> None:
    """SQLAlchemy's postgresql+psycopg:// made a SQLite file named after the URL,
    password and all, on each host; mysql:// or sqlite:/// would too."""
    from flagware import ConfigurationError, Flagware
    from flagware.events.store.postgres import libpq_url

    assert is_postgres_url("postgresql+psycopg://app:pw@db/x")
    assert libpq_url("postgresql+psycopg://app:pw@db/x") == "postgresql://app:pw@db/x"
    assert libpq_url("postgres://app@db/x") == "postgresql://app@db/x"
    for url in ("mysql://app:pw@db/x", "sqlite:///events.db"):
        with pytest.raises(ConfigurationError, match=r":// is not an event store"):
            Flagware(spec=tmp_path / "absent.toml", event_store=url, hash_key="k")
        assert not_a_store(url) is not None and "pw" not in str(not_a_store(url))
    assert list(tmp_path.iterdir()) == [] and not Path("mysql:").exists()


def test_store_urls_an_at_sign_in_a_query_value_is_kept_and_a_bad_port_refused() -> None:
    """``?application_name=a@b`` has no password, and was refused as one with
    an unencoded ``@``; ``:notaport`` passed, and was logged as an outage that
    could never end (a new user's trial)."""
    from flagware.events.store.postgres import libpq_url

    kept = "postgresql://app@db:5432/x?application_name=a@b"
    assert libpq_url(kept) == kept
    assert libpq_url("postgresql://app@h1:5432,h2:5433/x")
    for url in ("postgresql://app:pa?ss@db/x", "postgresql://app:pa?ss@db/x?sslmode=require"):
        with pytest.raises(ValueError, match="must be percent-encoded"):
            libpq_url(url)
    with pytest.raises(ValueError, match="the port must be a number, not 'notaport'"):
        libpq_url("postgresql://app@db:notaport/x")


def test_a_postgresql_user_without_create_on_the_database_opens_a_schema_made_for_it(
    postgres_url: str,
) -> None:
    """The README: "needs CREATE on the database once, or create the schema for
    it". The second half failed: CREATE SCHEMA IF NOT EXISTS asks for CREATE on
    the database even when the schema exists, and so did every later open."""
    import uuid

    import psycopg

    role = f"weak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"CREATE SCHEMA flagware AUTHORIZATION {role}")
    weak_url = postgres_url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
    try:
        for _ in range(2):  # the first open creates the tables, the second finds them
            with open_store(weak_url) as store:
                store.append(events(2), deliver=False)
        with open_store(weak_url) as store:
            assert store.count() == 4
        # A user that may not create: a clear error saying what to grant.
        other = f"{role}_ro"
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA flagware CASCADE")
            admin.execute(f"CREATE ROLE {other} LOGIN")
        ro_url = postgres_url.replace("postgresql://postgres@", f"postgresql://{other}@", 1)
        refused = pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="CREATE SCHEMA flagware"
        )
        with refused, open_store(ro_url) as store:
            store.append(events(1), deliver=False)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA IF EXISTS flagware CASCADE")
            admin.execute(f"DROP ROLE IF EXISTS {role}")
            admin.execute(f"DROP ROLE IF EXISTS {role}_ro")


def test_postgresql_leases_run_on_the_database_clock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(postgres_url)
    try:
        store.append(events(3), deliver=True)
        assert store.claim("a/1/x/1", limit=10, lease=60, max_age=1e9) is not None
        # A sender whose clock runs an hour ahead still sees the live lease.
        ahead = time.time() + 3600
        monkeypatch.setattr(time, "time", lambda: ahead)
        assert store.claimable() == 0
        assert store.claim("b/1/x/1", limit=10, lease=60, max_age=1e9) is None
    finally:
        store.close()


def test_a_postgres_connection_cut_while_idle_is_replaced_before_use(
    postgres: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restarted (or failed over) while the app was quiet cut every
    idle connection: the first write after the quiet failed, was reported as
    an outage and waited a flush interval, with the server already back."""
    from flagware.events.store import postgres as pg

    monkeypatch.setattr(pg, "IDLE_CHECK", 0.2)
    with open_store(postgres_url) as store:
        store.append(events(1), deliver=False)
        postgres.restart()  # fast shutdown: the idle session is cut
        time.sleep(0.3)
        store.append(events(1, start=1), deliver=False)  # psycopg.OperationalError before
        assert store.count() == 2
        # In use within IDLE_CHECK, a connection is trusted: no round trip is added.
        conn = store._conn()
        with monkeypatch.context() as m:
            m.setattr(conn, "execute", None)  # a check would call it
            assert store._conn() is conn


def _without_root_access(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python child that file modes apply to, even as root
    (which reads and writes anything otherwise: setpriv drops that capability)."""
    cmd = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        if not Path("/usr/bin/setpriv").exists():
            pytest.skip("root without setpriv: file modes do not apply to it")
        cmd = ["/usr/bin/setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path]),
    }
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


READONLY_CHILD = """
import os, sys
from flagware.events.model import Event
from flagware.events.store import EventStore

path = sys.argv[1]
EventStore(path).append([Event("before", {"userID": "u"})])  # the last deploy's
files = [f for f in os.listdir(os.path.dirname(path)) if f.startswith("events.db")]
for name in files:
    os.chmod(os.path.join(os.path.dirname(path), name), 0o444)
store = EventStore(path)  # a worker starting now: SQLite opens the file read-only
try:
    store.append([Event("during", {"userID": "u"})])
    raise SystemExit("a write to a read-only store succeeded: the test cannot see the bug")
except Exception as exc:
    print("refused:", exc)
for name in files:
    os.chmod(os.path.join(os.path.dirname(path), name), 0o644)
store.append([Event("after", {"userID": "u"})])  # fixed: a fresh connection takes it
print(sorted(e["event"] for e in store.iter_events()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file modes, setpriv")
def test_a_store_read_only_when_opened_takes_writes_once_it_is_writable(tmp_path: Path) -> None:
    """SQLite opens a file it may not write read-only, without a word, and the
    connection stays so. A gunicorn worker started while the store was
    read-only never stored again once it was fixed (a new user's trial:
    13,006 events waited, then were lost at exit)."""
    done = _without_root_access(READONLY_CHILD, str(tmp_path / "events.db"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused: attempt to write a readonly database" in done.stdout
    assert done.stdout.splitlines()[-1] == "['after', 'before']"


READONLY_CLIENT_CHILD = """
import os, sys
from flagware import Flagware
from flagware.events.model import Event
from flagware.events.store import EventStore

path, spec = sys.argv[1], sys.argv[2]
options = dict(spec=spec, event_store=path, hash_key="k", handle_sigterm=False)
with Flagware(**options) as fw:  # the last deploy's
    fw.log(Event("before", {"userID": "u"}))
os.chmod(path, 0o444)
fw = Flagware(**options)  # a worker started now: its writer opens the file read-only
fw.log(Event("during", {"userID": "u"}))
fw.flush(timeout=5)
print("refused:", dict(fw.errors))
for name in os.listdir(os.path.dirname(path)):  # -wal and -shm made read-only too
    os.chmod(os.path.join(os.path.dirname(path), name), 0o644)
fw.log(Event("after", {"userID": "u"}))
fw.flush(timeout=5)
fw.close()
print(sorted(e["event"] for e in EventStore(path).iter_events()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file modes, setpriv")
def test_a_client_whose_store_was_read_only_stores_once_it_is_writable(
    tmp_path: Path, spec_file: Path
) -> None:
    """The client's writer thread also holds a connection for its own reads
    (the hash key's check), and SQLite keeps a file's -shm mapping, read-only,
    while any connection of the process is open: the failed connection,
    reopened alone, could still not write. An operator's trial fixed the modes
    and no worker stored again (24,000 events lost at the restart). Every
    connection of the process is reopened."""
    done = _without_root_access(READONLY_CLIENT_CHILD, str(tmp_path / "events.db"), str(spec_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused: {'event store': 1}" in done.stdout
    assert done.stdout.splitlines()[-1] == "['after', 'before', 'during']"


SHARED_APPENDS_CHILD = """
import os, sys, threading
from flagware.events.model import Event
from flagware.events.store import EventStore

path = sys.argv[1]
store = EventStore(path)
writer = threading.Thread(target=store.append, args=([Event("writer", {"userID": "u"})],))
writer.start(); writer.join()  # the writer thread's flush: the file is opened read-write
for name in os.listdir(os.path.dirname(path)):
    os.chmod(os.path.join(os.path.dirname(path), name), 0o444)
store.append([Event("handler", {"userID": "u"})])  # a signal handler's flush, main thread
print(sorted(e["event"] for e in store.iter_events()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file modes, setpriv")
def test_a_flush_from_another_thread_appends_through_the_writers_connection(
    tmp_path: Path,
) -> None:
    """A SIGHUP's flush (the main thread) opened the store anew; the file had
    become read-only since the writer opened it, so that flush failed and was
    reported as an outage, and the writer's connection then stored the same
    events and said the store "takes writes again after 0.0 s" (two
    operators' trials). Every append of a process shares one connection."""
    done = _without_root_access(SHARED_APPENDS_CHILD, str(tmp_path / "events.db"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "['handler', 'writer']"


def test_a_store_the_reader_may_not_read_is_said_as_such(tmp_path: Path) -> None:
    """Another user reading a stopped app's store read "not an SQLite
    database" (a new user's trial): the file is fine, the access is not."""
    path = tmp_path / "events.db"
    with open_store(path) as store:
        store.append(events(1))
    os.chmod(path, 0)
    code = (
        "import sys; from flagware.cli import main;"
        " sys.exit(main(['events', '--store', sys.argv[1]]))"
    )
    try:
        done = _without_root_access(code, str(path))
    finally:
        os.chmod(path, 0o644)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"flagware events: cannot read {path}: unable to open database")
    assert "not an SQLite database" not in done.stderr


def test_a_store_moved_or_deleted_while_open_is_made_anew_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection keeps writing into the file it opened: moved away or
    deleted while the app served, every later event went into a file no path
    reached, lost without a word (an operator's trial: 6,000 events after
    ``rm events.db*``; ``mv`` left the moved file without its WAL)."""
    path = tmp_path / "events.db"
    store = EventStore(path)
    store.append(events(2))
    assert store.count() == 2  # a reader's connection too, as the writer thread has
    os.rename(path, tmp_path / "rotated.db")  # an operator's rotation, -wal left behind
    store.append(events(3))
    assert store.count() == 3  # a new store at the path (the README says how to rotate)
    for name in os.listdir(tmp_path):
        if name.startswith("events.db"):
            os.remove(tmp_path / name)
    store.append(events(1))
    assert store.count() == 1
    store.close()
    said = [r.getMessage() for r in caplog.records if "deleted or replaced" in r.getMessage()]
    assert len(said) == 2 and str(path) in said[0]
