"""What the tuning experiments share: evaluate several generated sets against the real one and save the record."""
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from oodgen import engine, evaluation as ev, quality
from oodgen.config import DDIMSettings
from oodgen.data import to_model_input
from oodgen.models import load_model
from oodgen.sampling import noise_targets


def evaluate_and_save(gens: list, real, tag: str, morph_max: int = 80) -> list[dict]:
    """Evaluate ``gens`` (ImageSets, the first the main one) against ``real`` with the crossfade; print the summary
    and the worst statistics of each set; write runs/<tag>.png (montage) and runs/<tag>.json. Returns the rows."""
    res = ev.evaluate_sets(gens[0], real, gens[1:], "auto", quality.QualitySettings(morph_max=morph_max), with_crossfade=True)
    rows = res.report.summary()
    width = max(len(r["label"]) for r in rows)
    for r in rows:
        print(f"{r['label']:{width}s} c2st={r['c2st_stats']:.3f} px={r['c2st_pixels']:.3f} within={r['within_floor_frac']:.2f} "
              f"frechet={r['frechet']:.1f} copies={r['near_copies']} div={r['diversity_ratio']}", flush=True)
    for r in rows[1:]:
        print(r["label"], res.report.worst(r["label"], 8))
    Image.fromarray(res.montage(k=8)).save(f"runs/{tag}.png")
    with open(f"runs/{tag}.json", "w") as f:
        json.dump({"rows": rows, "stats": res.report.rows()}, f, indent=1, default=str)
    return rows


@dataclass
class Inverted:
    """A real set inverted by one model: what every experiment starts from."""

    name: str  # the set's folder name (galaxy, radiation)
    real: object  # ev.ImageSet of the real images
    model: object  # FrozenDDPM (float32, CPU)
    ddim: DDIMSettings  # DDIMSettings() with the experiment's steps and batch 16
    x: torch.Tensor  # [N, C, H, W] model input in [-1, 1]
    stretch: object  # the physical stretch (None for images)
    target: torch.Tensor  # [C] per-channel pixel noise of the sources (the default noise model's target)
    sky: torch.Tensor  # [C] their sky level
    z: torch.Tensor | None  # [N, C, H, W] inverted latents (None: not inverted)


def invert_set(setname: str, steps: int, ref: str = "oodgen-photos-64", invert: bool = True) -> Inverted:
    """Load runs/tune/SETNAME (or the folder SETNAME) and invert it with ``ref`` at the default t_end and ``steps``
    DDIM steps (``invert=False``: only load); the latents are cached in runs/z_*.pt, keyed by model, folder and steps."""
    root = Path(setname) if Path(setname).is_dir() else Path(f"runs/tune/{setname}")
    real = ev.load_set(root)
    model = load_model(ref, device="cpu", dtype="float32")
    d = replace(DDIMSettings(), steps=steps, batch_size=16)
    x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
    target, sky = noise_targets(x)
    key = "_".join((str(Path(ref)).replace("/", "-"), str(root).replace("/", "-"), str(d.t_end), str(steps)))
    cache = Path(f"runs/z_{key}.pt")
    if not invert:
        z = None
    elif cache.exists():
        z = torch.load(cache)
    else:
        t0 = time.time()
        z = engine.invert(model, x, d)
        torch.save(z, cache)
        print(f"{root}: {len(z)} inverted by {ref} in {time.time() - t0:.0f} s", flush=True)
    return Inverted(root.name, real, model, d, x, stretch, target, sky, z)
