"""fw.flags_for(...) and fw.log_event(..., user_id=...): a user named in code
(a webhook's, a background task's), evaluated and logged as a request's."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request
from werkzeug.test import Client

from flagware import (
    Flagware,
    FlagwareMiddleware,
    NoRequestError,
    current_flags,
    experiment,
    log_event,
)
from flagware.overrides import Config
from flagware.results import compute_results
from flagware.spec import load_spec
from flagware.testing import capture_events

STABLE = "0123456789abcdef0123456789abcdef"

# A userID experiment (the ID a logged-in app knows everywhere) and a metric
# whose event only a payment provider's webhook sees.
USER_SPEC = """
[experiments.pricing]
unit = "userID"
sequential = false
groups = [
  { name = "Control", weight = 50, params = { price = 10 } },
  { name = "Cheap",   weight = 50, params = { price = 8 } },
]

[metrics.purchases]
event = "purchase"
kind = "conversion"
"""


def stored(client: Any) -> list[dict[str, Any]]:
    client.flush()
    return list(client.store.iter_events())


@pytest.mark.parametrize("engine", ["legacy", "core"])
def test_flags_for_evaluate_as_the_request_with_the_same_ids(make_client: Any, engine: str) -> None:
    if engine == "core":
        pytest.importorskip("statsig_python_core")
    fw = make_client(engine=engine)
    app = Flask(__name__)

    @app.get("/")
    def index() -> Any:
        flags = current_flags()
        return jsonify(
            user_id=flags.user_id,
            stable_id=flags.stable_id,
            gate=flags.gate("new_signup"),
            group=flags.experiment("button_color").group,
        )

    app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw)  # type: ignore[method-assign]
    http = Client(app, use_cookies=False)  # each request a new visitor
    groups = set()
    for i in range(40):
        seen = http.get("/", environ_base={"REMOTE_ADDR": f"192.0.2.{i + 1}"}).get_json()
        named = fw.flags_for(user_id=seen["user_id"], stable_id=seen["stable_id"])
        assert named.gate("new_signup") == seen["gate"]
        assert named.experiment("button_color").group == seen["group"]
        assert (named.user_id, named.stable_id) == (seen["user_id"], seen["stable_id"])
        groups.add(seen["group"])
    assert groups == {"Control", "Red"}  # the comparison saw both groups


def test_exposures_are_logged_and_deduped_as_a_requests(client: Any) -> None:
    first = client.flags_for(user_id="u-1", stable_id=STABLE)
    group = first.experiment("button_color").group
    assert first.experiment("button_color").group == group  # memoised
    again = client.flags_for(user_id="u-1", stable_id=STABLE)  # a second task, same user
    assert again.experiment("button_color").group == group
    client.flags_for(user_id="u-2", stable_id="f" * 32).experiment("button_color")
    exposures = [e for e in stored(client) if e["event"] == "statsig::config_exposure"]
    # One for u-1 (the repeat within the minute is deduped), one for u-2.
    assert [(e["user_id"], e["stable_id"]) for e in exposures] == [
        ("u-1", STABLE),
        ("u-2", "f" * 32),
    ]
    assert exposures[0]["group"] == group


COMPANY_SPEC = """
[flagware]
custom_ids = ["companyID"]

[gates.beta]
unit = "companyID"
rollout = 100

[experiments.pricing]
unit = "companyID"
groups = [{ name = "Control", weight = 100, params = { price = 10 } }]
"""


def test_one_user_in_two_companies_exposes_both(make_client: Any, tmp_path: Path) -> None:
    """The repeat key named userID and stableID only: a user's exposure under
    a second company (the same group) was taken for a repeat, and the
    company, never exposed, left a companyID experiment's results (a new
    user's trial: 16 of 16 such companies). Statsig's SDKs key on every ID."""
    spec = tmp_path / "company.toml"
    spec.write_text(COMPANY_SPEC)
    client = make_client(spec=spec)
    for company in ("co-1", "co-2", "co-1"):  # the last one a repeat
        flags = client.flags_for(user_id="u-1", custom_ids={"companyID": company})
        assert flags.experiment("pricing").group == "Control" and flags.gate("beta")
    exposed = [
        (e["event"], e["metadata"].get("config") or e["metadata"]["gate"])
        for e in stored(client)
        if e["event"].startswith("statsig::")
    ]
    assert sorted(exposed) == sorted(
        [("statsig::config_exposure", "pricing"), ("statsig::gate_exposure", "beta")] * 2
    )
    assert client.skipped_exposures["repeat"] == 2
    units = compute_results(load_spec(spec), "pricing", client.event_store, cuped=False)
    assert {g.name: g.units for g in units.groups} == {"Control": 2}


def test_custom_ids_are_stored_under_the_names_the_spec_declares(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """A resolver returning ``companyid`` had its companies assigned by the SDK
    (which also tries the name in lower case) and left out by results (which
    read ``companyID``); ``companyId`` put every company in one bucket; both
    without a word (a new user's trial). And 7.0 was stored as "7.0", which
    no webhook's ``custom_ids`` could name."""
    from flagware import unit_ids

    monkeypatch.setattr(unit_ids, "_said", set())
    spec = tmp_path / "company.toml"
    spec.write_text(COMPANY_SPEC)
    given: dict[str, Any] = {}
    client = make_client(spec=spec, user_custom_ids=lambda environ: given)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        current_flags().experiment("pricing")
        start_response("200 OK", [])
        return [b""]

    browser = Client(FlagwareMiddleware(app, client))
    with caplog.at_level(logging.WARNING, "flagware"):
        for ids in ({"companyid": "co-1"}, {"companyId": "co-2"}, {"companyId": "co-3"}):
            given.clear()
            given.update(ids)
            browser.get("/")
        given.clear()
        given.update({"orgID": "o-1", "companyID": 7.0})
        browser.get("/")
        given.clear()
        given.update({"companyID": "co-5", "CompanyID": "other"})  # the declared name wins
        browser.get("/")
        client.flags_for(user_id="u", custom_ids={"COMPANYID": "co-4"}).experiment("pricing")
    exposed = [e for e in stored(client) if e["event"] == "statsig::config_exposure"]
    assert [e["metadata"]["config"] for e in exposed] == ["pricing"] * 6
    units = compute_results(load_spec(spec), "pricing", client.event_store, cuped=False)
    assert {g.name: g.units for g in units.groups} == {"Control": 5}  # co-1 to co-5
    # The request whose companyID was dropped: its exposure counted, and said.
    assert units.exposures_without_unit == 1
    assert "1 exposure(s) had no companyID and are left out: no unit to count them for" in (
        " ".join(units.warnings)
    )
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "is stored as 'companyID'" in m] == [
        f"flagware: a custom ID named {name!r} is stored as 'companyID', the name the spec"
        " declares (the SDK and results would read it differently); give it that name"
        for name in ("companyid", "companyId", "COMPANYID")  # once each
    ]
    assert [m for m in said if m.startswith("flagware: a custom ID named 'CompanyID'")] == [
        "flagware: a custom ID named 'CompanyID' is left out: 'companyID', the name the spec"
        " declares, is given too"
    ]
    assert [m for m in said if "is not declared" in m] == [
        "flagware: a custom ID named 'orgID' is not declared in the spec's [flagware]"
        " custom_ids (companyID): no experiment is keyed on it; is it misspelt?"
    ]
    assert client.errors["custom ID type"] == 1  # 7.0: neither a string nor an integer


def test_log_event_stores_it_for_the_user_named(client: Any) -> None:
    client.log_event("purchase", 9.99, {"plan": "pro"}, user_id=42)
    client.log_event("refund", stable_id=STABLE, custom_ids={"companyID": "co-7"})
    purchase, refund = stored(client)
    assert purchase["event"] == "purchase" and purchase["user_id"] == "42"  # an int, as text
    assert purchase["value"] == 9.99 and purchase["metadata"] == {"plan": "pro"}
    assert purchase["stable_id"] is None
    assert (refund["user_id"], refund["stable_id"]) == (None, STABLE)


def test_a_webhook_logs_for_its_user_and_results_count_it(tmp_path: Path) -> None:
    """A checkout visited by users, the purchase confirmed by a provider's webhook.

    Under the middleware the webhook's own identity is the provider's server:
    ``@log_event`` or ``current_flags().log_event`` there would count every
    purchase for one unit. ``fw.log_event(..., user_id=...)`` counts it for
    the user the payload names, in the group that user saw."""
    spec = tmp_path / "flagware.toml"
    spec.write_text(USER_SPEC)
    fw = Flagware(
        spec=spec,
        event_store=tmp_path / "events.db",
        hash_key="k",
        user_id=lambda environ: environ.get("HTTP_X_USER"),  # the logged-in user
    )
    app = Flask(__name__)

    @app.get("/checkout")
    def checkout() -> Any:
        return jsonify(group=current_flags().experiment("pricing").group)

    @app.post("/webhook")
    def webhook() -> Any:
        # The provider's server is this request's visitor, not the buyer.
        assert current_flags().user_id != request.json["user"]  # type: ignore[index]
        fw.log_event("purchase", user_id=request.json["user"])  # type: ignore[index]
        return "", 204

    app.wsgi_app = FlagwareMiddleware(app.wsgi_app, fw)  # type: ignore[method-assign]
    http = Client(app, use_cookies=False)  # each request a new visitor
    groups = {}
    for i in range(60):
        user = f"user-{i}"
        groups[user] = http.get("/checkout", headers={"X-User": user}).get_json()["group"]
    bought = [f"user-{i}" for i in range(0, 60, 3)]  # every third user buys
    for user in bought:
        assert http.post("/webhook", json={"user": user}).status_code == 204
    fw.close()

    results = compute_results(load_spec(spec), "pricing", tmp_path / "events.db")
    assert sum(g.units for g in results.groups) == 60  # the webhooks are no units
    (purchases,) = results.metrics
    for group, sample in purchases.samples.items():
        members = [u for u, g in groups.items() if g == group]
        assert sample.n == len(members)
        expected = sum(u in bought for u in members) / len(members)
        assert sample.mean == pytest.approx(expected)


def test_as_a_context_manager_they_are_current_flags(client: Any) -> None:
    @experiment("button_color")
    def send_email(*, experiment: Config) -> str:  # code written for views, run in a task
        return str(experiment.group)

    @log_event("email_sent")
    def deliver() -> None:
        pass

    with pytest.raises(NoRequestError, match=r"name the user: `with fw.flags_for\(user_id=...\):`"):
        current_flags()
    with client.flags_for(user_id="u-9", stable_id=STABLE) as flags:
        assert current_flags() is flags
        group = send_email()
        deliver()
    with pytest.raises(NoRequestError):
        current_flags()
    later = client.flags_for(user_id="u-9", stable_id=STABLE)
    assert later.experiment("button_color").group == group
    events = stored(client)
    assert [e["event"] for e in events] == ["statsig::config_exposure", "email_sent"]
    assert {(e["user_id"], e["stable_id"]) for e in events} == {("u-9", STABLE)}


def test_a_decorated_function_outside_any_block_says_how_to_name_the_user(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @experiment("button_color")
    def pick(*, experiment: Config) -> str | None:
        return experiment.group

    from flagware import decorators

    decorators._warned.discard(("experiment", "button_color"))  # said once a process
    client.flags_for(user_id="u-1")  # made, but no `with`: nothing is current
    with caplog.at_level(logging.WARNING, "flagware"):
        assert pick() is None
    assert "inside `with fw.flags_for(user_id=...)`" in caplog.text
    assert stored(client) == []


def test_each_thread_sees_its_own_current_flags(client: Any) -> None:
    seen: dict[str, str] = {}
    start = threading.Barrier(2)

    def task(user: str) -> None:
        with client.flags_for(user_id=user):
            start.wait(5)  # both inside their blocks at once
            seen[user] = current_flags().user_id

    threads = [threading.Thread(target=task, args=(u,)) for u in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}


def test_ids_that_name_no_user_are_refused_where_they_are_given(client: Any) -> None:
    with pytest.raises(ValueError, match="user_id, stable_id or custom_ids"):
        client.log_event("purchase")
    with pytest.raises(ValueError, match="user_id is empty"):
        client.flags_for(user_id="")
    with pytest.raises(TypeError, match="user_id must be a string or an integer, not True"):
        client.log_event("purchase", user_id=True)
    with pytest.raises(TypeError, match=r"custom_ids\['companyID'\]"):
        client.flags_for(custom_ids={"companyID": 1.5})
    with pytest.raises(ValueError, match="the event name is empty"):
        client.log_event("", 1, user_id="u")
    with pytest.raises(TypeError, match="the event name must be a string"):
        client.log_event(None, user_id="u")
    with pytest.raises(TypeError, match=r"not \{'amount': 3\} \(put the rest in metadata\)"):
        client.log_event("purchase", {"amount": 3}, user_id="u")
    with pytest.raises(TypeError, match="not True"):
        client.log_event("purchase", True, user_id="u")
    assert stored(client) == []


def test_a_missing_unit_id_is_said_once_and_results_leave_it_out(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from flagware import users

    users._warned_units.discard("button_color")
    with caplog.at_level(logging.WARNING, "flagware"):
        for user in ("u-1", "u-2", "u-3"):  # button_color is keyed on the stableID
            client.flags_for(user_id=user).experiment("button_color")
        client.flags_for(user_id="u-4").gate("new_signup")
    said = [r.getMessage() for r in caplog.records if "flags_for()" in r.getMessage()]
    assert said == [
        "flagware: flags_for() evaluated button_color, keyed on stableID, for a user without a "
        "stableID: every such user gets the same group, and results leave them out"
    ]
    client.close()
    results = compute_results(client.engine.spec, "button_color", client.event_store)
    assert sum(g.units for g in results.groups) == 0


def test_a_gate_on_a_unit_the_user_lacks_is_said_once(
    make_client: Any, spec_file: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A trial was warned of the stableID experiment, not of the gate beside it
    on the same unit, which read true for every such user alike."""
    from flagware import users

    spec_file.write_text(spec_file.read_text() + '[gates.by_browser]\nunit = "stableID"\n')
    client = make_client()
    users._warned_units.discard("gates.by_browser")
    with caplog.at_level(logging.WARNING, "flagware"):
        for user in ("u-1", "u-2"):
            client.flags_for(user_id=user).gate("by_browser")
        client.flags_for(user_id="u-3", stable_id="s-3").gate("by_browser")  # has it
        client.flags_for(user_id="u-4").gate("new_signup")  # on the userID, given
    said = [r.getMessage() for r in caplog.records if "flags_for()" in r.getMessage()]
    assert said == [
        "flagware: flags_for() evaluated gates.by_browser, keyed on stableID, for a user"
        " without a stableID: every such user gets the same value"
    ]


def test_overrides_and_captured_events_apply(client: Any, flagware_overrides: Any) -> None:
    flagware_overrides.gate("new_signup", True)
    flagware_overrides.experiment("button_color", {"color": "red"}, group="Red")
    with capture_events() as events:
        flags = client.flags_for(user_id="u-5")
        assert flags.gate("new_signup") is True
        assert flags.experiment("button_color").get("color") == "red"
        client.log_event("purchase", user_id="u-5")
    assert events.names(exposures=True) == [
        "statsig::gate_exposure",
        "statsig::config_exposure",
        "purchase",
    ]


def test_a_user_agent_is_capped_and_fields_reach_targeting(tmp_path: Path) -> None:
    spec = tmp_path / "flagware.toml"
    spec.write_text(
        '[gates.pro_only]\nconditions = [{ field = "plan", in = ["pro"] }, { country = ["NZ"] }]\n'
    )
    fw = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key="k")
    try:
        pro = fw.flags_for(user_id="u", custom={"plan": "pro"}, country="nz")
        assert pro.gate("pro_only") is True
        assert (
            fw.flags_for(user_id="u", custom={"plan": "free"}, country="NZ").gate("pro_only")
            is False
        )
        assert fw.flags_for(user_id="v", custom={"plan": "pro"}).gate("pro_only") is False
        fw.flags_for(user_id="w", user_agent="x" * 5000).log_event("visit")
        assert fw.truncated["user_agent"] == 1
        (visit,) = [e for e in stored(fw) if e["event"] == "visit"]
        assert visit["user_id"] == "w"
    finally:
        fw.close()


def test_a_metric_event_without_an_experiments_unit_id_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook that sent the stableID for half the purchases halved the
    conversions of a stableID experiment, and results could not tell."""
    from flagware import users

    spec = tmp_path / "flagware.toml"
    spec.write_text(
        USER_SPEC
        + '\n[experiments.checkout_button]\nunit = "stableID"\n'
        + 'groups = [{ name = "Control", weight = 50 }, { name = "Urgent", weight = 50 }]\n'
        + '\n[metrics.revenue_per_cart]\nkind = "ratio"\n'
        + 'numerator = { event = "purchase", aggregate = "sum" }\n'
        + 'denominator = { event = "cart" }\n'
    )
    users._warned_events.clear()
    fw = Flagware(spec=spec, event_store=tmp_path / "events.db", hash_key="k")
    try:
        with caplog.at_level(logging.WARNING, "flagware"):
            fw.log_event("purchase", user_id="u-1", stable_id=STABLE)  # both: nothing to say
            fw.log_event("note", user_id="u-1")  # no metric reads it
            fw.log_event("purchase", user_id="u-2")
            fw.log_event("purchase", user_id="u-3")  # said once
            fw.log_event("cart", user_id="u-3")  # a ratio's denominator is a metric's event too
        said = [r.getMessage() for r in caplog.records if "was logged for a user" in r.getMessage()]
        assert said == [
            f"flagware: {event!r} was logged for a user without a stableID: the experiments keyed"
            " on it (checkout_button) count it for none of their units; give the stableID to"
            " fw.log_event or flags_for"
            for event in ("purchase", "cart")
        ]
        assert len(stored(fw)) == 5  # logged all the same
    finally:
        fw.close()
