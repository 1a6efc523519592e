"""Files in, files out: the one layer between :mod:`oodgen.engine` and both front ends.

The command line (:mod:`oodgen.cli`) and the app's jobs (:mod:`oodgen.tasks`) write every artifact
through the functions here, so a latent file, a generated set or a study made by one front end is
the same as the other's:

- **latent files**: :func:`inversion_inputs` (names, kind and stretch of the files, before any model
  loads), :func:`inversion_plan` (the chunked plan of :mod:`oodgen.bulk`), :func:`latent_metadata`
  (one metadata schema, DDIM settings stored once under ``ddim``) and :func:`latent_settings` (read back,
  also from files written before the settings were nested);
- **generated sets**: :func:`generated_manifest` (one manifest schema: method, model, settings, kind,
  stretch and the front end's origin fields) and :func:`write_sampled_set` (decoded latent draws, through
  :func:`oodgen.generated.write_generated`, the one layout);
- **the in-domain reference**: :func:`id_reference` chooses inverted in-domain images or the model's
  prior and labels it (:func:`reference_label`);
- **study items**: :func:`collect_study_files` and :func:`generated_study_items`.

Front ends keep argument parsing, sharding, printing (CLI) and progress, cancellation, ZeroGPU (app).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .config import DDIMSettings, GenerationSettings
from .data import STUDY_SUFFIXES, Stretch, file_suffix, list_files

if TYPE_CHECKING:
    import torch

    from .bulk import BulkPlan, ChunkStore
    from .engine import Progress
    from .models import FrozenDDPM
    from .ratings import StudyItem

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- latent files
@dataclass(frozen=True)
class InversionInputs:
    """The data files of an inversion, named and probed before any model loads (bad input fails fast)."""

    files: list[tuple[str, Path]]  # (display name, path), in input order
    errors: list[tuple[str, str]]  # (name, message) of files that cannot be read
    kind: str  # image | physical
    stretch: Optional[Stretch]  # the one stretch of physical data, else None
    note: Optional[str]  # how the stretch was fitted, when on a subset


def inversion_inputs(paths: Sequence[str | Path], on_skip: Optional[Callable[[str], None]] = None,
                     what: Optional[str] = None) -> InversionInputs:
    """List and probe the data files under ``paths`` (files, folders, zips); ValueError, naming ``what`` (default: the
    paths), when there are none. ``on_skip(message)`` hears of each path that cannot be listed, before the files are probed.
    """
    from . import bulk

    listing = list_files(list(paths), max_files=None)  # names only: nothing is read yet
    for _, msg in listing.errors if on_skip else ():
        on_skip(msg)
    if not listing.files:
        raise ValueError(f"{what} has no data files" if what else f"no data files in {', '.join(map(str, paths))}")
    kind, stretch, note = bulk.probe(listing.files)
    return InversionInputs(listing.files, list(listing.errors), kind, stretch, note)


def inversion_plan(inputs: InversionInputs, model: FrozenDDPM, settings: DDIMSettings, chunk_files: int,
                   model_config: Optional[str] = None) -> BulkPlan:
    """The chunked plan of inverting ``inputs`` with ``model`` at ``settings`` (a chunk kept by an earlier run with the
    same model, precision, t_end and steps is reused)."""
    from . import bulk

    key = json.dumps([model.name, model_config, str(model.dtype), settings.t_end, settings.steps])
    return bulk.BulkPlan(inputs.files, inputs.kind, inputs.stretch, model.resolution, model.channels, settings_key=key,
                         chunk_files=chunk_files)


def latent_metadata(model: str, model_config: Optional[str], resolution: int, settings: DDIMSettings, inputs: InversionInputs,
                    sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The metadata of every inverted-latents file: model, the DDIM settings (once, under ``ddim``), data kind, sources
    (:func:`oodgen.latents.sources_of`), stretch, and ``stretch_note`` when the stretch was fitted on a subset."""
    meta: dict[str, Any] = {
        "model": model,
        "model_config": model_config,
        "resolution": resolution,
        "ddim": settings.to_json(),
        "kind": inputs.kind,
        "sources": sources,
        "stretch": inputs.stretch.to_json() if inputs.stretch is not None else None,
    }
    if inputs.note:
        meta["stretch_note"] = inputs.note
    return meta


@dataclass(frozen=True)
class Inversion:
    """A finished chunked inversion, its latents kept in ``store`` until :func:`write_latents` streams them to a file."""

    plan: BulkPlan
    store: ChunkStore
    meta: dict[str, Any]  # the latent file's metadata (:func:`latent_metadata`)
    used: list[int]  # the chunks that hold at least one sample, in order
    skipped: list[tuple[str, str]]  # (name, message) of the unusable files or samples

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.meta["sources"]), self.plan.channels, self.plan.resolution, self.plan.resolution)


def invert_chunked(inputs: InversionInputs, plan: BulkPlan, store: ChunkStore, invert: Callable, model: str, model_config: Optional[str],
                   settings: DDIMSettings, *, what: str = "the input", progress: Optional[Progress] = None,
                   on_skip: Optional[Callable[[str], None]] = None, readers: int = 4,
                   timings: Optional[dict[str, float]] = None) -> Inversion:
    """Invert every chunk of ``plan`` on one process (``invert(x, progress)`` -> latents; chunks already in ``store`` are
    reused); ValueError, naming ``what``, when no file held a usable image."""
    from . import bulk

    chunks = range(len(plan.chunks))
    metas = bulk.invert_chunks(plan, chunks, store, invert, settings.steps, progress=progress, readers=readers, timings=timings,
                               on_skip=on_skip)
    sources = [src for k in chunks for src in metas[k]["sources"]]
    skipped = [tuple(e) for k in chunks for e in metas[k]["errors"]]
    if not sources:
        raise ValueError(f"{what} has no usable images" + (f" ({len(skipped)} skipped; {skipped[0][1]})" if skipped else ""))
    meta = latent_metadata(model, model_config, plan.resolution, settings, inputs, sources)
    return Inversion(plan, store, meta, [k for k in chunks if metas[k]["sources"]], skipped)  # type: ignore[arg-type]


def write_latents(path: str | Path, inv: Inversion) -> Path:
    """Stream the latents of ``inv`` from its chunk store into the latent file ``path`` (atomically)."""
    from .bulk import chunk_parts
    from .latents import save_latents_from_parts

    return save_latents_from_parts(path, chunk_parts(inv.plan, inv.store, inv.used), inv.shape, inv.meta)


def latent_settings(meta: dict[str, Any]) -> Optional[DDIMSettings]:
    """The DDIM settings a latent file was made with (``ddim``; files written before it was nested keep ``t_end`` and
    ``steps`` at the top), or None when it records none."""
    d = meta.get("ddim")
    if isinstance(d, dict):
        return DDIMSettings.from_json(d)
    if meta.get("t_end") is None or meta.get("steps") is None:
        return None
    return DDIMSettings(t_end=int(meta["t_end"]), steps=int(meta["steps"]))


def latent_stretch(meta: dict[str, Any]) -> Optional[Stretch]:
    """The stretch recorded in a latent file's (or run's) metadata, or None for images."""
    return Stretch.from_json(meta["stretch"]) if meta.get("stretch") else None


def source_names(meta: dict[str, Any]) -> list[Optional[str]]:
    """The names of a latent file's sources, in the order of its latents."""
    return [src.get("name") if isinstance(src, dict) else None for src in meta.get("sources") or []]


# ---------------------------------------------------------------- generated sets
_NOT_INHERITED = ("created", "oodgen_version", "shape", "t_end", "steps", "batch_size")  # a file's own, or pre-nesting settings


def generated_manifest(method: str, model: Optional[str], ddim: Optional[dict], generation: dict, kind: Optional[str],
                       stretch: Optional[dict], origin: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What made a generated set, in one schema for every front end and method (the writer adds n, unit and samples).

    ``origin``: where the sources came from, as the front end names it (the CLI: ``latents``, the file; the app:
    ``run``, ``run_name``, ``domain``); ``extra``: a method's own fields (e.g. ``finetune``).
    """
    return {"method": method, **origin, "model": model, "kind": kind, "ddim": ddim, "generation": generation, "stretch": stretch,
            **extra}


def write_sampled_set(folder: str | Path, gen: Any, meta: dict[str, Any], model: str, ddim: DDIMSettings,
                      generation: GenerationSettings, origin: dict[str, Any], *, write_manifest: bool = True,
                      save_latents: bool = True) -> dict[str, Any]:
    """Write a set of decoded latent draws (:class:`oodgen.engine.Generated`) made from the latent file with metadata
    ``meta``; returns its manifest. ``save_latents``: also the new latents (``latents.safetensors``, whose metadata is
    the source file's with the generation settings, the sources left out)."""
    from .generated import draw_records, model_output_images, write_generated

    stretch = latent_stretch(meta)
    rgb, physical = model_output_images(gen.images, stretch)
    manifest = generated_manifest(generation.method, model, ddim.to_json(), generation.to_json(), meta.get("kind"),
                                  meta.get("stretch"), origin)
    latents_meta = {**{k: v for k, v in meta.items() if k not in _NOT_INHERITED}, "generated_from": origin, "ddim": ddim.to_json(),
                    "generation": generation.to_json(), "sources": None}
    return write_generated(folder, rgb, physical, draw_records(gen.draws, source_names(meta)), manifest,
                           write_manifest=write_manifest, unit=stretch.unit if stretch is not None else None,
                           latents=gen.latents if save_latents else None, latents_meta=latents_meta)


# ---------------------------------------------------------------- the in-domain reference
def reference_label(source: str, n: int, t_values: Sequence[int] = (), T: int = 999, where: Optional[str] = None) -> str:
    """How an in-domain reference is named in reports: ``source`` "inverted" (in-domain images, from ``where``) or
    "prior" (the model's N(0, I) at T, pushed down by DDIM to each t below T)."""
    if source == "inverted":
        return f"inverted in-domain images{f' from {where}' if where else ''} (n={n})"
    lower = sorted(int(t) for t in t_values if int(t) < T)
    pushed = "" if not lower else f", pushed to t={lower[0]} by DDIM denoising" if len(lower) == 1 else ", pushed to each t by DDIM denoising"
    return f"model prior N(0, I) at t={T}{pushed} (n={n})"


def id_reference(model: Optional[FrozenDDPM], t_values: Sequence[int], *, x_id: Optional[torch.Tensor] = None, n_prior: int = 0,
                 where: Optional[str] = None, shape: Optional[Sequence[int]] = None, steps: int = 50, batch_size: int = 0,
                 seed: int = 0, progress: Optional[Progress] = None,
                 cancel: Optional[Callable[[], bool]] = None) -> tuple[dict[int, torch.Tensor], str]:
    """In-domain latents at each t of ``t_values``, and the label that says where they come from.

    Either ``x_id`` [N, C, H, W] (in-domain images, inverted with ``model``; ``where`` names them) or ``n_prior``
    (at least 3) seeded draws of the model's prior N(0, I) at T, pushed down to each t < T along the model's
    DDIM trajectory. At T alone no model is needed: pass ``model`` None and the latent ``shape`` [C, H, W].
    """
    from . import diagnostics, engine

    t_values = sorted({int(t) for t in t_values})
    if x_id is not None:
        if model is None:
            raise ValueError("inverting in-domain images needs the model")
        z = engine.invert_snapshots(model, x_id, t_values, steps, batch_size, progress)
        return z, reference_label("inverted", len(x_id), where=where)
    if n_prior < 3:
        raise ValueError("give in-domain images or a prior sample size of at least 3 (--id-prior N)")
    T = model.num_train_timesteps - 1 if model is not None else 999
    if all(t >= T for t in t_values):
        shape = tuple(shape) if shape is not None else (model.channels, model.resolution, model.resolution)  # type: ignore[union-attr]
        z = {T: diagnostics.gaussian_prior(n_prior, shape, seed=seed)}
    elif model is None:
        raise ValueError(f"prior latents at t={t_values[0]} < T={T} need the model (DDIM denoising from T)")
    else:
        z = engine.prior_latents(model, n_prior, t_values, steps, seed, batch_size, progress, cancel)
    return z, reference_label("prior", n_prior, t_values, T)


def in_domain_images(key: str, model: FrozenDDPM) -> torch.Tensor:
    """The bundled in-domain set ``key`` as model inputs [N, C, H, W]."""
    from .bundled import SAMPLE_SETS
    from .data import load_paths, to_model_input

    return to_model_input(load_paths([SAMPLE_SETS[key].path]).samples, model.resolution, model.channels)[0]


# ---------------------------------------------------------------- study items
def _study_suffix(name: str) -> str:
    s = file_suffix(name)
    return s if s in STUDY_SUFFIXES else ""


def collect_study_files(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``paths`` (files, or folders searched recursively, hidden entries skipped), sorted.

    In a folder, a file whose stem also exists as a PNG/JPEG/TIFF/WebP (``gen_0001.npy`` beside
    ``gen_0001.png``) is left out, so that every image is taken once. RatingError for a path that is
    not an image file or holds none.
    """
    from .ratings import RatingError

    rank = {s: k for k, s in enumerate(STUDY_SUFFIXES)}
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            if not _study_suffix(p.name):
                raise RatingError(f"{p}: not an image file; pass PNG, JPEG, TIFF, WebP, FITS or .npy files, or folders of them")
            out.append(p)
        elif p.is_dir():
            best: dict[tuple[Path, str], Path] = {}
            for f in sorted(p.rglob("*")):
                if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts) or not _study_suffix(f.name):
                    continue
                key = (f.parent, f.name[: -len(_study_suffix(f.name))])
                if key not in best or rank[_study_suffix(f.name)] < rank[_study_suffix(best[key].name)]:
                    best[key] = f
            found = sorted(best.values())
            if not found:
                raise RatingError(f"{p}: no image files in this folder (PNG, JPEG, TIFF, WebP, FITS, .npy)")
            out.extend(found)
        else:
            raise RatingError(f"{p}: no such file or folder")
    return out


def generated_study_items(folder: str | Path, manifest: dict[str, Any], n: Optional[int] = None) -> list[StudyItem]:
    """The first ``n`` images of the generated set in ``folder`` as 'generated' study items, labelled with the method and
    model of its ``manifest``; a physical set's items are shown from their maps (in the data's units)."""
    from .generated import image_files, physical_twin
    from .ratings import StudyItem

    method = str((manifest.get("generation") or {}).get("method") or manifest.get("method") or "")
    model = str(manifest.get("model") or "")
    return [StudyItem(f, "generated", method, model, data=physical_twin(f)) for f in image_files(folder)[:n]]
