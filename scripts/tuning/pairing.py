"""Experiment 3: how interpolation pairs are chosen (random, nearest, same class from labels.csv), tuning data only.

usage: pairing.py SET STEPS N T_END   (run from the repository root; reads runs/tune/SET and its labels.csv)
"""
import csv, json, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, ".")
sys.path.insert(0, "scripts/tuning")
from common import evaluate_and_save
from oodgen import engine, quality, evaluation as ev
from oodgen.config import DDIMSettings, GenerationSettings
from oodgen.data import to_model_input
from oodgen.models import load_model
from oodgen.sampling import match_noise, noise_targets, interpolate, interpolation_centre

setname, steps, N, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
root = Path(f"runs/tune/{setname}")
model = load_model("oodgen-photos-64", device="cpu", dtype="float32")
real = ev.load_set(root)
names = [s.name for s in real.samples]
lab = {r["file"]: r["class"] for r in csv.DictReader(open(root / "labels.csv"))} if (root / "labels.csv").exists() else {}
classes = [lab.get(Path(n).name, "?") for n in names]
print("classes:", {c: classes.count(c) for c in set(classes)})
x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
target, _ = noise_targets(x)
d = DDIMSettings(t_end=t, steps=steps, batch_size=16)
t0 = time.time()
z = engine.invert(model, x, d)
print(f"inverted {time.time()-t0:.0f}s", flush=True)
centre = interpolation_centre(z, "cloud")
g = torch.Generator().manual_seed(0)
n = len(z)
by = {}
for k, c in enumerate(classes):
    by.setdefault(c, []).append(k)

def pairs(kind):
    out = []
    for _ in range(N):
        i = int(torch.randint(0, n, (1,), generator=g))
        if kind == "random":
            j = int((i + torch.randint(1, n, (1,), generator=g)) % n)
        elif kind == "class":
            pool = [k for k in by[classes[i]] if k != i]
            j = pool[int(torch.randint(0, len(pool), (1,), generator=g))]
        elif kind == "source":  # galsim with galsim, hdf with hdf
            src = lambda k: classes[k].startswith("hdf")
            pool = [k for k in range(n) if k != i and src(k) == src(i)]
            j = pool[int(torch.randint(0, len(pool), (1,), generator=g))]
        out.append((i, j))
    return out

gens = {}
for kind in ("random", "class", "source"):
    pr = pairs(kind)
    zz = torch.stack([interpolate(z[i], z[j], 0.5, "slerp", centre) for i, j in pr])
    img = engine.denoise(model, zz, d, 0.0, 0)
    gn = torch.Generator().manual_seed(17)
    img = match_noise(img, target, gn).clamp(-1, 1)
    gens[kind] = ev.model_output_set(img, real, stretch, kind)
    print(kind, f"{time.time()-t0:.0f}s", flush=True)
evaluate_and_save(list(gens.values()), real, f"exp3_{setname}")
