"""Experiment 2: centred slerp over t_end, noise model, pairing (tuning data). Saves arrays for diagnosis.

usage: exp2.py SET TAG STEPS N "t,pairing,k,eta,alpha_spread" ...   (noise models none/match/sky applied to each decode)
"""
import json, sys, time
from dataclasses import replace
import numpy as np, torch
sys.path.insert(0, ".")
from oodgen import engine, quality, evaluation as ev
from oodgen.config import DDIMSettings, GenerationSettings
from oodgen.data import to_model_input
from oodgen.models import load_model
from oodgen.sampling import match_noise, match_sky, noise_targets

setname, tag, steps, N = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cells = [c.split(",") for c in sys.argv[5:]]
noises = ("none", "match", "sky")
model = load_model("oodgen-photos-64", device="cpu", dtype="float32")
real = ev.load_set(f"runs/tune/{setname}")
x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
target, sky = noise_targets(x)
gens = {}
t0 = time.time()
zs = {}
for t, pairing, k, eta, spread in cells:
    t = int(t)
    d = DDIMSettings(t_end=t, steps=steps, batch_size=16)
    if t not in zs:
        zs[t] = engine.invert(model, x, d)
        print(f"t={t} inverted {time.time()-t0:.0f}s", flush=True)
    g = GenerationSettings(pairing=pairing, neighbours=int(k), eta=float(eta), alpha_spread=float(spread), noise="none")
    out = engine.generate(model, zs[t], N, d, g)
    for nz in noises:
        gn = torch.Generator().manual_seed(17)
        img = {"none": lambda: out.images, "match": lambda: match_noise(out.images, target, gn),
               "sky": lambda: match_sky(out.images, sky, target, gn)}[nz]().clamp(-1, 1)
        lab = f"t{t} {pairing}{k} eta{eta} sp{spread} {nz}"
        gens[lab] = ev.model_output_set(img, real, stretch, lab)
    print(lab, f"{time.time()-t0:.0f}s", flush=True)
np.savez_compressed(f"runs/exp2_{setname}_{tag}.npz", real=real.x, **{k: v.x for k, v in gens.items()})
allg = list(gens.values())
res = ev.evaluate_sets(allg[0], real, allg[1:], "auto", quality.QualitySettings(morph_max=60), with_crossfade=True)
rows = res.report.summary()
for r in rows:
    print(f"{r['label']:34s} c2st={r['c2st_stats']:.3f} px={r['c2st_pixels']:.3f} within={r['within_floor_frac']:.2f} "
          f"frechet={r['frechet']:.1f} copies={r['near_copies']} div={r['diversity_ratio']}", flush=True)
json.dump({"rows": rows, "stats": res.report.rows(), "worst": {r['label']: res.report.worst(r['label'], 10) for r in rows[1:]}},
          open(f"runs/exp2_{setname}_{tag}.json", "w"), indent=1, default=str)
from PIL import Image
Image.fromarray(res.montage(k=8)).save(f"runs/exp2_{setname}_{tag}.png")
for r in rows[1:]:
    print(r['label'], res.report.worst(r['label'], 8))
