"""What the hand-written seed lab on statsig-python-core shares between its WSGI and ASGI twins."""

from __future__ import annotations

from typing import Any


def core_options(stub: str) -> Any:
    """statsig-python-core against the loopback stub: specs from it, events to it."""
    import statsig_python_core as core

    # ".../v1"; Core reads specs from the v2 endpoint. The same rule as
    # flagware.engine.core_specs.core_specs_url, written out: a hand-written lab
    # must not import flagware (its modules would weigh on this process).
    api = stub.rstrip("/")
    return core.StatsigOptions(
        specs_url=api.removesuffix("/v1") + "/v2/download_config_specs",
        log_event_url=api + "/log_event",
        disable_country_lookup=True,
        enable_id_lists=False,
        fallback_to_statsig_api=False,
        output_log_level="error",
    )
