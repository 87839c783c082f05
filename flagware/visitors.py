"""Which requests are visitors: only a visitor's flag reads are exposures.

A request that is not a visitor still gets its flag values (a crawler sees
the page a visitor would), but logs no exposure, so it is never counted in
an experiment's results. Statsig drops bot exposures on its side; the local
engine's results need it here, and it keeps both engines' stores alike.

Not visitors:

- ``HEAD`` and ``OPTIONS`` requests: nobody sees a page;
- prefetches and prerenders (``Sec-Purpose: prefetch``, ``Purpose: prefetch``,
  ``X-Moz: prefetch``, ``X-Purpose: preview``): the page may never be shown;
- bots, crawlers, link previews and uptime checks, as the User-Agent
  classifier the statsig SDK already installs (``ua-parser``, kept up to date
  from the uap-core rules) calls them: device family ``Spider``;
- whatever the app's own ``exposure_filter(environ)`` returns False for
  (health checks, internal traffic, synthetic monitoring).

Called once per request, on its first exposure; cached per User-Agent.

A visitor's exposure is logged once a minute, not on every request
(``Repeats``): as Statsig's SDKs dedupe them, so a returning visitor costs one
stored and delivered exposure a minute per flag instead of one per page view.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from functools import lru_cache
from typing import Any

__all__ = [
    "ExposureFilter",
    "Repeats",
    "forget_repeats",
    "is_bot",
    "skip_reason",
    "start_afresh",
]

ExposureFilter = Callable[[Mapping[str, Any]], bool]

_NO_PAGE_METHODS = frozenset({"HEAD", "OPTIONS"})
_PURPOSE_HEADERS = ("HTTP_SEC_PURPOSE", "HTTP_PURPOSE", "HTTP_X_MOZ", "HTTP_X_PURPOSE")
_AGENT_LIMIT = 512  # longer agents are cut: a bounded cache key and bounded regex work


def skip_reason(environ: Mapping[str, Any], exposure_filter: ExposureFilter | None) -> str | None:
    """Why this request logs no exposures ("method", "prefetch", "bot", "filter"), or None."""
    if environ.get("REQUEST_METHOD") in _NO_PAGE_METHODS:
        return "method"
    for header in _PURPOSE_HEADERS:
        purpose = environ.get(header)
        if purpose and _is_prefetch(purpose):
            return "prefetch"
    agent = environ.get("HTTP_USER_AGENT")
    if agent and is_bot(agent[:_AGENT_LIMIT]):
        return "bot"
    if exposure_filter is not None and not exposure_filter(environ):
        return "filter"
    return None


def _is_prefetch(purpose: str) -> bool:
    value = purpose.lower()
    return "prefetch" in value or "prerender" in value or "preview" in value


def prepare_bot_rules() -> None:
    """Compile ua-parser's rules now (0.2 s), not on a worker's first request."""
    from ua_parser import parser  # noqa: F401  (the first access loads and compiles them)


@lru_cache(maxsize=4096)  # a site sees few distinct agents; parsing one is ~0.5 ms
def is_bot(agent: str) -> bool:
    """Whether ua-parser classifies this User-Agent as a bot or crawler."""
    from ua_parser import parse_device  # first use compiles the rules (~0.2 s)

    device = parse_device(agent)
    return device is not None and device.family == "Spider"


# Bumped by forget_repeats(): every Repeats in the process starts afresh.
_generation = 0
# When (time.monotonic()) to forget once more, if a reload asked: infinity when not.
_forget_at = math.inf


def forget_repeats(again_after: float | None = None) -> None:
    """Log the next exposure of everyone again, in every client of this process.

    Called when a local spec is reloaded (a changed or restarted experiment
    counts exposures anew) and when a test starts capturing events. With
    ``again_after`` (seconds), once more then: a restart's analysis window
    opens a few seconds after the reload (``results.sql.SETTLE_MS``), and a
    unit first exposed in between, remembered, was not logged again in the
    window when it came back within the dedupe window (a trial: 37 of 100
    returning browsers left out). The latest reload's time is kept.
    """
    global _generation, _forget_at
    _generation += 1
    if again_after is not None:
        _forget_at = time.monotonic() + again_after


def start_afresh() -> None:
    """:func:`forget_repeats`, with no later forgetting left to do: a test
    starts clean (an earlier test's restart would log a later one's repeats)."""
    global _generation, _forget_at
    _generation += 1
    _forget_at = math.inf


class Repeats:
    """Which exposures repeat one already logged: Statsig's SDK dedupe, per process.

    A key names the user (userID and stableID), the flag and what it gave (gate
    value or group, rule ID): the same user shown the same thing within
    ``window`` seconds logs one exposure, so results, which start each unit at
    its first exposure and see every change of group, lose nothing. As the
    ``statsig`` SDK does, everything is forgotten when the window ends or after
    ``LIMIT`` keys, whichever comes first (bounded memory under any traffic).
    Threads may race on one key; the worst case is one extra exposure.
    """

    LIMIT = 10_000

    __slots__ = ("_generation", "_seen", "_skipped", "_until", "window")

    def __init__(self, window: float, skipped: Counter[str]) -> None:
        self.window = window
        self._skipped = skipped  # the client's skipped_exposures, counted under "repeat"
        self._seen: set[Hashable] = set()
        self._until = 0.0
        self._generation = _generation

    def first(self, key: Hashable) -> bool:
        """Whether ``key``'s exposure is to be logged (counts it when not)."""
        if not self.window:
            return True
        seen = self._seen
        now = time.monotonic()
        if now >= _forget_at:  # a restart's window opened: once, for every Repeats
            start_afresh()
        if now >= self._until or len(seen) >= self.LIMIT or self._generation != _generation:
            seen = self._seen = set()
            self._until = now + self.window
            self._generation = _generation
        elif key in seen:
            self._skipped["repeat"] += 1
            return False
        seen.add(key)
        return True
