"""Experiment 4: the sky/noise model applied after decoding (tuning data only).

usage: sky.py SET STEPS N T_END   (run from the repository root; decodes random cloud-centred slerp pairs once,
caches them in runs/exp4_SET.pt, then compares noise models on the same decoded images)
"""
import json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, ".")
sys.path.insert(0, "scripts/tuning")
from common import evaluate_and_save
from oodgen import engine, quality, evaluation as ev
from oodgen.config import DDIMSettings, GenerationSettings
from oodgen.data import to_model_input
from oodgen.models import load_model
from oodgen.sampling import match_noise, match_sky, noise_targets, pixel_noise, border_level

setname, steps, N, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
real = ev.load_set(f"runs/tune/{setname}")
model = load_model("oodgen-photos-64", device="cpu", dtype="float32")
x, stretch = to_model_input(list(real.samples), model.resolution, model.channels)
cache = Path(f"runs/exp4_{setname}_t{t}_s{steps}_n{N}.pt")
if cache.exists():
    c = torch.load(cache)
else:
    d = DDIMSettings(t_end=t, steps=steps, batch_size=16)
    z = engine.invert(model, x, d)
    out = engine.generate(model, z, N, d, GenerationSettings(noise="none"))
    c = {"images": out.images, "i": torch.tensor([dr.i for dr in out.draws]), "j": torch.tensor([dr.j for dr in out.draws])}
    torch.save(c, cache)
img, ii, jj = c["images"], c["i"], c["j"]
sig_med, sky_med = noise_targets(x)
sig_src, sky_src = pixel_noise(x), border_level(x)  # [N, C]
own_sig, own_sky = pixel_noise(img), border_level(img)
print("source noise median", sig_med.tolist(), "decoded noise median", own_sig.median(0).values.tolist())
print("source sky median", sky_med.tolist(), "decoded sky median", own_sky.median(0).values.tolist())
print("source sky spread", sky_src.std(0).tolist(), "decoded sky spread", own_sky.std(0).tolist())

def per_image_noise(images, target, g):  # target [N, C]
    own = pixel_noise(images)
    add = (target ** 2 - own ** 2).clamp_min(0).sqrt()
    return images + torch.randn(images.shape, generator=g) * add[:, :, None, None]

def per_image_sky(images, level, target, g):
    shifted = images + (level - border_level(images))[:, :, None, None]
    return per_image_noise(shifted, target, g)

def censored_sky(x):
    """(level [N, C], sigma [N, C]) of the border pixels of x [N, C, H, W] in model units, as a Gaussian censored at -1
    (survey cutouts stretched so the sky pedestal sits at the black point: most sky pixels clipped to exactly -1)."""
    b = max(2, min(x.shape[-2:]) // 8)
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[b:-b, b:-b] = False
    v = x[..., mask].double()  # [N, C, P]
    f0 = (v <= -1 + 1e-6).double().mean(-1)  # clipped fraction
    qa = (f0 + (1 - f0) * 0.25).clamp(max=0.9)
    qb = (f0 + (1 - f0) * 0.75).clamp(max=0.97)
    srt = v.sort(-1).values
    P = v.shape[-1]
    take = lambda q: srt.gather(-1, (q * (P - 1)).round().long()[..., None]).squeeze(-1)
    nd = torch.distributions.Normal(0.0, 1.0)
    za, zb = nd.icdf(qa), nd.icdf(qb)
    sig = ((take(qb) - take(qa)) / (zb - za)).clamp_min(1e-4)
    return (take(qa) - sig * za).float(), sig.float()

def censored_match(images, level, sigma, g):
    own_l, own_s = censored_sky(images)
    out = images + (level - own_l)[:, :, None, None]
    add = (sigma ** 2 - own_s ** 2).clamp_min(0).sqrt()
    return out + torch.randn(images.shape, generator=g) * add[:, :, None, None]

lv_src, sg_src = censored_sky(x)
lv_dec, sg_dec = censored_sky(img)
print("censored source level median", lv_src.median(0).values.tolist(), "sigma", sg_src.median(0).values.tolist())
print("censored decoded level median", lv_dec.median(0).values.tolist(), "sigma", sg_dec.median(0).values.tolist())
G = lambda: torch.Generator().manual_seed(17)
variants = {
    "none": img,
    "match": match_noise(img, sig_med, G()),
    "sky": match_sky(img, sky_med, sig_med, G()),
    "pair noise": per_image_noise(img, sig_src[ii], G()),
    "pair sky": per_image_sky(img, sky_src[ii], sig_src[ii], G()),
    "censored pair": censored_match(img, lv_src[ii], sg_src[ii], G()),
    "censored pair noise only": censored_match(img, lv_dec, sg_src[ii], G()),
    "pair sky mean": per_image_sky(img, (sky_src[ii] + sky_src[jj]) / 2, sig_src[ii], G()),
}
gens = [ev.model_output_set(v.clamp(-1, 1), real, stretch, k) for k, v in variants.items()]
evaluate_and_save(gens, real, f"exp4_{setname}")
