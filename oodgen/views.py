"""What the app's tabs show, assembled from :mod:`oodgen.service` and :mod:`oodgen.display` as plain values.

Physical maps get their legend (bands, unit, stretch), colour bars and a per-band view wherever
they are shown (Data, Generate, Quality); the Diagnostics tab gets readable tables, whole
reconstruction pairs with their MAE and plots in the page's theme; the Generate tab shows both picks
beside the decoded image, real against generated for a set, and says when a decoded sample has
fallen back into the model's own domain (:mod:`oodgen.fallback`). No gradio here.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import display, fallback, service, tasks
from .config import GenerationSettings
from .data import fit_stretch, preview

GEN = GenerationSettings()

_LAST: "OrderedDict[tuple, np.ndarray]" = OrderedDict()  # recently decoded images, for the domain check that follows a decode
_LAST_LOCK = threading.Lock()


def _physical_legend(stretch, view) -> tuple[str, Optional[np.ndarray], list[str], Optional[str]]:
    """(legend Markdown, colour bar picture, view choices, the view in force) of a set with ``stretch`` (None: an image set,
    which has no views: its view is None, so a hidden, empty view radio never holds a value outside its choices)."""
    choices = display.view_choices(stretch)
    view = view if view in choices else display.COMPOSITE
    if stretch is None:
        return "", None, [], None
    bar = display.colorbar_image(stretch, view)
    return display.legend_markdown(stretch, view), (service.image_file(bar) if bar is not None else None), choices, view


# ---------------------------------------------------------------- data
def dataset_view(owner: str, ref: str, view: Optional[str] = None) -> dict:
    """The Data tab for dataset ``ref``: gallery (in ``view``: the composite or one band), report, legend, colour bar,
    and the view choices (empty for images)."""
    if not ref:
        raise service.UserError("pick a dataset from the list, or upload files")
    try:
        report, name = tasks.load_dataset(service.backend().ws, ref, owner)
    except service.WorkspaceError as e:
        raise service.UserError(str(e)) from None
    samples = report.samples
    stretch = fit_stretch(samples) if samples and samples[0].kind == "physical" else None
    legend, bar, choices, view = _physical_legend(stretch, view)
    band = display.band_index(view, stretch)
    shown = [(service.image_file(display.band_view(service.upscale(preview(s, stretch), 128), band, stretch)), s.name)
             for s in samples[:60]]
    return {"gallery": shown, "report": service.report_markdown(report, name), "legend": legend, "colorbar": bar,
            "views": choices, "view": view, "name": name}


def run_for_dataset(owner: str, ref: Optional[str]) -> Optional[str]:
    """The newest run of dataset ``ref`` this owner sees (None when there is none): what the Generate and
    Diagnostics tabs follow when the Data tab's choice changes."""
    if not owner or not ref:
        return None
    for r in service.backend().ws.list("runs", owner):  # newest first
        if r.meta.get("dataset") == ref:
            return r.id
    return None


# ---------------------------------------------------------------- generation
def _thumbs(rec) -> np.ndarray:
    return np.load(rec.root / tasks.THUMBS)


def run_view(owner: str, run_id: Optional[str], view: Optional[str] = None) -> dict:
    """Legend, colour bar and view choices of run ``run_id`` (physical runs; empty for images)."""
    if not owner or not run_id:
        return {"legend": "", "colorbar": None, "views": [], "view": None}
    rec = service._run(owner, run_id)
    legend, bar, choices, view = _physical_legend(display.stretch_of(rec.meta), view)
    return {"legend": legend, "colorbar": bar, "views": choices, "view": view}


def _decode_key(owner, run_id, i, j, alpha, method, eta, seed, centre, noise, calibration) -> tuple:
    return (owner, run_id, int(i), int(j), round(float(alpha), 6), method, round(float(eta), 6), int(seed), centre, noise, calibration)


def decode_view(owner: str, run_id: str, i: int, j: int, alpha: float, method: str = "slerp", eta: float = 0.0, seed: int = 0,
                centre: str = "cloud", view: Optional[str] = None, noise: str = GEN.noise, calibration: str = GEN.calibration) -> dict:
    """The decoded image of Interp(x_i, x_j) (``decoded``, in ``view``) and ``picks``: sample i, the decoded image and
    sample j side by side at one size, labelled (the real images beside the generated one); ``noise`` and ``calibration``
    finish it as a batch set is."""
    img = service.decode_pair(owner, run_id, int(i), int(j), float(alpha), method, float(eta), int(seed), centre, noise, calibration)
    key = _decode_key(owner, run_id, i, j, alpha, method, eta, seed, centre, noise, calibration)
    with _LAST_LOCK:
        _LAST[key] = img
        while len(_LAST) > 32:
            _LAST.popitem(last=False)
    rec = service._run(owner, run_id)
    stretch = display.stretch_of(rec.meta)
    band = display.band_index(view if view in display.view_choices(stretch) else None, stretch)
    thumbs, names = _thumbs(rec), rec.meta.get("names", [])

    def name(k: int) -> str:
        return str(names[k])[:18] if k < len(names) else ""

    shown = display.band_view(img, band, stretch)
    what = f"{method} alpha {float(alpha):.2f}"
    picks = display.labelled_row([display.band_view(thumbs[int(i)], band, stretch), shown, display.band_view(thumbs[int(j)], band, stretch)],
                                 [f"real i = {int(i)} {name(int(i))}", f"generated ({what})", f"real j = {int(j)} {name(int(j))}"],
                                 side=192)
    return {"decoded": service.image_file(shown), "picks": service.image_file(picks)}


def decode_check(owner: str, run_id: str, i: int, j: int, alpha: float, method: str = "slerp", eta: float = 0.0, seed: int = 0,
                 centre: str = "cloud", noise: str = GEN.noise, calibration: str = GEN.calibration) -> str:
    """Markdown: whether the decoded sample of these settings looks like the model's own domain rather than the run's
    data (:func:`oodgen.fallback.check` against the run's images and the model's own samples)."""
    if not owner or not run_id:
        return ""
    key = _decode_key(owner, run_id, i, j, alpha, method, eta, seed, centre, noise, calibration)
    with _LAST_LOCK:
        img = _LAST.get(key)
    if img is None:
        img = service.decode_pair(owner, run_id, int(i), int(j), float(alpha), method, float(eta), int(seed), centre, noise, calibration)
    rec = service._run(owner, run_id)
    model = service.get_model(rec.meta["model"])
    steps = int(tasks.run_settings(rec).steps)
    ref = fallback.model_samples(model, steps)
    return fallback.check(img, _thumbs(rec), ref).message()


def _set_images(rec) -> list[Path]:
    root = Path(rec.root)
    return sorted((root / "images").glob("*.png")) or sorted(root.glob("*.png"))


def generated_view(owner: str, gen_id: Optional[str], view: Optional[str] = None, limit: int = 60) -> dict:
    """A generated set: its gallery (in ``view``), real against generated side by side (a row of the run's images over a
    row of the set's, one size), legend, colour bar and view choices."""
    from PIL import Image

    if not owner or not gen_id:
        return {"gallery": [], "compare": None, "legend": "", "colorbar": None, "views": [], "view": None}
    rec = service._generated(owner, gen_id)
    stretch = display.stretch_of(rec.meta)
    legend, bar, choices, view = _physical_legend(stretch, view)
    band = display.band_index(view, stretch)
    files = _set_images(rec)
    imgs = [np.asarray(Image.open(f).convert("RGB")) for f in files[:limit]]
    gallery = [(service.image_file(display.band_view(service.upscale(im, 128), band, stretch)), f.stem) for im, f in zip(imgs, files)]
    compare = None
    try:
        run = service._run(owner, rec.meta.get("run"))
        real = _thumbs(run)
    except (service.UserError, OSError):
        real = np.zeros((0,))
    if len(imgs) and len(real):
        side = max(64, imgs[0].shape[0])
        pic = display.side_by_side(real, np.stack([display._resize_to(im, imgs[0].shape[0]) for im in imgs]), k=8, side=side)
        compare = service.image_file(display.band_view(pic, band, stretch))
    return {"gallery": gallery, "compare": compare, "legend": legend, "colorbar": bar, "views": choices, "view": view}


# ---------------------------------------------------------------- quality
def quality_pictures(owner: str, gen_id: Optional[str], montage: Any, nn_pairs: Any, view: Optional[str] = None) -> dict:
    """The Quality tab's montage and nearest-neighbour pictures in ``view`` (a band alone, or the composite), with the
    legend and colour bar of the set's stretch (the real maps' stretch the report used) for physical sets."""
    empty = {"montage": montage, "nn": nn_pairs, "legend": "", "colorbar": None, "views": [], "view": None}
    if not owner or not gen_id:
        return empty
    try:
        rec = service._generated(owner, gen_id)
    except service.UserError:
        return empty
    stretch = display.stretch_of(rec.meta)
    legend, bar, choices, view = _physical_legend(stretch, view)
    band = display.band_index(view, stretch)

    def shown(pic):
        return None if pic is None else service.image_file(display.band_view(np.asarray(pic), band, stretch))

    return {"montage": shown(montage), "nn": shown(nn_pairs), "legend": legend, "colorbar": bar, "views": choices, "view": view}


# ---------------------------------------------------------------- diagnostics
def diagnostics_view(owner: str, run_id: str, reference: str, dark: bool = False) -> dict:
    """The Diagnostics tab for (run, reference): summary, the Table-3 table, themed figures, whole reconstruction
    pairs with their MAE (pictures and a table), and the t sweep with readable names and rounded numbers."""
    v = service.diagnostics_view(owner, run_id, reference)
    out = {"summary": v.summary, "table": v.table, "figures": {k: display.theme_figure(f, dark) for k, f in v.figures.items()},
           "recon": [], "recon_table": None, "sweep_figure": display.theme_figure(v.sweep_figure, dark), "sweep_table": None,
           "computed": v.table is not None or v.sweep_table is not None}
    rec = service._run(owner, run_id)
    folder = tasks.diagnostics_dir(rec, reference)
    if (folder / "recon.npz").exists():
        with np.load(folder / "recon.npz") as z:
            names = [str(n) for n in z["names"]] or [str(k) for k in range(len(z["mae"]))]
            names += [str(k) for k in range(len(names), len(z["mae"]))]
            out["recon"] = [(service.image_file(p), c) for p, c in display.recon_pairs(z["original"], z["reconstruction"], z["mae"], names)]
            out["recon_table"] = display.recon_table(z["mae"], names)
    if (folder / "sweep.json").exists():
        out["sweep_table"] = display.sweep_table(json.loads((folder / "sweep.json").read_text())["rows"])
    return out
