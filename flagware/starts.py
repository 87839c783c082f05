"""When each experiment started: noted on the request path, recorded off it.

An experiment's groups and parameters must not change once it has started
(results would mix two experiments). Its first exposure in a process is
noted here without I/O; the writer thread records it in the store after its
next flush, and a spec that changes a started experiment is refused at load.
Only the local engine has starts to keep: Statsig keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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
    ) -> None:
        # Experiments this process has seen exposed (read by every exposure),
        # and first exposure times still to be recorded.
        self.seen: set[str] = set()
        self.pending: dict[str, int] = {}
        self.engine: LocalSpec | None = None  # set by the client once its local engine exists
        self._store = store
        self._event_store = event_store
        self._report = report

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
        from flagware.results.lock import record_started

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
            except Exception as exc:  # tried again after the next flush: it was lost
                self.pending.setdefault(name, time_ms)
                self._report(exc, "experiment start record")
                return

    def check_unchanged(self, spec: Spec) -> None:
        """Refuse (SpecError) a spec that changes a started experiment; with the
        store unreachable, serve it and say so once."""
        from flagware.results.lock import check_unchanged
        from flagware.spec import SpecError

        try:
            check_unchanged(spec, self._event_store)
        except SpecError:
            raise
        except Exception as exc:
            self._report(exc, "experiment start check")
