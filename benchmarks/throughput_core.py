"""What throughput_app.py's WSGI apps and throughput_asgi_app.py's ASGI twins share.

``BENCH_TIMER_SCALE`` (default 1) stretches every timer the apps' background
work runs on: instructions.py serves them under valgrind, where a request takes
about 40 times longer, and a timer that fires every 0.2 s would then fire 40
times as often per request (flagware's writer would store batches of a few
rows instead of a few hundred, and the ``statsig`` SDK would download the
specs every 250 requests instead of every 10,000). Scaled, each timer fires
as often per request as under load, so its cost per request is counted as a
served request pays it. throughput.py leaves it at 1.
"""

from __future__ import annotations

import os
from typing import Any

TIMER_SCALE = float(os.environ.get("BENCH_TIMER_SCALE", "1"))


def legacy_options(stub: str) -> Any:
    """The ``statsig`` SDK against the loopback stub, as a lab would start it."""
    from statsig import StatsigOptions

    timers: dict[str, Any] = {}
    if TIMER_SCALE != 1:  # the SDK's defaults: specs every 10 s, ID lists every 60 s
        timers = {
            "rulesets_sync_interval": 10 * TIMER_SCALE,
            "idlists_sync_interval": 60 * TIMER_SCALE,
        }
    return StatsigOptions(api=stub, disable_diagnostics=True, **timers)


def core_options(stub: str) -> Any:
    """statsig-python-core against the loopback stub: specs from it, events to it."""
    import statsig_python_core as core

    # ".../v1"; Core reads specs from the v2 endpoint. The same rule as
    # flagware.engine.core_specs.core_specs_url, written out: a hand-written lab
    # must not import flagware (its modules would weigh on this process).
    api = stub.rstrip("/")
    timers: dict[str, Any] = {}
    if TIMER_SCALE != 1:  # Core's default: specs every 10 s
        timers = {"specs_sync_interval_ms": round(10_000 * TIMER_SCALE)}
    return core.StatsigOptions(
        specs_url=api.removesuffix("/v1") + "/v2/download_config_specs",
        log_event_url=api + "/log_event",
        disable_country_lookup=True,
        enable_id_lists=False,
        fallback_to_statsig_api=False,
        output_log_level="error",
        **timers,
    )


def stretch_flagware_timers() -> dict[str, Any]:
    """Stretch flagware's periodic checks by the timer scale, in this process.

    Returns the ``Flagware(...)`` arguments the scale also needs (none at 1).
    Call it once, before the client is made: the checks' intervals are
    module constants, multiplied here.
    """
    if TIMER_SCALE == 1:
        return {}
    # Module constants, read when each timer is re-armed: the spec file's
    # mtime check (request path) and the experiment-start check (writer).
    from flagware import starts
    from flagware.engine import local

    local.RELOAD_CHECK_INTERVAL *= TIMER_SCALE
    starts.VERIFY_INTERVAL *= TIMER_SCALE
    return {"flush_interval": 0.2 * TIMER_SCALE}
