"""Has a decoded sample fallen back into the model's own domain?

Decoding a latent that left the OOD cloud (lerp at alpha 0.5 shrinks it towards the centre) can give
an image of what the model was trained on, a face from a pair of galaxies. The test here is simple
and cheap, in pixel space:

1. every image is reduced to a thumbnail of 8 x 8 pixels per channel (box average, values in [0, 1]):
   a 192-number description of its layout, brightness and colour, blind to fine detail;
2. the *OOD reference* is the run's own source images (the inverted data, as the model saw them), the
   *in-domain reference* is the model's own samples: N(0, I) at T denoised by DDIM with the run's
   number of steps (seeded, 16 by default);
3. both references are cut to the same size (seeded draw from the larger), so neither side wins by
   having more images; the decoded sample's distance to each reference is the mean Euclidean distance
   to its k = 3 nearest members there;
4. the sample is flagged as **in the model's domain** when it is closer to the model's samples than to
   the run's images (d_id < d_ood).

It says which reference the picture resembles more, not whether it is a good sample of either.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

FEATURE_SIDE = 8  # thumbnail side of the description
N_MODEL_SAMPLES = 16  # size of the in-domain reference (the model's own samples)
K_NEAREST = 3


def features(rgb: np.ndarray, side: int = FEATURE_SIDE) -> np.ndarray:
    """uint8 [N, H, W, 3] (or one [H, W, 3]) -> float64 [N, side * side * 3]: box-averaged thumbnails in [0, 1]."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim == 3:
        rgb = rgb[None]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(im)).convert("RGB").resize((side, side), Image.BOX), np.float64) / 255.0
           for im in rgb]
    return np.stack(out).reshape(len(out), -1)


@dataclass(frozen=True)
class DomainCheck:
    """The outcome of :func:`check` for one decoded sample."""

    d_ood: float  # mean distance to its k nearest run images
    d_id: float  # mean distance to its k nearest model samples
    in_domain: bool  # closer to the model's own samples than to the run's images
    k: int
    n_ref: int  # images in each reference after equalizing

    def message(self) -> str:
        nums = f"8x8 thumbnail distance to the model's own samples {self.d_id:.3f} vs to the run's images {self.d_ood:.3f}"
        if self.in_domain:
            return ("⚠ **This sample looks like the model's own domain, not like the run's data** "
                    f"({nums}): the latent has left the data's cloud (lerp shrinks it towards the centre; try slerp, "
                    "or alpha nearer 0 or 1).")
        return f"Closer to the run's data than to the model's own samples ({nums})."


def check(sample_rgb: np.ndarray, ood_rgb: np.ndarray, id_rgb: np.ndarray, k: int = K_NEAREST, seed: int = 0) -> DomainCheck:
    """Is the decoded ``sample_rgb`` [H, W, 3] closer to the model's samples ``id_rgb`` than to the run's images
    ``ood_rgb`` (uint8 [N, H, W, 3] each, any sizes)? See the module docstring."""
    f_s = features(sample_rgb)[0]
    f_ood, f_id = features(ood_rgb), features(id_rgb)
    if not len(f_ood) or not len(f_id):
        raise ValueError("both references need at least one image")
    n = min(len(f_ood), len(f_id))
    rng = np.random.default_rng(seed)
    f_ood = f_ood[np.sort(rng.choice(len(f_ood), n, replace=False))] if len(f_ood) > n else f_ood
    f_id = f_id[np.sort(rng.choice(len(f_id), n, replace=False))] if len(f_id) > n else f_id
    kk = max(1, min(int(k), n))

    def dist(ref: np.ndarray) -> float:
        d = np.sqrt(((ref - f_s) ** 2).sum(axis=1))
        return float(np.sort(d)[:kk].mean())

    d_ood, d_id = dist(f_ood), dist(f_id)
    return DomainCheck(d_ood, d_id, d_id < d_ood, kk, n)


_SAMPLES: dict = {}
_SAMPLES_LOCK = threading.Lock()


def model_samples(model, steps: int, n: int = N_MODEL_SAMPLES, seed: int = 0) -> np.ndarray:
    """uint8 [n, R, R, 3]: the model's own samples, N(0, I) at T denoised by DDIM (eta 0) in ``steps`` steps; seeded,
    computed once per (model, steps, n, seed) in this process."""
    from .config import DDIMSettings
    from .data import to_uint8_rgb
    from .engine import denoise

    key = (model.name, int(steps), int(n), int(seed))
    with _SAMPLES_LOCK:
        if key not in _SAMPLES:
            g = torch.Generator().manual_seed(int(seed))
            z = torch.randn((int(n), model.channels, model.resolution, model.resolution), generator=g)
            t_top = model.num_train_timesteps - 1
            imgs = denoise(model, z, DDIMSettings(t_end=t_top, steps=int(steps)), eta=0.0, seed=int(seed)).clamp(-1, 1)
            _SAMPLES[key] = to_uint8_rgb(imgs)
            while len(_SAMPLES) > 4:
                _SAMPLES.pop(next(iter(_SAMPLES)))
        return _SAMPLES[key]


def cached(model_name: str, steps: int, n: int = N_MODEL_SAMPLES, seed: int = 0) -> Optional[np.ndarray]:
    """The model samples of :func:`model_samples` if already computed (never computes)."""
    with _SAMPLES_LOCK:
        return _SAMPLES.get((model_name, int(steps), int(n), int(seed)))
