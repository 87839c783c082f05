"""The diagnostics page end to end: the Flask demo on a real server, headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run``
installs them). ``FLAGWARE_UPDATE_SCREENSHOT=1`` also writes the screenshot
the README shows to ``examples/flask_demo/diagnostics.png``; otherwise it goes
to the test's temporary directory, so a test run never changes the repository.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from examples.flask_demo.app import SPEC, create_app
from flagware import current_flags
from flagware.demo import simulate

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-test-token-0123456789abcdef"
SCREENSHOT = Path(__file__).parent.parent / "examples" / "flask_demo" / "diagnostics.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
    reason="headless browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
    "(apt-get install chromium chromium-driver)",
)

# Every flag that keeps Chromium from talking to anything but the test server.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # the CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--window-size=1200,900",
]


@pytest.fixture
def serve(make_client: Any) -> Iterator[Callable[..., str]]:
    """Factory: the demo app with diagnostics on, served on loopback; returns its URL."""
    servers: list[tuple[Any, threading.Thread]] = []

    def start(*, visitors: int = 0) -> str:
        client = make_client(spec=SPEC, diagnostics=True)
        app = create_app(client)
        _add_probe(app)
        if visitors:
            simulate(app, visitors, out=io.StringIO())  # results need data to draw
            client.flush()
        httpd = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=httpd.serve_forever, name="diagnostics-server")
        thread.start()
        servers.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_port}"

    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _add_probe(app: Flask) -> None:
    """A route that logs an event a hostile visitor could have named."""

    @app.post("/probe")
    def probe() -> str:
        current_flags().log_event(
            "probe <img id=pwned src=x>", value=7, metadata={"note": "<b id=bold>hi</b>"}
        )
        return "ok"


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Paths are given, so Selenium Manager has nothing to fetch; say so anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def test_page_shows_you_and_events_arrive_live(
    serve: Callable[..., str], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = serve(visitors=300)
    wait = WebDriverWait(browser, 10, poll_frequency=0.2)

    # The app first, as a visitor: its button says which group we are in.
    browser.get(base + "/signup")
    group = browser.find_element(By.ID, "signup").get_attribute("data-group")
    sees_banner = bool(browser.find_elements(By.ID, "banner"))
    stable_id = browser.get_cookie("flagware_id")["value"]

    browser.get(base + "/_flagware/")
    visitor = browser.find_element(By.ID, "visitor").text
    assert stable_id in visitor and "userID" in visitor and "127.0.0.1" not in visitor
    experiments = {r[0]: r[1] for r in _rows(browser, "experiments")}
    assert experiments["button_color"] == group
    gates = {r[0]: r[1] for r in _rows(browser, "gates")}
    assert gates["new_signup"] == ("pass" if sees_banner else "fail")
    assert browser.find_elements(By.CSS_SELECTOR, "#results svg.chart")  # the results chart
    assert browser.find_element(By.ID, "engine").text == "local"

    # Events logged elsewhere appear on the open page, with no reload.
    browser.execute_script("window.stillTheSamePage = true;")
    last = _last_id(browser)
    _request(base + "/signup")  # visited_signup and two exposures
    _request(base + "/signup/click", post=True)
    wait.until(lambda driver: len(_rows_after(driver, last)) >= 4)
    assert browser.execute_script("return window.stillTheSamePage === true;")
    assert "signup_clicked" in _rows_after(browser, last)[0].text  # newest first
    assert "(live)" in browser.find_element(By.ID, "poll-status").text
    _screenshot(browser, tmp_path)

    # A hostile event name arrives as text, never as markup.
    last = _last_id(browser)
    _request(base + "/probe", post=True)
    wait.until(lambda driver: _rows_after(driver, last))
    assert "probe <img id=pwned src=x>" in _rows_after(browser, last)[0].text
    assert not browser.find_elements(By.ID, "pwned")
    assert not browser.find_elements(By.ID, "bold")
    assert browser.execute_script("return window.stillTheSamePage === true;")


def test_token_link_once_then_the_cookie_carries_the_session(
    serve: Callable[..., str], browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("FLAGWARE_DIAGNOSTICS_TOKEN", TOKEN)
    base = serve()
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token: the app's own 404
        _request(base + "/_flagware/")
    assert refused.value.code == 404
    refused.value.close()

    browser.get(base + "/_flagware/?token=" + TOKEN)
    assert browser.find_element(By.TAG_NAME, "h1").text == "flagware diagnostics"
    assert "token" not in browser.current_url  # replaced in the address bar and history
    assert browser.get_cookie("flagware_diagnostics")["sameSite"] == "Strict"
    # The polling fetch carries the cookie: new events still arrive.
    last = _last_id(browser)
    _request(base + "/signup")
    WebDriverWait(browser, 10, poll_frequency=0.2).until(lambda d: _rows_after(d, last))
    browser.get(base + "/_flagware/")  # and so does the next visit, without the token
    assert browser.find_element(By.TAG_NAME, "h1").text == "flagware diagnostics"


def _last_id(browser: Any) -> int:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#events tr[data-id]")
    return max((int(r.get_attribute("data-id")) for r in rows), default=0)


def _rows_after(browser: Any, last: int) -> list[Any]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#events tr[data-id]")
    return [r for r in rows if int(r.get_attribute("data-id")) > last]


def _rows(browser: Any, table_id: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tr")
    return [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows if r.text][1:]


def _request(url: str, *, post: bool = False) -> None:
    """Another visitor, outside the browser: no cookie, so a new stableID."""
    # A browser's agent: urllib's own is a bot's, whose flag reads expose nothing.
    headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Firefox/121.0"}
    request = urllib.request.Request(url, data=b"" if post else None, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _screenshot(browser: Any, tmp_path: Path) -> None:
    """The whole page in one PNG: the window grows to the document's height first."""
    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(1200, min(int(height) + 40, 4000))
    path = tmp_path / "diagnostics.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("FLAGWARE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, SCREENSHOT)


def _submit_and_wait(browser: Any, button: str) -> None:
    """Click a form's button and wait until the page it posts to has replaced this one.

    Without the wait, the next lookup can find the old page's elements and then
    lose them mid-read ("stale element"), which failed this test now and then.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, button).click()

    def replaced(_: Any) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Chromium sometimes reports a node of the replaced document this
            # way instead of as stale (seen once in CI).
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(browser, 10).until(replaced)
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


def test_qa_override_forces_this_browser_into_a_chosen_group(
    serve: Callable[..., str], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from flagware.events.store import EventStore

    base = serve()
    browser.get(base + "/signup")
    natural = browser.find_element(By.ID, "signup").get_attribute("data-group")
    banner = bool(browser.find_elements(By.ID, "banner"))
    stable_id = browser.get_cookie("flagware_id")["value"]
    chosen = "Red" if natural == "Control" else "Control"

    browser.get(base + "/_flagware/")
    assert "No override" in browser.find_element(By.ID, "override-status").text
    Select(browser.find_element(By.NAME, "experiment:button_color")).select_by_value(chosen)
    Select(browser.find_element(By.NAME, "gate:new_signup")).select_by_value(
        "fail" if banner else "pass"
    )
    _submit_and_wait(browser, "override-apply")
    assert browser.current_url == base + "/_flagware/"  # back on the page after the post
    status = browser.find_element(By.ID, "override-status").text
    assert "override active" in status and f"button_color = {chosen}" in status
    experiments = {r[0]: r[1] for r in _rows(browser, "experiments")}
    assert experiments["button_color"] == f"{chosen} override"
    cookie = browser.get_cookie("flagware_qa")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # The app, in this browser: the chosen group and gate value, exposures marked.
    browser.get(base + "/signup")
    assert browser.find_element(By.ID, "signup").get_attribute("data-group") == chosen
    assert bool(browser.find_elements(By.ID, "banner")) is not banner
    _request(base + "/signup")  # another visitor, without the cookie: not forced
    with EventStore(tmp_path / "events.db") as store:
        deadline = 50
        while deadline:
            mine = [e for e in store.iter_events() if e["stable_id"] == stable_id]
            if sum(e["event"] == "statsig::config_exposure" for e in mine) >= 2:
                break
            deadline -= 1
            threading.Event().wait(0.1)
    exposures = [e for e in mine if e["event"] == "statsig::config_exposure"]
    assert [e["metadata"]["ruleID"] for e in exposures][-1] == "override"
    assert exposures[-1]["group"] == chosen
    assert exposures[0]["metadata"]["ruleID"] != "override"  # the visit before the override

    # A cookie the server did not sign changes nothing.
    value = cookie["value"]
    browser.add_cookie({"name": "flagware_qa", "value": value[:-4] + "0000", "path": "/"})
    browser.get(base + "/signup")
    assert browser.find_element(By.ID, "signup").get_attribute("data-group") == natural

    # Cleared from the page: the natural group again.
    browser.add_cookie({"name": "flagware_qa", "value": value, "path": "/"})
    browser.get(base + "/_flagware/")
    _submit_and_wait(browser, "override-clear")
    assert "No override" in browser.find_element(By.ID, "override-status").text
    assert browser.get_cookie("flagware_qa") is None
    browser.get(base + "/signup")
    assert browser.find_element(By.ID, "signup").get_attribute("data-group") == natural
