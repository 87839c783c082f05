"""The hash key and the store: the local engine's key kept in a shared
PostgreSQL store, read late if need be; and which key last wrote a store.

Every host reads the key the first process stored in ``flagware.meta``, so a
visitor gets one userID everywhere. A process that starts while the database
is away cannot read it: raising then took the whole host down (gunicorn stops
when a worker fails to boot, and a worker recycled by ``--max-requests``
during an outage stopped a healthy host: a new user's trial, 38 of 60
requests refused). So the process starts without it. Until the key is read,
a visitor without an account is identified by the stableID cookie
(``s-<stableID>``, as a request without an address), counted in
``Flagware.errors["hash key unavailable"]``, and the key is read again in a
thread, at most every :data:`RETRY` seconds, started by a request that needs
it: no request waits for the database, and a forked worker starts its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable

from flagware.events.store import Store, redact, request_reads
from flagware.outages import describe
from flagware.threads import start_thread

log = logging.getLogger("flagware")

__all__ = ["KEY_ID", "RETRY", "SharedKey", "check_key_id", "key_id"]

RETRY = 5.0  # seconds between reads while the store is away
UNAVAILABLE = "hash key unavailable"


class SharedKey:
    def __init__(
        self,
        store: Store,
        location: str,
        on_key: Callable[[bytes], None],
    ) -> None:
        self._store = store
        self._location = location
        self._on_key = on_key
        self._lock = threading.Lock()
        self._tried: tuple[int, float] = (0, -RETRY)  # (pid, monotonic time) of the last read

    def first(self) -> bytes:
        """The key, read now; b"" when the store is away (said once, then read later)."""
        try:
            with request_reads():  # on a worker's first request, maybe
                return self._read()
        except Exception as exc:
            self._tried = (os.getpid(), time.monotonic())
            log.error(
                "flagware: cannot read the shared hash key from %s (%s); until it can,"
                " visitors without an account are identified by their stableID cookie, and"
                " it is read again every %g s. Set FLAGWARE_HASH_KEY on every host so that"
                " a start never depends on the database",
                redact(self._location),
                describe(exc),
                RETRY,
            )
            return b""

    def retry(self) -> None:
        """Read the key again in a thread, unless one read it in the last RETRY s."""
        now, pid = time.monotonic(), os.getpid()
        with self._lock:
            last_pid, last = self._tried
            if last_pid == pid and now - last < RETRY:
                return
            self._tried = (pid, now)
        thread = threading.Thread(target=self._in_thread, name="flagware-hash-key", daemon=True)
        start_thread(thread)

    def _read(self) -> bytes:
        made = secrets.token_hex(32)
        key = self._store.init_meta("hash_key", made)
        if key == made:
            # Said as a key file made beside a SQLite store is: made in
            # silence, it was nowhere to be found in a multi-host trial's logs.
            log.warning(
                "flagware: created a hash key for visitor IDs in %s (its meta table), read by"
                " every process that shares the store; keep the database (IDs change without"
                " it) or set FLAGWARE_HASH_KEY",
                redact(self._location),
            )
        return key.encode()

    def _in_thread(self) -> None:
        try:
            key = self._read()
        except Exception as exc:  # still away (said at the start): a later request retries
            log.debug("flagware: the shared hash key is still unreadable: %s", describe(exc))
            return
        finally:
            self._store.close_thread()
        log.warning(
            "flagware: read the shared hash key from %s; visitors get their usual userID again",
            redact(self._location),
        )
        self._on_key(key)


KEY_ID = "hash_key_id"  # meta: a fingerprint of the key that last hashed this store's visitors


def key_id(key: bytes) -> str:
    """A fingerprint of a hash key, never the key: which key wrote a store."""
    return hashlib.sha256(b"flagware hash key id\0" + key).hexdigest()[:16]


def check_key_id(store: Store, location: str, key: bytes) -> None:
    """Say when the store's visitors were last hashed under another key.

    Moving to Statsig, a fresh FLAGWARE_HASH_KEY gave every visitor a new
    userID without a word (a new user's trial). The store keeps a fingerprint
    of the last key that wrote to it, so the check knows what it compares
    with: a file beside the store may be a one-off script's key, and advice
    taken from it changed every userID (a re-check trial). Said by the first
    process with the new key; then the new key is the one recorded.
    """
    mine = key_id(key)
    kept = store.get_meta(KEY_ID)
    if kept == mine:
        return
    store.set_meta(KEY_ID, mine)
    if kept is not None:
        # Both fingerprints: on many hosts the process that says this may be
        # the one with the right key, started after one with another (a
        # multi-host trial); each host's start line tells them apart.
        log.warning(
            "flagware: the event store %s was last written by a process that hashed"
            " visitors' addresses with another key (key id %s; this process's is %s): under"
            " this one (FLAGWARE_HASH_KEY, hash_key=, or the hash_key file beside a SQLite"
            " store) the same visitor has another userID (stableIDs, and userIDs from a"
            " user_id resolver, stay). If the key was changed on purpose, nothing more is"
            " needed (said once); otherwise give every process that writes to this store the"
            " same key",
            redact(location),
            kept,
            mine,
        )
