"""Experiment: slerp about the origin vs about the OOD cloud centre, Gaussian, at several t_end (tuning data)."""
import json, sys, time
from dataclasses import replace
import numpy as np, torch
sys.path.insert(0, ".")
from oodgen import engine, quality, evaluation as ev
from oodgen.config import DDIMSettings, GenerationSettings
from oodgen.data import to_model_input
from oodgen.models import load_model
from oodgen.sampling import match_noise, noise_targets, slerp, nearest_pairs, GaussianFit

torch.manual_seed(0)
setname = sys.argv[1]
ts = [int(t) for t in sys.argv[2].split(",")]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 60
model = load_model("oodgen-photos-64", device="cpu", dtype="float32")
real = ev.load_set(f"runs/tune/{setname}")
x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
noise, sky = noise_targets(x)
gens = {}
t0 = time.time()
for t in ts:
    d = DDIMSettings(t_end=t, steps=int(sys.argv[4]) if len(sys.argv) > 4 else 50, batch_size=16)
    z = engine.invert(model, x, d)
    print(f"t={t} inverted {time.time()-t0:.0f}s", flush=True)
    g = torch.Generator().manual_seed(0)
    pairs = nearest_pairs(z, N, 5, g)
    mu = z.mean(0)
    cands = {
        "slerp0": torch.stack([slerp(z[i], z[j], 0.5) for i, j in pairs]),
        "cslerp": torch.stack([mu + slerp(z[i] - mu, z[j] - mu, 0.5) for i, j in pairs]),
        "gauss": GaussianFit.fit(z).sample(N, torch.Generator().manual_seed(1)),
    }
    for name, zz in cands.items():
        out = engine.denoise(model, zz, d, 0.0, 0)
        img = match_noise(out, noise, torch.Generator().manual_seed(3)).clamp(-1, 1)
        lab = f"t{t} {name}"
        gens[lab] = ev.model_output_set(img, real, stretch, lab)
        print(lab, f"{time.time()-t0:.0f}s", flush=True)
np.savez_compressed(f"runs/exp_gens_{setname}.npz", **{k.replace(" ","_"): v.x for k, v in gens.items()})
allg = list(gens.values())
res = ev.evaluate_sets(allg[0], real, allg[1:], "auto", quality.QualitySettings(morph_max=60), with_crossfade=True)
rows = res.report.summary()
for r in rows:
    print(f"{r['label']:18s} c2st={r['c2st_stats']:.3f} px={r['c2st_pixels']:.3f} within={r['within_floor_frac']:.2f} "
          f"frechet={r['frechet']:.1f} copies={r['near_copies']} div={r['diversity_ratio']}")
json.dump(rows, open(f"runs/exp_centre_{setname}.json", "w"), indent=1, default=str)
from PIL import Image
Image.fromarray(res.montage(k=8)).save(f"runs/exp_centre_{setname}.png")
print("worst", {r['label']: res.report.worst(r['label']) for r in rows[1:]})
