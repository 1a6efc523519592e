"""Generated sets on disk: the one writer that the command line and the app use for every method.

A generated set is one folder, the same from the command line and the app: PNG images
``gen_kkkk.png`` (uint8 RGB, for looking at and for MOS studies), for physical sources one
``gen_kkkk.npy`` beside each in the data's units and original band order, laid out [band, y, x],
optionally ``latents.safetensors``, and the manifest ``generated.json``: what made the set (method,
model, settings; :func:`oodgen.pipeline.generated_manifest`) and, per image, its provenance
(``samples``: file names, the pair i, j of source indices and names, alpha). The app's workspace
writes the manifest itself (as its record's ``generated.json``, with the record's id, name and
owner). Sets the app wrote before this layout keep ``images/`` and ``physical/`` subfolders: the
readers here (:func:`image_files`, :func:`physical_twin`, :func:`data_folder`) read both. The methods:
latent sampling (slerp, lerp, gaussian), the pixel crossfade baseline (``pixel``) and sampling a
fine-tuned model (``finetune``) all end here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MANIFEST = "generated.json"
BASELINE_METHODS: tuple[str, ...] = ("pixel", "finetune")  # generation methods beside the latent ones (oodgen.config.METHODS)


def model_output_images(images: torch.Tensor, stretch: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Model outputs [n, C, H, W] in [-1, 1] -> (uint8 RGB [n, H, W, 3], physical float32 [n, H, W, B] in data units or None)."""
    from .data import from_model_output, to_uint8_rgb

    return to_uint8_rgb(images), (from_model_output(images, stretch) if stretch is not None else None)


def draw_records(draws: Sequence[Any], names: Sequence[str]) -> list[dict]:
    """Per-image provenance of latent draws (:class:`oodgen.sampling.Draw`): method, source indices i, j and names, alpha."""
    out = []
    for d in draws:
        out.append({"method": d.method, "i": d.i, "j": d.j, "alpha": None if d.method == "gaussian" or d.alpha != d.alpha else d.alpha,
                    "source_i": names[d.i] if 0 <= d.i < len(names) else None,
                    "source_j": names[d.j] if 0 <= d.j < len(names) else None})
    return out


def write_generated(folder: str | Path, rgb: np.ndarray, physical: Optional[np.ndarray], samples: Sequence[dict], manifest: dict,
                    *, write_manifest: bool = True, unit: Optional[str] = None,
                    latents: Optional[torch.Tensor] = None, latents_meta: Optional[dict] = None) -> dict:
    """Write one generated set into ``folder`` and return its manifest.

    ``rgb``: uint8 [n, H, W, 3]; ``physical``: float32 [n, H, W, B] in data units (None for images), saved
    as ``gen_k.npy`` [B, H, W]; ``samples``: n provenance dicts (:func:`draw_records`, or a baseline's),
    completed with each image's file names; ``manifest``: what made the set (method, model, settings...).
    ``write_manifest``: also write ``generated.json`` (the app's workspace writes its own record file).
    ``latents`` [n, C, H, W] (optional) go to ``latents.safetensors`` with ``latents_meta``.
    """
    from PIL import Image

    folder = Path(folder)
    if len(samples) != len(rgb) or (physical is not None and len(physical) != len(rgb)):
        raise ValueError(f"{len(rgb)} images, {len(samples)} provenance records and "
                         f"{'no' if physical is None else len(physical)} physical maps: they must match")
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (a, s) in enumerate(zip(rgb, samples)):
        stem = f"gen_{k:04d}"
        Image.fromarray(a).save(folder / f"{stem}.png")
        rec = {"file": f"{stem}.png", **s}
        if physical is not None:
            np.save(folder / f"{stem}.npy", np.ascontiguousarray(np.moveaxis(physical[k], -1, 0)).astype(np.float32))
            rec["npy"] = f"{stem}.npy"
        records.append(rec)
    if latents is not None:
        from .latents import save_latents

        save_latents(folder / "latents.safetensors", latents, latents_meta or {})
    out = {**manifest, "n": len(records), "unit": unit, "samples": records}
    if write_manifest:
        from .fsutil import atomic_write

        text = json.dumps(out, indent=2)
        atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(text))
    log.info("wrote %d generated images to %s%s", len(records), folder, " (PNG + physical .npy)" if physical is not None else "")
    return out


def _legacy(folder: Path) -> bool:
    """A set written by the app before the one layout: PNGs in ``images/``, maps in ``physical/``."""
    return (folder / "images").is_dir()


def image_files(folder: str | Path) -> list[Path]:
    """The PNG images of the generated set in ``folder``, in order."""
    folder = Path(folder)
    return sorted((folder / "images" if _legacy(folder) else folder).glob("*.png"))


def physical_twin(png: Path) -> Optional[Path]:
    """The physical map saved with a generated set's PNG (``gen_k.npy`` beside ``gen_k.png``), if there is one."""
    png = Path(png)
    for npy in (png.with_suffix(".npy"), png.parent.parent / "physical" / f"{png.stem}.npy"):
        if npy.is_file():
            return npy
    return None


def data_folder(folder: str | Path) -> Path:
    """Where a generated set's data is read from (:func:`oodgen.evaluation.load_set` prefers its maps to the PNGs)."""
    folder = Path(folder)
    if not _legacy(folder):
        return folder
    phys = folder / "physical"
    return phys if phys.is_dir() and any(phys.glob("*.npy")) else folder / "images"
