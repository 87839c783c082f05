"""Failures inside flagware: counted, and logged once per place and kind.

flagware never breaks the request it serves. Whatever fails inside it (a
resolver, the store, delivery, the SDK) leaves a safe default in place, is
counted in ``Flagware.errors`` under where it happened, and is logged once,
with what the app gets meanwhile; a place that works again is logged again at
its next failure, as a new outage.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from flagware.events.runtime import DELIVERY_FAILURE
from flagware.events.writer import STORE_FAILURE
from flagware.outages import REFUSAL_HINT, describe, is_outage, is_refusal

log = logging.getLogger("flagware")

__all__ = ["LATE_STABLE_ID", "Failures", "describe", "is_outage"]

# Flagware.errors key: a stableID minted once the response had started (see flags).
LATE_STABLE_ID = "stableID after response start"

REFUSED = "the database refusing the URL"  # a key of _reported, for every place

# What a failure leaves in place, for its one log line. A store outage said
# "serving defaults" while every flag was evaluated as usual.
_AFTER_FAILURE = {
    "user_id resolver": "identifying the visitor by the keyed hash of the IP",
    # A value, not a failure of the resolver: the request's other IDs stand.
    "custom ID type": "that ID is left out, the request's other IDs are kept",
    STORE_FAILURE: "flags are served as usual; events wait in memory, up to max_queue,"
    " and are stored when it takes writes again",
    "experiment start check": "serving the spec without comparing it with started experiments",
    "exposure filter": "flags are evaluated as usual, and their exposures logged",
    DELIVERY_FAILURE: "events stay in the store and are sent again after a backoff",
    # The store failing under delivery and the experiment start records: nothing
    # is served there, so "serving defaults" misled (a new user's trial).
    "event store (delivery outcome)": "a sent batch's outcome is written again while the"
    " store is away; if it never is, the batch is sent again once its lease runs out",
    "event store (lease renewal)": "renewed at the next tick; a batch whose lease runs out"
    " meanwhile may be sent twice",
    "experiment start record": "flags are served as usual; the start is recorded after the"
    " next events are stored",
    "hash key check": "flags and events as usual; whether the store's visitors were hashed"
    " with this key is checked when the next process starts",
}


class Failures:
    """One client's failure counts (``errors``), capped inputs (``truncated``)
    and which of them have been logged."""

    def __init__(self, store: str | None = None) -> None:
        self.store = store  # the event store, as shown (a password redacted)
        self.errors: Counter[str] = Counter()
        self.truncated: Counter[str] = Counter()  # "user_agent", "metadata": inputs capped
        self._reported: set[tuple[str, type[BaseException] | None]] = set()
        self._lock = threading.Lock()

    def report(self, exc: BaseException, where: str) -> None:
        """Count an internal failure and log it once per place and kind (an
        outage is one kind, whatever it raises: a PostgreSQL restart raises
        AdminShutdown, then OperationalError, and read as two or three outages
        in a trial's log)."""
        self.errors[where] += 1
        outage = is_outage(exc)
        # A database refusing the URL is one cause wherever it is met: the
        # store, the start check and the hash key check logged it three times
        # in each process (a re-check trial).
        refused = is_refusal(exc)
        key = (REFUSED, None) if refused else (where, None if outage else type(exc))
        with self._lock:  # two threads failing at once logged it twice (a test's log)
            if key in self._reported:
                return
            self._reported.add(key)
        after = _AFTER_FAILURE.get(where, "serving defaults")
        if where.startswith("log_event "):  # a decorator's value or metadata callable
            after = f"the event is logged without its {where.split()[1]}"
        if not outage:
            log.error(
                "flagware: %s failed (%s; logged once, counted in Flagware.errors)",
                where,
                after,
                exc_info=exc,
            )
            return
        # Something away (a database, the network), not a bug: its message says
        # what, and one line per place says it. A PostgreSQL outage printed a
        # traceback of some twenty lines for each of up to five places. Which
        # store: SQLite's "unable to open database file" names none (a trial).
        if refused:
            # A wrong password, user or database name read as an outage that
            # would pass (a Django trial): it will not, and the URL is the fix.
            log.error(
                "flagware: the event store's database refuses its URL, %s: %s (%s;"
                " `flagware status` says the same). Meanwhile %s; it is asked again every"
                " 30 s (logged once, counted in Flagware.errors[%r])",
                self.store,
                describe(exc),
                REFUSAL_HINT,
                _AFTER_FAILURE[STORE_FAILURE],
                where,
            )
            return
        at = ""
        if self.store and where.startswith("event store"):
            at = f" at {self.store}"
        elif self.store and where == DELIVERY_FAILURE:
            # Statsig's own answers are logged by delivery; what is reported
            # here is the store under it, which read as Statsig failing (a trial).
            at = f" on the event store at {self.store}"
        log.error(
            "flagware: %s failed%s: %s (%s; logged once, counted in Flagware.errors)",
            where,
            at,
            describe(exc),
            after,
        )
        log.debug("flagware: %s failed", where, exc_info=exc)

    def recovered(self, where: str) -> None:
        """``where`` works again: its next failure is a new outage, logged again
        (and a refusal of the URL is over: the database took it)."""
        with self._lock:
            self._reported = {key for key in self._reported if key[0] not in (where, REFUSED)}

    def truncated_input(self, what: str) -> None:
        self.truncated[what] += 1
        if self.truncated[what] == 1:
            log.warning(
                "flagware: %s over its size limit truncated (logged once, counted in"
                " Flagware.truncated)",
                what,
            )

    def minted_too_late(self) -> None:
        """A new visitor's first flag read came after the response started."""
        self.errors[LATE_STABLE_ID] += 1
        if self.errors[LATE_STABLE_ID] == 1:
            log.warning(
                "flagware: a new visitor's stableID was made after the response started (a"
                " flag first read in a streaming body, a background task or after a websocket's"
                " accept), so no cookie can"
                " carry it and the visitor is a new unit on every such request; read a flag"
                " before the response starts (logged once, counted in Flagware.errors[%r])",
                LATE_STABLE_ID,
            )
