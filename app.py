"""oodgen web app: upload data, invert it with a frozen DDPM as a background job, inspect the latent
space, generate new samples, measure their quality against the real data and run expert MOS studies.

UI only: every event calls a plain-value function of :mod:`oodgen.service`. Run ``python app.py``;
the workspace is ``$OODGEN_HOME`` (default ``./workspace``). See Spaces.md for deployment.
"""

import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass  # noqa: E402
from typing import Optional  # noqa: E402

import gradio as gr  # noqa: E402

from oodgen import display, service, tasks, views  # noqa: E402
from oodgen.config import CALIBRATIONS, CENTRES, METHODS, NOISE_MODELS, PAIRINGS, DDIMSettings, GenerationSettings  # noqa: E402
from oodgen.evaluation import SearchGrid  # noqa: E402
from oodgen.finetune import FinetuneSettings  # noqa: E402
from oodgen.generated import BASELINE_METHODS  # noqa: E402
from oodgen.models import DEFAULT_MODEL, REGISTRY  # noqa: E402
from oodgen.ratings import ACR_LABELS  # noqa: E402
from oodgen.workspace import browser_secret, new_browser_key  # noqa: E402

DDIM = DDIMSettings()
GEN = GenerationSettings()
FT = FinetuneSettings()
SEARCH = SearchGrid()
SEARCH_GRID_MORPH = 60  # statmorph images per cell at most (galaxy statistics), as the search command
OAUTH = bool(os.environ.get("OAUTH_CLIENT_ID"))  # set by Hugging Face Spaces when the README says hf_oauth: true
CSS = """
.pixelated img { image-rendering: pixelated; }
.oodgen-job { margin: 2px 0; font-size: 0.95em; }
.oodgen-job progress { width: 220px; vertical-align: middle; }
.oodgen-when { opacity: 0.75; font-size: 0.9em; }
.oodgen-help { font-size: 0.93em; opacity: 0.9; }
"""


DARK_JS = "() => document.body.classList.contains('dark')"
# thumbnail clicks are counted as they happen, by a capturing listener (installed once per page at load): the count and
# the indices of the last two clicks. A select event's own JavaScript runs later, asynchronously, and under load in
# another order than the clicks, so it only reads that record (service.PairPicker decides from it).
PICK_LOG_JS = """() => { if (window.oodgenPick) return; window.oodgenPick = {n: 0, last: []};
  document.addEventListener('click', (e) => {
    const item = e.target && e.target.closest ? e.target.closest('#thumbs .thumbnail-item') : null;
    if (!item) return;
    const m = /Thumbnail (\\d+) of/.exec(item.getAttribute('aria-label') || '');
    const k = m ? Number(m[1]) - 1 : Array.from(document.querySelectorAll('#thumbs .thumbnail-item')).indexOf(item);
    if (k < 0) return;
    window.oodgenPick = {n: window.oodgenPick.n + 1, last: [...window.oodgenPick.last, k].slice(-2)};
  }, true); }"""
PICK_JS = "(picker, clicks) => [picker, JSON.stringify(window.oodgenPick || {n: 0, last: []})]"


def _err(e: Exception) -> gr.Error:
    return gr.Error(str(e), print_exception=False)


def _dd(choices, value=None, keep=None):
    """A dropdown update that keeps the current value when it is still a choice."""
    values = [c[1] if isinstance(c, tuple) else c for c in choices]
    if keep in values:
        value = keep
    elif value not in values:
        value = values[0] if values else None
    return gr.Dropdown(choices=choices, value=value)


# ---------------------------------------------------------------- session
def on_load(key, prefs, profile: Optional[gr.OAuthProfile] = None):
    key = key or new_browser_key()
    owner = service.owner_for(key, profile.username if profile else None)
    prefs = prefs or {}
    rater = (profile.username if profile else None) or prefs.get("rater") or ""
    studies = service.study_choices()
    datasets, runs, gens = service.dataset_choices(owner), service.run_choices(owner), service.generated_choices(owner)
    return (key, owner, service.jobs_html(owner), _dd(datasets, "bundled:galaxy"),
            _dd(runs), _dd(runs), _dd(gens),
            _dd(studies, keep=prefs.get("study")), rater, _dd([""] + studies, ""),
            gr.Dropdown(choices=gens), _dd(datasets, "bundled:galaxy"),
            service.jobs_stamp(owner), service.runs_table(owner), gr.Dropdown(choices=service.active_jobs(owner), value=None), _dd(gens))


def on_tick(owner, seen, run_d, run_g, gen_id, diag_run, ref, diag_seen, q_gen, q_seen, dark=False, q_view=None):
    """Once a second: job progress; lists when a job finished; diagnostics and quality when their cache changed."""
    if not owner:
        return [gr.skip()] * (9 + 1 + N_DIAG + 1 + N_QUALITY)
    stamp = service.jobs_stamp(owner)
    out = [service.jobs_html(owner)]
    if stamp != seen:
        runs, gens = service.run_choices(owner), service.generated_choices(owner)
        out += [stamp, _dd(runs, keep=run_d), _dd(runs, keep=run_g), _dd(gens, keep=gen_id),
                gr.Dropdown(choices=service.active_jobs(owner), value=None), service.runs_table(owner),
                gr.Dropdown(choices=gens),  # the study creator's generated sets (its picks are kept)
                _dd(gens, keep=q_gen)]
    else:
        out += [gr.skip()] * 8
    dstamp = service.diagnostics_stamp(owner, diag_run, ref)
    if dstamp != diag_seen:
        out += [dstamp, *_diag_outputs(owner, diag_run, ref, dark)]
    else:
        out += [gr.skip()] * (1 + N_DIAG)
    qstamp = service.quality_stamp(owner, q_gen)
    if qstamp != q_seen:
        out += [qstamp, *_quality_outputs(owner, q_gen, dark, q_view)]
    else:
        out += [gr.skip()] * (1 + N_QUALITY)
    return out


# ---------------------------------------------------------------- data and inversion
def on_dataset(owner, ref, view=None):
    """gallery, report, the Invert tab's note, legend, colour bar, band view (choices; hidden for images)."""
    if not owner or not ref:
        return [], "", "", "", None, gr.Radio(visible=False)
    try:
        v = views.dataset_view(owner, ref, view)
    except ValueError as e:
        return [], f"**{e}**", "", "", None, gr.Radio(visible=False)
    return (v["gallery"], v["report"], f"Dataset: **{v['name']}** (change it in the Data tab).", v["legend"], v["colorbar"],
            gr.Radio(choices=v["views"], value=v["view"], visible=bool(v["views"])))


def on_dataset_runs(owner, ref):
    """The Generate and Diagnostics tabs follow the Data tab: its dataset's newest run, when it has one."""
    run = views.run_for_dataset(owner, ref)
    return (gr.Dropdown(value=run), gr.Dropdown(value=run)) if run else (gr.skip(), gr.skip())


def on_upload(owner, files, name, shared):
    try:
        ds, gal, md = service.upload_dataset(owner, name, files or [], bool(shared))
    except ValueError as e:
        return gr.skip(), gr.skip(), f"**Upload not saved.** {e}"
    return _dd(service.dataset_choices(owner), ds), gal, md


def on_invert(owner, ref, model_name, t_end, steps, batch, name):
    try:
        job = service.start_invert(owner, ref, model_name, DDIMSettings(int(t_end), int(steps), int(batch)), (name or "").strip())
    except ValueError as e:
        raise _err(e) from None
    service.run_in_request(job)
    return f"Queued **{job.label}**. Progress shows under *Jobs* above; you may close or reload the page.", service.jobs_html(owner)


def on_cancel(owner, job_id):
    try:
        return service.cancel_job(owner, job_id), service.jobs_html(owner)
    except ValueError as e:
        raise _err(e) from None


def on_delete_choices(owner, current=None):
    """The owner's deletable things; the current pick stays if it is still there (never a pick made for the user)."""
    choices = service.deletable_choices(owner) if owner else []
    return gr.Dropdown(choices=choices, value=current if current in [c[1] for c in choices] else None)


def on_delete_ask(owner, ref):
    """Step one of a deletion: say what would go and show the confirmation row."""
    try:
        question = service.delete_question(owner, ref)
    except ValueError as e:
        raise _err(e) from None
    return gr.Row(visible=True), question, ""


def on_delete_yes(owner, ref, current_dataset):
    """Step two: delete, hide the confirmation, refresh the lists that may have held it."""
    try:
        note = service.delete_own(owner, ref)
    except ValueError as e:
        raise _err(e) from None
    return (gr.Row(visible=False), note, on_delete_choices(owner), _dd(service.dataset_choices(owner), "bundled:galaxy", keep=current_dataset),
            "", service.jobs_html(owner))  # jobs_seen "": the next tick refreshes the run and generated-set lists


# ---------------------------------------------------------------- diagnostics
N_DIAG = 9  # summary, table, UMAP, geometry, radii, reconstruction pairs, their MAE, sweep plot, sweep table


def _diag_outputs(owner, run_id, ref, dark=False):
    empty = ("Pick a run and press **Compute diagnostics**.", None, None, None, None, [], None, None, None)
    if not run_id or not ref:
        return list(empty)
    try:
        v = views.diagnostics_view(owner, run_id, ref, bool(dark))
    except ValueError as e:
        return [f"**{e}**", *empty[1:]]
    if not v["computed"]:
        return ["Not computed yet for this run and reference: press **Compute diagnostics** (computed once, then cached).", *empty[1:]]
    f = v["figures"]
    return [v["summary"] or "Diagnostics not computed yet (the t sweep is below).", v["table"], f.get("UMAP"), f.get("Geometry"),
            f.get("Radii"), v["recon"], v["recon_table"], v["sweep_figure"], v["sweep_table"]]


def on_diag_show(owner, run_id, ref, dark=False):
    return [service.diagnostics_stamp(owner, run_id, ref), *_diag_outputs(owner, run_id, ref, dark)]


def on_diag_start(owner, run_id, ref, sweep=False):
    try:
        if not sweep and service.diagnostics_stamp(owner, run_id, ref).startswith("report.json"):
            return "Already computed for this run and reference (shown below).", service.jobs_html(owner)
        job = service.start_diagnose(owner, run_id, ref, sweep)
    except ValueError as e:
        raise _err(e) from None
    service.run_in_request(job)
    return f"Queued **{job.label}**; results appear here when it finishes.", service.jobs_html(owner)


# ---------------------------------------------------------------- generation
def on_gen_run(owner, run_id, picker, view=None):
    """thumbnails, sliders i and j, the pick note, and the run's legend, colour bar and band view (physical runs)."""
    picker.reset()
    if not owner or not run_id:
        return [], gr.Slider(maximum=1), gr.Slider(maximum=1), picker.note(), "", None, gr.Radio(visible=False)
    try:
        n = service.run_size(owner, run_id)
        thumbs = service.run_thumbnails(owner, run_id)
        v = views.run_view(owner, run_id, view)
    except ValueError as e:
        raise _err(e) from None
    return (thumbs, gr.Slider(minimum=0, maximum=n - 1, value=0), gr.Slider(minimum=0, maximum=n - 1, value=min(1, n - 1)), picker.note(),
            v["legend"], v["colorbar"], gr.Radio(choices=v["views"], value=v["view"], visible=bool(v["views"])))


def on_pick(picker, clicks, evt: gr.SelectData) -> None:
    """Clicking a thumbnail sets sample i, the next click sample j, and so on, in click order (``clicks``: the page's
    record of its clicks, JSON {"n": count, "last": [index, index]}; without it, this click in arrival order). Only the
    session's picker changes: :func:`on_pick_shown` shows it (answers to a burst of clicks may reach the page in
    another order than they were computed, so none of them carries what it saw)."""
    try:
        record = json.loads(clicks or "{}")
        count, recent = int(record.get("n") or 0), [int(k) for k in record.get("last") or []]
    except (TypeError, ValueError, AttributeError):
        count, recent = 0, []
    if not count or not recent:
        count, recent = 0, [int(evt.index)]
    picker.pick(count, recent)


def on_pick_shown(picker):
    """Sliders i and j and the pick note as the session's picker stands now (a slot no click set is left alone)."""
    slots = picker.slots()
    return slots.get("i", gr.skip()), slots.get("j", gr.skip()), picker.note()


def on_decode(owner, run_id, i, j, alpha, method, eta, seed, centre=GEN.centre, noise=GEN.noise, calibration=GEN.calibration, view=None):
    """The decoded image, and sample i | decoded | sample j side by side."""
    if not run_id:
        return None, None
    try:
        v = views.decode_view(owner, run_id, int(i), int(j), float(alpha), method, float(eta), int(seed), centre, view, noise, calibration)
    except ValueError as e:
        raise _err(e) from None
    return v["decoded"], v["picks"]


def on_gen_view(owner, run_id, view):
    """The run's legend and colour bar for the chosen view (the composite or one band)."""
    try:
        v = views.run_view(owner, run_id, view)
    except ValueError as e:
        raise _err(e) from None
    return v["legend"], v["colorbar"]


def on_decode_check(owner, run_id, i, j, alpha, method, eta, seed, centre=GEN.centre, noise=GEN.noise, calibration=GEN.calibration):
    """After a decode: whether the sample fell back into the model's own domain (oodgen.fallback)."""
    if not run_id:
        return ""
    try:
        return views.decode_check(owner, run_id, int(i), int(j), float(alpha), method, float(eta), int(seed), centre, noise, calibration)
    except ValueError as e:
        return f"**{e}**"


def on_strip(owner, run_id, i, j, k, method, centre=GEN.centre, noise=GEN.noise, calibration=GEN.calibration):
    try:
        return service.decode_strip(owner, run_id, int(i), int(j), int(k), method, centre, noise, calibration)
    except ValueError as e:
        raise _err(e) from None


def _whole(value, label: str) -> int:
    """A whole number from a Number box; a clear error when it is empty or not whole."""
    try:
        if float(value) != int(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{label}: enter a whole number", print_exception=False) from None


def on_gen_method(method, pairing):
    """Show the batch options that apply: pairing, neighbours and alpha spread for slerp/lerp, clusters for gaussian,
    the fine-tuning budget for finetune."""
    interp, gauss = method in ("slerp", "lerp"), method == "gaussian"
    return (gr.Radio(visible=interp), gr.Number(visible=interp and pairing == "nearest"), gr.Slider(visible=interp),
            gr.Number(visible=gauss), gr.Checkbox(visible=gauss), gr.Number(visible=method == "finetune"),
            gr.Number(visible=method == "finetune"))


def on_generate(owner, run_id, method, n, alpha, eta, seed, use_filter, tolerance, per_dim, pairing, neighbours, spread, clusters, name,
                noise=GEN.noise, ft_steps=None, ft_minutes=None, centre=GEN.centre, calibration=GEN.calibration):
    if method in BASELINE_METHODS:  # pixel crossfade, or fine-tuning a copy of the model (a background job with progress)
        try:
            ft = service.finetune_settings(ft_steps, ft_minutes, _whole(seed, "Seed")) if method == "finetune" else None
            job = service.start_baseline(owner, run_id, _whole(n, "N samples"), (name or "").strip(), method, alpha=float(alpha),
                                         eta=float(eta), seed=_whole(seed, "Seed"), finetune=ft)
        except ValueError as e:
            raise _err(e) from None
        service.run_in_request(job)
        return f"Queued **{job.label}**; the set appears in the list below when it is done.", service.jobs_html(owner)
    try:
        settings = GenerationSettings(method=method, alpha=float(alpha), eta=float(eta), seed=_whole(seed, "Seed"), per_dim_variance=bool(per_dim),
                                      geometric_filter=bool(use_filter), filter_tolerance=float(tolerance), pairing=pairing,
                                      neighbours=_whole(neighbours, "Neighbours"), alpha_spread=float(spread),
                                      clusters=_whole(clusters, "Clusters"), noise=noise, centre=centre,
                                      calibration=calibration)
        job = service.start_generate(owner, run_id, _whole(n, "N samples"), (name or "").strip(), settings)
    except ValueError as e:
        raise _err(e) from None
    service.run_in_request(job)
    return f"Queued **{job.label}**; the set appears in the list below when it is done.", service.jobs_html(owner)


def on_generated(owner, gen_id, view=None):
    """gallery, summary, real-versus-generated picture, legend, colour bar of a generated set."""
    if not owner or not gen_id:
        return [], "", None, "", None
    try:
        v = views.generated_view(owner, gen_id, view)
        return v["gallery"], service.generated_summary(owner, gen_id), v["compare"], v["legend"], v["colorbar"]
    except ValueError as e:
        raise _err(e) from None


def on_download(owner, gen_id):
    try:
        return service.download_generated(owner, gen_id)
    except ValueError as e:
        raise _err(e) from None


# ---------------------------------------------------------------- quality
N_QUALITY = 13  # summary, 2 tables, 4 plots, montage, NN pairs, HTML report, legend, colour bar, band view


def _quality_outputs(owner, gen_id, dark=False, view=None):
    """summary, tables, histograms, spectra, distances, memorization, montage, NN pairs, HTML report, legend, colour bar, view."""
    empty = [None] * 9 + ["", None, gr.Radio(visible=False)]
    if not owner or not gen_id:
        return ["Pick a generated set and press **Evaluate**.", *empty]
    try:
        v = service.quality_view(owner, gen_id)
    except ValueError as e:
        return [f"**{e}**", *empty]
    if v.table is None:
        return [v.summary or "Not evaluated yet: press **Evaluate** (computed once, then cached with the set).", *empty]
    f = {k: display.theme_figure(fig, bool(dark)) for k, fig in v.figures.items()}
    p = views.quality_pictures(owner, gen_id, v.montage, v.nn_pairs, view)
    return [v.summary, v.table, v.statistics, f.get("histograms"), f.get("power spectra"), f.get("distances"), f.get("memorization"),
            p["montage"], p["nn"], v.html, p["legend"], p["colorbar"], gr.Radio(choices=p["views"], value=p["view"], visible=bool(p["views"]))]


def on_quality_show(owner, gen_id, dark=False, view=None):
    return [service.quality_stamp(owner, gen_id), *_quality_outputs(owner, gen_id, dark, view)]


def on_quality_start(owner, gen_id, kind, n_boot, morph_max, force):
    try:
        settings = service.quality_settings(kind, int(n_boot), int(morph_max))
        if not force and service.quality_cached(owner, gen_id, settings):
            return "Already evaluated with these settings (shown below); tick *Recompute* to run it again.", service.jobs_html(owner)
        job = service.start_quality(owner, gen_id, settings, force=bool(force))
    except ValueError as e:
        raise _err(e) from None
    service.run_in_request(job)
    return f"Queued **{job.label}**; the report appears here when it finishes.", service.jobs_html(owner)


# ---------------------------------------------------------------- bandwidth search
def _search_outputs(owner, source, model_name, dark=False):
    """summary, cell table, quality-vs-diversity plot, montage, HTML report."""
    empty = [None] * 4
    if not owner or not source:
        return ["Pick the real images and press **Run search**.", *empty]
    try:
        v = service.search_view(owner, source, model_name)
    except ValueError as e:
        return [f"**{e}**", *empty]
    if v.table is None:
        return [v.summary or "No search yet for these images and model: press **Run search** (computed once, then cached).", *empty]
    return [v.summary, v.table, display.theme_figure(v.figure, bool(dark)), v.montage, v.html]


def on_search_show(owner, source, model_name, dark=False):
    return [service.search_stamp(owner, source, model_name), *_search_outputs(owner, source, model_name, dark)]


def on_search_tick(owner, source, model_name, seen, jobs_seen, dark=False):
    """Once a second: the source list when a job finished; the report when its cache changed."""
    if not owner:
        return [gr.skip()] * 8
    stamp = service.jobs_stamp(owner)
    out = [stamp, _dd(service.search_sources(owner), "bundled:galaxy", keep=source)] if stamp != jobs_seen else [gr.skip()] * 2
    sstamp = service.search_stamp(owner, source, model_name)
    return out + ([sstamp, *_search_outputs(owner, source, model_name, dark)] if sstamp != seen else [gr.skip()] * 6)


def on_search_start(owner, source, model_name, t_values, etas, pairing, noise, n, kind, n_boot, force):
    try:
        grid = service.search_grid(t_values, etas, pairing, noise, _whole(n, "Samples per cell"))
        settings = service.quality_settings(kind, int(n_boot), SEARCH_GRID_MORPH)
        if not force and service.search_cached(owner, source, model_name, grid, settings):
            return "Already searched with this grid (shown below); tick *Recompute* to run it again.", service.jobs_html(owner)
        job = service.start_search(owner, source, model_name, grid, settings, force=bool(force))
    except ValueError as e:
        raise _err(e) from None
    service.run_in_request(job)
    return f"Queued **{job.label}**; the table and plot appear here when it finishes.", service.jobs_html(owner)


# ---------------------------------------------------------------- rating
# Sends, with each score, the blinded id of the item whose image is on screen: taken from the file
# name of the displayed <img>, and only once it has loaded ("" before). The server refuses a score
# whose item or position is not the one to rate now, so a click that arrives after an earlier one
# moved the session on, or before the next image shows, never scores an item the rater did not see.
# The first click on an image wins: later clicks on the same image (same position) within 10 s are sent as
# "scored:<item>" and answered "not recorded" without a try, whichever reaches the server first.
RATE_JS = """(study, rater, position, shownMs, comment, shown) => {
  const img = document.querySelector('#rate_image img');
  let item = '';
  if (img && img.complete && img.naturalWidth > 0) {
    const m = (img.getAttribute('src') || '').match(/(item_[0-9]+)[.]png/);
    item = m ? m[1] : '';
  }
  if (item) {
    const key = position + ':' + item, last = window.oodgenScored, now = Date.now();
    if (last && last.key === key && now - last.t < 10000) item = 'scored:' + item;
    else window.oodgenScored = {key: key, t: now};
  }
  return [study, rater, position, shownMs, comment, item];
}"""
# Keys 1-5 press the score buttons (so they get the same check) while the Rate tab is open and no text box has the focus.
KEYS_JS = """() => {
  document.addEventListener('keydown', (e) => {
    if (e.repeat || e.ctrlKey || e.metaKey || e.altKey || !/^[1-5]$/.test(e.key)) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    const b = document.getElementById('score_' + e.key);
    if (!b || b.offsetParent === null || b.disabled) return;
    e.preventDefault();
    b.click();
  });
}"""


def _rate_outputs(study_id, rater):
    v = service.rate_view(study_id, rater)
    if v.done:
        return None, f"**{v.progress}**: all items rated. Thank you!", v.instructions, 0, service.now_ms()
    return v.image, f"Item **{v.progress}**", v.instructions, v.position, service.now_ms()


def on_rate_start(study_id, rater, prefs, profile: Optional[gr.OAuthProfile] = None):
    rater = profile.username if profile else (rater or "").strip()
    try:
        out = _rate_outputs(study_id, rater)
    except ValueError as e:
        raise _err(e) from None
    return (*out, {**(prefs or {}), "rater": rater, "study": study_id})


def on_rate_resume(prefs, profile: Optional[gr.OAuthProfile] = None):
    """After a reload: continue the remembered session at the first unrated item."""
    prefs = prefs or {}
    rater = profile.username if profile else prefs.get("rater")
    if not (rater and prefs.get("study")):
        return [gr.skip()] * 5
    try:
        return _rate_outputs(prefs["study"], rater)
    except ValueError:
        return [gr.skip()] * 5


def rate_handler(score: int):
    """The click handler of the button for ``score`` (``shown``: the item id on the rater's screen, from RATE_JS)."""

    def on_rate(study_id, rater, position, shown_ms, comment, shown, profile: Optional[gr.OAuthProfile] = None):
        rater = profile.username if profile else (rater or "").strip()
        if not position:
            raise gr.Error("Press Start / resume first (or the session is complete).")
        if (shown or "").startswith("scored:"):  # a second click on an image this page already scored (RATE_JS)
            gr.Warning(f"not recorded: item {int(position)} already got the score of your first click; the next image is on its way")
            return [gr.skip()] * 6
        try:
            service.submit_rating(study_id, rater, int(position), score, comment or "", max(0, service.now_ms() - int(shown_ms or 0)),
                                  shown_item=shown or "")
            return (*_rate_outputs(study_id, rater), "")
        except service.StaleRatingError as e:  # a fast second click or a loading image: nothing recorded, the screen stays
            gr.Warning(str(e))
            return [gr.skip()] * 6
        except ValueError as e:
            raise _err(e) from None

    return on_rate


RATE_HELP = ("Expert rating (Mean Opinion Score). Items are shown one at a time, in your own order; real and generated "
             "images are mixed and not labelled. Score with the buttons or the keys 1-5; a score counts for the image on "
             "screen, once it has loaded. You can close the page and continue later with the same name.")


@dataclass
class RatePanel:
    """The rating widgets of one page (the Rate tab, or the rater-only page at /rate)."""

    rater: gr.Textbox
    study: gr.Dropdown
    start: gr.Button
    instructions: gr.Markdown
    progress: gr.Markdown
    image: gr.Image
    buttons: list  # score buttons 5 ... 1
    comment: gr.Textbox
    position: gr.Number  # the position on screen (hidden; sent back with each score)
    shown_ms: gr.State
    shown: gr.Textbox  # the item id on screen (hidden; filled in by RATE_JS at the click)

    @property
    def outputs(self) -> list:
        return [self.image, self.progress, self.instructions, self.position, self.shown_ms]


def rate_panel() -> RatePanel:
    """Lay out the rating widgets in the current Blocks context (buttons wrap into two rows below about 800 px)."""
    position = gr.Number(0, visible=False, elem_id="rate_pos")
    shown_ms = gr.State(0)
    shown = gr.Textbox("", visible=False)
    with gr.Row():
        rater = gr.Textbox(label="Your name or id" + (" (your Hugging Face login is used when signed in)" if OAUTH else ""),
                           max_length=64, elem_id="rater", min_width=200)
        study = gr.Dropdown([], label="Study", elem_id="study", min_width=200)
        start = gr.Button("Start / resume", variant="primary", elem_id="rate_start", min_width=140)
    instructions = gr.Markdown()
    progress = gr.Markdown(elem_id="rate_progress")
    image = gr.Image(label="Item", height=420, interactive=False, elem_classes="pixelated", elem_id="rate_image")
    with gr.Row(equal_height=True):
        buttons = [gr.Button(f"{s} {ACR_LABELS[s]}", elem_id=f"score_{s}", min_width=120) for s in (5, 4, 3, 2, 1)]
    comment = gr.Textbox(label="Comment (optional)", max_length=1000)
    return RatePanel(rater, study, start, instructions, progress, image, buttons, comment, position, shown_ms, shown)


def wire_rate_panel(p: RatePanel, prefs) -> None:
    """Start / resume and the score buttons of a panel (every score names the item on screen: RATE_JS)."""
    p.start.click(on_rate_start, [p.study, p.rater, prefs], [*p.outputs, prefs])
    for btn, s in zip(p.buttons, (5, 4, 3, 2, 1)):
        btn.click(rate_handler(s), [p.study, p.rater, p.position, p.shown_ms, p.comment, p.shown], [*p.outputs, p.comment], js=RATE_JS)


def on_rater_page(prefs, profile: Optional[gr.OAuthProfile] = None):
    """The rater-only page opens: the studies, and the remembered rater name."""
    prefs = prefs or {}
    rater = (profile.username if profile else None) or prefs.get("rater") or ""
    return _dd(service.study_choices(), keep=prefs.get("study")), rater, "Enter your name, pick a study and press **Start / resume**."


# ---------------------------------------------------------------- results
def on_results(token, study_id, dark=False):
    try:
        groups, raters, note, fig = service.results(token, study_id or None)
        quality = service.study_quality(token, study_id or None)
    except ValueError as e:
        raise _err(e) from None
    return note, groups, quality, raters, display.theme_figure(fig, bool(dark))


def on_export(token, study_id):
    try:
        return service.export_results(token, study_id or None)
    except ValueError as e:
        raise _err(e) from None


def on_create_study(owner, token, study_id, domain, gen_ids, real_ref, n, instructions, repeat):
    try:
        if not service.ratings.is_admin(token):
            raise service.UserError("creating studies is for the study owner: enter the admin token")
        note = service.create_study(owner, study_id, domain, gen_ids or [], real_ref, _whole(n, "Items per source"), instructions, float(repeat))
    except (ValueError, gr.Error) as e:  # said in the note, so that no error badge is left on the study lists
        return f"**Study not created:** {getattr(e, 'message', e)}", gr.skip(), gr.skip()
    studies = service.study_choices()
    return note, _dd(studies, keep=study_id), _dd([""] + studies, keep=study_id)


# ---------------------------------------------------------------- layout
HELP = {
    "data": "Pick a bundled set or upload your own (a dataset holds one kind: images, or physical maps of one band layout "
            "and unit). Physical maps show as a **composite**, red = longest wavelength, each band asinh-stretched on its own; "
            "pick a band to see it alone. The colour bars give each band's physical value (in the data's unit) at the "
            "display's intensity. The Invert tab inverts the dataset chosen here, and the Generate and Diagnostics tabs "
            "switch to its newest run.",
    "invert": "DDIM inversion runs the frozen model backwards from the image to a noisy latent x_t. **t_end** is that "
              "timestep (0 = the image itself, 999 = pure noise): a larger t_end gives latents closer to a Gaussian and more "
              "varied samples, a smaller one keeps more of each image (default 300, chosen on tuning data; the paper's "
              "Table 3 uses 900). **DDIM steps**: model calls between 0 and t_end; more steps invert more exactly and take "
              "longer (time grows linearly). **Batch size**: images per model call; it changes memory use and speed, not the "
              "result. 0 (default) = auto, as on the command line: the fastest batch measured once on this machine's CPU "
              "(a few seconds on the first run, then cached), or the largest that fits in free GPU memory. A run is saved under its name (or the dataset's name and t_end).",
    "diagnostics": "Do the inverted images (OOD) occupy a region of latent space of their own, apart from the model's own "
                   "latents (ID: its prior, or in-domain images inverted the same way)? **Separable** (the paper's Lemma C.2): "
                   "the distance between the two sets' centres exceeds d^¼, d = the number of latent dimensions. The "
                   "**noise floor** is the centre distance two sets drawn from the *same* Gaussian would show at these sizes "
                   "(√(d/n_ID + d/n_OOD)): a centre distance near or below the floor is no evidence of separation even when it "
                   "exceeds d^¼; the debiased distance removes it. **Linear SVM accuracy**: 0.5 = the sets cannot be told "
                   "apart, 1 = a plane separates them. The angles, norms and radii compare each set with an isotropic "
                   "Gaussian. **Reconstruction**: each latent decoded back; MAE on the [0, 1] scale (small = faithful "
                   "inversion). The **t sweep** repeats the main numbers at several t_end.",
    "generate": "Pick two inverted samples i and j (click thumbnails, or the sliders) and decode a point between their latents: "
                "**alpha** is how far from i (0) to j (1); **slerp** walks the great circle about the data's centre and keeps "
                "the latents' norm, **lerp** the straight line, whose middle is shorter and can leave the data's region (the "
                "warning under the image says when a sample looks like the model's own domain instead). **eta** adds fresh "
                "DDIM noise while decoding (0 = deterministic; with eta > 0 the **seed** picks the noise). Batch generation "
                "makes a named set with the same options, or draws from a Gaussian fitted to the run.",
    "quality": "How close is a generated set to the real data it was made from? Physics-aware statistics of every image "
               "(morphology, colours and sky for galaxies; intensity PDF, power spectra and Minkowski functionals for physical "
               "maps), compared with the real set against a **floor**: the real set is split into halves A and B, and every "
               "set is compared with B exactly as A is. **C2ST**: the accuracy of a classifier telling the set from real "
               "images (0.5 = indistinguishable; compare it with the floor's, not with 0.5). **Within 2x floor**: the share "
               "of statistics whose distance to real is at most twice the floor's. **Near-copies**: generated images "
               "closer to one source than real images are to each other. The **crossfade** row is a trivial baseline (pixel "
               "averages of real pairs) that a method should beat. Physical sets are read from their .npy maps.",
    "search": "Bandwidth search (paper App. E.2.1 made quantitative): every combination of **t_end** (how deep the "
              "inversion goes: larger = more varied, further from the sources), **eta** (fresh noise while decoding), "
              "**pairing** (which two sources a sample mixes: random, or latent neighbours) and **noise model** (the "
              "sensor noise added back to the decoded image) generates **K** samples from the real images, and each cell "
              "is compared with the real set as in the Quality tab. One plot of quality against diversity, coloured by "
              "near-copies; the best cell without copies is named. A dataset is searched with the base model above, a run "
              "with its own model. Choose settings on data you will not report on.",
    "rate": RATE_HELP + " Raters can use the page [/rate](rate), which shows nothing but this tab.",
    "results": ("**MOS** is the mean expert score (1 = bad, 5 = excellent) per study, domain, method and source, with a 95% "
                "confidence interval; generated images are as convincing as real ones to these raters when their MOS is "
                "close to the real images' and the intervals overlap. The rater table flags inconsistency on repeated items "
                "and straight-lining (one score for everything); the quality table puts each set's C2ST beside its floor."),
}


def _help(key: str) -> gr.Markdown:
    text = HELP[key]
    if key == "results":  # read when the page is built: the deployment's token setting
        text = ("For the study owner: enter the admin token of this deployment. " if os.environ.get("OODGEN_ADMIN_TOKEN")
                else "For the study owner (open to everyone here because OODGEN_ADMIN_TOKEN is not set). ") + text
    return gr.Markdown(text, elem_id=f"help_{key}", elem_classes="oodgen-help")


def build() -> gr.Blocks:
    secret = browser_secret()  # fixed per workspace (or $OODGEN_BROWSER_SECRET): a restarted app still reads what browsers keep
    with gr.Blocks(title="oodgen") as demo:
        key = gr.BrowserState(None, storage_key="oodgen-browser-key", secret=secret)  # random id: this browser's datasets, runs, jobs
        prefs = gr.BrowserState({}, storage_key="oodgen-prefs", secret=secret)  # rater name and study, for resuming
        owner = gr.State(None)
        jobs_seen = gr.State("")
        diag_seen = gr.State("")
        q_seen = gr.State("")
        picker = gr.State(service.PairPicker())  # per session; mutated in place, never an output
        pick_click = gr.Textbox("", visible=False)  # carries the page's record of thumbnail clicks (PICK_JS) to on_pick
        dark = gr.Checkbox(False, visible=False, elem_id="dark_flag")  # the page's theme (set by DARK_JS): plots follow it

        gr.Markdown("# oodgen\nNew images of domains a diffusion model never saw: DDIM-invert your images with a frozen DDPM, "
                    "then sample new latents in the region they occupy and denoise them with the unchanged model.")
        with gr.Row():
            model = gr.Dropdown(list(REGISTRY), value=DEFAULT_MODEL, label="Base model (registry name, or a folder under the model root)",
                                allow_custom_value=True, scale=2, elem_id="model")
            model_info = gr.Markdown(elem_id="model_info")
            if OAUTH:
                gr.LoginButton()
        with gr.Accordion("Jobs", open=True):
            jobs = gr.HTML(elem_id="jobs")
            with gr.Row():
                cancel_pick = gr.Dropdown([], label="Running or queued job", scale=3, elem_id="cancel_pick")
                cancel_btn = gr.Button("Cancel job", variant="stop", scale=1)
            cancel_note = gr.Markdown()
        with gr.Accordion("Delete your datasets, runs, generated sets or finished jobs", open=False, elem_id="housekeeping") as del_box:
            with gr.Row():
                del_pick = gr.Dropdown([], label="One of yours (bundled sets and what others share are not listed)", scale=3,
                                       elem_id="del_pick")
                del_btn = gr.Button("Delete...", variant="stop", scale=1, elem_id="del_btn")
            with gr.Row(visible=False, elem_id="del_confirm") as del_confirm:
                del_question = gr.Markdown(elem_id="del_question")
                del_yes = gr.Button("Yes, delete", variant="stop", scale=0, elem_id="del_yes")
                del_no = gr.Button("Keep it", scale=0, elem_id="del_no")
            del_note = gr.Markdown(elem_id="del_note")
        timer = gr.Timer(1.0)

        with gr.Tab("Data"):
            _help("data")
            dataset = gr.Dropdown([], label="Dataset", info="bundled sample sets, your uploads, and sets shared with everyone", elem_id="dataset")
            data_report = gr.Markdown(elem_id="data_report")
            preview = gr.Gallery(label="Preview (physical maps: per-band asinh stretch, red = longest wavelength)", columns=10, height=360,
                                 elem_classes="pixelated", elem_id="preview")
            with gr.Row():
                data_view = gr.Radio([], label="View", visible=False, elem_id="data_view", scale=1)
                with gr.Column(scale=2):
                    data_legend = gr.Markdown(elem_id="data_legend")
                    data_colorbar = gr.Image(label="Colour bars (physical value at each display intensity)", interactive=False,
                                             show_label=False, height=200, elem_id="data_colorbar")
            with gr.Accordion("Upload a new dataset", open=False):
                with gr.Row():
                    uploads = gr.File(file_count="multiple", type="filepath", scale=3,
                                      label="Images (PNG/JPEG/TIFF), FITS, .npy/.npz, or a zip of them")
                    with gr.Column(scale=1):
                        up_name = gr.Textbox(label="Dataset name", placeholder="my-galaxies")
                        up_shared = gr.Checkbox(label="Share with all users of this app", value=False)
                        up_btn = gr.Button("Save dataset", variant="primary")

        with gr.Tab("Invert"):
            _help("invert")
            invert_dataset = gr.Markdown()
            with gr.Row():
                t_end = gr.Slider(100, 999, value=DDIM.t_end, step=1, label="t_end (operating timestep)", elem_id="t_end")
                steps = gr.Slider(5, 200, value=DDIM.steps, step=1, label="DDIM steps", elem_id="steps")
                batch = gr.Slider(0, 256, value=DDIM.batch_size, step=1, label="Batch size (0 = auto; lowered automatically on out-of-memory)", elem_id="batch")
            run_name = gr.Textbox(label="Run name (optional)", placeholder="galaxies t900", elem_id="run_name")
            invert_btn = gr.Button("Start inversion", variant="primary", elem_id="invert_btn")
            invert_note = gr.Markdown(elem_id="invert_note")
            runs = gr.Dataframe(label="Finished runs (saved in the workspace)", interactive=False, elem_id="runs")

        with gr.Tab("Diagnostics"):
            _help("diagnostics")
            with gr.Row():
                diag_run = gr.Dropdown([], label="Run", scale=2, elem_id="diag_run")
                diag_ref = gr.Radio(list(tasks.REFERENCES), value="prior", label="In-domain (ID) reference",
                                    info="; ".join(f"{k}: {v}" for k, v in tasks.REFERENCES.items()))
            with gr.Row():
                diag_btn = gr.Button("Compute diagnostics", variant="primary", elem_id="diag_btn")
                sweep_btn = gr.Button("t sweep (re-inverts the data through several t)")
            diag_note = gr.Markdown()
            diag_summary = gr.Markdown(elem_id="diag_summary")
            diag_table = gr.Dataframe(label="Latent geometry against the isotropic Gaussian (paper Table 3)", interactive=False,
                                      wrap=True, max_height=4000, column_widths=["24%", "16%", "22%", "38%"], elem_id="diag_table")
            with gr.Row():
                umap_plot = gr.Plot(label="UMAP", elem_id="umap")
                geo_plot = gr.Plot(label="Angles and distances")
            radii_plot = gr.Plot(label="Radii")
            with gr.Row():
                recon = gr.Gallery(label="Original | reconstruction, each pair whole (MAE on the [0, 1] scale)", columns=2, height="auto",
                                   object_fit="contain", allow_preview=False, elem_classes="pixelated", elem_id="recon", scale=3)
                recon_mae = gr.Dataframe(label="Reconstruction MAE ([0, 1] scale)", interactive=False, max_height=4000, elem_id="recon_mae",
                                         scale=1)
            sweep_plot = gr.Plot(label="t sweep", elem_id="sweep_plot")
            sweep_table = gr.Dataframe(label="t sweep: the main numbers at each t_end (separable: centre distance > d^¼)", interactive=False,
                                       wrap=True, max_height=4000, elem_id="sweep_table")

        with gr.Tab("Generate"):
            _help("generate")
            gen_run = gr.Dropdown([], label="Run (follows the Data tab's dataset: its newest run)", elem_id="gen_run")
            pick_note = gr.Markdown("Click a thumbnail for sample i, then another for sample j.", elem_id="pick_note")
            thumbs = gr.Gallery(label="Inverted samples", columns=12, height=220, allow_preview=False, elem_classes="pixelated", elem_id="thumbs")
            with gr.Row():
                i = gr.Slider(0, 1, value=0, step=1, label="Sample i", elem_id="i")
                j = gr.Slider(0, 1, value=1, step=1, label="Sample j", elem_id="j")
            with gr.Row():
                alpha = gr.Slider(0, 1, value=GEN.alpha, step=0.05, label="alpha", elem_id="alpha")
                method = gr.Radio([m for m in METHODS if m != "gaussian"], value=GEN.method, label="Interpolation")
                eta = gr.Slider(0, 1, value=GEN.eta, step=0.05, label="eta (DDIM noise while decoding)")
                seed = gr.Number(value=GEN.seed, precision=0, label="Seed")
            with gr.Row():
                gen_view = gr.Radio([], label="View", visible=False, elem_id="gen_view", scale=1)
                with gr.Column(scale=2):
                    gen_legend = gr.Markdown(elem_id="gen_legend")
                    gen_colorbar = gr.Image(interactive=False, show_label=False, height=200, elem_id="gen_colorbar")
            with gr.Row():
                image = gr.Image(label="Decoded Interp(x_i, x_j)", height=300, elem_classes="pixelated", elem_id="decoded", scale=1)
                picks = gr.Image(label="Real sample i | generated | real sample j", height=300, interactive=False, elem_classes="pixelated",
                                 elem_id="picks", scale=2)
            decode_note = gr.Markdown(elem_id="decode_note")
            with gr.Row():
                strip_k = gr.Slider(3, 15, value=7, step=1, label="Strip length k")
                strip_btn = gr.Button("Interpolation strip i -> j")
            strip = gr.Gallery(label="Strip", columns=7, height=200, elem_classes="pixelated", elem_id="strip")
            with gr.Accordion("Batch generation into a named set", open=True):
                with gr.Row():
                    gen_method = gr.Radio(list(METHODS) + list(BASELINE_METHODS), value=GEN.method, label="Method", elem_id="gen_method",
                                          info="slerp/lerp: pairs of samples interpolated at alpha; gaussian: draws from a Gaussian fitted to the run; "
                                               "baselines: pixel (crossfades of random pairs of the source images at alpha), finetune "
                                               "(a copy of the model tuned on the run's images, then sampled from its prior)")
                    gen_n = gr.Number(value=16, precision=0, label="N samples", elem_id="gen_n")
                    gen_name = gr.Textbox(label="Set name", placeholder="galaxies slerp 0.5", elem_id="gen_name")
                interp = GEN.method != "gaussian"
                with gr.Row():
                    gen_pairing = gr.Radio(list(PAIRINGS), value=GEN.pairing, label="Pairing", elem_id="gen_pairing", visible=interp,
                                           info="random pairs, or j among the latents nearest to i (one object, not two superposed)")
                    gen_neighbours = gr.Number(value=GEN.neighbours, precision=0, minimum=1, label="Neighbours", elem_id="gen_neighbours",
                                               visible=interp and GEN.pairing == "nearest", info="nearest: j among this many latents closest to i")
                    gen_spread = gr.Slider(0, 0.5, value=GEN.alpha_spread, step=0.01, label="Alpha spread", elem_id="gen_spread", visible=interp,
                                           info="each alpha drawn uniformly in [alpha - spread, alpha + spread]")
                    gen_clusters = gr.Number(value=GEN.clusters, precision=0, minimum=1, label="Clusters", elem_id="gen_clusters",
                                             visible=not interp, info="gaussian: one Gaussian per k-means cluster of the run's latents")
                with gr.Row():
                    use_filter = gr.Checkbox(value=GEN.geometric_filter, label="Geometric filter (keep draws whose distances and angles match the run)")
                    tolerance = gr.Slider(0.01, 0.5, value=GEN.filter_tolerance, step=0.01, label="Filter tolerance")
                    per_dim = gr.Checkbox(value=GEN.per_dim_variance, label="Gaussian: per-dimension variance", visible=not interp)
                    gen_ft_steps = gr.Number(value=FT.steps, precision=0, minimum=0, label="Fine-tuning steps", elem_id="gen_ft_steps",
                                             visible=GEN.method == "finetune", info="optimizer steps (0: the time budget only)")
                    gen_ft_minutes = gr.Number(value=0, minimum=0, label="Fine-tuning minutes", elem_id="gen_ft_minutes",
                                               visible=GEN.method == "finetune", info="time budget (0: none); whichever ends first")
                    gen_noise = gr.Radio(list(NOISE_MODELS), value=GEN.noise, label="Noise model", elem_id="gen_noise",
                                         info="match: add white noise up to the source images' pixel (sky) noise, measured at inversion "
                                              "(batch sets, the single decode and the strip)")
                    gen_centre = gr.Radio(list(CENTRES), value=GEN.centre, label="Slerp centre", elem_id="gen_centre",
                                          info="cloud: slerp turns about the mean of the run's latents (keeps sky and cores); "
                                               "origin: the authors' code (also used by the single decode and the strip above)")
                    gen_calibration = gr.Radio(list(CALIBRATIONS), value=GEN.calibration, label="Intensity calibration", elem_id="gen_calibration",
                                               info="quantiles: each channel takes the intensity distribution interpolated between the "
                                                    "sample's two source images (recorded at inversion), keeping the decoded pixel ranks; like the noise "
                                                    "model and the slerp centre it also applies to the single decode and the strip above")
                gen_btn = gr.Button("Generate set", variant="primary", elem_id="gen_btn")
                gen_note = gr.Markdown()
                with gr.Row():
                    generated = gr.Dropdown([], label="Generated sets", scale=3, elem_id="generated")
                    dl_btn = gr.Button("Download zip (PNG + physical .npy + latents)", scale=1, elem_id="dl_btn")
                gen_info = gr.Markdown(elem_id="gen_info")
                dl_file = gr.File(label="Download", elem_id="dl_file")
                gen_gallery = gr.Gallery(label="Generated", columns=10, height=260, elem_classes="pixelated", elem_id="gen_gallery")
                gen_compare = gr.Image(label="Real (the run's images, top) against generated (bottom), same size", interactive=False,
                                       elem_classes="pixelated", elem_id="gen_compare")
                gen_set_legend = gr.Markdown(elem_id="gen_set_legend")
                gen_set_colorbar = gr.Image(interactive=False, show_label=False, height=200, elem_id="gen_set_colorbar")

        with gr.Tab("Quality"):
            _help("quality")
            with gr.Row():
                q_gen = gr.Dropdown([], label="Generated set", scale=3, elem_id="q_gen")
                q_kind = gr.Radio(list(service.QUALITY_KINDS), value="auto", label="Statistics", elem_id="q_kind",
                                  info="auto: physical for physical maps, galaxy when the data's name says so, else image")
            with gr.Row():
                q_boot = gr.Slider(10, 1000, value=200, step=10, label="Bootstrap resamples (95% CIs)", elem_id="q_boot")
                q_morph = gr.Slider(4, 1000, value=200, step=1, label="statmorph images per set, at most (galaxy statistics; ~0.2 s each)",
                                    elem_id="q_morph")
                q_force = gr.Checkbox(label="Recompute even if cached", elem_id="q_force")
            q_btn = gr.Button("Evaluate", variant="primary", elem_id="q_btn")
            q_note = gr.Markdown(elem_id="q_note")
            q_summary = gr.Markdown(elem_id="q_summary")
            q_table = gr.Dataframe(label="Summary, one row per set (C2ST: classifier accuracy telling the set from real half B, 0.5 = "
                                         "indistinguishable; within floor: share of statistics within 2x the floor distance)",
                                   interactive=False, wrap=True, elem_id="q_table")
            q_stats = gr.Dataframe(label="Per statistic: Wasserstein-1 distance to real half B / its std, farthest above the floor first",
                                   interactive=False, max_height=420, elem_id="q_stats")
            q_hist = gr.Plot(label="Histograms of the statistics farthest from the floor", elem_id="q_hist")
            q_spectra = gr.Plot(label="Power spectra", elem_id="q_spectra")
            with gr.Row():
                q_dist = gr.Plot(label="Distance per statistic", elem_id="q_dist")
                q_mem = gr.Plot(label="Memorization", elem_id="q_mem")
            with gr.Row():
                q_view = gr.Radio([], label="View", visible=False, elem_id="q_view", scale=1)
                with gr.Column(scale=2):
                    q_legend = gr.Markdown(elem_id="q_legend")
                    q_colorbar = gr.Image(interactive=False, show_label=False, height=200, elem_id="q_colorbar")
            q_montage = gr.Image(label="Real | generated | crossfade, at the same stretch", height=420, interactive=False, elem_classes="pixelated",
                                 elem_id="q_montage")
            q_nn = gr.Image(label="The generated samples closest to a real image, over that image", height=300, interactive=False,
                            elem_classes="pixelated", elem_id="q_nn")
            q_file = gr.File(label="Offline HTML report (tables, figures, pictures)", elem_id="q_file")

        with gr.Tab("Search"):
            _help("search")
            s_seen = gr.State("")
            s_jobs_seen = gr.State(None)  # None: the first tick fills the source list
            with gr.Row():
                s_source = gr.Dropdown([], label="Real images (dataset, or a run's dataset)", scale=3, elem_id="s_source")
                s_kind = gr.Radio(list(service.QUALITY_KINDS), value="auto", label="Statistics", elem_id="s_kind")
            with gr.Row():
                s_t = gr.Textbox(value=", ".join(map(str, SEARCH.t_end)), label="t_end values", elem_id="s_t")
                s_eta = gr.Textbox(value=", ".join(f"{e:g}" for e in SEARCH.eta), label="eta values", elem_id="s_eta")
                s_n = gr.Number(value=SEARCH.n_per_cell, precision=0, minimum=4, label="Samples per cell", elem_id="s_n")
            with gr.Row():
                s_pairing = gr.CheckboxGroup(list(PAIRINGS), value=list(SEARCH.pairing), label="Pairing", elem_id="s_pairing")
                s_noise = gr.CheckboxGroup(list(NOISE_MODELS), value=list(SEARCH.noise), label="Noise models", elem_id="s_noise")
                s_boot = gr.Slider(10, 1000, value=200, step=10, label="Bootstrap resamples (95% CIs)", elem_id="s_boot")
                s_force = gr.Checkbox(label="Recompute even if cached", elem_id="s_force")
            s_btn = gr.Button("Run search", variant="primary", elem_id="s_btn")
            s_note = gr.Markdown(elem_id="s_note")
            s_summary = gr.Markdown(elem_id="s_summary")
            s_table = gr.Dataframe(label="One row per cell (best marked), then the floor (real A vs B) and the pixel crossfade",
                                   interactive=False, wrap=True, elem_id="s_table")
            s_plot = gr.Plot(label="Quality against diversity", elem_id="s_plot")
            s_montage = gr.Image(label="Real, then a row per cell, at the same stretch", height=420, interactive=False,
                                 elem_classes="pixelated", elem_id="s_montage")
            s_file = gr.File(label="Offline HTML report (cells, plot, every statistic)", elem_id="s_file")
            search_timer = gr.Timer(1.0)

        with gr.Tab("Rate"):
            _help("rate")
            rp = rate_panel()
            rater, study, rate_image, rate_progress, instructions = rp.rater, rp.study, rp.image, rp.progress, rp.instructions

        with gr.Tab("Results"):
            _help("results")
            with gr.Row():
                token = gr.Textbox(label="Admin token", type="password", visible=bool(os.environ.get("OODGEN_ADMIN_TOKEN")))
                res_study = gr.Dropdown([""], value="", label="Study (empty: all)", elem_id="res_study")
                res_btn = gr.Button("Refresh results", variant="primary", elem_id="res_btn")
            res_note = gr.Markdown(elem_id="res_note")
            res_groups = gr.Dataframe(label="MOS per study, domain, method and source (95% CI: t interval, clipped to the 1-5 scale "
                                            "where ci95_clipped; the export has the unclipped ends)", interactive=False, elem_id="res_groups")
            res_quality = gr.Dataframe(label="Quality of each generated set in the study (cached reports from the Quality tab; "
                                             "C2ST on statistics beside its real-vs-real floor, 0.5 = indistinguishable)",
                                       interactive=False, elem_id="res_quality")
            res_plot = gr.Plot(label="Score distributions", elem_id="res_plot")
            res_raters = gr.Dataframe(label="Raters: mean, consistency on repeats, straight-lining", interactive=False)
            with gr.Row():
                export_btn = gr.Button("Export CSV + JSON")
                export_files = gr.File(label="Exports", file_count="multiple", elem_id="export_files")
            with gr.Accordion("Create a study", open=False):
                with gr.Row():
                    st_id = gr.Textbox(label="Study id", placeholder="galaxy-mos-1", elem_id="st_id")
                    st_domain = gr.Textbox(label="Domain", value="galaxy", elem_id="st_domain")
                    st_n = gr.Number(value=50, precision=0, label="Items per source (paper: 50 + 50)", elem_id="st_n")
                    st_repeat = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Repeated fraction", elem_id="st_repeat")
                with gr.Row():
                    st_gen = gr.Dropdown([], multiselect=True, label="Generated sets", elem_id="st_gen")
                    st_real = gr.Dropdown([], label="Real reference dataset", elem_id="st_real")
                st_instr = gr.Textbox(label="Instructions for raters", lines=2,
                                      value="Rate how realistic each image looks as real data of this domain (5 Excellent ... 1 Bad).")
                st_btn = gr.Button("Create study", variant="primary", elem_id="st_btn")
                st_note = gr.Markdown(elem_id="st_note")

        # ---- events
        load_outputs = [key, owner, jobs, dataset, diag_run, gen_run, generated, study, rater, res_study, st_gen, st_real, jobs_seen, runs, cancel_pick,
                        q_gen]
        loaded = demo.load(on_load, [key, prefs], load_outputs)
        loaded.then(service.model_summary, model, model_info).then(
            on_rate_resume, prefs, rp.outputs)
        loaded.then(service.resume_in_request, owner, jobs, show_progress="hidden")  # ZeroGPU: jobs a restart left queued
        demo.load(None, None, dark, js=DARK_JS)
        demo.load(None, None, None, js=PICK_LOG_JS)
        model.change(service.model_summary, model, model_info)
        diag_outputs = [diag_summary, diag_table, umap_plot, geo_plot, radii_plot, recon, recon_mae, sweep_plot, sweep_table]
        quality_outputs = [q_summary, q_table, q_stats, q_hist, q_spectra, q_dist, q_mem, q_montage, q_nn, q_file, q_legend, q_colorbar, q_view]
        assert len(diag_outputs) == N_DIAG and len(quality_outputs) == N_QUALITY
        timer.tick(on_tick, [owner, jobs_seen, diag_run, gen_run, generated, diag_run, diag_ref, diag_seen, q_gen, q_seen, dark, q_view],
                   [jobs, jobs_seen, diag_run, gen_run, generated, cancel_pick, runs, st_gen, q_gen, diag_seen, *diag_outputs,
                    q_seen, *quality_outputs],
                   concurrency_limit=None, show_progress="hidden")
        cancel_btn.click(on_cancel, [owner, cancel_pick], [cancel_note, jobs])
        del_box.expand(on_delete_choices, [owner, del_pick], del_pick)
        jobs_seen.change(on_delete_choices, [owner, del_pick], del_pick)  # a job ended: a new run, set or finished job
        del_pick.change(lambda: (gr.Row(visible=False), ""), None, [del_confirm, del_question])
        del_btn.click(on_delete_ask, [owner, del_pick], [del_confirm, del_question, del_note])
        del_no.click(lambda: (gr.Row(visible=False), "Nothing deleted."), None, [del_confirm, del_note])
        del_yes.click(on_delete_yes, [owner, del_pick, dataset], [del_confirm, del_note, del_pick, dataset, jobs_seen, jobs])

        dataset_outputs = [preview, data_report, invert_dataset, data_legend, data_colorbar, data_view]
        dataset.change(on_dataset, [owner, dataset], dataset_outputs).then(on_dataset_runs, [owner, dataset], [gen_run, diag_run])
        data_view.input(on_dataset, [owner, dataset, data_view], dataset_outputs)
        up_btn.click(on_upload, [owner, uploads, up_name, up_shared], [dataset, preview, data_report]).then(
            on_delete_choices, [owner, del_pick], del_pick)
        invert_btn.click(on_invert, [owner, dataset, model, t_end, steps, batch, run_name], [invert_note, jobs])

        for control in (diag_run, diag_ref, dark):
            control.change(on_diag_show, [owner, diag_run, diag_ref, dark], [diag_seen, *diag_outputs])
        diag_btn.click(on_diag_start, [owner, diag_run, diag_ref], [diag_note, jobs])
        sweep_btn.click(lambda o, r, f: on_diag_start(o, r, f, sweep=True), [owner, diag_run, diag_ref], [diag_note, jobs])

        decode_inputs = [owner, gen_run, i, j, alpha, method, eta, seed, gen_centre, gen_noise, gen_calibration]
        gen_run.change(on_gen_run, [owner, gen_run, picker, gen_view], [thumbs, i, j, pick_note, gen_legend, gen_colorbar, gen_view]).then(
            on_decode, [*decode_inputs, gen_view], [image, picks], show_progress="minimal").then(  # the decoded image at once
            on_decode_check, decode_inputs, decode_note, show_progress="hidden")
        # every click counts (trigger_mode), numbered in the browser as it happens (PICK_LOG_JS, read by PICK_JS);
        # answered one at a time (concurrency_limit), and an event that knew of fewer clicks changes nothing. What the
        # clicks set is shown by one follow-up at a time, the last one after every answer (always_last), so the page
        # ends with the picker's final state whatever order the answers arrive in.
        thumbs.select(on_pick, [picker, pick_click], None, js=PICK_JS, trigger_mode="multiple", concurrency_limit=1,
                      show_progress="hidden").then(
            on_pick_shown, picker, [i, j, pick_note], trigger_mode="always_last", show_progress="hidden")
        for control in (alpha, i, j, eta, method, seed, gen_centre, gen_noise, gen_calibration):
            control.change(on_decode, [*decode_inputs, gen_view], [image, picks], trigger_mode="always_last", show_progress="minimal").then(
                on_decode_check, decode_inputs, decode_note, trigger_mode="always_last", show_progress="hidden")
        gen_view.input(on_decode, [*decode_inputs, gen_view], [image, picks], show_progress="minimal")
        gen_view.input(on_gen_view, [owner, gen_run, gen_view], [gen_legend, gen_colorbar], show_progress="hidden")
        strip_btn.click(on_strip, [owner, gen_run, i, j, strip_k, method, gen_centre, gen_noise, gen_calibration], strip)
        for control in (gen_method, gen_pairing):
            control.change(on_gen_method, [gen_method, gen_pairing], [gen_pairing, gen_neighbours, gen_spread, gen_clusters, per_dim,
                                                                      gen_ft_steps, gen_ft_minutes],
                           show_progress="hidden")
        gen_btn.click(on_generate, [owner, gen_run, gen_method, gen_n, alpha, eta, seed, use_filter, tolerance, per_dim,
                                    gen_pairing, gen_neighbours, gen_spread, gen_clusters, gen_name, gen_noise, gen_ft_steps, gen_ft_minutes,
                                    gen_centre, gen_calibration],
                      [gen_note, jobs])
        generated_outputs = [gen_gallery, gen_info, gen_compare, gen_set_legend, gen_set_colorbar]
        generated.change(on_generated, [owner, generated, gen_view], generated_outputs)
        gen_view.input(on_generated, [owner, generated, gen_view], generated_outputs)
        dl_btn.click(on_download, [owner, generated], dl_file)

        q_gen.change(on_quality_show, [owner, q_gen, dark, q_view], [q_seen, *quality_outputs])
        for control in (q_view, dark):
            (control.input if control is q_view else control.change)(on_quality_show, [owner, q_gen, dark, q_view], [q_seen, *quality_outputs])
        q_btn.click(on_quality_start, [owner, q_gen, q_kind, q_boot, q_morph, q_force], [q_note, jobs])

        search_outputs = [s_summary, s_table, s_plot, s_montage, s_file]
        for control in (s_source, model, dark):
            control.change(on_search_show, [owner, s_source, model, dark], [s_seen, *search_outputs])
        search_timer.tick(on_search_tick, [owner, s_source, model, s_seen, s_jobs_seen, dark], [s_jobs_seen, s_source, s_seen, *search_outputs],
                          concurrency_limit=None, show_progress="hidden")
        s_btn.click(on_search_start, [owner, s_source, model, s_t, s_eta, s_pairing, s_noise, s_n, s_kind, s_boot, s_force], [s_note, jobs])

        wire_rate_panel(rp, prefs)

        res_btn.click(on_results, [token, res_study, dark], [res_note, res_groups, res_quality, res_raters, res_plot])
        export_btn.click(on_export, [token, res_study], export_files)
        st_btn.click(on_create_study, [owner, token, st_id, st_domain, st_gen, st_real, st_n, st_instr, st_repeat],
                     [st_note, study, res_study])
    # the rater-only page: the rating panel alone, no owner tabs and no timer (a study's link for its raters)
    with demo.route("Rate", "rate", show_in_navbar=False) as rate_page:
        rprefs = gr.BrowserState({}, storage_key="oodgen-prefs", secret=secret)  # the same name and study as the main page
        gr.Markdown("# Expert rating\n" + RATE_HELP)
        if OAUTH:
            gr.LoginButton()
        page_panel = rate_panel()
        wire_rate_panel(page_panel, rprefs)
        rate_page.load(on_rater_page, rprefs, [page_panel.study, page_panel.rater, page_panel.progress]).then(
            on_rate_resume, rprefs, page_panel.outputs)
    return demo


demo = build()

if __name__ == "__main__":
    limits = service.backend().limits
    demo.queue(default_concurrency_limit=2).launch(
        css=CSS, js=KEYS_JS, max_file_size=f"{limits.max_upload_mb}mb", ssr_mode=False,
        blocked_paths=[str(service.backend().ws.home)],  # the workspace is never served as files; the app returns copies
    )
