"""The real app in a real browser: Playwright driving Debian's chromium against a live local server."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from oodgen.config import DDIMSettings
from tests.conftest import REPO, require_bundled_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


_HOME: dict = {}


def server_home(server) -> Path:
    """The OODGEN_HOME of the running test server."""
    return Path(_HOME["home"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``python app.py`` on one port and workspace (the fast 32x32 model: these tests exercise the app's flows);
    :meth:`restart` kills it and starts a new process on the same ones."""

    def __init__(self, home: Path, log_dir: Path) -> None:
        self.home, self.log_dir, self.port = Path(home), Path(log_dir), _free_port()
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

    def stop(self, kill: bool = True) -> None:
        """Kill the server (like a crash: nothing is saved on the way out), or terminate it when ``kill`` is False."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()


def launch_chromium(playwright):
    """Debian's chromium through Playwright (a clear failure when it is not installed)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: apt-get install chromium (see README)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_bundled_model()
    srv = AppServer(_HOME.setdefault("home", tmp_path_factory.mktemp("home")), tmp_path_factory.mktemp("log"))
    srv.start()
    yield srv.url
    srv.stop(kill=False)


@pytest.fixture(scope="module")
def page(server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.goto(server)
        yield pg
        browser.close()


def _shot(page, tmp_path, name: str) -> None:
    """Screenshot to $OODGEN_SCREENSHOTS (README images) or the test's temp folder."""
    folder = os.environ.get("OODGEN_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def _number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).first.click()


def _wait_text(page, elem_id: str, text: str, timeout: float = 30_000) -> None:
    """Wait until the element's visible text contains ``text`` (tables render cells twice, one hidden)."""
    page.wait_for_function("([id, t]) => { const e = document.getElementById(id); return e && e.innerText.includes(t); }",
                           arg=[elem_id, text], timeout=timeout)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def test_open_page_shows_model_and_bundled_galaxies(page, tmp_path):
    page.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
    page.locator("#data_report").get_by_text("Loaded 100 samples").wait_for(timeout=60_000)
    assert page.locator("#preview img").count() >= 20
    _shot(page, tmp_path, "data")


def test_invert_in_background_with_progress(page, tmp_path):
    _tab(page, "Invert")
    _number(page, "steps", 20)
    page.locator("#invert_btn").click()
    page.locator("#invert_note").get_by_text("Queued").wait_for(timeout=30_000)
    # the progress bar with step counts and an ETA, while it runs
    page.locator("#jobs .oodgen-job[data-status=running] progress").wait_for(timeout=60_000)
    page.locator("#jobs .oodgen-job[data-status=running]").get_by_text("image-steps").wait_for(timeout=60_000)
    _shot(page, tmp_path, "invert_running")
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("inverted 100 samples").wait_for(timeout=240_000)
    _wait_text(page, "runs", f"galaxy t{DDIMSettings().t_end}")
    _shot(page, tmp_path, "invert")


def test_diagnostics_table_and_umap(page, tmp_path):
    _tab(page, "Diagnostics")
    page.locator("#diag_run input").wait_for()
    page.wait_for_function("() => document.querySelector('#diag_run input').value.includes('galaxy')", timeout=30_000)
    page.locator("#diag_btn").click()
    _wait_text(page, "diag_table", "Linear SVM test accuracy", 300_000)
    page.locator("#diag_summary").get_by_text("linear SVM test accuracy").wait_for(timeout=30_000)
    page.locator("#umap .js-plotly-plot").wait_for(timeout=60_000)
    n_points = page.evaluate("() => document.querySelector('#umap .js-plotly-plot')._fullData.reduce((n, tr) => n + (tr._length || 0), 0)")
    assert n_points >= 100 + 64  # the run's 100 OOD latents and the ID reference
    _shot(page, tmp_path, "diagnostics")


def test_alpha_slider_updates_image(page, tmp_path):
    _tab(page, "Generate")
    page.locator("#thumbs img").nth(50).wait_for(timeout=60_000)
    page.locator("#thumbs img").nth(5).click()  # sample i
    _wait_text(page, "pick_note", "Sample i = 5")
    page.locator("#thumbs img").nth(40).click()  # sample j
    page.wait_for_function("() => document.querySelector('#j input[type=number]').value === '40'", timeout=30_000)
    _number(page, "alpha", 0.3)
    img = page.locator("#decoded img")
    img.wait_for(timeout=60_000)
    first = img.get_attribute("src")
    t0 = time.time()
    _number(page, "alpha", 0.7)
    page.wait_for_function("(s) => { const i = document.querySelector('#decoded img'); return i && i.src !== s; }", arg=first, timeout=60_000)
    print(f"alpha change to new image: {time.time() - t0:.2f} s")
    page.get_by_role("button", name="Interpolation strip i -> j").click()
    page.locator("#strip img").nth(6).wait_for(timeout=60_000)
    _shot(page, tmp_path, "generate")


def test_fast_thumbnail_clicks_alternate_i_and_j(page):
    _tab(page, "Generate")
    page.locator("#thumbs img").nth(50).wait_for(timeout=60_000)
    values = "() => [document.querySelector('#i input[type=number]').value, document.querySelector('#j input[type=number]').value]"
    # clicks made before the server answers the previous one: i, j, i, j ... in click order, none lost
    for clicks, gap_ms in (([7, 30], 0), ([12, 44, 3, 60], 15), ([20, 21], 15), ([8, 9, 10, 11, 12, 13], 0)):
        page.evaluate("([ks, gap]) => { const t = document.querySelectorAll('#thumbs img');"
                      " ks.forEach((k, n) => gap ? setTimeout(() => t[k].click(), n * gap) : t[k].click()); }", [clicks, gap_ms])
        expected = [str(clicks[-2]), str(clicks[-1])]
        answered = ("([i, j]) => document.querySelector('#i input[type=number]').value === i && "
                    "document.querySelector('#j input[type=number]').value === j && "
                    "(document.querySelector('#pick_note') || {}).innerText?.trim() === `Sample j = ${j}.`")
        try:  # the last click answered (answers come one at a time, in click order): however long a loaded machine takes
            page.wait_for_function(answered, arg=expected, timeout=180_000, polling=100)
        except Exception:  # noqa: BLE001 - say what the page shows instead
            pass
        page.wait_for_timeout(1000)  # and no late answer overwrites them
        assert page.evaluate("() => window.oodgenPick.last") == clicks[-2:]  # the page's record of its clicks, in click order
        assert page.evaluate(values) == expected, page.locator("#pick_note").inner_text()
        assert page.locator("#pick_note").inner_text() == f"Sample j = {clicks[-1]}."


def test_batch_controls_start_at_the_generation_defaults_and_reach_the_settings(monkeypatch, tmp_path):
    """No browser: the batch controls' defaults are GenerationSettings(), and on_generate passes every option on."""
    monkeypatch.setenv("OODGEN_HOME", str(tmp_path))
    import app
    from oodgen.config import GenerationSettings

    g = GenerationSettings()
    by_id = {b.elem_id: b for b in app.demo.blocks.values() if getattr(b, "elem_id", None)}
    assert (by_id["gen_method"].value, by_id["gen_pairing"].value) == (g.method, g.pairing)
    assert (by_id["gen_neighbours"].value, by_id["gen_spread"].value, by_id["gen_clusters"].value) == (g.neighbours, g.alpha_spread, g.clusters)
    assert by_id["gen_neighbours"].visible == (g.method != "gaussian" and g.pairing == "nearest")
    assert (by_id["gen_noise"].value, by_id["gen_calibration"].value, by_id["gen_centre"].value) == (g.noise, g.calibration, g.centre)
    seen = []
    monkeypatch.setattr(app.service, "start_generate", lambda owner, run, n, name, s: seen.append((n, name, s)) or _FakeJob())
    monkeypatch.setattr(app.service, "run_in_request", lambda job: None)
    monkeypatch.setattr(app.service, "jobs_html", lambda owner: "")
    app.on_generate("anon-a", "run-1", "lerp", 8.0, 0.4, 0.1, 3, True, 0.2, False, "nearest", 4.0, 0.15, 2.0, " my set ")
    assert seen == [(8, "my set", GenerationSettings(method="lerp", alpha=0.4, eta=0.1, seed=3, geometric_filter=True, filter_tolerance=0.2,
                                                     pairing="nearest", neighbours=4, alpha_spread=0.15, clusters=2))]
    app.on_generate("anon-a", "run-1", "slerp", 4, 0.5, 0, 0, False, 0.05, False, "random", 5, 0.0, 1, "", "sky", None, None, "origin", "none")
    assert seen[-1][2] == GenerationSettings(noise="sky", centre="origin", calibration="none")
    import gradio as gr

    with pytest.raises(gr.Error, match="Neighbours: enter a whole number"):
        app.on_generate("anon-a", "run-1", "slerp", 8, 0.5, 0, 0, False, 0.05, False, "nearest", None, 0.0, 1, "")
    with pytest.raises(gr.Error, match="alpha_spread"):
        app.on_generate("anon-a", "run-1", "slerp", 8, 0.5, 0, 0, False, 0.05, False, "nearest", 5, 0.7, 1, "")


class _FakeJob:
    label = "fake"


def test_generate_set_and_download_zip(page, server, tmp_path):
    _tab(page, "Generate")
    page.locator("#gen_pairing").get_by_label("random", exact=True).check()
    page.locator("#gen_neighbours").wait_for(state="hidden", timeout=30_000)  # random pairing: no neighbour count
    page.locator("#gen_pairing").get_by_label("nearest", exact=True).check()
    page.locator("#gen_neighbours input[type=number]").wait_for(timeout=30_000)  # shown for nearest pairing
    _number(page, "gen_neighbours", 4)
    _number(page, "gen_spread", 0.1)
    _number(page, "gen_n", 8)
    _fill(page, "gen_name", "browser set")
    page.locator("#gen_btn").click()
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("generated 8 samples").wait_for(timeout=180_000)
    page.wait_for_function("() => document.querySelector('#generated input').value.includes('browser set')", timeout=30_000)
    page.locator("#gen_gallery img").nth(7).wait_for(timeout=60_000)
    for text in ("nearest pairs (4 neighbours)", "pairing nearest", "neighbours 4", "alpha_spread 0.1"):  # what the set's manifest records
        _wait_text(page, "gen_info", text)
    page.locator("#dl_btn").click()
    link = page.locator("#dl_file a").first
    link.wait_for(timeout=60_000)
    with page.expect_download() as dl:
        link.click()
    path = tmp_path / "set.zip"
    dl.value.save_as(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert sum(n.endswith(".png") for n in names) == 8
    assert any(n.endswith("generated.json") for n in names) and any(n.endswith("latents.safetensors") for n in names)
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read(next(n for n in names if n.endswith("generated.json"))))
    gen = manifest["generation"]
    assert (gen["pairing"], gen["neighbours"], gen["alpha_spread"], gen["method"]) == ("nearest", 4, 0.1, "slerp"), gen
    # every pair is a sample and one of its 4 nearest latents in the run; alpha within 0.5 +- 0.1
    import torch

    from oodgen.latents import load_latents
    from oodgen.workspace import Workspace

    z, _ = load_latents(Workspace(server_home(server)).get("runs", manifest["run"]).root / "latents.safetensors")
    d = torch.cdist(z.reshape(len(z), -1).double(), z.reshape(len(z), -1).double())
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(4, dim=1, largest=False).indices.tolist()
    assert len(manifest["samples"]) == 8
    a0 = gen["alpha"]  # the alpha slider is shared with the single-image view, which earlier tests move
    for dr in manifest["samples"]:
        assert dr["j"] in nearest[dr["i"]] and a0 - 0.1 - 1e-9 <= dr["alpha"] <= a0 + 0.1 + 1e-9, dr
    _shot(page, tmp_path, "generate_set")
    # without a reload, the new set is offered to the study creator in the Results tab
    _tab(page, "Results")
    page.get_by_text("Create a study").click()
    page.locator("#st_gen input").click()
    page.get_by_role("option", name="browser set").first.wait_for(timeout=10_000)
    page.keyboard.press("Escape")
    page.get_by_text("Create a study").click()  # closed again, as the later tests expect


def test_quality_of_a_generated_set(page, tmp_path):
    _tab(page, "Quality")
    _choose(page, "q_gen", "browser set")
    _wait_text(page, "q_summary", "Not evaluated yet")
    page.locator("#q_kind").get_by_label("image", exact=True).check()  # the fast statistics (no statmorph)
    _number(page, "q_boot", 20)
    page.locator("#q_btn").click()
    page.locator("#q_note").get_by_text("Queued").wait_for(timeout=30_000)
    # the background job finishes, and the panel fills in without a reload
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("quality of 'browser set'").wait_for(timeout=300_000)
    for text in ("floor (real A vs B)", "browser set", "crossfade", "C2ST statistics"):
        _wait_text(page, "q_table", text, 60_000)
    _wait_text(page, "q_stats", "verdict")
    _wait_text(page, "q_summary", "100 real images")
    for pic in ("q_montage", "q_nn"):  # the pictures arrive and decode (scrolled to: images load lazily)
        page.locator(f"#{pic} img").wait_for(state="attached", timeout=60_000)
        page.locator(f"#{pic}").scroll_into_view_if_needed()
        page.wait_for_function("(id) => { const i = document.querySelector(`#${id} img`); return i && i.naturalWidth > 200; }",
                               arg=pic, timeout=60_000)
    for plot in ("q_hist", "q_spectra", "q_dist", "q_mem"):
        page.locator(f"#{plot} .js-plotly-plot").wait_for(timeout=60_000)
    _wait_text(page, "q_file", ".html")
    _shot(page, tmp_path, "quality")
    # pressing Evaluate again with the same settings reads the cache
    page.locator("#q_btn").click()
    page.locator("#q_note").get_by_text("Already evaluated").wait_for(timeout=30_000)


def test_bandwidth_search_job(page, tmp_path):
    _tab(page, "Search")
    _choose(page, "s_source", "dataset: bundled: faces")
    _wait_text(page, "s_summary", "No search yet")
    _fill(page, "s_t", "300")
    _fill(page, "s_eta", "0")
    for box, keep in (("s_pairing", "random"), ("s_noise", "none")):  # one cell: random pairs, no noise model
        for label in page.locator(f"#{box} label").all_inner_texts():
            page.locator(f"#{box}").get_by_label(label.strip(), exact=True).set_checked(label.strip() == keep)
    _number(page, "s_n", 6)
    page.locator("#s_kind").get_by_label("image", exact=True).check()
    _number(page, "s_boot", 20)
    page.locator("#s_btn").click()
    page.locator("#s_note").get_by_text("Queued").wait_for(timeout=30_000)
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("search of 'faces'").wait_for(timeout=300_000)
    for text in ("floor", "crossfade", "random", "C2ST statistics"):
        _wait_text(page, "s_table", text, 60_000)
    _wait_text(page, "s_summary", "Best: t_end 300")
    page.locator("#s_plot .js-plotly-plot").wait_for(timeout=60_000)
    _wait_text(page, "s_file", ".html")
    _shot(page, tmp_path, "search")
    page.locator("#s_btn").click()  # the same grid again reads the cache
    page.locator("#s_note").get_by_text("Already searched").wait_for(timeout=30_000)


def test_pixel_baseline_in_batch_generation(page, tmp_path):
    _tab(page, "Generate")
    page.locator("#gen_method").get_by_label("finetune", exact=True).check()
    page.locator("#gen_ft_steps input[type=number]").wait_for(timeout=30_000)  # the fine-tuning budget shows for finetune only
    page.locator("#gen_method").get_by_label("pixel", exact=True).check()
    page.locator("#gen_ft_steps").wait_for(state="hidden", timeout=30_000)
    _number(page, "gen_n", 6)
    _fill(page, "gen_name", "browser pixel")
    page.locator("#gen_btn").click()
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("generated 6 samples (pixel)").wait_for(timeout=120_000)
    _choose(page, "generated", "browser pixel")
    _wait_text(page, "gen_info", "browser pixel")
    _wait_text(page, "gen_info", "method pixel")
    page.locator("#gen_gallery img").nth(5).wait_for(timeout=60_000)
    from oodgen.config import GenerationSettings

    page.locator("#gen_method").get_by_label(GenerationSettings().method, exact=True).check()  # back to the default method


def test_job_survives_reload_and_can_be_cancelled(page, tmp_path):
    _tab(page, "Invert")
    _number(page, "steps", 200)
    page.locator("#invert_btn").click()
    page.locator("#jobs .oodgen-job[data-status=running]").wait_for(timeout=60_000)
    page.reload()
    running = page.locator("#jobs .oodgen-job[data-status=running]")
    running.wait_for(timeout=60_000)  # found again after the reload (same browser, same owner)
    assert "200 steps" in running.inner_text()
    _choose(page, "cancel_pick", "invert galaxy")
    page.get_by_role("button", name="Cancel job").click()
    page.locator("#jobs .oodgen-job[data-status=cancelled]").wait_for(timeout=60_000)


def test_other_browsers_do_not_see_my_runs(server, page):
    ctx = page.context.browser.new_context()  # a second visitor: fresh local storage, so another owner
    try:
        other = ctx.new_page()
        other.goto(server)
        other.locator("#jobs").get_by_text("No jobs yet").wait_for(timeout=60_000)
        other.get_by_role("tab", name="Generate", exact=True).click()
        other.locator("#gen_run input").click()
        other.wait_for_timeout(500)
        assert other.get_by_role("option", name="galaxy").count() == 0
    finally:
        ctx.close()


def _rate_item_shown(page, previous=None) -> str:
    """Wait until the Rate tab's image of a study item (another than ``previous``, a src) has loaded, and return its src.

    A score click names the item whose image is on screen (RATE_JS); clicked while the next image is still loading, it
    names none and is not recorded, which a loaded machine makes likely: so wait for the image, not for a fixed time.
    """
    page.wait_for_function(
        "(prev) => { const img = document.querySelector('#rate_image img'); const src = img ? img.getAttribute('src') || '' : '';"
        " return img && img.complete && img.naturalWidth > 0 && /item_[0-9]+[.]png/.test(src) && src !== prev; }",
        arg=previous, timeout=120_000, polling=100)
    return page.locator("#rate_image img").get_attribute("src")


def test_mos_study_rate_reload_resume_and_results(page, server, tmp_path):
    _tab(page, "Results")
    page.get_by_text("Create a study").click()
    _fill(page, "st_id", "galaxy-mos")
    _number(page, "st_n", 3)
    _choose(page, "st_gen", "browser set")
    page.keyboard.press("Escape")
    _choose(page, "st_real", "bundled: galaxy")
    _number(page, "st_repeat", 0)
    page.locator("#st_btn").click()
    page.locator("#st_note").get_by_text("Created study galaxy-mos").wait_for(timeout=60_000)

    _tab(page, "Rate")
    _fill(page, "rater", "=Dr Test")
    _choose(page, "study", "galaxy-mos")
    page.locator("#rate_start").click()
    progress = page.locator("#rate_progress")
    progress.get_by_text("1 / 6").wait_for(timeout=60_000)
    shown = _rate_item_shown(page)
    _shot(page, tmp_path, "rate")
    for k, score in enumerate((4, 3, 5), start=2):  # a score names the item on screen (RATE_JS): click once it has loaded
        page.locator(f"#score_{score}").click()
        progress.get_by_text(f"{k} / 6").wait_for(timeout=60_000)
        shown = _rate_item_shown(page, shown)
    page.reload()  # half-way: the session resumes at item 4 without asking
    _tab(page, "Rate")
    page.locator("#rate_progress").get_by_text("4 / 6").wait_for(timeout=60_000)
    shown = _rate_item_shown(page)
    for k, score in enumerate((2, 4), start=5):  # one at a time: a click while the last is pending is dropped (trigger_mode "once")
        page.locator(f"#score_{score}").click()
        page.locator("#rate_progress").get_by_text(f"{k} / 6").wait_for(timeout=60_000)
        shown = _rate_item_shown(page, shown)
    page.locator("#score_1").click()
    page.locator("#rate_progress").get_by_text("all items rated").wait_for(timeout=60_000)

    _tab(page, "Results")
    page.locator("#res_btn").click()
    page.locator("#res_note").get_by_text("6 ratings").wait_for(timeout=60_000)
    _wait_text(page, "res_groups", "generated")
    _wait_text(page, "res_quality", "browser set")  # the set's cached quality report beside the MOS
    assert "not evaluated" not in page.locator("#res_quality").inner_text()
    page.locator("#res_plot .js-plotly-plot").wait_for(timeout=30_000)
    page.get_by_role("button", name="Export CSV + JSON").click()
    _wait_text(page, "export_files", "mos_summary")
    _shot(page, tmp_path, "results")
    home = server_home(server)
    rows = (home / "ratings" / "ratings.csv").read_text().splitlines()
    assert rows[0] == "timestamp,study,rater,session,item,source,domain,method,model,score,repeat,response_ms,comment"
    assert len(rows) == 7 and all(",'=Dr Test," in r for r in rows[1:])  # formula neutralized


def test_no_outside_requests_and_workspace_files_are_not_served(server, page):
    ctx = page.context.browser.new_context()
    hosts = set()
    try:
        p = ctx.new_page()
        p.on("request", lambda r: hosts.add(urllib.parse.urlparse(r.url).hostname))
        p.goto(server)
        p.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
        p.wait_for_timeout(1500)
    finally:
        ctx.close()
    assert hosts <= {"127.0.0.1", None}, hosts  # fonts, scripts, analytics: nothing from outside
    home = server_home(server)
    secrets_ = [home / "ratings" / "ratings.csv", next((home / "runs").glob("*/run.json"))]
    for f in secrets_:
        assert f.exists()
        for url in (f"{server}gradio_api/file={f}", f"{server}file={f}"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url, timeout=10)
            assert e.value.code in (403, 404)
