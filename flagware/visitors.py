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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

__all__ = ["ExposureFilter", "is_bot", "skip_reason"]

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


@lru_cache(maxsize=4096)  # a site sees few distinct agents; parsing one is ~0.5 ms
def is_bot(agent: str) -> bool:
    """Whether ua-parser classifies this User-Agent as a bot or crawler."""
    from ua_parser import parse_device  # first use compiles the rules (~0.2 s)

    device = parse_device(agent)
    return device is not None and device.family == "Spider"
