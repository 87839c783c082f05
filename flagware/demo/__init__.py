"""``flagware demo``: the seed lab's Flask app with thousands of simulated visitors.

Each visitor is a new browser from its own IP and country, with a stableID
drawn, like everything else, from ``--seed``: the same seed prints the same
report, byte for byte (timings and file locations go to stderr). It opens
the signup page, and clicks with a probability that depends on the button
colour it saw, so the results at the end have a real effect to find.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

CLICK_RATE = {"Control": 0.10, "Red": 0.13}  # the demo's "true" effect
RELOAD_RATE = 0.2  # visitors who open the page twice (the visits guardrail varies)
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
]


def find_demo_app(app_dir: str | None = None) -> ModuleType:
    """The demo app shipped in flagware (``flagware.demo.app``), or ``app_dir``'s app.py."""
    if app_dir is None:
        try:
            from flagware.demo import app
        except ImportError as exc:
            raise SystemExit(
                f"flagware demo: the demo is a Flask app and needs Flask ({exc}):"
                " pip install 'flagware[flask]'"
            ) from None
        return app
    path = Path(app_dir) / "app.py"
    if not path.exists():
        raise SystemExit(f"flagware demo: no app.py in {app_dir}")
    spec = importlib.util.spec_from_file_location("flagware_demo_app", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"flagware demo: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def progress(done: int, total: int, out: TextIO, width: int = 40) -> None:
    """A progress bar redrawn in place on a terminal, a line per tenth elsewhere."""
    tty = out.isatty()
    if not tty and done != total and done % max(1, total // 10):
        return
    filled = width * done // total
    bar = "#" * filled + "." * (width - filled)
    out.write(f"{chr(13) if tty else ''}  [{bar}] {done}/{total} visitors")
    if done == total or not tty:
        out.write("\n")
    out.flush()


def simulate(
    app: Any,
    visitors: int,
    *,
    seed: int = 7,
    out: TextIO = sys.stderr,
    cookie_name: str = "flagware_id",
) -> dict[str, dict[str, int]]:
    """Drive ``visitors`` through the app in process; returns what they saw."""
    from werkzeug.test import Client

    rng = random.Random(seed)
    seen: dict[str, dict[str, int]] = {
        "groups": {},
        "banner": {"shown": 0, "hidden": 0},
        "pages": {"signup": 0},
    }
    step = max(1, visitors // 100)
    for i in range(visitors):
        client = Client(app)  # a new browser
        # Its stableID cookie as flagware would mint it, but from the seed.
        client.set_cookie(cookie_name, f"{rng.getrandbits(128):032x}")
        octets = (
            rng.randint(1, 223),
            rng.randint(0, 255),
            rng.randint(0, 255),
            rng.randint(1, 254),
        )
        environ = {"REMOTE_ADDR": ".".join(map(str, octets))}
        headers = {"User-Agent": rng.choice(AGENTS)}
        page = client.get("/signup", environ_base=environ, headers=headers)
        html = page.get_data(as_text=True)
        group = html.split('data-group="', 1)[1].split('"', 1)[0] if "data-group" in html else ""
        seen["groups"][group or "(none)"] = seen["groups"].get(group or "(none)", 0) + 1
        seen["banner"]["shown" if 'id="banner"' in html else "hidden"] += 1
        seen["pages"]["signup"] += 1
        if rng.random() < RELOAD_RATE:  # same browser, same group: a second visit
            client.get("/signup", environ_base=environ, headers=headers)
            seen["pages"]["signup"] += 1
        if rng.random() < CLICK_RATE.get(group, 0.10):
            client.post("/signup/click", environ_base=environ, headers=headers)
        if (i + 1) % step == 0 or i + 1 == visitors:
            progress(i + 1, visitors, out)
    return seen


def run(args: argparse.Namespace) -> int:
    module = find_demo_app(args.app_dir)
    store = args.store or str(Path(tempfile.mkdtemp(prefix="flagware-demo-")) / "events.db")
    # A fixed key: the demo's visitors are simulated, and its store is throwaway.
    from flagware.client import Flagware  # not at import: the CLI's other commands need no SDK

    client = Flagware(
        spec=module.SPEC,
        event_store=store,
        hash_key="flagware-demo",
        allow_random_override=True,
        diagnostics=args.serve,  # from this machine only, as always without a token
    )
    app = module.create_app(client)
    if args.serve:
        from werkzeug.serving import run_simple

        base = f"http://{args.host}:{args.port}"
        print(f"flagware demo: {base}/signup  (events in {store}; diagnostics: {base}/_flagware/)")
        try:
            run_simple(args.host, args.port, app, threaded=True)
        finally:
            client.close()
        return 0

    print(f"flagware demo: {args.visitors} visitors through the seed lab (local engine)")
    started = time.perf_counter()
    seen = simulate(app, args.visitors, seed=args.seed, cookie_name=client.cookie_name)
    client.close()
    print(f"({time.perf_counter() - started:.1f} s; events in {store})", file=sys.stderr)
    print("\nWhat the visitors saw:")
    for group, count in sorted(seen["groups"].items()):
        print(f"  button_color {group:<10} {count:>6} visitors")
    print(f"  new_signup banner shown to {seen['banner']['shown']} of {args.visitors}")
    print("\nWhat was logged:")
    for name, count in _event_counts(store):
        print(f"  {name:<28} {count:>6}")
    _print_results(module.SPEC, store)
    return 0


def _event_counts(store: str) -> list[tuple[str, int]]:
    from flagware.events.store import connect

    conn = connect(store, readonly=True)
    try:
        rows = conn.execute("SELECT event, count(*) FROM events GROUP BY event ORDER BY event")
        return [(str(name), int(count)) for name, count in rows]
    finally:
        conn.close()


def _print_results(spec: Path, store: str) -> None:
    """The results table (the seed lab's alpha, 0.1) and the HTML report."""
    from flagware.results import command

    def results(format: str, output: str | None) -> None:
        command.run(
            argparse.Namespace(
                experiment="button_color",
                spec=str(spec),
                store=store,
                alpha=0.1,
                format=format,
                output=output,
            )
        )

    print()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        results("text", None)
    # The same --seed prints the same report: all but the wall-clock times
    # its visitors were simulated at (the "Data:" line).
    lines = table.getvalue().splitlines(keepends=True)
    print("".join(line for line in lines if not line.startswith("Data: ")), end="")
    report = Path(store).with_name("button_color.html")
    results("html", str(report))
    print(f"\nHTML report: {report}", file=sys.stderr)
    # The folder stays for a second look, which a trial could not take: its
    # own spec, not the shipped one, was refused against the demo's store.
    print(
        f"Read it again: flagware results button_color --alpha 0.1 --spec {shlex.quote(str(spec))}"
        f" --store {shlex.quote(store)}  (the folder is yours to delete)",
        file=sys.stderr,
    )


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the seed lab demo with simulated visitors",
        description="Drive simulated visitors through the seed lab's Flask app (shipped in"
        " flagware; needs flagware[flask]) and print what they saw, what was logged and the"
        " results. The same --seed prints the same report.",
    )
    parser.add_argument(
        "--visitors", type=int, default=3000, help="how many visitors (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="the simulation's random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--store", metavar="PATH", help="event store (default: a new temporary file)"
    )
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        help="a folder with another demo app.py (default: the one shipped in flagware)",
    )
    parser.add_argument("--serve", action="store_true", help="serve the demo for a browser instead")
    parser.add_argument(
        "--host", default="127.0.0.1", help="--serve: address (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=5000, help="--serve: port (default: %(default)s)"
    )
    parser.set_defaults(func=run)
