"""The pixel-space baseline as a generated set: crossfades of random pairs of real images.

The trivial "generator" a latent method has to beat (the quality report's *crossfade* row): each
image is ``(1 - alpha) x_i + alpha x_j`` of two real images, averaged in the data's own units
(physical maps in MJy/sr, images on [0, 1]) after the same centre-crop and resize as the quality
comparison. Pairs and averages come from :func:`oodgen.quality.crossfade_pairs` and
:func:`oodgen.quality.crossfade`; the set is written like any other generated set
(:func:`oodgen.generated.write_generated`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .data import DataError, Sample, Stretch, fit_stretch


def crossfade_set(samples: Sequence[Sample], n: int, side: int, alpha: float = 0.5, seed: int = 0,
                  stretch: Optional[Stretch] = None) -> tuple[np.ndarray, Optional[np.ndarray], list[dict]]:
    """n crossfades of seeded random pairs of ``samples`` at side x side.

    Returns (uint8 RGB [n, side, side, 3] for the PNGs, physical float32 [n, side, side, B] in the data's
    units or None for images, one provenance dict per image: method "pixel", pair i, j, source names,
    alpha). Physical maps are shown through ``stretch`` (default: fitted on ``samples``), as generated
    sets of the same data are.
    """
    from . import quality
    from .evaluation import ImageSet, display_rgb, stack_samples

    if len(samples) < 2:
        raise DataError(f"the pixel crossfade needs at least 2 source images, got {len(samples)}")
    if n < 1 or side < 1 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need n >= 1, side >= 1 and alpha in [0, 1] (got n={n}, side={side}, alpha={alpha})")
    kind = samples[0].kind
    if any(s.kind != kind for s in samples):
        raise DataError("the sources mix images and physical maps; crossfade one kind of data at a time")
    x = stack_samples(samples, side)  # [N, side, side, C] in data units
    pairs = quality.crossfade_pairs(len(x), n, seed)
    out = quality.crossfade(x, pairs, alpha)
    physical = out if kind == "physical" else None
    if kind == "physical" and stretch is None:
        stretch = fit_stretch(list(samples))
    shown = ImageSet("pixel", out, kind, None, None, tuple(samples))
    rgb = display_rgb(shown, stretch if kind == "physical" else None)
    names = [s.name for s in samples]
    records = [{"method": "pixel", "i": int(i), "j": int(j), "alpha": float(alpha), "source_i": names[i], "source_j": names[j]}
               for i, j in pairs]
    return rgb, physical, records
