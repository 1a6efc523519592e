"""Offline image sources shared by the asset scripts (training data and bundled samples)."""

from __future__ import annotations

import numpy as np
from PIL import Image

FACE_RESOLUTION = 32
N_HELD_OUT = 12  # the last 12 LFW faces are never trained on; they are the bundled in-domain samples


def lfw_faces(resolution: int = FACE_RESOLUTION) -> np.ndarray:
    """The 100 face crops of scikit-image's ``lfw_subset`` resized to ``resolution``: [100, H, W] float32 in [0, 1]."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the first 100 are faces, the last 100 are non-face patches
    out = [
        np.asarray(Image.fromarray((f * 255).round().astype(np.uint8)).resize((resolution, resolution), Image.BICUBIC), dtype=np.float32) / 255.0
        for f in faces
    ]
    return np.stack(out)


def train_and_held_out_faces() -> tuple[np.ndarray, np.ndarray]:
    """(training faces [88, H, W], held-out faces [12, H, W]), both in [0, 1]."""
    faces = lfw_faces()
    return faces[:-N_HELD_OUT], faces[-N_HELD_OUT:]


# Offline natural photographs (scikit-image and scikit-learn ship them) for the 64x64 base model.
# Excluded on purpose: hubble_deep_field (the galaxy set's source), moon (astronomical), retina and
# microaneurysms (dark disc on black: too close to a galaxy image), and synthetic test patterns.
PHOTO_NAMES_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")
PHOTO_NAMES_GREY = ("camera", "coins", "gravel", "brick", "grass", "clock", "horse_free")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def natural_photos() -> list[np.ndarray]:
    """The offline photographs used to train ``oodgen-photos-64``: a list of [H, W, 3] uint8 arrays."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_image

    def rgb(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
        return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]

    out = [rgb(getattr(sd, n)()) for n in PHOTO_NAMES_COLOUR if n != "stereo_motorcycle"]
    left, right, _ = sd.stereo_motorcycle()
    out += [rgb(left), rgb(right)]
    out += [rgb(getattr(sd, n)()) for n in PHOTO_NAMES_GREY if n != "horse_free"]
    out += [rgb(load_sample_image(n)) for n in SKLEARN_PHOTOS]
    return out


def random_photo_crops(n: int, resolution: int, seed: int, min_side: int = 48) -> np.ndarray:
    """n multi-scale random square crops of ``natural_photos()`` resized to ``resolution``: [n, H, W, 3] uint8.

    The crop side is log-uniform between ``min_side`` and the photo's short side, so the set mixes
    whole scenes, objects and fine texture; images are picked with equal probability.
    """
    rng = np.random.default_rng(seed)
    photos = natural_photos()
    out = np.empty((n, resolution, resolution, 3), np.uint8)
    for k in range(n):
        p = photos[rng.integers(len(photos))]
        h, w = p.shape[:2]
        side = int(round(np.exp(rng.uniform(np.log(min_side), np.log(min(h, w))))))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out[k] = np.asarray(Image.fromarray(p[y : y + side, x : x + side]).resize((resolution, resolution), Image.BICUBIC if side < resolution else Image.LANCZOS))
    return out
