"""Experiment 8: per-sample intensity calibration after decoding (tuning data only).

usage: quantile.py SET TAG STEPS N [SEED [MODEL]]   (run from the repository root; reads runs/tune/SET, or SET when it is a folder)

Decodes N default samples (GenerationSettings(noise="none"), cached in runs/cand_*.pt like candidate.py)
and compares, on the same decoded images, the default noise model ("match") with a per-channel quantile
map of each sample onto the displacement interpolation of its two sources' intensity distributions
((1 - alpha) Q_i + alpha Q_j, the 1-D Wasserstein geodesic), alone and combined with the noise model.
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
from oodgen.config import GenerationSettings  # noqa: E402
from oodgen.sampling import match_noise, match_quantiles, pixel_noise, quantile_functions  # noqa: E402

setname, tag, steps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
ref = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "-" else "oodgen-photos-64-smooth"
LEVELS = [int(v) for v in sys.argv[7].split(",")] if len(sys.argv) > 7 else [65]
name = Path(ref).parent.name if Path(ref).name == "model" else Path(ref).name
where = "heldout_" if Path(setname).is_dir() and not str(setname).startswith("runs/") else ""
cache = Path(f"runs/q_{name}_{where}{Path(setname).name}_{steps}_{n}_s{seed}.pt")
inv = invert_set(setname, steps, ref, invert=not cache.exists())
if cache.exists():
    c = torch.load(cache)
else:
    t0 = time.time()
    out = engine.generate(inv.model, inv.z, n, inv.ddim, GenerationSettings(noise="none", calibration="none", seed=seed))
    c = {"images": out.images, "i": torch.tensor([d.i for d in out.draws]), "j": torch.tensor([d.j for d in out.draws]),
         "alpha": torch.tensor([d.alpha for d in out.draws])}
    torch.save(c, cache)
    print(f"generated {n} in {time.time() - t0:.0f} s", flush=True)
img, ii, jj, al = c["images"], c["i"], c["j"], c["alpha"]
al3 = al[:, None, None]
targets = {q: (1 - al3) * qs[ii] + al3 * qs[jj] for q in LEVELS for qs in [quantile_functions(inv.x, q)]}
G = lambda: torch.Generator().manual_seed(17)
matched = match_noise(img, inv.target, G())
print("noise: sources", pixel_noise(inv.x).median(0).values.tolist(), "decoded", pixel_noise(img).median(0).values.tolist(), flush=True)
variants = {"match (default)": matched, **{f"match+quantiles{q}": match_quantiles(matched, t) for q, t in targets.items()}}
gens = [ev.model_output_set(v.clamp(-1, 1), inv.real, inv.stretch, f"{k} {inv.name}") for k, v in variants.items()]
evaluate_and_save(gens, inv.real, tag)
