"""The seed lab on FastAPI: tasks, a signup page with a button-colour
experiment, a gated banner and server-side events.

    uvicorn examples.fastapi_demo.app:app

Runs on the local engine with the spec beside this file, and on Statsig when
STATSIG_SERVER_SECRET is set (then also set FLAGWARE_HASH_KEY).
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from flagware import Flags, Flagware, current_flags, log_event
from flagware.asgi import FlagwareMiddleware, get_flags

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
 body {{ font: 16px system-ui, sans-serif; margin: 3rem auto; max-width: 32rem; }}
 .banner {{ background: #fff3c4; padding: .75rem 1rem; border-radius: .5rem; }}
 button {{ font-size: 1.1rem; padding: .6rem 1.4rem; border: 0; border-radius: .4rem;
          color: white; background: {color}; cursor: pointer; }}
</style></head>
<body>
 {banner}
 <h1>Sign up</h1>
 <form method="post" action="/signup/click">
   <button id="signup" type="submit" data-group="{group}">Create account</button>
 </form>
</body></html>
"""
BANNER = '<p class="banner" id="banner">New: sign up in one click.</p>'


def create_app(client: Flagware | None = None) -> FastAPI:
    if client is None:
        # The secret selects Statsig; without it, the spec beside this file.
        spec = None if os.environ.get("STATSIG_SERVER_SECRET") else SPEC
        client = Flagware(spec=spec, allow_random_override=True)  # ?random=1, as in the lab
    app = FastAPI(title="flagware seed lab")
    # Lifespan shutdown closes the client: queued events are stored first.
    app.add_middleware(FlagwareMiddleware, client=client)

    @app.get("/tasks")
    async def tasks(flags: Annotated[Flags, Depends(get_flags)]) -> dict[str, Any]:
        return {
            "tasks": TASKS,
            "new_signup": flags.gate("new_signup"),
            "button_color": flags.experiment("button_color").get("color", "blue"),
        }

    @app.get("/signup", response_class=HTMLResponse)
    @log_event("visited_signup")
    async def signup() -> str:
        flags = current_flags()
        exp = flags.experiment("button_color")
        return SIGNUP_PAGE.format(
            color=escape(exp.get("color", "blue")),
            group=escape(exp.group or ""),
            banner=BANNER if flags.gate("new_signup") else "",
        )

    @app.post("/signup/click")
    @log_event("signup_clicked")
    def signup_click() -> dict[str, bool]:  # a sync endpoint: FastAPI runs it in a thread
        return {"ok": True}

    return app


def __getattr__(name: str) -> Any:
    # `uvicorn examples.fastapi_demo.app:app` builds the app on first use, so
    # importing this module (tests, tools) opens no event store.
    if name == "app":
        return create_app()
    raise AttributeError(name)
