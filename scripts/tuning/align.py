"""Experiment 7: interpolate between pose-aligned latents (tuning data only).

usage: align.py SET TAG STEPS N [MODEL]   (run from the repository root; reads runs/tune/SET, or SET when it is a folder)

Random pairs of galaxies interpolated at alpha 0.5 decode to two superposed objects of different position
angle (clumpy light, a doubled core). Galaxies (and dust maps) have no preferred orientation, so the
partner j may be rotated by a multiple of 90 degrees and/or mirrored before slerp without leaving the
population; here the partner's latent is turned by the dihedral transform g that maximizes the
correlation <z_i - mu, g(z_j) - mu> (flip only: of the 2 horizontal mirrors). Same pairs, same alpha,
same DDIM and noise model as the default slerp, which is evaluated beside.
"""
import sys
import time

import torch

sys.path.insert(0, ".")
sys.path.insert(0, "scripts/tuning")
from common import evaluate_and_save, invert_set  # noqa: E402

from oodgen import engine, evaluation as ev  # noqa: E402
from oodgen.sampling import interpolate, interpolation_centre, match_noise, random_pairs  # noqa: E402

setname, tag, steps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.time()
inv = invert_set(setname, steps, sys.argv[5] if len(sys.argv) > 5 else "oodgen-photos-64")
z, model, d, real = inv.z, inv.model, inv.ddim, inv.real
mu = interpolation_centre(z, "cloud")
pairs = random_pairs(len(z), n, torch.Generator().manual_seed(0))


def transforms(flip_only: bool):
    ks = [0] if flip_only else [0, 1, 2, 3]
    return [(k, f) for k in ks for f in (False, True)]


def aligned(a: torch.Tensor, b: torch.Tensor, flip_only: bool) -> torch.Tensor:
    """b [C, H, W] turned by the dihedral transform that best correlates its centred latent with a's."""
    best, best_c = b, -float("inf")
    for k, f in transforms(flip_only):
        gb = torch.rot90(b, k, (1, 2))
        gb = gb.flip(2) if f else gb
        c = float(((a - mu) * (gb - mu)).sum())
        if c > best_c:
            best, best_c = gb, c
    return best


gens = []
for label, mode in (("default", None), ("aligned d4", False), ("aligned flip", True)):
    zz = torch.stack([interpolate(z[i], z[j] if mode is None else aligned(z[i], z[j], mode), 0.5, "slerp", mu) for i, j in pairs])
    img = engine.denoise(model, zz, d, 0.0, 0)
    img = match_noise(img, inv.target, torch.Generator().manual_seed(17)).clamp(-1, 1)
    gens.append(ev.model_output_set(img, real, inv.stretch, f"{label} {inv.name}"))
    print(f"{label}: {time.time() - t0:.0f} s", flush=True)
evaluate_and_save(gens, real, tag)
