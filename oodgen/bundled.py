"""The sample sets that ship with oodgen under ``assets/samples/`` (made by ``scripts/make_samples.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .models import ASSETS


@dataclass(frozen=True)
class SampleSet:
    """One bundled sample set."""

    key: str  # short name used by the app and the docs
    path: Path  # folder under assets/samples
    domain: str  # "in-domain" (the bundled model's own domain) or "out-of-domain"
    description: str  # one line for pickers


SAMPLE_SETS: dict[str, SampleSet] = {
    s.key: s
    for s in (
        SampleSet("galaxy", ASSETS / "samples" / "galaxy", "out-of-domain",
                  "100 galaxies: 70 GalSim renders (elliptical, disk, edge-on, clumpy, merger) + 30 Hubble Deep Field cutouts"),
        SampleSet("radiation", ASSETS / "samples" / "radiation", "out-of-domain",
                  "64 dust-emission maps, 4.5/24/250 micron in MJy/sr (turbulent lognormal clouds, bubbles, young stars)"),
        SampleSet("faces", ASSETS / "samples" / "faces", "in-domain",
                  "12 held-out LFW face crops: the bundled model's own domain, never trained on"),
        SampleSet("faces_train", ASSETS / "samples" / "faces_train", "in-domain",
                  "88 LFW face crops the bundled model was trained on (in-domain reference)"),
    )
}
