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
