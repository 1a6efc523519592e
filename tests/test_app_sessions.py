"""The app in a real browser across server restarts and under fast raters (Playwright on Debian's chromium).

Each test starts its own server on a fresh workspace with a small MOS study in it, so it runs alone
(``pytest tests/test_app_sessions.py -k restart``) without the long flow of tests/test_app.py.
"""

import csv
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from oodgen import ratings as R
from tests.conftest import REPO, SAMPLES, require_bundled_model
from tests.test_app import CHROMIUM, _choose, _fill, _free_port, _tab

STUDY = "fast-mos"
N_ITEMS = 12  # 6 real + 6 "generated", no repeats


class AppServer:
    """``python app.py`` on one port and workspace; :meth:`restart` kills it and starts a new process on the same ones."""

    def __init__(self, home: Path, log_dir: Path) -> None:
        self.home, self.log_dir, self.port = home, log_dir, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_SERVER_NAME": "127.0.0.1", "OODGEN_HOME": str(self.home),
               "GRADIO_ANALYTICS_ENABLED": "False", "OODGEN_DEFAULT_MODEL": "oodgen-faces-32"}
        env.pop("OODGEN_BROWSER_SECRET", None)  # the secret must come from the workspace
        self.starts += 1
        log = open(self.log_dir / f"app{self.starts}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"app exited early:\n{log.read()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail("app did not start within 180 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # like a crash: nothing is saved on the way out
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()


def _make_study(home: Path) -> None:
    real = sorted((SAMPLES / "galaxy").glob("*.png"))[:6]
    gen = sorted((SAMPLES / "faces").glob("*.png"))[:6]  # stand-ins for a generated set
    items = [R.StudyItem(p, "real") for p in real] + [R.StudyItem(p, "generated", "slerp", "oodgen-faces-32") for p in gen]
    R.create_study(home, STUDY, "galaxy", items, repeat_fraction=0.0, display_size=128)


@pytest.fixture
def app_server(tmp_path):
    require_bundled_model()
    home = tmp_path / "home"
    _make_study(home)
    srv = AppServer(home, tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def browser(app_server):
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _page(browser, url):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.goto(url)
    pg.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
    return pg


def _start_rating(page, rater: str) -> None:
    _tab(page, "Rate")
    _fill(page, "rater", rater)
    _choose(page, "study", STUDY)
    page.locator("#rate_start").click()
    page.locator("#rate_progress").get_by_text(f"1 / {N_ITEMS}").wait_for(timeout=30_000)
    _wait_image(page)


def _wait_image(page) -> None:
    page.wait_for_function("() => { const i = document.querySelector('#rate_image img'); return i && i.complete && i.naturalWidth > 0; }",
                           timeout=30_000)


def _rows(home: Path, rater: str) -> list[dict]:
    path = R.default_ratings_path(home)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if R.unneutralize(r["rater"]) == rater]


def test_restart_then_reload_shows_the_same_datasets_and_rater(app_server, browser):
    page = _page(browser, app_server.url)
    # an upload (a dataset only this browser sees) and a rater session remembered by the browser
    _tab(page, "Data")
    page.get_by_text("Upload a new dataset").click()
    page.locator("input[type=file]").first.set_input_files([str(p) for p in sorted((SAMPLES / "faces").glob("*.png"))[:3]])
    page.get_by_label("Dataset name").fill("restart set")
    page.get_by_role("button", name="Save dataset").click()
    page.locator("#data_report").get_by_text("Saved as dataset").wait_for(timeout=60_000)
    _start_rating(page, "Dr Restart")
    page.locator("#score_4").click()
    page.locator("#rate_progress").get_by_text(f"2 / {N_ITEMS}").wait_for(timeout=30_000)

    app_server.restart()  # a new process: before the fix it had a new random secret and could not read the browser's key
    page.reload()
    page.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
    _tab(page, "Rate")
    page.wait_for_function("() => document.querySelector('#rater input, #rater textarea')?.value === 'Dr Restart'", timeout=30_000)
    page.locator("#rate_progress").get_by_text(f"2 / {N_ITEMS}").wait_for(timeout=30_000)  # resumed where the rater was
    _tab(page, "Data")
    page.locator("#dataset input").click()
    page.get_by_role("option", name="restart set").first.wait_for(timeout=10_000)  # the upload is still this browser's
    page.keyboard.press("Escape")
    assert len(_rows(app_server.home, "Dr Restart")) == 1
    secret = app_server.home / ".browser_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
