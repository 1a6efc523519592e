"""What the app shows, in a real browser (Playwright on Debian's chromium): help on every tab, physical maps with band
names, units, colour bars and a per-band view (Data, Generate, Quality), the Generate tab following the Data tab with
both picks and real against generated, the domain check under a decoded sample, job labels with the run name and start
time, and the Diagnostics tab's whole tables, reconstruction pairs with MAE and plots in the page's theme.

Its own server on a fresh workspace (``pytest tests/test_app_views.py``), separate from the long flow of test_app.py;
one physical run (the 64 bundled dust maps, 10 DDIM steps, the fast 32x32 model) serves the later tests.
"""

import os

import pytest

from tests.conftest import require_bundled_model
from tests.test_app import AppServer, _choose, _fill, _number, _tab, _wait_text, launch_chromium

RUN = "dust views"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_bundled_model()
    srv = AppServer(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("log"))
    srv.start()
    yield srv.url
    srv.stop(kill=False)


@pytest.fixture(scope="module")
def browser(server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.goto(server)
    pg.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
    yield pg
    pg.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("OODGEN_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def _image_loaded(page, elem_id: str, previous: str = "", timeout: float = 120_000) -> str:
    """Wait until the first image in #elem_id has loaded (with another src than ``previous``) and return its src."""
    page.wait_for_function("([id, prev]) => { const i = document.querySelector(`#${id} img`);"
                           " return i && i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== prev; }",
                           arg=[elem_id, previous], timeout=timeout, polling=100)
    return page.locator(f"#{elem_id} img").first.get_attribute("src")


# Is the first image in #id grey (R = G = B in every sampled pixel)? Read back through a canvas.
GREY_JS = """(id) => { const i = document.querySelector(`#${id} img`); const c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let colour = 0;
  for (let k = 0; k < d.length; k += 4 * 7) if (d[k] !== d[k + 1] || d[k + 1] !== d[k + 2]) colour++;
  return colour === 0; }"""


def test_every_tab_has_short_help(page):
    expected = {"Data": ("help_data", "composite"), "Invert": ("help_invert", "t_end"), "Diagnostics": ("help_diagnostics", "noise floor"),
                "Generate": ("help_generate", "alpha")}
    for tab, (elem, word) in expected.items():
        _tab(page, tab)
        _wait_text(page, elem, word)
    _tab(page, "Invert")
    text = page.locator("#help_invert").inner_text()
    assert "DDIM steps" in text and "Batch size" in text and "999 = pure noise" in text
    _tab(page, "Diagnostics")
    text = page.locator("#help_diagnostics").inner_text()
    assert "Separable" in text and "d^¼" in text and "0.5 = the sets cannot be told apart" in text
    _tab(page, "Generate")
    text = page.locator("#help_generate").inner_text()
    assert "eta" in text and "slerp" in text and "lerp" in text and "seed" in text
    for tab, elem, words in (("Quality", "help_quality", ("C2ST", "Near-copies", "crossfade")), ("Search", "help_search", ("pairing", "eta")),
                             ("Rate", "help_rate", ("Mean Opinion Score",)), ("Results", "help_results", ("study owner", "MOS"))):
        _tab(page, tab)
        for word in words:
            _wait_text(page, elem, word)


def test_physical_maps_show_bands_units_colour_bars_and_one_band(page):
    _tab(page, "Data")
    _choose(page, "dataset", "bundled: radiation")
    _wait_text(page, "data_report", "Loaded 64 samples", 60_000)
    for word in ("R = SPIRE 250", "G = MIPS 24", "B = IRAC 4.5", "MJy/sr"):
        _wait_text(page, "data_legend", word)
    bar = _image_loaded(page, "data_colorbar")
    assert page.evaluate("() => document.querySelector('#data_colorbar img').naturalWidth") >= 300
    composite = _image_loaded(page, "preview")
    assert not page.evaluate(GREY_JS, "preview")
    page.locator("#data_view").get_by_label("band: MIPS 24", exact=True).check()
    _wait_text(page, "data_legend", "MIPS 24 alone")
    _image_loaded(page, "preview", composite)
    assert page.evaluate(GREY_JS, "preview")  # one band, in grey
    assert _image_loaded(page, "data_colorbar", bar) != bar  # its own colour bar
    _shot(page, "data_physical_band")
    page.locator("#data_view").get_by_label("composite", exact=True).check()
    _wait_text(page, "data_legend", "Composite")


def test_invert_job_label_names_the_run_and_its_start_time(page):
    _tab(page, "Invert")  # the dust maps chosen in the Data tab above
    _number(page, "steps", 10)
    _fill(page, "run_name", RUN)
    page.locator("#invert_btn").click()
    job = page.locator("#jobs .oodgen-job").filter(has_text=f"as run '{RUN}'").first
    job.wait_for(timeout=60_000)
    page.wait_for_function("(run) => [...document.querySelectorAll('#jobs .oodgen-job')].some(e => e.innerText.includes(run) &&"
                           " /(started|queued) ([0-9]{4}-[0-9]{2}-[0-9]{2} )?[0-9]{2}:[0-9]{2} UTC/.test(e.innerText))",
                           arg=f"as run '{RUN}'", timeout=60_000)
    page.locator("#jobs .oodgen-job[data-status=done]").filter(has_text=f"as run '{RUN}'").wait_for(timeout=400_000)
    assert "started" in page.locator("#jobs .oodgen-job[data-status=done]").filter(has_text=f"as run '{RUN}'").inner_text()


def test_generate_follows_the_data_tab_and_shows_both_picks_at_once(page):
    _tab(page, "Generate")
    page.wait_for_function("(run) => document.querySelector('#gen_run input').value.includes(run)", arg=RUN, timeout=60_000)
    page.locator("#thumbs img").nth(40).wait_for(timeout=60_000)
    decoded = _image_loaded(page, "decoded")  # without touching a control
    _image_loaded(page, "picks")
    assert page.evaluate("() => { const i = document.querySelector('#picks img'); return i.naturalWidth / i.naturalHeight; }") > 2.5
    for word in ("R = SPIRE 250", "MJy/sr"):
        _wait_text(page, "gen_legend", word)
    _image_loaded(page, "gen_colorbar")
    _wait_text(page, "decode_note", "thumbnail distance", 300_000)  # the domain check (the model's own samples: computed once)
    page.locator("#thumbs img").nth(7).click()
    _wait_text(page, "pick_note", "Sample i = 7")
    page.locator("#thumbs img").nth(20).click()
    _wait_text(page, "pick_note", "Sample j = 20")
    decoded = _image_loaded(page, "decoded", decoded)
    page.locator("#gen_view").get_by_label("band: IRAC 4.5", exact=True).check()
    _wait_text(page, "gen_legend", "IRAC 4.5 alone")
    _image_loaded(page, "decoded", decoded)
    assert page.evaluate(GREY_JS, "decoded") and page.evaluate(GREY_JS, "picks")
    _shot(page, "generate_physical")
    page.locator("#gen_view").get_by_label("composite", exact=True).check()


def test_a_generated_set_beside_the_real_images(page):
    _tab(page, "Generate")
    _number(page, "gen_n", 6)
    _fill(page, "gen_name", "dust set")
    page.locator("#gen_btn").click()
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("generated 6 samples").wait_for(timeout=300_000)
    page.wait_for_function("() => document.querySelector('#generated input').value.includes('dust set')", timeout=60_000)
    _image_loaded(page, "gen_compare")
    assert page.evaluate("() => { const i = document.querySelector('#gen_compare img'); return i.naturalWidth > i.naturalHeight; }")
    for word in ("R = SPIRE 250", "MJy/sr"):
        _wait_text(page, "gen_set_legend", word)
    _image_loaded(page, "gen_set_colorbar")
    _shot(page, "generate_set_compare")


def test_diagnostics_tables_whole_recon_mae_and_plots_in_the_theme(page, browser, server):
    _tab(page, "Diagnostics")
    page.wait_for_function("(run) => document.querySelector('#diag_run input').value.includes(run)", arg=RUN, timeout=60_000)
    page.locator("#diag_btn").click()
    _wait_text(page, "diag_table", "Linear SVM test accuracy", 400_000)
    # every row without an inner scroll, and no cell of the reference column cut
    page.wait_for_function("() => { const t = document.querySelector('#diag_table'); return t && t.innerText.includes('normality test'); }",
                           timeout=30_000)
    inner = page.evaluate("""() => [...document.querySelectorAll('#diag_table *')].filter(e => {
        const s = getComputedStyle(e); return /(auto|scroll)/.test(s.overflowY) && e.scrollHeight > e.clientHeight + 2; }).length""")
    assert inner == 0, "the diagnostics table scrolls inside itself"
    cut = page.evaluate("""() => [...document.querySelectorAll('#diag_table td')].filter(td => td.offsetParent !== null &&
        td.innerText.includes('d^¼') && td.scrollWidth > td.clientWidth + 2).length""")
    assert cut == 0, "reference cells are cut"
    # reconstruction pairs: whole pictures, and their MAE as text
    _wait_text(page, "recon_mae", "mean")
    _wait_text(page, "recon_mae", "0.")
    page.locator("#recon").scroll_into_view_if_needed()  # gallery images load lazily
    _image_loaded(page, "recon")
    # whole: each picture letterboxed (object-fit contain) or shown at its own aspect ratio, never cropped
    shown = page.evaluate("""() => [...document.querySelectorAll('#recon img')].filter(i => i.complete && i.naturalWidth > 0).map(i => {
        const r = i.getBoundingClientRect(); return [getComputedStyle(i).objectFit, r.width / r.height, i.naturalWidth / i.naturalHeight]; })""")
    assert shown and all(fit in ("contain", "scale-down") or abs(a - b) < 0.05 for fit, a, b in shown), shown
    page.locator("#umap .js-plotly-plot").wait_for(timeout=60_000)
    light = page.evaluate("() => document.querySelector('#umap .js-plotly-plot')._fullLayout.font.color")
    # titles inside their plot
    page.locator("#umap").scroll_into_view_if_needed()
    boxes = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.getBoundingClientRect().width > 0)
        .map(p => { const t = p.querySelector('.gtitle'); if (!t) return null; const a = t.getBoundingClientRect(), b = p.getBoundingClientRect();
        return [a.left - b.left, b.right - a.right, a.top - b.top]; }).filter(x => x)""")
    assert boxes and all(min(x) >= -1 for x in boxes), f"a plot title is cut: {boxes}"
    _shot(page, "diagnostics_whole")
    # the same browser in dark mode: the plots follow (plotly_dark's light font on a transparent background)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, storage_state=page.context.storage_state())
    try:
        dark = ctx.new_page()
        dark.goto(server + "?__theme=dark")
        dark.locator("#model_info").get_by_text("oodgen-faces-32").wait_for(timeout=60_000)
        dark.get_by_role("tab", name="Diagnostics", exact=True).click()
        dark.wait_for_function("(run) => document.querySelector('#diag_run input').value.includes(run)", arg=RUN, timeout=60_000)
        dark.locator("#umap .js-plotly-plot").wait_for(timeout=60_000)
        font = dark.evaluate("() => document.querySelector('#umap .js-plotly-plot')._fullLayout.font.color")
        bg = dark.evaluate("() => document.querySelector('#umap .js-plotly-plot')._fullLayout.paper_bgcolor")
        assert font != light and bg in ("rgba(0, 0, 0, 0)", "rgba(0,0,0,0)"), (font, light, bg)
    finally:
        ctx.close()


def test_quality_of_physical_maps_shows_bands_units_a_colour_bar_and_one_band(page):
    _tab(page, "Quality")
    _choose(page, "q_gen", "dust set")
    _wait_text(page, "q_summary", "Not evaluated yet", 60_000)
    page.locator("#q_kind").get_by_label("physical", exact=True).check()
    _number(page, "q_boot", 20)
    page.locator("#q_btn").click()
    page.locator("#jobs .oodgen-job[data-status=done]").get_by_text("quality of 'dust set'").wait_for(timeout=400_000)
    for word in ("R = SPIRE 250", "G = MIPS 24", "B = IRAC 4.5", "MJy/sr"):
        _wait_text(page, "q_legend", word, 60_000)
    page.locator("#q_colorbar").scroll_into_view_if_needed()
    bar = _image_loaded(page, "q_colorbar")
    page.locator("#q_montage").scroll_into_view_if_needed()  # images load lazily
    montage = _image_loaded(page, "q_montage")
    assert not page.evaluate(GREY_JS, "q_montage")  # the composite, in colour
    page.locator("#q_view").get_by_label("band: MIPS 24", exact=True).check()
    _wait_text(page, "q_legend", "MIPS 24 alone", 60_000)
    _image_loaded(page, "q_montage", montage)
    assert page.evaluate(GREY_JS, "q_montage")  # real | generated | crossfade of one band, in grey
    assert _image_loaded(page, "q_colorbar", bar) != bar  # that band's own colour bar
    _shot(page, "quality_physical_band")
    page.locator("#q_view").get_by_label("composite", exact=True).check()
    _wait_text(page, "q_legend", "Composite", 60_000)


def test_generate_and_diagnostics_follow_each_dataset_chosen_in_the_data_tab(page):
    _tab(page, "Data")
    _choose(page, "dataset", "bundled: galaxy")
    _wait_text(page, "data_report", "Loaded 100 samples", 60_000)
    _tab(page, "Invert")
    _number(page, "steps", 5)
    _fill(page, "run_name", "galaxy views")
    page.locator("#invert_btn").click()
    page.locator("#jobs .oodgen-job[data-status=done]").filter(has_text="as run 'galaxy views'").wait_for(timeout=400_000)
    value = "([id, run]) => (document.querySelector(`#${id} input`) || {}).value?.includes(run)"
    for k, (dataset, run) in enumerate((("bundled: radiation", RUN), ("bundled: galaxy", "galaxy views"), ("bundled: radiation", RUN))):
        _tab(page, "Data")
        _choose(page, "dataset", dataset)
        for elem in ("gen_run", "diag_run"):  # each tab on the newest run of the chosen dataset
            page.wait_for_function(value, arg=[elem, run], timeout=60_000)
        _tab(page, "Generate")
        if k:  # another run than before: its thumbnails, and the next click sets i
            _wait_text(page, "pick_note", "Click a thumbnail for sample i", 60_000)
            page.locator("#thumbs img").nth(30).wait_for(timeout=60_000)
        legend = "MJy/sr" if run == RUN else ""
        if legend:
            _wait_text(page, "gen_legend", legend, 60_000)
        else:  # an image run: no band legend
            page.wait_for_function("() => !(document.getElementById('gen_legend') || {}).innerText?.includes('MJy/sr')", timeout=60_000)
