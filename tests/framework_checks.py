"""What every framework test checks of a served app with /gated, /forbidden and /open.

The apps (tests/test_wsgi_frameworks.py, tests/test_asgi_frameworks.py) each
route ``/gated`` (``@feature_gate("nobody")``), ``/forbidden`` (the same with
``otherwise=403``) and ``/open`` (``@feature_gate("everyone")`` and
``@log_event("visited_signup")``, answering the experiment's group as JSON).
"""

from __future__ import annotations

import logging

from servers import fetch

from flagware import Flagware


def assert_denials(port: int, client: Flagware, records: list[logging.LogRecord]) -> None:
    """Denied requests get the status asked for, and nothing counts them as failures."""
    assert fetch(port, "/gated").status == 404
    assert fetch(port, "/forbidden").status == 403
    assert client.errors == {}  # a denial is an answer, not a failure
    assert not [r for r in records if r.exc_info]  # and no traceback logged


def assert_open_route(port: int, client: Flagware) -> None:
    """An allowed view runs, sets the cookie, keeps the visitor's group and logs."""
    reply = fetch(port, "/open")
    assert reply.status == 200, reply.body
    stable_id = reply.minted()
    assert stable_id is not None
    group = reply.json()["group"]
    assert group in ("Control", "Red")
    again = fetch(port, "/open", headers={"Cookie": f"flagware_id={stable_id}"})
    assert again.json()["group"] == group and again.minted() is None
    client.flush()
    names = sorted(e["event"] for e in client.store.iter_events())
    assert names == [
        "statsig::config_exposure",
        "statsig::gate_exposure",
        "visited_signup",
        "visited_signup",
    ]
