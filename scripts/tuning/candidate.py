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
from common import evaluate_and_save  # noqa: E402

from oodgen import engine, evaluation as ev  # noqa: E402
from oodgen.config import DDIMSettings, GenerationSettings  # noqa: E402
from oodgen.data import to_model_input  # noqa: E402
from oodgen.models import load_model  # noqa: E402
from oodgen.sampling import noise_targets  # noqa: E402

setname, tag, steps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
root = Path(setname) if Path(setname).is_dir() else Path(f"runs/tune/{setname}")  # a folder (the held-out check: assets/samples/SET)
setname = root.name
real = ev.load_set(root)
d = replace(DDIMSettings(), steps=steps, batch_size=16)
g = GenerationSettings()
print(f"{setname}: {len(real.samples)} real; {d}; {g}", flush=True)
gens = []
t0 = time.time()
for ref in sys.argv[5:]:
    label = f"{Path(ref).parent.name if Path(ref).name == 'model' else Path(ref).name} {setname}"
    cache = Path(f"runs/cand_{label.replace(' ', '_')}_{steps}_{n}.pt")  # images in [-1, 1]: a model run once serves many comparisons
    model = load_model(ref, device="cpu", dtype="float32")
    x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
    if cache.exists():
        images = torch.load(cache)
    else:
        target, sky = noise_targets(x)
        z = engine.invert(model, x, d)
        images = engine.generate(model, z, n, d, g, source_noise=target.tolist(), source_sky=sky.tolist()).images
        torch.save(images, cache)
    gens.append(ev.model_output_set(images, real, stretch, label))
    print(f"{label}: inverted and generated, {time.time() - t0:.0f} s", flush=True)
if len(gens) > 1:
    evaluate_and_save(gens, real, tag)
