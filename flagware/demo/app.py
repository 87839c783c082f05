"""The seed lab, done with flagware: tasks, a signup page with a button-colour
experiment, a gated banner and server-side events.

    flask --app flagware.demo.app run      # or: flagware demo --serve

Runs on the local engine with the spec beside this file, and on Statsig when
STATSIG_SERVER_SECRET is set (then also set FLAGWARE_HASH_KEY).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, render_template_string

from flagware import Flagware, current_flags, log_event
from flagware.flask import FlaskFlagware

HERE = Path(__file__).parent
SPEC = HERE / "flagware.toml"

TASKS = [
    {"id": 1, "title": "Read the lab handout", "done": True},
    {"id": 2, "title": "Wrap the app with flagware", "done": True},
    {"id": 3, "title": "Ship the red button?", "done": False},
]

SIGNUP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign up</title>
<style>
 body { font: 16px system-ui, sans-serif; margin: 3rem auto; max-width: 32rem; }
 .banner { background: #fff3c4; padding: .75rem 1rem; border-radius: .5rem; }
 button { font-size: 1.1rem; padding: .6rem 1.4rem; border: 0; border-radius: .4rem;
          color: white; background: {{ color }}; cursor: pointer; }
</style></head>
<body>
 {% if flags.gate("new_signup") %}
 <p class="banner" id="banner">New: sign up in one click.</p>
 {% endif %}
 <h1>Sign up</h1>
 <form method="post" action="{{ url_for('signup_click') }}">
   <button id="signup" type="submit" data-group="{{ group }}">Create account</button>
 </form>
</body></html>
"""


def create_app(client: Flagware | None = None) -> Flask:
    app = Flask(__name__)
    if client is None:
        # The secret selects Statsig; without it, the spec beside this file.
        spec = None if os.environ.get("STATSIG_SERVER_SECRET") else SPEC
        client = Flagware(spec=spec, allow_random_override=True)  # ?random=1, as in the lab
    FlaskFlagware(app, client=client)

    @app.get("/tasks")
    def tasks() -> Any:
        flags = current_flags()
        return jsonify(
            tasks=TASKS,
            new_signup=flags.gate("new_signup"),
            button_color=flags.experiment("button_color").get("color", "blue"),
        )

    @app.get("/signup")
    @log_event("visited_signup")
    def signup() -> str:
        exp = current_flags().experiment("button_color")
        return render_template_string(
            SIGNUP_PAGE, color=exp.get("color", "blue"), group=exp.group or ""
        )

    @app.post("/signup/click")
    @log_event("signup_clicked")
    def signup_click() -> Any:
        return jsonify(ok=True)

    return app
