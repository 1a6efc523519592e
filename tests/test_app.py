"""The real app in a real browser: Playwright driving Debian's chromium against a live local server."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO, require_bundled_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_bundled_model()
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "OODGEN_HOME": str(tmp_path_factory.mktemp("home")), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"app exited early:\n{log.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("app did not start within 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.goto(server)
        yield pg
        browser.close()


def _shot(page, tmp_path, name: str) -> None:
    """Screenshot to $OODGEN_SCREENSHOTS (README images) or the test's temp folder."""
    folder = os.environ.get("OODGEN_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def test_load_invert_and_move_alpha(page, tmp_path):
    page.get_by_text("oodgen-faces-32").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Load data").click()
    page.locator("#data_report").get_by_text("Loaded 100 samples").wait_for(timeout=60_000)
    assert page.locator("#preview img").count() >= 20
    _shot(page, tmp_path, "data")

    page.get_by_role("tab", name="Invert").click()
    steps = page.locator("#steps input[type=number]")
    steps.fill("10")
    steps.press("Enter")
    page.get_by_role("button", name="Invert", exact=True).click()
    page.locator("#invert_status").get_by_text("Inverted 100 samples").wait_for(timeout=180_000)
    _shot(page, tmp_path, "invert")

    page.get_by_role("tab", name="Generate").click()
    alpha = page.locator("#alpha input[type=number]")
    alpha.fill("0.3")
    alpha.press("Enter")
    img = page.locator("#decoded img")
    img.wait_for(timeout=60_000)
    first = img.get_attribute("src")
    alpha.fill("0.7")
    alpha.press("Enter")
    page.wait_for_function("(s) => { const i = document.querySelector('#decoded img'); return i && i.src !== s; }", arg=first, timeout=60_000)
    strip_button = page.get_by_role("button", name="Interpolation strip i -> j")
    strip_button.click()
    page.locator("#strip img").nth(6).wait_for(timeout=60_000)
    _shot(page, tmp_path, "generate")
