"""The app in a real browser across server restarts and under fast raters (Playwright on Debian's chromium).

Each test starts its own server on a fresh workspace with a small MOS study in it, so it runs alone
(``pytest tests/test_app_sessions.py -k restart``) without the long flow of tests/test_app.py.
"""

import csv
from pathlib import Path

import pytest

from oodgen import ratings as R
from tests.conftest import SAMPLES, require_bundled_model
from tests.test_app import AppServer, _choose, _fill, _tab, launch_chromium

STUDY = "fast-mos"
N_ITEMS = 12  # 6 real + 6 "generated", no repeats


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
    with playwright.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def _page(browser, url):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.goto(url)
    pg.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
    return pg


def _reload_after_restart(page) -> None:
    """Reload a page whose server was restarted. Gradio's page reloads itself once it reconnects (it polls every 2 s
    after losing the connection), which aborts a reload made at the same moment (net::ERR_ABORTED, frame detached;
    a fresh-clone run beside other work failed on it): then reload again."""
    from playwright.sync_api import Error

    for attempt in range(5):
        try:
            page.reload()
            return
        except Error as e:
            if attempt == 4 or not ("ERR_ABORTED" in str(e) or "detached" in str(e)):
                raise


def _upload(page, name: str, n: int) -> None:
    """Save the first ``n`` bundled faces as a new dataset ``name`` through the Data tab."""
    _tab(page, "Data")
    page.get_by_text("Upload a new dataset").click()
    page.locator("input[type=file]").first.set_input_files([str(p) for p in sorted((SAMPLES / "faces").glob("*.png"))[:n]])
    page.get_by_label("Dataset name").fill(name)
    page.get_by_role("button", name="Save dataset").click()
    page.locator("#data_report").get_by_text("Saved as dataset").wait_for(timeout=60_000)


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
    _upload(page, "restart set", 3)
    _start_rating(page, "Dr Restart")
    page.locator("#score_4").click()
    page.locator("#rate_progress").get_by_text(f"2 / {N_ITEMS}").wait_for(timeout=30_000)

    app_server.restart()  # a new process: before the fix it had a new random secret and could not read the browser's key
    _reload_after_restart(page)
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


# Records, for every click on a score button and every key press, the item position on screen at that moment
# (the progress text "Item k / n", which arrives with the image).
RECORD_JS = """() => {
  window.oodgenShownAtClick = [];
  window.oodgenWarnings = 0;  // "not recorded" toasts seen (they may fade before they are counted otherwise)
  new MutationObserver((ms) => ms.forEach((m) => m.addedNodes.forEach((n) => {
    if (n.nodeType === 1 && n.innerText && n.innerText.includes('not recorded')) window.oodgenWarnings += 1;
  }))).observe(document.body, {childList: true, subtree: true});
  const shown = () => { const m = (document.querySelector('#rate_progress')?.innerText || '').match(/([0-9]+) \\/ [0-9]+/); return m ? +m[1] : 0; };
  document.addEventListener('click', (e) => { if (e.target.closest && e.target.closest('[id^=score_]')) window.oodgenShownAtClick.push(shown()); }, true);
}"""


def _settled(page, home, rater, expect_rows: int, warnings: int) -> None:
    """Wait until the page shows the next item with its image loaded and ``warnings`` refused clicks were answered."""
    page.wait_for_function("(k) => { const m = (document.querySelector('#rate_progress')?.innerText || '').match(/([0-9]+) \\/ /);"
                           " return m && +m[1] >= k; }", arg=expect_rows + 1, timeout=30_000)
    _wait_image(page)
    _assert_only_shown_items_rated(page, home, rater)
    page.wait_for_function("(n) => window.oodgenWarnings >= n", arg=warnings, timeout=30_000)
    page.locator("#rate_progress").get_by_text(f"{expect_rows + 1} / {N_ITEMS}").wait_for(timeout=30_000)


def _assert_only_shown_items_rated(page, home, rater: str) -> None:
    study = R.load_study(home, STUDY)
    plan = R.rater_plan(study, rater)
    rows = _rows(home, rater)
    shown = set(page.evaluate("() => window.oodgenShownAtClick"))
    # a session rates its plan in order, so row k is position k; every rated position was on screen at a click
    assert [r["item"] for r in rows] == [plan[k][0] for k in range(len(rows))]
    rated = set(range(1, len(rows) + 1))
    assert rated <= shown, f"positions {sorted(rated - shown)} were scored but never on screen at a click (shown: {sorted(shown)})"


def test_fast_clicks_and_keys_only_score_the_image_on_screen(app_server, browser):
    page = _page(browser, app_server.url)
    page.evaluate(RECORD_JS)
    _start_rating(page, "Dr Fast")
    home, rater = app_server.home, "Dr Fast"
    # two different buttons 30 ms apart, then five buttons 20 ms apart: only the first of each burst counts
    refused = 0
    for n, (buttons, gap) in enumerate([((4, 3), 30), ((5, 1), 30), ((2, 4), 30), ((5, 4, 3, 2, 1), 20)], start=1):
        page.evaluate("([bs, gap]) => bs.forEach((b, k) => setTimeout(() => document.getElementById('score_' + b).click(), k * gap))",
                      [list(buttons), gap])
        refused += len(buttons) - 1
        _settled(page, home, rater, n, refused)  # every later click of the burst was answered "not recorded"
        _assert_only_shown_items_rated(page, home, rater)
    assert len(_rows(home, rater)) == 4
    # keys 1-5 press the buttons, with the same check: three keys in a burst score one image
    page.locator("#rate_progress").click()  # focus off the text boxes
    # the burst is dispatched inside the page, 20 ms apart like the clicks above: three presses from here are three
    # round trips to the browser, and on a loaded machine this process can be descheduled between them for longer
    # than the server takes to show the next image (the later keys then rightly score that image; CI saw it)
    page.evaluate("""(keys) => keys.forEach((k, i) => setTimeout(() => (document.activeElement || document.body)
                       .dispatchEvent(new KeyboardEvent('keydown', {key: k, bubbles: true})), i * 20))""", ["3", "1", "2"])
    _settled(page, home, rater, 5, refused + 2)
    _assert_only_shown_items_rated(page, home, rater)
    page.keyboard.press("5")  # one key, one score
    _settled(page, home, rater, 6, refused + 2)
    assert [r["score"] for r in _rows(home, rater)] == ["4", "5", "2", "5", "3", "5"]


def test_rater_only_page_shows_just_the_rating_and_fits_800_px(app_server, browser):
    page = browser.new_page(viewport={"width": 800, "height": 900})
    page.goto(app_server.url + "rate")
    page.locator("#rate_progress").get_by_text("Enter your name").wait_for(timeout=60_000)  # the page's load event has answered
    assert page.get_by_role("tab", name="Data", exact=True).count() == 0  # none of the owner's tabs
    assert page.locator("#jobs").count() == 0 and page.locator("#model").count() == 0
    _fill(page, "rater", "Dr Page")
    _choose(page, "study", STUDY)
    page.locator("#rate_start").click()
    page.locator("#rate_progress").get_by_text(f"1 / {N_ITEMS}").wait_for(timeout=30_000)
    _wait_image(page)
    for s in (5, 4, 3, 2, 1):  # every button whole inside the 800 px window
        box = page.locator(f"#score_{s}").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 800, (s, box)
    page.locator("#score_2").click()
    page.locator("#rate_progress").get_by_text(f"2 / {N_ITEMS}").wait_for(timeout=30_000)
    page.reload()  # the page remembers the rater and resumes
    page.locator("#rate_progress").get_by_text(f"2 / {N_ITEMS}").wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelector('#rater input, #rater textarea')?.value === 'Dr Page'", timeout=30_000)
    assert [r["score"] for r in _rows(app_server.home, "Dr Page")] == ["2"]


def test_main_rate_tab_buttons_fit_an_800_px_window(app_server, browser):
    page = browser.new_page(viewport={"width": 800, "height": 900})
    page.goto(app_server.url)
    page.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
    _start_rating(page, "Dr Narrow")
    for s in (5, 4, 3, 2, 1):  # the owner's Rate tab lays the buttons out like the /rate page
        box = page.locator(f"#score_{s}").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 800, (s, box)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 800  # nothing sideways


def test_an_upload_is_deleted_only_after_confirmation(app_server, browser):
    from oodgen.workspace import Workspace

    page = _page(browser, app_server.url)
    _upload(page, "doomed set", 2)
    ws = Workspace(app_server.home)
    (rec,) = ws.list("datasets")
    page.get_by_text("Delete your datasets, runs, generated sets or finished jobs").click()
    _choose(page, "del_pick", "dataset: doomed set (2)")
    page.locator("#del_btn").click()
    page.locator("#del_question").get_by_text("and all its files? This cannot be undone").wait_for(timeout=30_000)
    page.locator("#del_no").click()
    page.locator("#del_note").get_by_text("Nothing deleted.").wait_for(timeout=30_000)
    assert rec.root.is_dir()  # "Keep it" kept it
    page.locator("#del_btn").click()
    page.locator("#del_yes").click()
    page.locator("#del_note").get_by_text("Deleted dataset 'doomed set'.").wait_for(timeout=30_000)
    assert ws.list("datasets") == [] and not rec.root.exists()
    page.locator("#dataset input").click()
    page.get_by_role("option", name="galaxy").first.wait_for(timeout=10_000)
    assert page.get_by_role("option", name="doomed set").count() == 0  # gone from the Data tab's list too
