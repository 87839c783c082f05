"""The Flask extension: factories, several apps, Jinja, async views."""

from __future__ import annotations

import gc
import logging
import threading
import urllib.request
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, copy_current_request_context, render_template_string, stream_with_context
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

from flagware import Flagware, NoRequestError, current_flags, log_event
from flagware.flask import FlaskFlagware, get_client


def create_app(ext: FlaskFlagware, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    ext.init_app(app)

    @app.get("/")
    @log_event("home")
    def home() -> str:
        return render_template_string(
            "{{ 'in' if flags.gate('everyone') else 'out' }} "
            "{{ flags.experiment('button_color').get('color') }}"
        )

    @app.get("/async")
    async def async_view() -> str:
        return str(current_flags().gate("everyone"))

    return app


def test_factory_apps_get_their_own_clients(tmp_path: Any, spec_file: Any) -> None:
    ext = FlaskFlagware()  # module-level in a real project, no app yet
    opts = {"spec": spec_file, "hash_key": "k"}
    a = create_app(ext, FLAGWARE={**opts, "event_store": tmp_path / "a.db"})
    b = create_app(ext, FLAGWARE={**opts, "event_store": tmp_path / "b.db"})
    try:
        assert get_client(a) is a.extensions["flagware"] is not get_client(b)
        assert a.test_client().get("/").text.split()[0] == "in"
        with a.app_context():
            assert get_client() is a.extensions["flagware"]
        for app, expected in ((a, 1), (b, 0)):
            client = get_client(app)
            client.flush()
            assert [e["event"] for e in client.store.iter_events()].count("home") == expected
    finally:
        get_client(a).close()
        get_client(b).close()


def test_a_request_context_the_app_did_not_run_says_how_to_read_flags(
    tmp_path: Any, spec_file: Any
) -> None:
    """app.test_request_context() pushes a request the middleware never saw:
    the error told a user whose app had the extension to add it (a new user's
    trial). It says what works there, and that works."""
    ext = FlaskFlagware()
    opts = {"spec": spec_file, "hash_key": "k", "event_store": tmp_path / "e.db"}
    app = create_app(ext, FLAGWARE=opts)
    try:
        with app.test_request_context("/"):
            with pytest.raises(NoRequestError, match=r"app\.test_request_context") as raised:
                current_flags()
            assert "get_client(app).flags_for(user_id=...)" in str(raised.value)
            with get_client(app).flags_for(user_id="u1"):
                assert current_flags().gate("everyone") is True
        bare = Flask(__name__)  # no extension: wrapping the app is the advice
        with (
            bare.test_request_context("/"),
            pytest.raises(NoRequestError, match="wrap the app with FlagwareMiddleware"),
        ):
            current_flags()
    finally:
        get_client(app).close()


def test_jinja_templates_see_this_requests_flags(client: Any) -> None:
    app = create_app(FlaskFlagware(client=client))
    text = app.test_client().get("/").text
    gate, color = text.split()
    assert gate == "in" and color in ("blue", "red")


def test_an_aborted_redirect_is_a_success_and_an_aborted_error_is_not(client: Any) -> None:
    """Flask's abort(redirect(...)) raises werkzeug's exception with the 302
    response in it: the client got a redirect, and the event was dropped (a
    Flask trial), where Pyramid's, Bottle's and Falcon's raised ones count."""
    from flask import abort, redirect

    app = Flask(__name__)
    FlaskFlagware(client=client).init_app(app)

    @app.post("/signup")
    @log_event("signed_up")
    def signup() -> str:
        abort(redirect("/welcome"))

    @app.post("/refused")
    @log_event("refused")
    def refused() -> str:
        abort(400)

    http = app.test_client()
    assert http.post("/signup").status_code == 302
    assert http.post("/refused").status_code == 400
    client.flush()
    assert [e["event"] for e in client.store.iter_events()] == ["signed_up"]


def test_a_template_rendered_outside_a_request_serves_defaults_and_says_so(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An email template sharing the site's base, rendered in an app context:
    ``flags`` was None and Jinja said "'None' has no attribute 'gate'" (a
    Flask trial). Defaults now, as the decorators serve, said once a name;
    a user's flags with flags_for."""
    app = create_app(FlaskFlagware(client=client))
    page = (
        "{{ flags.gate('everyone') }} {{ flags.experiment('button_color').get('color', 'none') }}"
    )
    with app.app_context(), caplog.at_level(logging.WARNING, logger="flagware"):
        assert render_template_string(page) == "False none"
        assert render_template_string(page) == "False none"
        with client.flags_for(user_id="u1"):
            gate, color = render_template_string(page).split()
        with pytest.raises(NoRequestError):
            render_template_string("{{ flags.user_id }}")
    assert gate == "True" and color in ("blue", "red")
    said = [m for m in caplog.messages if "outside a request flagware handles" in m]
    assert len(said) == 2 and "flags.gate('everyone')" in said[0]


def test_async_views(client: Any) -> None:
    app = create_app(FlaskFlagware(client=client))
    assert app.test_client().get("/async").text == "True"


def test_a_flask_request_that_read_flags_is_freed_without_the_collector(client: Any) -> None:
    # Flask keeps no cycle of its own through the environ, and flagware's Flags
    # lets go of it once read: the request is freed by reference counting.
    app = create_app(FlaskFlagware(client=client))
    refs: list[weakref.ref[Any]] = []

    @app.get("/read")
    def read() -> str:
        flags = current_flags()
        refs.append(weakref.ref(flags))
        return f"{flags.gate('everyone')} {flags.experiment('button_color').group}"

    environ = EnvironBuilder("/read").get_environ()
    gc.collect()
    gc.disable()
    try:
        body = app(environ, lambda status, headers, exc_info=None: None)
        assert b"".join(body).startswith(b"True ")
        body.close()  # type: ignore[attr-defined]
        del environ, body
        assert refs[0]() is None
    finally:
        gc.enable()


def test_a_body_streamed_with_context_reads_the_requests_flags(client: Any) -> None:
    # The body is iterated by the server after the middleware returned: Flask's
    # stream_with_context keeps its request, and current_flags() finds the
    # same Flags through it. Served by werkzeug's own server over loopback.
    app = create_app(FlaskFlagware(client=client))
    seen: list[Any] = []

    @app.get("/stream")
    def stream() -> Any:
        flags = current_flags()
        view_user = flags.user_id

        def body() -> Iterator[str]:
            yield "start\n"
            streamed = current_flags()
            seen.append(streamed is flags)
            yield f"{streamed.user_id == view_user} {streamed.gate('everyone')}\n"

        return app.response_class(stream_with_context(body()), mimetype="text/plain")

    @app.get("/plain")
    def plain() -> Any:
        def body() -> Iterator[str]:  # no stream_with_context: no request, as before
            try:
                current_flags()
            except NoRequestError:
                yield "no request"

        return app.response_class(body(), mimetype="text/plain")

    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(base + "/stream", timeout=10) as reply:
            assert reply.read().decode() == "start\nTrue True\n"
        with urllib.request.urlopen(base + "/plain", timeout=10) as reply:
            assert reply.read().decode() == "no request"
    finally:
        server.shutdown()
        thread.join(5)
    assert seen == [True]
    assert not client.errors


def test_a_thread_with_the_copied_request_context_reads_the_requests_flags(client: Any) -> None:
    # A thread does not inherit the contextvar; Flask's copy_current_request_context
    # carries Flask's request into it, and current_flags() finds the Flags there.
    app = create_app(FlaskFlagware(client=client))

    @app.get("/thread")
    def in_a_thread() -> str:
        flags, seen = current_flags(), []

        @copy_current_request_context
        def work() -> None:
            seen.append(current_flags() is flags)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(5)
        return str(seen)

    assert app.test_client().get("/thread").text == "[True]"


def test_init_app_twice_is_an_error(client: Any) -> None:
    app = Flask(__name__)
    ext = FlaskFlagware(app, client=client)
    with pytest.raises(RuntimeError, match="already"):
        ext.init_app(app)


def test_relative_spec_paths_are_relative_to_the_app(tmp_path: Any, monkeypatch: Any) -> None:
    from flagware.spec import SpecError

    package = tmp_path / "myapp"
    package.mkdir()
    (package / "flagware.toml").write_text("[gates.everyone]\nrollout = 100\n")
    monkeypatch.chdir(tmp_path)  # the working directory has no spec
    app = Flask("myapp", root_path=str(package))
    FlaskFlagware(app, spec="flagware.toml", event_store=tmp_path / "e.db")
    client = get_client(app)
    client.close()  # or a later test's override check reads this spec too
    assert client.engine.spec.source == str(package / "flagware.toml")  # type: ignore[attr-defined]
    with pytest.raises(SpecError) as missing:
        Flagware(spec="missing.toml", event_store=tmp_path / "e.db", hash_key="k")
    assert str(missing.value) == (
        f"missing.toml: spec file not found (looked for {tmp_path / 'missing.toml'})"
    )


def test_a_visitor_who_logs_in_keeps_a_stableid_group_and_the_resolver_sees_the_session(
    tmp_path: Any,
) -> None:
    """The README's "Visitors who log in", checked: the user_id resolver may
    use Flask's session, the userID changes at login and the stableID (and a
    stableID experiment's group) does not; IDs are fixed at a request's first
    read, so a login after it logs that request under the anonymous userID."""
    from flask import session

    spec = tmp_path / "flagware.toml"
    spec.write_text(
        '[experiments.signup_button]\nunit = "stableID"\ngroups = [\n'
        '  { name = "Control", weight = 50, params = { color = "blue" } },\n'
        '  { name = "Green", weight = 50, params = { color = "green" } },\n]\n'
    )
    app = Flask(__name__)
    app.secret_key = "test"
    FlaskFlagware(
        app,
        spec=spec,
        event_store=tmp_path / "e.db",
        hash_key="k",
        user_id=lambda environ: session.get("account"),
    )

    @app.get("/signup")
    def page() -> str:
        return current_flags().experiment("signup_button").group or "-"

    @app.post("/login")
    def login() -> str:
        session["account"] = "acct-1"
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        session.pop("account")
        return "ok"

    @app.post("/register")
    @log_event("signed_up")
    def register() -> str:
        return "ok"

    @app.post("/read-then-login")
    def read_then_login() -> str:
        flags = current_flags()
        flags.experiment("signup_button")
        session["account"] = "acct-2"
        flags.log_event("logged_in")
        return "ok"

    @app.post("/logout-logged")
    @log_event("logged_out")  # logged after the view: the account is gone by then
    def logout_logged() -> str:
        session.pop("account")
        return "ok"

    @app.post("/logout-kept")
    @log_event("logged_out")
    def logout_kept() -> str:
        _ = current_flags().user_id  # the README's advice: the IDs fixed before logging out
        session.pop("account")
        return "ok"

    fw = get_client(app)
    try:
        browser = app.test_client()
        headers = {"User-Agent": "Mozilla/5.0 Chrome/120"}
        before = browser.get("/signup", headers=headers).text
        browser.post("/login", headers=headers)
        assert browser.get("/signup", headers=headers).text == before
        browser.post("/register", headers=headers)
        browser.post("/logout", headers=headers)
        assert browser.get("/signup", headers=headers).text == before
        browser.post("/read-then-login", headers=headers)
        browser.post("/logout-logged", headers=headers)
        browser.post("/login", headers=headers)
        browser.post("/logout-kept", headers=headers)
        fw.flush()
        events = [e for e in fw.store.iter_events() if e["event"] != "statsig::gate_exposure"]
        stable = {e["stable_id"] for e in events}
        assert len(stable) == 1  # one visitor throughout
        seen = [(e["event"].removeprefix("statsig::"), e["user_id"]) for e in events]
        anonymous = seen[0][1]  # the first exposure, before login
        assert not anonymous.startswith("acct")
        assert seen == [
            ("config_exposure", anonymous),
            ("config_exposure", "acct-1"),  # a new userID is a new exposure key
            ("signed_up", "acct-1"),
            # logged out: the anonymous key was seen within the window, not exposed again
            ("logged_in", anonymous),  # logged in after the request's first read
            ("logged_out", anonymous),
            ("logged_out", "acct-1"),
        ]
    finally:
        fw.close()


def test_flask_flagware_check_names_the_flags_the_spec_lacks(
    tmp_path: Any, spec_file: Any, request: pytest.FixtureRequest
) -> None:
    """`flask flagware check`: a misspelt @feature_gate answered 404 to every
    visitor, and a misspelt flags.gate(...) in a template read False, said
    once in the log at the first request (W006 and W007 are Django's)."""
    from flask import Blueprint
    from flask.views import MethodView

    from flagware import experiment, feature_gate

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "page.html").write_text(
        "<p>\n{% if flags.gate('new_sigup') %}new{% endif %}\n"
        "{{ flags.experiment(\"button_color\").get('color') }} {{ flags.gate(name) }}\n"
        # Not read as flags (a regular expression read each; a re-check):
        "{# flags.gate('c') #}{% raw %}{{ flags.gate('r') }}{% endraw %}<p>flags.gate('t')</p>"
        "{{ other.gate('o') }} {{ gate('plain') }}\n"
    )
    app = Flask(__name__, root_path=str(tmp_path))
    clients = [Flagware(spec=spec_file, event_store=tmp_path / "e.db")]  # the caller's to close
    request.addfinalizer(lambda: [c.close() for c in clients])
    FlaskFlagware(app, client=clients[0])

    @app.get("/signup")
    @feature_gate("new_sigup")
    def signup() -> str:
        return "ok"

    @app.get("/color")
    @experiment("nobody")  # a gate, read as an experiment
    def color(experiment: Any) -> str:
        return "ok"

    class Checkout(MethodView):
        @feature_gate("everyone")
        def get(self) -> str:
            return "ok"

    app.add_url_rule("/checkout", view_func=Checkout.as_view("checkout"))
    shop = Blueprint("shop", __name__)

    @shop.get("/shop")
    @feature_gate("shp")
    def shop_page() -> str:
        return "ok"

    app.register_blueprint(shop)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["flagware", "check"])
    assert result.exit_code == 1, result.output
    said = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    local = "test_flask.test_flask_flagware_check_names_the_flags_the_spec_lacks.<locals>"
    assert [line.partition(", which")[0] for line in said] == [
        f"warning: {local}.color is decorated with @experiment('nobody')",
        f"warning: {local}.shop_page is decorated with @feature_gate('shp')",
        f"warning: {local}.signup is decorated with @feature_gate('new_sigup')",
        "warning: templates/page.html:2: flags.gate(...) reads gate 'new_sigup'",
    ]
    assert said[2].endswith(
        f"which {spec_file} does not define (did you mean 'new_signup'?): it reads False"
        " for every request"
    )
    assert "hint: 'nobody' is a gate: read it with @feature_gate" in result.output
    # Every name defined: exit 0, said.
    fixed = spec_file.parent / "fixed.toml"
    fixed.write_text(
        spec_file.read_text()
        + "\n[gates.new_sigup]\nrollout = 0\n[gates.shp]\nrollout = 0\n"
        + '[experiments.nobody2]\ngroups = [{ name = "A", weight = 100 }]\n'
    )
    ok = Flask(__name__, root_path=str(tmp_path))
    clients.append(Flagware(spec=fixed, event_store=tmp_path / "f.db"))
    FlaskFlagware(ok, client=clients[-1])
    result = ok.test_cli_runner().invoke(args=["flagware", "check"])
    assert result.exit_code == 0, result.output
    assert f"every flag the views and templates read is defined in {fixed}" in result.output
