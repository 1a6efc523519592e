"""Plain-value operations behind the web app: datasets, inversion, decoding a pair at alpha.

Each function takes and returns plain values (samples, tensors, uint8 arrays, strings) so that
``app.py`` only wires widgets to them. Loaded models are shared on purpose: they are frozen and
read-only, and loading one takes seconds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import engine
from .bundled import SAMPLE_SETS
from .config import DDIMSettings, GenerationSettings
from .data import LoadReport, Sample, Stretch, fit_stretch, load_paths, preview, to_model_input, to_uint8_rgb
from .models import FrozenDDPM, load_model
from .sampling import interpolate, interpolation_strip

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], FrozenDDPM] = {}
_MODELS_LOCK = threading.Lock()

DISPLAY_SIDE = 192  # pixels of a displayed sample (small models are upscaled with nearest neighbour)


def get_model(name: str, device: str = "auto") -> FrozenDDPM:
    """A loaded model, cached per (name, device) for the life of the process."""
    key = (name, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(name, device=device)
        return _MODELS[key]


def model_summary(model: FrozenDDPM) -> str:
    """One Markdown line: resolution, parameters, device."""
    i = model.info()
    return f"**{i['name']}**: {i['resolution']}x{i['resolution']} px, {i['parameters'] / 1e6:.2f}M parameters, on {i['device']} ({i['dtype']})"


def load_dataset(bundled: Optional[str], uploads: Sequence[str | Path] = ()) -> LoadReport:
    """Samples of a bundled set (by key) and/or uploaded files (paths); bad files land in ``errors``."""
    paths: list[str | Path] = list(uploads)
    if bundled:
        if bundled not in SAMPLE_SETS:
            raise ValueError(f"unknown sample set {bundled!r}; choose one of {', '.join(SAMPLE_SETS)}")
        paths.insert(0, SAMPLE_SETS[bundled].path)
    if not paths:
        raise ValueError("no data chosen: pick a bundled sample set or upload files")
    return load_paths(paths)


def errors_markdown(report: LoadReport) -> str:
    """A short Markdown report of what loaded and what was skipped."""
    lines = [f"Loaded **{len(report.samples)}** samples" + (f" ({report.samples[0].kind})" if report.samples else "") + "."]
    if report.errors:
        lines.append(f"Skipped **{len(report.errors)}** file(s):")
        lines += [f"- `{name}`: {msg}" for name, msg in report.errors[:50]]
    return "\n".join(lines)


def upscale(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [side, side, 3] by pixel repetition (no invented detail)."""
    k = max(1, side // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


def gallery(samples: Sequence[Sample], limit: int = 60) -> list[tuple[np.ndarray, str]]:
    """(uint8 image, caption) pairs for a preview gallery; physical data share one fitted stretch."""
    if not samples:
        return []
    stretch = fit_stretch(samples) if samples[0].kind == "physical" else None
    return [(upscale(preview(s, stretch), 128), s.name) for s in samples[:limit]]


@dataclass
class InvertedSet:
    """Latents of one dataset under one model and settings (kept in the user's session)."""

    latents: torch.Tensor  # [N, C, H, W] at settings.t_end
    names: list[str]  # sample names, aligned with latents
    kind: str  # image | physical
    stretch: Optional[Stretch]  # physical data's stretch, None for images
    model: str  # model name
    settings: DDIMSettings  # t_end, steps, batch size used


def invert_dataset(
    model: FrozenDDPM, samples: Sequence[Sample], settings: DDIMSettings, progress: Optional[Callable[[int, int], None]] = None
) -> InvertedSet:
    """DDIM-invert ``samples`` with ``model``."""
    if not samples:
        raise ValueError("nothing to invert: load a dataset first")
    x, stretch = to_model_input(samples, model.resolution, model.channels)
    z = engine.invert(model, x, settings, progress=progress)
    return InvertedSet(z, [s.name for s in samples], samples[0].kind, stretch, model.name, settings)


def _decode(model: FrozenDDPM, inv: InvertedSet, z: torch.Tensor, eta: float, seed: int) -> list[np.ndarray]:
    imgs = engine.denoise(model, z, inv.settings, eta=eta, seed=seed).clamp(-1, 1)
    return [upscale(a) for a in to_uint8_rgb(imgs)]


def decode_pair(model: FrozenDDPM, inv: InvertedSet, i: int, j: int, alpha: float, method: str = "slerp", eta: float = 0.0, seed: int = 0) -> np.ndarray:
    """The image decoded from Interp(x^i, x^j) at ``alpha``: uint8 [H', W', 3] for display."""
    n = inv.latents.shape[0]
    if not (0 <= i < n and 0 <= j < n):
        raise ValueError(f"pick two samples between 0 and {n - 1}")
    GenerationSettings(method=method, alpha=alpha, eta=eta)  # validates
    z = interpolate(inv.latents[i : i + 1], inv.latents[j : j + 1], alpha, method)
    return _decode(model, inv, z, eta, seed)[0]


def decode_strip(model: FrozenDDPM, inv: InvertedSet, i: int, j: int, k: int = 7, method: str = "slerp") -> list[np.ndarray]:
    """k images along the interpolation path from sample i to sample j."""
    z = interpolation_strip(inv.latents[i], inv.latents[j], k, method)
    return _decode(model, inv, z, 0.0, 0)
