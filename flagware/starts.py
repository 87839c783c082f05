"""When each experiment started: noted on the request path, recorded off it.

An experiment's groups and parameters must not change once it has started
(results would mix two experiments). Its first exposure in a process is
noted here without I/O; the writer thread records it in the store after its
next flush, and a spec that changes a started experiment serves it as it
started (flagware.results.lock.served_spec).
Only the local engine has starts to keep: Statsig keeps its own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

log = logging.getLogger("flagware")

# How often the writer thread compares the experiments this process exposes
# with their start records, which other processes and hosts write too.
VERIFY_INTERVAL = 10.0
# Flagware.errors key: an exposed experiment differs from its start record.
DIFFERS = "experiment differs from its start record"
# Flagware.errors key: a spec changed a started experiment, which is served as it started.
REFUSED = "started experiment edit refused"

if TYPE_CHECKING:
    from flagware.engine.local import LocalSpec
    from flagware.events.store import Store
    from flagware.spec import Spec


class Starts:
    def __init__(
        self,
        store: Store,
        event_store: str,
        report: Callable[[BaseException, str], None],
        errors: Counter[str],
    ) -> None:
        # Experiments this process has seen exposed (read by every exposure),
        # and first exposure times still to be recorded.
        self.seen: set[str] = set()
        self.pending: dict[str, int] = {}
        self.engine: LocalSpec | None = None  # set by the client once its local engine exists
        self._store = store
        self._event_store = event_store
        self._report = report
        self._errors = errors
        self._next_verify = 0.0
        self._differs: set[tuple[str, str]] = set()  # (experiment, record) said once
        self._refused: set[str] = set()  # refused changes, counted once each

    def note(self, experiment: str, time_ms: int) -> None:
        """First exposure of ``experiment`` in this process (request path: no I/O)."""
        if self.engine is not None:
            self.seen.add(experiment)
            self.pending.setdefault(experiment, time_ms)

    def forget(self, spec: Spec) -> None:
        """A reload: after `flagware reset` (or an edit with restart = true), an
        experiment's next exposure must record its start again, so forget which
        ones this process recorded (recording again is idempotent)."""
        self.seen.clear()

    def record(self) -> None:
        """Store the starts noted so far (the writer thread, after a flush; close())."""
        if not self.pending or self.engine is None:
            return
        from flagware.results.lock import read_started, record_ship_if_new, record_started

        spec = self.engine.spec
        while True:
            try:  # popitem is atomic: request threads may add while this runs
                name, time_ms = self.pending.popitem()
            except KeyError:
                return
            experiment = spec.experiments.get(name)
            if experiment is None:
                continue
            try:
                record_started(self._store, experiment, time_ms=time_ms)
                if experiment.ship is not None:
                    # Shipped as it starts (a ship left in the spec across
                    # `flagware reset`): served from its first exposure, so
                    # recorded with it. A trial's was served, never recorded,
                    # and results said no unit was in a group.
                    started = read_started(self._store, name)
                    record_ship_if_new(self._store, experiment, started, time_ms=time_ms)
            except Exception as exc:  # tried again after the next flush: it was lost
                self.pending.setdefault(name, time_ms)
                self._report(exc, "experiment start record")
                return

    def served(self, spec: Spec) -> tuple[Spec, list[str]]:
        """The spec to serve (a started experiment that changed is served as it
        started) and the refused changes, each counted once in ``errors``; with
        the store unreachable, ``spec`` as it is, said once."""
        from flagware.events.store import request_reads
        from flagware.results.lock import served_spec
        from flagware.spec import SpecError

        try:
            with request_reads():  # a worker's first request, or a reload's
                served, refused = served_spec(spec, self._event_store)
        except SpecError:
            raise
        except Exception as exc:
            self._report(exc, "experiment start check")
            return spec, []
        for message in refused:
            if message not in self._refused:
                self._refused.add(message)
                self._errors[REFUSED] += 1
        return served, refused

    def verify(self) -> None:
        """Say, once, when an experiment this process exposes differs from its
        stored start record (the writer thread, after a flush, at most every
        VERIFY_INTERVAL s).

        The start-up check compares the spec with the records once. A record
        written afterwards by another host (its own definition of a new
        experiment, a `restart = true` rolled out there first, an edit taken
        after `flagware reset`), or a start-up while the store was away, left
        two definitions exposing units side by side without a word (a new
        user's trial on PostgreSQL: 109 of 200 visitors in both). The record
        is the experiment as it started, so the engine looks at the spec again
        and serves the experiment as recorded, as at a start-up.
        """
        if self.engine is None or not self.seen or time.monotonic() < self._next_verify:
            return
        self._next_verify = time.monotonic() + VERIFY_INTERVAL
        from flagware.results.lock import describe_changes, read_started
        from flagware.visitors import forget_repeats

        spec = self.engine.spec
        for name in sorted(self.seen):
            experiment = spec.experiments.get(name)
            if experiment is None:
                continue
            try:
                record = read_started(self._store, name)
            except Exception as exc:
                self._report(exc, "experiment start check")
                return
            if record is None:
                if name not in self.pending:  # `flagware reset`, not a record still to write
                    # With the spec unchanged no reload says so, and nothing
                    # recorded the start again (a new user's trial): record it
                    # at its next exposure, and expose everyone anew for it.
                    self.seen.discard(name)
                    forget_repeats()
                continue
            changes = describe_changes(record, experiment)
            if changes and (name, record.fingerprint) not in self._differs:
                self._differs.add((name, record.fingerprint))
                self._errors[DIFFERS] += 1
                log.error(
                    "flagware: experiment %s differs from its start record, written by another"
                    " process or while this one could not check: %s. From its next request"
                    " this process serves it as recorded, as it started, so that its units"
                    " see one definition: make every host's spec the recorded one, or restart"
                    " the experiment on all of them (`flagware check` shows the difference;"
                    " logged once per record, counted in Flagware.errors[%r])",
                    name,
                    "; ".join(changes),
                    DIFFERS,
                )
                self.engine.look_again()
