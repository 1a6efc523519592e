"""Experiment 5: a candidate base model against the bundled one, at the default generation settings (tuning data only).

usage: candidate.py SET TAG STEPS N MODEL [MODEL ...]   (run from the repository root; reads runs/tune/SET, or SET when it is a folder)

Each MODEL (a registry name or a saved model folder) inverts the same real set with t_end and batch
as DDIMSettings() (``STEPS`` DDIM steps), generates N samples with GenerationSettings() (the defaults,
noise model included) and is evaluated against the real set beside the pixel crossfade; the summary,
the montage and the JSON go to runs/<TAG>.{png,json} (scripts/tuning/common.py). Each model's generated images
are cached in runs/cand_*.pt; with one MODEL the script only makes that cache (nothing is evaluated).
"""
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, ".")
sys.path.insert(0, "scripts/tuning")
from common import evaluate_and_save, invert_set  # noqa: E402

from oodgen import engine, evaluation as ev  # noqa: E402
from oodgen.config import DDIMSettings, GenerationSettings  # noqa: E402
from oodgen.sampling import SourceProfile  # noqa: E402

setname, tag, steps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
g = GenerationSettings()
print(f"{setname}: {replace(DDIMSettings(), steps=steps, batch_size=16)}; {g}", flush=True)
gens = []
t0 = time.time()
where = "heldout_" if Path(setname).is_dir() else ""  # a folder (assets/samples/SET) or the tuning set runs/tune/SET
for ref in sys.argv[5:]:
    name = Path(ref).parent.name if Path(ref).name == "model" else Path(ref).name
    label = f"{name} {Path(setname).name}"
    cache = Path(f"runs/cand_{name}_{where}{Path(setname).name}_{steps}_{n}.pt")  # images in [-1, 1]: a model run once serves many comparisons
    inv = invert_set(setname, steps, ref, invert=not cache.exists())
    real = inv.real
    if cache.exists():
        images = torch.load(cache)
    else:
        images = engine.generate(inv.model, inv.z, n, inv.ddim, g, sources=SourceProfile.from_images(inv.x)).images
        torch.save(images, cache)
    gens.append(ev.model_output_set(images, real, inv.stretch, label))
    print(f"{label}: inverted and generated, {time.time() - t0:.0f} s", flush=True)
if len(gens) > 1:
    evaluate_and_save(gens, real, tag)
