"""Files in, quality report out: load a generated set and a real set, run :func:`quality.evaluate`, write JSON/HTML.

The command line (``python -m oodgen evaluate``), the app's Quality job and the bandwidth search call
these functions, so a quality report has one format whichever front end wrote it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import quality
from .data import DataError, Sample, Stretch, fit_stretch, load_paths, square_resize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """A set of images or physical maps as one array, with what is known about it."""

    name: str  # label shown in tables (folder name unless given)
    x: np.ndarray  # float32 [N, H, W, C]: [0, 1] for images, data units for physical maps
    kind: str  # "image" or "physical" (the data module's kinds)
    unit: Optional[str]  # physical unit, if known
    bands: Optional[tuple[str, ...]]  # band names, if known
    samples: tuple[Sample, ...]  # the samples it was built from (display stretch, names)
    note: str = ""  # what was done to it (resampling, previews ignored)


def stack_samples(samples: Sequence[Sample], side: int) -> np.ndarray:
    """Samples -> [N, side, side, C] (centre-cropped and resampled like model inputs), grey -> RGB when mixed."""
    c = max(s.channels for s in samples)
    out = []
    for s in samples:
        t = square_resize(torch.from_numpy(np.ascontiguousarray(s.data.transpose(2, 0, 1))), side)
        if t.shape[0] != c:
            t = t.expand(c, -1, -1)
        out.append(t.permute(1, 2, 0).numpy())
    return np.stack(out).astype(np.float32)


def load_set(path: str | Path | Sequence[str | Path], name: Optional[str] = None, side: Optional[int] = None,
             unit: Optional[str] = None, bands: Optional[Sequence[str]] = None) -> ImageSet:
    """Read a folder, files or zip archives as one :class:`ImageSet`.

    A folder holding both physical arrays and PNG previews (a generated set of physical maps) is read
    as the physical arrays. ``side``: resample every item to side x side (default: the first item's
    short side). ``unit``/``bands`` fill in what the files do not record (a generated set's
    ``generated.json`` names its unit).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    rep = load_paths(paths, max_files=None)
    label = name or ", ".join(Path(p).name for p in paths)
    if not rep.samples:
        why = "; ".join(f"{n}: {m}" for n, m in rep.errors[:3]) or "no image or array files found"
        raise DataError(f"{label}: nothing to evaluate ({why}); point at a folder of PNG/JPEG/TIFF, FITS or .npy files")
    phys = [s for s in rep.samples if s.kind == "physical"]
    samples = phys if phys else rep.samples
    notes = []
    if phys and len(phys) < len(rep.samples):
        notes.append(f"{len(rep.samples) - len(phys)} PNG previews ignored (physical arrays used)")
    if len({s.channels for s in samples}) > 1 and phys:
        raise DataError(f"{label}: physical maps with different band counts; evaluate one kind of data at a time")
    natural = min(min(s.data.shape[:2]) for s in samples)
    side = side or natural
    if any(min(s.data.shape[:2]) != side for s in samples):
        notes.append(f"resampled from {natural}x{natural} to {side}x{side}")
    manifest_unit, manifest_bands = _generated_manifest(paths)
    s0 = samples[0]
    return ImageSet(label, stack_samples(samples, side), s0.kind, s0.unit or unit or manifest_unit,
                    tuple(bands) if bands else (s0.bands or manifest_bands), tuple(samples), "; ".join(notes))


def _generated_manifest(paths: Sequence[str | Path]) -> tuple[Optional[str], Optional[tuple[str, ...]]]:
    """(unit, bands) recorded in a generated set's ``generated.json``, if any."""
    for p in paths:
        f = Path(p) / "generated.json"
        if f.is_file():
            try:
                m = json.loads(f.read_text())
            except (OSError, ValueError):
                return None, None
            st = (m.get("stretch") or {}) if isinstance(m, dict) else {}
            bands = st.get("bands") or m.get("bands")
            return m.get("unit") or st.get("unit"), tuple(bands) if bands else None
    return None, None


def resolve_kind(kind: str, real: ImageSet) -> str:
    """``auto`` -> physical for physical data, galaxy when the set's name says so, else image."""
    if kind != "auto":
        if kind == "physical" and real.kind != "physical":
            raise DataError(f"{real.name}: --kind physical needs physical arrays (.npy/FITS with units), these are images")
        return kind
    return "physical" if real.kind == "physical" else quality.detect_kind(None, real.x.shape[-1], real.name)


def display_rgb(s: ImageSet, stretch: Optional[Stretch]) -> np.ndarray:
    """uint8 [N, H, W, 3] for montages: images as they are; physical maps through ``stretch`` (RGB = longest band first)."""
    x = s.x
    if s.kind == "physical" and stretch is not None:
        x = stretch.forward(x)[..., ::-1]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, -1)
    return (np.clip(x[..., :3], 0, 1) * 255).round().astype(np.uint8)


@dataclass
class Evaluation:
    """A finished evaluation: the report, the sets it compared, and the display stretch."""

    report: quality.QualityReport
    real: ImageSet
    sets: dict[str, ImageSet]
    stretch: Optional[Stretch]

    def figures(self) -> dict:
        rep = self.report
        figs = {"distances": quality.distance_figure(rep), "histograms": quality.histograms_figure(rep)}
        arrays = {"real": self.real.x, **{k: v.x for k, v in self.sets.items()}}
        figs["power spectra"] = quality.spectra_figure(arrays, self.real.bands, log_intensity=self.real.kind == "physical")
        figs["memorization"] = quality.memorization_figure(rep)
        return figs

    def montage(self, k: int = 8, seed: int = 0) -> np.ndarray:
        """uint8 picture: a row of k real images, then k of each set, all at the real set's display stretch."""
        rng = np.random.default_rng(seed)
        rows, labels = [], []
        for label, s in [("real", self.real), *self.sets.items()]:
            idx = np.sort(rng.permutation(len(s.x))[:k])
            rows.append(display_rgb(s, self.stretch)[idx])
            labels.append(label)
        return quality.montage(rows, labels)

    def nn_pairs(self, label: str, k: int = 8) -> np.ndarray:
        """uint8 picture: the k generated images of ``label`` closest to a real one (top) over that real image (bottom)."""
        c = next(c for c in self.report.sets if c.label == label)
        d = np.asarray(c.memorization["nn_distances"])
        order = np.argsort(d)[:k]
        gen = display_rgb(self.sets[label], self.stretch)[order]
        real = display_rgb(self.real, self.stretch)[np.asarray(c.memorization["nn_index"])[order]]
        return quality.montage([gen, real], [label, "nearest real"])


def evaluate_sets(generated: ImageSet, real: ImageSet, baselines: Sequence[ImageSet] = (), kind: str = "auto",
                  settings: quality.QualitySettings = quality.QualitySettings(), with_crossfade: bool = True,
                  progress: Optional[Callable[[str, float], None]] = None) -> Evaluation:
    """Compare ``generated`` (and ``baselines``) with ``real``: the :class:`Evaluation` both front ends write."""
    kind = resolve_kind(kind if kind != "auto" else settings.kind, real)
    side = real.x.shape[1]
    sets = {}
    for s in (generated, *baselines):
        if s.kind != real.kind:
            raise DataError(f"{s.name} holds {s.kind} data but {real.name} holds {real.kind} data: compare like with like "
                            "(a generated set of physical maps is read from its .npy files)")
        if s.x.shape[-1] != real.x.shape[-1]:
            raise DataError(f"{s.name} has {s.x.shape[-1]} channel(s) but {real.name} has {real.x.shape[-1]}")
        if s.x.shape[1] != side:
            s = _resampled(s, side)
        if s.name in sets or s.name == "real":
            s = ImageSet(f"{s.name} ({len(sets) + 1})", s.x, s.kind, s.unit, s.bands, s.samples, s.note)
        sets[s.name] = s
    if real.kind == "physical" and generated.unit and real.unit and generated.unit != real.unit:
        raise DataError(f"{generated.name} is in {generated.unit} but {real.name} is in {real.unit}; convert one of them first")
    stretch = fit_stretch(list(real.samples)) if real.kind == "physical" else None
    rep = quality.evaluate(real.x, {k: v.x for k, v in sets.items()}, kind, settings, with_crossfade=with_crossfade,
                           bands=real.bands, progress=progress)
    if with_crossfade:
        pairs = quality.crossfade_pairs(len(real.x), max(len(real.x), max(len(v.x) for v in sets.values())), settings.seed)
        sets["crossfade"] = ImageSet("crossfade", quality.crossfade(real.x, pairs), real.kind, real.unit, real.bands, real.samples,
                                     "pixel average of random pairs of real images")
    return Evaluation(rep, real, sets, stretch)


def _resampled(s: ImageSet, side: int) -> ImageSet:
    t = torch.from_numpy(np.ascontiguousarray(s.x.transpose(0, 3, 1, 2)))
    x = torch.stack([square_resize(im, side) for im in t]).permute(0, 2, 3, 1).numpy().astype(np.float32)
    note = "; ".join(n for n in (s.note, f"resampled from {s.x.shape[1]}x{s.x.shape[1]} to {side}x{side} to match the real set") if n)
    return ImageSet(s.name, x, s.kind, s.unit, s.bands, s.samples, note)


def _png_data_uri(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def summary_text(ev: Evaluation) -> str:
    """The summary table (one row per set, the floor first) as aligned plain text."""
    rows = ev.report.summary()
    cols = ["label", "n", "c2st_stats", "c2st_stats_ci", "c2st_pixels", "frechet", "within_floor_frac", "median_distance",
            "near_copies", "diversity_ratio", "failures"]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols)] + [line(r) for r in cells])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def write_quality_report(ev: Evaluation, json_path: Optional[str | Path] = None, html_path: Optional[str | Path] = None,
                         extra: Optional[dict] = None, montage_path: Optional[str | Path] = None) -> dict:
    """Write the evaluation as JSON and/or one offline HTML page (table, figures, montage, NN pairs) and/or the
    montage as a PNG; returns the JSON payload."""
    from .diagnostics import write_figures_page
    from .fsutil import atomic_write

    if montage_path:
        from PIL import Image

        pic = Image.fromarray(ev.montage())
        atomic_write(Path(montage_path), lambda tmp: pic.save(tmp, format="PNG"))
    payload = {**ev.report.to_json(), "real": {"name": ev.real.name, "n": len(ev.real.x), "note": ev.real.note, "unit": ev.real.unit},
               "sets": {k: {"n": len(s.x), "note": s.note} for k, s in ev.sets.items()}, **(extra or {})}
    if json_path:
        _atomic_text(Path(json_path), json.dumps(payload, indent=1))
    if html_path:
        rows = ev.report.summary()
        cols = list(rows[0].keys())
        table = ("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows) + "</table>")
        stat_rows = ev.report.rows()
        scols = list(stat_rows[0].keys())
        stats = ("<details><summary>every statistic</summary><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in scols) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in scols) + "</tr>" for r in stat_rows)
                 + "</table></details>")
        first = ev.report.sets[0].label
        intro = (f"<p>{len(ev.real.x)} real images ({html.escape(ev.real.name)}), kind <b>{ev.report.kind}</b>. The real set is split into "
                 "halves A and B; every set is compared with B at the size of A, and A vs B is the <b>floor</b>. C2ST 0.5 = "
                 "indistinguishable. <i>within_floor_frac</i>: share of statistics within "
                 f"{ev.report.settings.verdict_factor:g}x the floor distance.</p>" + table + stats
                 + f"<h2>Real and generated, same stretch</h2><img src='{_png_data_uri(ev.montage())}'>"
                 + f"<h2>Nearest real image of the closest {html.escape(first)} samples</h2><img src='{_png_data_uri(ev.nn_pairs(first))}'>")
        write_figures_page(html_path, f"oodgen quality: {first} vs {ev.real.name}", ev.figures(), payload, intro_html=intro)
    return payload


def _atomic_text(path: Path, text: str) -> None:
    from .fsutil import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text))


# ------------------------------------------------------------------------------------------------
# bandwidth search (paper App. E.2.1 made quantitative for generation)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchGrid:
    """The generation settings a bandwidth search tries (every combination), K samples per cell."""

    t_end: tuple[int, ...] = (500, 700, 900)  # operating timesteps (one inversion each)
    eta: tuple[float, ...] = (0.0, 0.5)  # DDIM stochasticity while decoding
    pairing: tuple[str, ...] = ("random", "nearest")  # interpolation pairing strategies
    noise: tuple[str, ...] = ("none", "match", "sky")  # noise models (the same decoded images with none, matched noise, sky level + noise)
    n_per_cell: int = 40  # generated samples per cell
    steps: int = 50  # DDIM steps between 0 and each t_end
    max_copies: float = 0.05  # a cell whose near-copy fraction exceeds this cannot be the best

    def __post_init__(self) -> None:
        from .config import NOISE_MODELS, PAIRINGS

        if not (self.t_end and self.eta and self.pairing and self.noise):
            raise ValueError("the search grid needs at least one t_end, eta, pairing and noise model")
        if any(not 1 <= int(t) <= 999 for t in self.t_end) or any(float(e) < 0 for e in self.eta):
            raise ValueError(f"t_end values must lie in 1..999 and eta values be >= 0 (got t_end {list(self.t_end)}, eta {list(self.eta)})")
        if not set(self.pairing) <= set(PAIRINGS) or not set(self.noise) <= set(NOISE_MODELS):
            raise ValueError(f"pairing must be among {', '.join(PAIRINGS)} and noise among {', '.join(NOISE_MODELS)}")
        if self.n_per_cell < 4 or self.steps < 1:
            raise ValueError(f"n_per_cell={self.n_per_cell} must be at least 4 and steps={self.steps} at least 1")

    def cells(self) -> list[tuple[int, float, str, str]]:
        return [(t, e, p, nz) for t in self.t_end for e in self.eta for p in self.pairing for nz in self.noise]

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "SearchGrid":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def cell_label(t_end: int, eta: float, pairing: str, noise: str = "none") -> str:
    return f"t{t_end} eta{eta:g} {pairing}" + ("" if noise == "none" else f" noise-{noise}")


def model_output_set(images: torch.Tensor, like: ImageSet, stretch: Optional[Stretch], name: str) -> ImageSet:
    """Model outputs [N, C, H, W] in [-1, 1] as an :class:`ImageSet` in the units of ``like`` (physical through ``stretch``)."""
    from .data import from_model_output

    x = from_model_output(images, stretch)
    s = ImageSet(name, np.ascontiguousarray(x, dtype=np.float32), like.kind, like.unit, like.bands, like.samples)
    return s if x.shape[1] == like.x.shape[1] else _resampled(s, like.x.shape[1])


def bandwidth_search(model, real: ImageSet, base, grid: SearchGrid = SearchGrid(), kind: str = "auto",
                     settings: quality.QualitySettings = quality.QualitySettings(morph_max=60),
                     progress: Optional[Callable[[str, float], None]] = None, batch_size: int = 0) -> tuple[list[dict], Evaluation]:
    """Generate ``grid.n_per_cell`` samples for every cell of ``grid`` from ``real`` and evaluate them all at once.

    ``base``: the :class:`GenerationSettings` whose other fields (method, alpha, seed, ...) each cell
    keeps. Returns (one row per cell: settings, C2ST, share within the floor, near-copies,
    diversity; the best cell flagged) and the :class:`Evaluation` of every cell plus the crossfade.
    """
    from dataclasses import replace

    from . import engine
    from .config import DDIMSettings
    from .data import to_model_input

    report = progress or (lambda stage, frac: None)
    x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
    cells = grid.cells()
    gens: dict[str, ImageSet] = {}
    done = 0
    from .sampling import SourceProfile, finish

    sources = SourceProfile.from_images(x)  # the sources' pixel noise, sky level and quantile functions (model units)
    decodes = sorted({(t, e, p) for t, e, p, _ in cells})
    work = len(grid.t_end) * len(x) + len(decodes) * grid.n_per_cell
    for t_end in grid.t_end:
        ddim_settings = DDIMSettings(t_end=t_end, steps=min(grid.steps, t_end), batch_size=batch_size)
        z = engine.invert(model, x, ddim_settings, progress=lambda d, n: report(f"invert t={t_end}", (done + len(x) * d / max(n, 1)) / work))
        done += len(x)
        for t, eta, pairing in decodes:
            if t != t_end:
                continue
            g = replace(base, eta=eta, pairing=pairing, noise="none", calibration="none")
            out = engine.generate(model, z, grid.n_per_cell, ddim_settings, g,
                                  progress=lambda d, n: report(f"generate {cell_label(t, eta, pairing)}", (done + grid.n_per_cell * d / max(n, 1)) / work))
            done += grid.n_per_cell
            for nz in grid.noise:
                label = cell_label(t, eta, pairing, nz)
                images, _ = finish(out.images, out.draws, replace(base, noise=nz), sources)
                gens[label] = model_output_set(images, real, stretch, label)
    ev = evaluate_sets(next(iter(gens.values())), real, list(gens.values())[1:], kind, settings, with_crossfade=True,
                       progress=lambda s, f: report(f"evaluate: {s}", f))
    summary = {r["label"]: r for r in ev.report.summary()}
    rows = []
    for t, eta, pairing, nz in cells:
        r = summary[cell_label(t, eta, pairing, nz)]
        rows.append({"t_end": t, "eta": eta, "pairing": pairing, "noise": nz, "c2st_stats": r["c2st_stats"],
                     "c2st_stats_ci": r["c2st_stats_ci"], "c2st_pixels": r["c2st_pixels"],
                     "within_floor_frac": r["within_floor_frac"], "frechet": r["frechet"], "near_copies": r["near_copies"],
                     "diversity_ratio": r["diversity_ratio"], "best": False})
    ok = [r for r in rows if (r["near_copies"] or 0) <= grid.max_copies] or rows
    # C2ST first, but only where it tells cells apart: cells whose C2ST CI reaches the lowest C2ST are tied,
    # and among them the most statistics within the floor wins, then the lowest Frechet distance
    lowest = min(ok, key=lambda r: r["c2st_stats"])
    tied = [r for r in ok if r["c2st_stats_ci"][0] <= lowest["c2st_stats_ci"][1]]
    best = max(tied, key=lambda r: (r["within_floor_frac"], -r["frechet"], -r["c2st_stats"]))
    best["best"] = True
    return rows, ev


def search_figure(rows: Sequence[dict], floor: dict, crossfade: Optional[dict] = None):
    """Quality (C2ST on statistics) against diversity for each cell; marker colour = near-copy fraction."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[r["diversity_ratio"] for r in rows], y=[r["c2st_stats"] for r in rows], mode="markers+text",
                    text=[cell_label(r["t_end"], r["eta"], r["pairing"], r["noise"]) + (" (best)" if r["best"] else "") for r in rows],
                    textposition="top center", name="cells",
                    marker=dict(size=12, color=[r["near_copies"] or 0 for r in rows], colorscale="Reds", cmin=0, cmax=0.3,
                                colorbar=dict(title="near-copies"), line=dict(width=1, color="black")))
    fig.add_hline(y=floor["c2st_stats"], line_dash="dash", annotation_text="floor (real vs real)")
    if crossfade:
        fig.add_scatter(x=[crossfade["diversity_ratio"]], y=[crossfade["c2st_stats"]], mode="markers+text", text=["pixel crossfade"],
                        textposition="bottom center", name="crossfade", marker=dict(size=12, symbol="x", color="#444444"))
    fig.update_layout(xaxis_title="diversity (mean pairwise distance / real set's)", yaxis_title="C2ST accuracy on statistics (0.5 = indistinguishable)",
                      title="Bandwidth search: quality against diversity and memorization", height=520)
    return fig


def write_search_report(rows: Sequence[dict], ev: Evaluation, json_path: Optional[str | Path] = None,
                        html_path: Optional[str | Path] = None, extra: Optional[dict] = None, figures: Optional[dict] = None) -> dict:
    """Write a bandwidth search as JSON and/or offline HTML (the cell table, the trade-off plot, the full quality report)."""
    from .diagnostics import write_figures_page

    summ = {r["label"]: r for r in ev.report.summary()}
    payload = {"cells": list(rows), "floor": ev.report.summary()[0], "crossfade": summ.get("crossfade"), **(extra or {})}
    if json_path:
        _atomic_text(Path(json_path), json.dumps(payload, indent=1))
    if html_path:
        cols = list(rows[0].keys())
        table = ("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows) + "</table>")
        intro = (f"<p>{len(ev.real.x)} real images ({html.escape(ev.real.name)}); each cell generates the same number of samples and "
                 "is compared with half of the real set, as is the other half (the floor).</p>" + table
                 + f"<h2>Real and generated (each cell), same stretch</h2><img src='{_png_data_uri(ev.montage(k=8))}'>")
        figs = {"quality vs diversity": search_figure(rows, payload["floor"], payload["crossfade"]), **(figures or {}), **ev.figures()}
        write_figures_page(html_path, f"oodgen bandwidth search: {ev.real.name}", figs, payload, intro_html=intro)
    return payload


def diversity_curve(model, real: ImageSet, settings, sizes: Sequence[int] = (2, 5, 10, 25, 50, 100), n: int = 24,
                    t_end: int = 900, steps: int = 50, seed: int = 0, batch_size: int = 0,
                    progress: Optional[Callable[[str, float], None]] = None) -> list[dict]:
    """Diversity of generated samples against the number of source images (the paper's Fig. 7, without LPIPS).

    The real set is inverted once; for each k in ``sizes`` (capped at the set size) ``n`` samples
    are generated with ``settings`` from a seeded subset of k latents. Diversity = mean pairwise
    distance of the samples (the quality module's pixel view) divided by the real set's.
    Returns rows {k, diversity_ratio, nn_median} (nn_median: median distance to the nearest source).
    """
    from . import engine
    from .config import DDIMSettings
    from .data import to_model_input

    report = progress or (lambda stage, frac: None)
    x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
    d = DDIMSettings(t_end=t_end, steps=min(steps, t_end), batch_size=batch_size)
    z = engine.invert(model, x, d, progress=lambda a, b: report("invert", 0.5 * a / max(b, 1)))
    from .sampling import SourceProfile

    sources = SourceProfile.from_images(x)
    phys = quality.PhysicalReference.from_real(real.x) if real.kind == "physical" else None
    real_v = quality.pixel_view(real.x, phys)
    base = quality.mean_pairwise_distance(real_v, seed=seed)
    ks = sorted({min(k, len(z)) for k in sizes if k >= 2})
    rows = []
    for q_, k in enumerate(ks):
        idx = np.sort(np.random.default_rng(seed).permutation(len(z))[:k])
        out = engine.generate(model, z[idx], n, d, settings, sources=sources.subset(idx.tolist()))
        gen = quality.pixel_view(model_output_set(out.images, real, stretch, f"k{k}").x, phys)
        nn, _ = quality.nearest_real(gen, real_v[idx])
        rows.append({"k": k, "diversity_ratio": round(quality.mean_pairwise_distance(gen, seed=seed) / base, 4),
                     "nn_median": round(float(np.median(nn)), 4)})
        report("generate", 0.5 + 0.5 * (q_ + 1) / len(ks))
    return rows


def diversity_figure(rows: Sequence[dict]):
    """Diversity ratio against the number of source images (log x)."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[r["k"] for r in rows], y=[r["diversity_ratio"] for r in rows], mode="lines+markers"))
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="real set")
    fig.update_layout(xaxis_type="log", xaxis_title="number of source images inverted", yaxis_title="diversity / real set's",
                      title="Diversity against the number of source images (paper Fig. 7, pixel distance)", height=380)
    return fig
