"""The app's background work, as job runners over the workspace: invert, diagnose, t sweep, generate, quality.

Each runner reads its parameters from ``ctx.params`` (JSON), does the work through
:mod:`oodgen.engine` / :mod:`oodgen.diagnostics`, and saves one workspace record atomically. The
inversion runs in chunks of files (:mod:`oodgen.bulk`): each chunk is one call of :func:`invert_chunk`
(a ``spaces.GPU`` call on ZeroGPU) and is kept in the job's folder, so a job resumed after a
restart skips the chunks it already has.

Dataset references are ``bundled:<key>`` (a set shipped in ``assets/samples``) or a workspace
dataset id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import bulk, engine, pipeline, zerogpu
from .ddim import Cancelled
from .bundled import SAMPLE_SETS
from .config import DDIMSettings, GenerationSettings
from .data import LoadReport, Sample, Stretch, load_paths, to_model_input, to_uint8_rgb
from .generated import data_folder, model_output_images, write_generated
from .jobs import JobContext
from .fsutil import atomic_dir, atomic_write, write_json
from .latents import load_latents, source_profile
from .models import DEFAULT_MODEL, REGISTRY, FrozenDDPM, ModelLoadError, load_model
from .workspace import Record, Workspace, WorkspaceError, home_from_env

log = logging.getLogger(__name__)

LATENTS = "latents.safetensors"
THUMBS = "thumbs.npy"
CHUNK_IMAGES = 64  # files per chunk (see oodgen.bulk): the unit of resume and of a ZeroGPU call
N_RECON_PAIRS = 8  # original-versus-reconstruction pairs shown with the diagnostics
REFERENCES = {"prior": "the model's own prior N(0, I), pushed to t_end by DDIM"}
REFERENCES.update({k: f"in-domain images '{k}' inverted with the same settings" for k, s in SAMPLE_SETS.items() if s.domain == "in-domain"})

# Which models the app may load from its free-text model box (the command line loads anything it is given):
MODEL_ROOT_ENV = "OODGEN_MODEL_ROOT"  # folders (os.pathsep-separated) under which model folders may be named; default <OODGEN_HOME>/models
ALLOW_HUB_ENV = "OODGEN_ALLOW_HUB"  # "1": hub ids (owner/name) outside the registry may be downloaded (off: nothing downloads)
MODEL_CACHE_ENV = "OODGEN_MODEL_CACHE"  # models kept loaded at once, least recently used dropped first (default 3)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

_MODELS: "OrderedDict[tuple[str, str, str], FrozenDDPM]" = OrderedDict()
_MODELS_LOCK = threading.Lock()


def model_roots() -> list[Path]:
    """The folders under which the app loads model folders ($OODGEN_MODEL_ROOT, else the workspace's models/)."""
    raw = os.environ.get(MODEL_ROOT_ENV, "")
    roots = [Path(r).expanduser() for r in raw.split(os.pathsep) if r.strip()] or [home_from_env() / "models"]
    return [r.resolve() for r in roots]


def app_model_source(name: str) -> tuple[str, bool]:
    """(what to load, whether it may be a local path) for a model named in the app, or ModelLoadError.

    Allowed: a registry name or the owner's $OODGEN_DEFAULT_MODEL; a folder or checkpoint file under :func:`model_roots` (full path, symlinks
    resolved); a hub id ``owner/name`` where $OODGEN_ALLOW_HUB=1. Nothing else is looked up on this machine,
    and the refusal does not say what exists here.
    """
    name = (name or "").strip()
    if not name:
        raise ModelLoadError(f"no model named: pick one of {', '.join(REGISTRY)}")
    if name in REGISTRY or name == DEFAULT_MODEL:  # the registry, or the default the app's owner set ($OODGEN_DEFAULT_MODEL)
        return name, True
    if _HUB_ID.fullmatch(name):  # owner/name, both starting with a letter or digit (so never ".." or "~")
        if os.environ.get(ALLOW_HUB_ENV) == "1":
            return name, False
        raise ModelLoadError(f"{name!r} is not one of this app's models ({', '.join(REGISTRY)}) and loading hub ids is off here "
                             f"(the app's owner can allow it with {ALLOW_HUB_ENV}=1)")
    path = Path(name).expanduser()
    where = f"a folder under the app's model root (${MODEL_ROOT_ENV}, default the workspace's models/ folder)"
    if not path.is_absolute():
        raise ModelLoadError(f"{name!r} is not a registry name ({', '.join(REGISTRY)}); a local model is given by the full path of {where}")
    resolved = path.resolve()
    if not any(resolved == r or r in resolved.parents for r in model_roots()):
        raise ModelLoadError(f"{name!r} is not under the app's model root: local models must be {where}")
    return str(resolved), True


def get_model(name: str, device: str = "auto", dtype: str = "auto") -> FrozenDDPM:
    """A loaded model allowed by :func:`app_model_source`, cached per (name, device, dtype) (shared on purpose:
    frozen and read-only, and loading takes seconds); at most $OODGEN_MODEL_CACHE models stay loaded."""
    source, local = app_model_source(name)
    key = (source, device, dtype)
    cap = max(1, int(os.environ.get(MODEL_CACHE_ENV) or 3))
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
        else:
            _MODELS[key] = load_model(source, device=device, dtype=dtype, local=local)
            while len(_MODELS) > cap:  # a job still running on a dropped model keeps its own reference
                _MODELS.popitem(last=False)
        return _MODELS[key]


# ---------------------------------------------------------------- datasets
def _dataset(ws: Workspace, ref: str, owner: Optional[str]) -> tuple[Path, str]:
    """(the folder of dataset ``ref``, its display name); WorkspaceError for an unknown or foreign ref."""
    if ref.startswith("bundled:"):
        key = ref.split(":", 1)[1]
        if key not in SAMPLE_SETS:
            raise WorkspaceError(f"unknown bundled set {key!r}; choose one of {', '.join(SAMPLE_SETS)}")
        return SAMPLE_SETS[key].path, key
    rec = ws.get("datasets", ref, owner)
    return rec.root / "files", rec.name


def dataset_name(ws: Workspace, ref: str, owner: Optional[str]) -> str:
    """The display name of dataset ``ref`` (checks that it exists and that ``owner`` may use it)."""
    return _dataset(ws, ref, owner)[1]


def load_dataset(ws: Workspace, ref: str, owner: Optional[str]) -> tuple[LoadReport, str]:
    """(the samples of dataset ``ref``, its display name); WorkspaceError for an unknown or foreign ref."""
    folder, name = _dataset(ws, ref, owner)
    return load_paths([folder]), name


def save_dataset(ws: Workspace, owner: str, name: str, files: Sequence[str | Path], report: LoadReport, *, shared: bool = False) -> Record:
    """Copy uploaded ``files`` (already read into ``report``) into a new dataset record."""
    if not report.samples:
        raise WorkspaceError("nothing to save: none of the files held a usable image")

    def fill(tmp: Path) -> dict:
        (tmp / "files").mkdir()
        used: set[str] = set()
        for f in files:
            f = Path(f)
            stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in f.name).lstrip(".") or "file"
            target, k = stem, 1
            while target in used:
                target, k = f"{k}_{stem}", k + 1
            used.add(target)
            shutil.copyfile(f, tmp / "files" / target)
        return {"n": len(report.samples), "kind": report.samples[0].kind,
                "errors": [list(e) for e in report.errors], "files": sorted(used)}

    return ws.create("datasets", name, owner, fill, shared=shared)


# ---------------------------------------------------------------- invert
@zerogpu.gpu(duration=120)
def invert_chunk(model_name: str, x: torch.Tensor, settings: dict, progress=None, cancel=None) -> torch.Tensor:
    """DDIM-invert one chunk x [n, C, H, W] (CPU) with the cached model; latents on CPU."""
    return engine.invert(get_model(model_name), x, DDIMSettings.from_json(settings), progress=progress, cancel=cancel).cpu()


def run_invert(ctx: JobContext) -> str:
    """params: dataset (ref), model (name), settings (DDIMSettings JSON), name (run name).

    The dataset's files go through :mod:`oodgen.bulk` in chunks of :data:`CHUNK_IMAGES` files, each
    one call of :func:`invert_chunk`, checkpointed in the job's folder (a resumed job skips them).
    """
    p, ws = ctx.params, ctx.workspace
    settings = DDIMSettings.from_json(p["settings"])
    ctx.progress(0, 0, "loading data and model")
    folder, ds_name = _dataset(ws, p["dataset"], ctx.job.owner)
    inputs = pipeline.inversion_inputs([folder], what=f"dataset {ds_name!r}")
    model = get_model(p["model"])
    plan = pipeline.inversion_plan(inputs, model, settings, CHUNK_IMAGES)
    store = bulk.ChunkStore(ctx.chunk_dir)
    live = not zerogpu.active()  # progress callbacks and cancel flags cannot cross into a ZeroGPU worker

    def invert(x: torch.Tensor, progress) -> torch.Tensor:
        if ctx.cancelled():
            raise Cancelled()
        return invert_chunk(model.name, x, settings.to_json(), progress=progress if live else None, cancel=ctx.cancelled if live else None)

    inv = pipeline.invert_chunked(inputs, plan, store, invert, model.name, None, settings, what=f"dataset {ds_name!r}",
                                  progress=lambda d, t: ctx.progress(d, t, "inverting"))
    sources, skipped = inv.meta["sources"], inv.skipped
    ctx.progress(len(sources) * settings.steps, len(sources) * settings.steps, "saving")
    thumbs = np.concatenate([to_uint8_rgb(bulk.read_chunk(plan, k).x) for k in inv.used])  # the same samples, read again

    def fill(tmp: Path) -> dict:
        pipeline.write_latents(tmp / LATENTS, inv)
        np.save(tmp / THUMBS, thumbs)
        return {"n": len(sources), "dataset": p["dataset"], "dataset_name": ds_name, "model": model.name, "kind": inputs.kind,
                "settings": settings.to_json(), "names": [s["name"] for s in sources], "stretch": inv.meta["stretch"], "job": ctx.job.id}

    rec = ws.create("runs", p.get("name") or f"{ds_name} t{settings.t_end}", ctx.job.owner, fill)
    ctx.job.message = f"inverted {len(sources)} samples into run '{rec.name}'" + (f"; skipped {len(skipped)} unusable" if skipped else "")
    return rec.id


def run_latents(ws: Workspace, run_id: str, owner: Optional[str]) -> tuple[torch.Tensor, Record]:
    """(latents [N, C, H, W], run record) of a run visible to ``owner``."""
    z, rec, _ = run_latents_meta(ws, run_id, owner)
    return z, rec


def run_latents_meta(ws: Workspace, run_id: str, owner: Optional[str]) -> tuple[torch.Tensor, Record, dict]:
    """(latents, run record, the latent file's metadata) of a run visible to ``owner``."""
    rec = ws.get("runs", run_id, owner)
    z, meta = load_latents(rec.root / LATENTS)
    return z, rec, meta


def run_settings(rec: Record) -> DDIMSettings:
    return DDIMSettings.from_json(rec.meta["settings"])


def run_stretch(rec: Record) -> Optional[Stretch]:
    return pipeline.latent_stretch(rec.meta)


# ---------------------------------------------------------------- diagnostics and the t sweep
def diagnostics_dir(rec: Record, reference: str) -> Path:
    if reference not in REFERENCES:
        raise WorkspaceError(f"unknown ID reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    return rec.root / "diagnostics" / reference


def _id_reference(model: FrozenDDPM, reference: str, t_values: Sequence[int], settings: DDIMSettings, n_prior: int, progress):
    """The in-domain reference ``reference`` (prior | a bundled in-domain set) at each t, and its label."""
    x_id = None if reference == "prior" else pipeline.in_domain_images(reference, model)
    return pipeline.id_reference(model, t_values, x_id=x_id, n_prior=0 if x_id is not None else n_prior, where=None if x_id is None else reference,
                                 steps=settings.steps, batch_size=settings.batch_size, progress=progress)


def run_diagnose(ctx: JobContext) -> str:
    """params: run (id), reference (prior | in-domain set key). Caches everything under the run's diagnostics/."""
    from . import diagnostics

    p, ws = ctx.params, ctx.workspace
    z, rec = run_latents(ws, p["run"], ctx.job.owner)
    settings = run_settings(rec)
    model = get_model(rec.meta["model"])
    t = settings.t_end
    units = 1000
    ctx.progress(0, units, "ID reference")
    refs, label = _id_reference(model, p["reference"], [t], settings, max(64, len(z)),
                                lambda d, tot: ctx.progress(int(300 * d / max(tot, 1)), units, "ID reference latents"))
    if ctx.cancelled():
        raise Cancelled()
    report = diagnostics.diagnose(z, refs[t], label, names_ood=rec.meta.get("names"), seed=0,
                                  progress=lambda stage, f: ctx.progress(300 + int(550 * f), units, f"diagnostics: {stage}"))
    # original-versus-reconstruction pairs: decode the first latents back and compare to their inputs
    k = min(N_RECON_PAIRS, len(z))
    thumbs = np.load(rec.root / THUMBS)[:k]
    x0 = torch.from_numpy(thumbs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    recon = engine.denoise(model, z[:k], settings, progress=lambda d, tot: ctx.progress(850 + int(150 * d / max(tot, 1)), units, "reconstructions"),
                           cancel=ctx.cancelled).clamp(-1, 1)
    if model.channels == 1:
        x0 = x0[:, :1]
    mae = ((recon - x0).abs() / 2).flatten(1).mean(1).numpy()
    figs = diagnostics.report_figures(report)

    def fill(tmp: Path) -> None:
        write_json(tmp / "report.json", report.to_json())
        write_json(tmp / "table.json", diagnostics.table_rows(report))
        write_json(tmp / "figures.json", {name: json.loads(fig.to_json()) for name, fig in figs.items()})
        np.savez_compressed(tmp / "recon.npz", original=thumbs, reconstruction=to_uint8_rgb(recon), mae=mae,
                            names=np.array(rec.meta.get("names", [])[:k]))

    atomic_dir(diagnostics_dir(rec, p["reference"]), fill)
    j = report.to_json()
    ctx.job.message = f"SVM accuracy {j['svm_test_accuracy']:.3f}, centre distance {j['center_distance']:.2f} vs d^1/4 {j['d_quarter']:.2f}"
    return rec.id


def run_sweep(ctx: JobContext) -> str:
    """params: run (id), reference, t_values. Inverts the run's dataset once through every t."""
    from . import diagnostics, sweep

    p, ws = ctx.params, ctx.workspace
    rec = ws.get("runs", p["run"], ctx.job.owner)
    settings = run_settings(rec)
    model = get_model(rec.meta["model"])
    report, _ = load_dataset(ws, rec.meta["dataset"], ctx.job.owner)
    x, _ = to_model_input(report.samples, model.resolution, model.channels, run_stretch(rec))
    t_values = sorted({int(t) for t in p.get("t_values") or sweep.DEFAULT_T_VALUES})
    x_id = None if p["reference"] == "prior" else pipeline.in_domain_images(p["reference"], model)
    half = {"ood": 0, "id": 500}
    rows, label = sweep.t_sweep(model, x, t_values, x_id=x_id, n_prior=max(64, len(x)) if x_id is None else 0,
                                steps=settings.steps, batch_size=settings.batch_size,
                                progress=lambda stage, d, tot: ctx.progress(half.get(stage, 0) + int(500 * d / max(tot, 1)), 1000, f"t sweep: {stage} pass"))
    fig = diagnostics.t_sweep_figure(rows)
    folder = diagnostics_dir(rec, p["reference"])
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "sweep.json", {"rows": rows, "id_source": label, "figure": json.loads(fig.to_json())})
    ctx.job.message = f"t sweep over {len(rows)} values of t"
    return rec.id


# ---------------------------------------------------------------- generate
def _origin(run: Record) -> dict:
    """Where a generated set of ``run`` comes from (the workspace adds id, name, owner)."""
    return {"run": run.id, "run_name": run.name, "domain": run.meta.get("dataset_name")}


def run_generate(ctx: JobContext) -> str:
    """params: run (id), n, name, generation (GenerationSettings JSON)."""
    p, ws = ctx.params, ctx.workspace
    z, rec, file_meta = run_latents_meta(ws, p["run"], ctx.job.owner)
    settings = run_settings(rec)
    gen_settings = GenerationSettings.from_json(p["generation"])
    model = get_model(rec.meta["model"])
    n = int(p["n"])
    ctx.progress(0, n * settings.steps, "generating")
    gen = engine.generate(model, z, n, settings, gen_settings, progress=lambda d, t: ctx.progress(d, t, "generating"),
                          cancel=ctx.cancelled, sources=source_profile(file_meta))

    def fill(tmp: Path) -> dict:
        return pipeline.write_sampled_set(tmp, gen, file_meta, model.name, settings, gen_settings, _origin(rec), write_manifest=False)

    out = ws.create("generated", p.get("name") or f"{rec.name} {gen_settings.method}", ctx.job.owner, fill)
    ctx.job.message = f"generated {n} samples into '{out.name}'"
    return out.id


def _run_sources(ws: Workspace, run: Record, owner: Optional[str]) -> list[Sample]:
    """The source images of ``run`` in the order it inverted them (read again from its dataset)."""
    report, ds_name = load_dataset(ws, run.meta["dataset"], owner)
    by_name = {s.name: s for s in report.samples}
    names = run.meta.get("names") or [s.name for s in report.samples]
    samples = [by_name[nm] for nm in names if nm in by_name]
    if len(samples) < 2:
        raise ValueError(f"the dataset '{ds_name}' of run '{run.name}' no longer holds its images ({len(samples)} of {len(names)} found)")
    return samples


TUNED_DIR = ".model"  # the fine-tuned model inside a generated set (hidden: not zipped, not read as images)


def run_baseline(ctx: JobContext) -> str:
    """A generated set by a baseline method (job kind ``pixel`` or ``finetune``) from the images of a run.

    params: run (id), n, name, generation ({method, alpha, seed} for pixel; {method, eta, seed, steps} for finetune),
    finetune (FinetuneSettings JSON, finetune only). pixel: crossfades of seeded random pairs of the run's source
    images (:mod:`oodgen.crossfade`). finetune: a copy of the run's model is tuned on them (checkpointed in the job's
    folder, so a restarted job resumes) and sampled from its prior with the run's DDIM steps; the tuned model is kept
    in the set's ``.model/``.
    """
    from . import finetune
    from .crossfade import crossfade_set
    from .latents import read_metadata

    p, ws = ctx.params, ctx.workspace
    rec = ws.get("runs", p["run"], ctx.job.owner)
    settings, stretch, n = run_settings(rec), run_stretch(rec), int(p["n"])
    g = dict(p.get("generation") or {})
    method = g.get("method") or ctx.job.kind
    ctx.progress(0, 0, "reading the source images")
    samples = _run_sources(ws, rec, ctx.job.owner)
    tuned: Optional[tuple] = None
    if method == "pixel":
        side = int(read_metadata(rec.root / LATENTS).get("resolution") or np.load(rec.root / THUMBS).shape[1])
        rgb, physical, records = crossfade_set(samples, n, side, float(g.get("alpha", 0.5)), int(g.get("seed", 0)), stretch)
        model_name = None
    elif method == "finetune":
        ft = finetune.FinetuneSettings.from_json(p.get("finetune"))
        model = get_model(rec.meta["model"], dtype="float32")  # training starts from the unrounded weights
        model_name = model.name
        x, _ = to_model_input(samples, model.resolution, model.channels, stretch)
        steps = int(g.get("steps") or settings.steps)
        sample_units = n * min(steps, model.num_train_timesteps - 1)
        ft_units = ft.steps or 0
        result = finetune.finetune(model, x, ft, checkpoint_dir=ctx.chunk_dir / "finetune", cancel=ctx.cancelled,
                                   progress=lambda d, t: ctx.progress(d, t + sample_units, f"fine-tuning: step {d} / {t}"))
        ft_units = result.steps
        tuned_model = finetune.as_frozen(result, model, f"{model.name} fine-tuned")
        images = finetune.sample(tuned_model, n, steps, float(g.get("eta", 0.0)), int(g.get("seed", 0)), settings.batch_size,
                                 progress=lambda d, t: ctx.progress(ft_units + d, ft_units + t, "sampling the tuned model"), cancel=ctx.cancelled)
        rgb, physical = model_output_images(images, stretch)
        records = finetune.prior_records(n)
        record = {**finetune.data_record(samples, stretch, rec.meta.get("kind") or samples[0].kind), "run": rec.id, "settings": ft.to_json()}
        tuned = (result, model, record)
        g = {"method": "finetune", "eta": float(g.get("eta", 0.0)), "seed": int(g.get("seed", 0)), "steps": steps}
    else:
        raise ValueError(f"unknown baseline method {method!r}; choose pixel or finetune")
    extra = {} if tuned is None else {"finetune": {"steps": tuned[0].steps, "seconds": round(tuned[0].seconds, 3), "base_model": tuned[1].name,
                                                    "settings": tuned[2]["settings"]}}
    manifest = pipeline.generated_manifest(method, model_name or rec.meta.get("model"), settings.to_json(), g, rec.meta.get("kind"),
                                           rec.meta.get("stretch"), _origin(rec), **extra)

    def fill(tmp: Path) -> dict:
        out = write_generated(tmp, rgb, physical, records, manifest, write_manifest=False,
                              unit=stretch.unit if stretch is not None else None)
        if tuned is not None:
            finetune.save_tuned(tuned[0], tuned[1], tmp / TUNED_DIR, tuned[2])
        return out

    out = ws.create("generated", p.get("name") or f"{rec.name} {method}", ctx.job.owner, fill)
    shutil.rmtree(ctx.chunk_dir / "finetune", ignore_errors=True)
    ctx.job.message = f"generated {n} samples ({method}) into '{out.name}'"
    return out.id


# ---------------------------------------------------------------- quality of a generated set
QUALITY_DIR = ".quality"  # cache folder inside a generated set (hidden: reading the set's folder as images skips it)
MIN_REAL = 10  # quality.evaluate splits the real set into two halves of at least 5 (the floor)


def quality_dir(rec: Record) -> Path:
    """The cached quality report of generated set ``rec`` (report.json/.html, figures.json, montage.png, nn_pairs.png)."""
    return rec.root / QUALITY_DIR


def quality_source(ws: Workspace, rec: Record, owner: Optional[str]) -> tuple[Record, Path, str]:
    """(run, dataset folder, dataset name) that generated set ``rec`` was made from; WorkspaceError when they are gone."""
    run_id, run_name = rec.meta.get("run"), rec.meta.get("run_name") or rec.meta.get("run")
    try:
        run = ws.get("runs", run_id, owner)
    except WorkspaceError:
        raise WorkspaceError(f"the inversion run '{run_name}' that '{rec.name}' was generated from is gone, so its real images are "
                             "unknown; invert the data again and generate a new set") from None
    ref = run.meta.get("dataset") or ""
    try:
        folder, name = _dataset(ws, ref, owner)
    except WorkspaceError:
        folder, name = None, run.meta.get("dataset_name") or ref
    if folder is None or not folder.is_dir():
        raise WorkspaceError(f"the dataset '{name}' that run '{run.name}' inverted is gone (deleted or no longer shared), "
                             f"so there are no real images to compare '{rec.name}' with")
    return run, folder, name


def cached_quality(rec: Record) -> Optional[dict]:
    """The cached quality payload (report.json) of generated set ``rec``, or None."""
    try:
        return json.loads((quality_dir(rec) / "report.json").read_text())
    except (OSError, ValueError):
        return None


def run_quality(ctx: JobContext) -> str:
    """params: generated (id), settings (QualitySettings JSON; default: the defaults), force (recompute even if cached).

    Compares the generated set with the real data of the run it came from (at the generated
    resolution) through :func:`oodgen.evaluation.evaluate_sets`, with the pixel crossfade baseline,
    and caches the report, figures and pictures under the set's ``.quality/``. A request with the
    settings of the cached report reads the cache.
    """
    from PIL import Image

    from . import evaluation, quality

    p, ws = ctx.params, ctx.workspace
    rec = ws.get("generated", p["generated"], ctx.job.owner)
    settings = quality.QualitySettings.from_json(p.get("settings"))
    cached = cached_quality(rec)
    if cached is not None and cached.get("settings") == settings.to_json() and not p.get("force"):
        ctx.job.message = f"quality of '{rec.name}' from the cache: " + _quality_line(cached)
        return rec.id
    run, folder, ds_name = quality_source(ws, rec, ctx.job.owner)
    units = 1000
    ctx.progress(0, units, "loading images")
    st = rec.meta.get("stretch") or {}
    gen = evaluation.load_set(data_folder(rec.root), name=rec.name, unit=rec.meta.get("unit"), bands=st.get("bands"))
    real = evaluation.load_set(folder, name=ds_name, unit=st.get("unit"), bands=st.get("bands"))
    if len(real.x) < MIN_REAL:
        raise ValueError(f"the real set '{ds_name}' has {len(real.x)} usable images; the quality floor (real half A vs half B) "
                         f"needs at least {MIN_REAL}: upload more real images and invert them again")
    if gen.name in ("real", "crossfade"):
        gen = evaluation.ImageSet(f"{gen.name} (generated)", gen.x, gen.kind, gen.unit, gen.bands, gen.samples, gen.note)

    def progress(stage: str, frac: float) -> None:
        if ctx.cancelled():
            raise Cancelled()
        ctx.progress(50 + int(850 * frac), units, f"quality: {stage}")

    ev = evaluation.evaluate_sets(gen, real, (), settings.kind, settings, with_crossfade=True, progress=progress)
    ctx.progress(900, units, "writing the report")
    label = ev.report.sets[0].label
    montage, pairs, figs = ev.montage(), ev.nn_pairs(label), ev.figures()
    extra = {"generated": {"id": rec.id, "name": rec.name, "label": label, "method": (rec.meta.get("generation") or {}).get("method")},
             "run": {"id": run.id, "name": run.name}, "dataset": {"ref": run.meta.get("dataset"), "name": ds_name}}
    payload: dict = {}

    def fill(tmp: Path) -> None:
        payload.update(evaluation.write_quality_report(ev, tmp / "report.json", tmp / "report.html", extra=extra))
        write_json(tmp / "figures.json", {name: json.loads(fig.to_json()) for name, fig in figs.items()})
        Image.fromarray(montage).save(tmp / "montage.png")
        Image.fromarray(pairs).save(tmp / "nn_pairs.png")

    atomic_dir(quality_dir(rec), fill)
    ctx.job.message = f"quality of '{rec.name}': " + _quality_line(payload)
    return rec.id


def _quality_line(payload: dict) -> str:
    """One line: C2ST on statistics of the generated set and the floor, share within the floor, near-copies."""
    rows = payload.get("summary") or []
    if len(rows) < 2:
        return "no comparison"
    floor, gen = rows[0], rows[1]
    return (f"C2ST {gen.get('c2st_stats')} (floor {floor.get('c2st_stats')}), {gen.get('within_floor_frac')} of statistics "
            f"within the floor, near-copies {gen.get('near_copies')}")


# ---------------------------------------------------------------- bandwidth search over generation settings
SEARCHES = "searches"  # HOME/searches/<key>/: the cached search of one (dataset, model), see search_dir


def search_source(ws: Workspace, source: str, owner: Optional[str], model: Optional[str] = None) -> tuple[str, Path, str, str]:
    """(dataset ref, dataset folder, dataset name, model name) of a search source: a dataset ref, or ``run:<id>``
    (that run's dataset and model). ``model`` is used for a dataset; WorkspaceError for unknown or foreign refs."""
    if source.startswith("run:"):
        run = ws.get("runs", source.split(":", 1)[1], owner)
        ref, model = run.meta.get("dataset") or "", run.meta.get("model")
    else:
        ref = source
    if not model:
        raise WorkspaceError("no model chosen for the search: pick a base model")
    folder, name = _dataset(ws, ref, owner)
    if not folder.is_dir():
        raise WorkspaceError(f"the dataset '{name}' is gone (deleted or no longer shared); pick another")
    return ref, folder, name, model


def search_dir(ws: Workspace, dataset_ref: str, model: str) -> Path:
    """The cache folder of the search of ``dataset_ref`` with ``model`` (search.json/.html, figures.json, montage.png)."""
    import hashlib

    key = hashlib.sha256(f"{dataset_ref}|{model}".encode()).hexdigest()[:20]
    return ws.home / SEARCHES / key


def cached_search(folder: Path) -> Optional[dict]:
    """The cached search payload (search.json) in ``folder``, or None."""
    try:
        return json.loads((folder / "search.json").read_text())
    except (OSError, ValueError):
        return None


def search_request(grid: dict, generation: dict, settings: dict) -> dict:
    """What a cached search must match to be reread instead of recomputed."""
    return {"grid": grid, "generation": generation, "settings": settings}


def run_search(ctx: JobContext) -> str:
    """params: source (dataset ref or ``run:<id>``), model (for a dataset), grid (SearchGrid JSON), generation (the
    GenerationSettings JSON each cell starts from), settings (QualitySettings JSON), force.

    Runs :func:`oodgen.evaluation.bandwidth_search` on the real images of the source and caches the cell table,
    the quality-vs-diversity figure, the montage and the offline HTML report under :func:`search_dir`. A request
    with the grid and settings of the cached search reads the cache.
    """
    from PIL import Image

    from . import evaluation, quality

    p, ws = ctx.params, ctx.workspace
    ref, folder, ds_name, model_name = search_source(ws, p["source"], ctx.job.owner, p.get("model"))
    grid = evaluation.SearchGrid.from_json(p.get("grid") or {})
    base = GenerationSettings.from_json(p.get("generation"))
    settings = quality.QualitySettings.from_json(p.get("settings"))
    request = search_request(grid.to_json(), base.to_json(), settings.to_json())
    out_dir = search_dir(ws, ref, model_name)
    cached = cached_search(out_dir)
    if cached is not None and cached.get("request") == request and not p.get("force"):
        ctx.job.message = f"search of '{ds_name}' from the cache: " + _search_line(cached)
        return ref
    units = 1000
    ctx.progress(0, units, "loading images and model")
    real = evaluation.load_set(folder, name=ds_name)
    if len(real.x) < MIN_REAL:
        raise ValueError(f"the real set '{ds_name}' has {len(real.x)} usable images; the quality floor (real half A vs half B) "
                         f"needs at least {MIN_REAL}: upload more real images")
    model = get_model(model_name)

    def progress(stage: str, frac: float) -> None:
        if ctx.cancelled():
            raise Cancelled()
        ctx.progress(int(950 * frac), units, f"search: {stage}")

    rows, ev = evaluation.bandwidth_search(model, real, base, grid, settings.kind, settings, progress=progress,
                                           batch_size=DDIMSettings().batch_size)
    ctx.progress(950, units, "writing the report")
    floor = ev.report.summary()[0]
    crossfade = next((r for r in ev.report.summary() if r["label"] == "crossfade"), None)
    fig = evaluation.search_figure(rows, floor, crossfade)
    montage = ev.montage(k=8)
    extra = {"request": request, "dataset": {"ref": ref, "name": ds_name}, "model": model.name, "n_real": len(real.x)}
    payload: dict = {}

    def fill(tmp: Path) -> None:
        payload.update(evaluation.write_search_report(rows, ev, tmp / "search.json", tmp / "search.html", extra=extra))
        write_json(tmp / "figures.json", {"quality vs diversity": json.loads(fig.to_json())})
        Image.fromarray(montage).save(tmp / "montage.png")

    atomic_dir(out_dir, fill)
    ctx.job.message = f"search of '{ds_name}': " + _search_line(payload)
    return ref


def _search_line(payload: dict) -> str:
    """One line: the best cell and its C2ST against the floor."""
    best = next((r for r in payload.get("cells") or [] if r.get("best")), None)
    if best is None:
        return "no cells"
    from .evaluation import cell_label

    return (f"best {cell_label(best['t_end'], best['eta'], best['pairing'], best['noise'])} (C2ST {best['c2st_stats']}, "
            f"floor {(payload.get('floor') or {}).get('c2st_stats')}; {best['within_floor_frac']} of statistics within the floor)")


RUNNERS = {"invert": run_invert, "diagnose": run_diagnose, "sweep": run_sweep, "generate": run_generate, "quality": run_quality,
           "search": run_search, "pixel": run_baseline, "finetune": run_baseline}


def zip_generated(rec: Record, folder: Path) -> Path:
    """A zip of a generated set (PNGs, physical .npy when the source was physical, latents, manifest) in ``folder``."""
    import zipfile

    out = folder / f"{rec.id}.zip"

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(rec.root.rglob("*")):
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(rec.root).parts):  # not the .quality cache
                    zf.write(f, f"{rec.id}/{f.relative_to(rec.root).as_posix()}")

    atomic_write(out, write, fsync=False)
    return out


def dataset_refs(ws: Workspace, owner: Optional[str]) -> list[tuple[str, str]]:
    """(label, ref) choices: bundled sets, then the owner's and shared datasets."""
    out = [(f"bundled: {k}", f"bundled:{k}") for k in SAMPLE_SETS]
    out += [(f"{r.label()}{' [shared]' if r.shared else ''}", r.id) for r in ws.list("datasets", owner)]
    return out
