"""Experiment 6: a Gaussian with the latents' own (low-rank) covariance against the default slerp (tuning data only).

usage: lowrank.py SET TAG STEPS N   (run from the repository root; reads runs/tune/SET)

Draws z = mu + sum_k w_k (z_k - mu) / sqrt(N - 1), w ~ N(0, I): exactly the empirical mean and covariance
of the inverted latents (rank N - 1), unlike the scalar or per-dimension variance of GaussianFit; and the
same sum over m random latents only, divided by sqrt(m) (the same covariance in expectation, fewer sources
mixed in each draw). Decoded with the default DDIM settings and noise model, beside the default slerp of
the same inversion.
"""
import sys
import time

import torch

sys.path.insert(0, ".")
sys.path.insert(0, "scripts/tuning")
from common import evaluate_and_save, invert_set  # noqa: E402

from oodgen import engine, evaluation as ev  # noqa: E402
from oodgen.config import GenerationSettings  # noqa: E402
from oodgen.sampling import SourceProfile, match_noise  # noqa: E402

setname, tag, steps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.time()
inv = invert_set(setname, steps)
z, model, d, real, stretch, target, sky = inv.z, inv.model, inv.ddim, inv.real, inv.stretch, inv.target, inv.sky
g = torch.Generator().manual_seed(5)
mu = z.mean(0)
dev = (z - mu).reshape(len(z), -1)


def lowrank(m: int) -> torch.Tensor:
    """n draws mixing m random latents each (m = N: the full empirical covariance)."""
    out = []
    for _ in range(n):
        pick = torch.randperm(len(z), generator=g)[:m]
        w = torch.randn(m, generator=g, dtype=dev.dtype)
        out.append(mu + (w @ dev[pick]).reshape(mu.shape) / (m - 1 if m == len(z) else m) ** 0.5)
    return torch.stack(out)


gens = []
default = engine.generate(model, z, n, d, GenerationSettings(), sources=SourceProfile.from_images(inv.x))
gens.append(ev.model_output_set(default.images, real, stretch, f"slerp default {setname}"))
for m in (len(z), 3):
    img = engine.denoise(model, lowrank(m), d, 0.0, 0)
    img = match_noise(img, target, torch.Generator().manual_seed(17)).clamp(-1, 1)
    gens.append(ev.model_output_set(img, real, stretch, f"lowrank m={m} {setname}"))
    print(f"m={m}: {time.time() - t0:.0f} s", flush=True)
evaluate_and_save(gens, real, tag)
