"""A Statsig specs download's outages, as the app's log tells them, on either engine.

Specs come every 10 s (Core's download by flagware, the legacy SDK's polling),
so an outage is one line when it starts, saying what is served meanwhile, and
one when a download works again; the failures between are only counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("flagware")


class SpecsLog:
    """One process's downloads from ``base`` (what the lines show: never the secret)."""

    def __init__(self, base: str, on_recovered: Callable[[], None] | None = None) -> None:
        self.base = base
        self.failures = 0  # downloads that failed, this process
        self.failing_since: float | None = None  # time.time() of this outage's first failure
        self.outage_failures = 0  # downloads that failed since then
        self.last_reason = ""
        self._on_recovered = on_recovered
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        """Whether this process's downloads fail now (an outage is on)."""
        return self.failing_since is not None

    def failed(self, reason: str, *, have_specs: bool, route: str = "") -> None:
        # One line: a JSON parser's error quoted the body over four (a trial).
        lines = reason.strip().splitlines()
        reason = lines[0][:200] if lines else "no reason given"
        with self._lock:
            self.failures += 1
            self.last_reason = reason
            first = self.failing_since is None
            if first:
                self.failing_since = time.time()
                self.outage_failures = 0
            self.outage_failures += 1
        if first:  # once per outage: the count says the rest
            log.warning(
                "flagware: could not download Statsig specs from %s%s (%s); serving %s until"
                " a download works",
                self.base,
                route,
                reason,
                "the last ones" if have_specs else "defaults",
            )

    def worked(self) -> None:
        with self._lock:
            ended, self.failing_since = self.failing_since is not None, None
        if ended:
            log.info("flagware: Statsig specs download from %s works again", self.base)
            if self._on_recovered is not None:
                self._on_recovered()
