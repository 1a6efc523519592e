"""Train oodgen's 64x64 base model ``oodgen-photos-64``: a DDPM on natural colour photographs (offline, CPU).

    python scripts/train_photos_model.py --minutes 110 [--ckpt runs/photos64] [--out assets/models/oodgen-photos-64]
    python scripts/train_photos_model.py --steps 5200      # reproduce a recorded run (seeded)
    python scripts/train_photos_model.py --card-only       # redraw the model card and sample grids

Data: multi-scale random crops (log-uniform side from 48 px to the whole photo) of the 15 photographs
that scikit-image and scikit-learn ship (colour and grey; ``asset_sources.natural_photos``), 90%, and
the 88 training faces of ``lfw_subset`` upscaled to 64x64, 10%, with horizontal flips. Galaxies and
dust maps stay out of its domain (no astronomical image is used). Objective: the DDPM epsilon loss,
linear betas 1e-4..0.02 over 1000 steps. On CPUs with native bf16 (avx512_bf16 / AMX) the forward
and backward run under bf16 autocast with float32 master weights.

With ``--minutes`` the number of steps is fixed after 30 timed steps (rate x budget) and recorded,
so the cosine schedule always completes; ``--steps`` reproduces that run. A checkpoint (weights, EMA,
optimizer, RNG state) is written every ``--ckpt-every`` steps and a rerun resumes from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # share the 2 cores gracefully with other work

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asset_sources import lfw_faces, random_photo_crops, N_HELD_OUT  # noqa: E402
from train_default_model import save_grid  # noqa: E402
from oodgen import ddim  # noqa: E402
from oodgen.schedule import linear_alphas_cumprod  # noqa: E402

log = logging.getLogger("train64")

RESOLUTION = 64
UNET_CONFIG = dict(
    sample_size=RESOLUTION,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 96, 128, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
    attention_head_dim=32,
)
N_CROPS = 40_000  # pool of photo crops (each seen a few times over a run)
FACE_FRACTION = 0.1  # share of each batch drawn from the upscaled LFW faces


def native_bf16() -> bool:
    """True when this CPU executes bf16 matrix maths natively (avx512_bf16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def blur_some(crops: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Gaussian-blur a seeded ``share`` of the crops [N, H, W, 3] uint8 (sigma log-uniform 0.5-4 px, per crop):
    defocused photographs, so that the model's prior holds smooth light as well as texture."""
    if share <= 0:
        return crops
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed + 7919)
    out = crops.copy()
    for k in np.flatnonzero(rng.random(len(crops)) < share):
        sigma = float(np.exp(rng.uniform(np.log(0.5), np.log(4.0))))
        out[k] = np.clip(gaussian_filter(crops[k].astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect").round(), 0, 255)
    return out


def training_pool(seed: int, blur_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(photo crops [N_CROPS, 3, 64, 64] uint8, faces [88, 3, 64, 64] uint8)."""
    crops = blur_some(random_photo_crops(N_CROPS, RESOLUTION, seed), blur_share, seed)
    crops = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    faces = lfw_faces(RESOLUTION)[:-N_HELD_OUT]
    faces = torch.from_numpy((faces * 255).round().astype(np.uint8))[:, None].repeat(1, 3, 1, 1)
    return crops, faces


def batch(crops: torch.Tensor, faces: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n training images [n, 3, 64, 64] in [-1, 1], flipped at random."""
    n_face = int((torch.rand(n, generator=gen) < FACE_FRACTION).sum())
    x = torch.cat([crops[torch.randint(0, len(crops), (n - n_face,), generator=gen)],
                   faces[torch.randint(0, len(faces), (n_face,), generator=gen)]]).float() / 127.5 - 1
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (0: from --minutes)")
    p.add_argument("--minutes", type=float, default=110.0, help="time budget that fixes --steps after 30 timed steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", type=Path, default=Path("runs/photos64"), help="checkpoint and log folder (resumed)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--out", type=Path, default=Path("assets/models/oodgen-photos-64"))
    p.add_argument("--card-only", action="store_true")
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue training from a saved model folder (its unet/ weights start both the model and its EMA; "
                        "a fresh optimizer and schedule); recorded in training.json")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--blur-share", type=float, default=0.0,
                   help="share of photo crops Gaussian-blurred (sigma log-uniform 0.5-4 px): a smoother prior")
    p.add_argument("--low-t-share", type=float, default=0.0,
                   help="share of each batch whose timestep is drawn from [0, 400) instead of [0, 1000): "
                        "more training where oodgen decodes (t_end 300); the rest keeps the full range")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.ckpt.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.ckpt / "train.log")])
    if args.card_only:
        write_card(args.out)
        return
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    crops, faces = training_pool(args.seed, args.blur_share)
    ab = torch.from_numpy(linear_alphas_cumprod()).float()
    bf16 = native_bf16()
    unet, ema = UNet2DModel(**UNET_CONFIG), UNet2DModel(**UNET_CONFIG)
    if args.init_from is not None:
        unet.load_state_dict(UNet2DModel.from_pretrained(args.init_from / "unet").state_dict())
        log.info("initialised from %s", args.init_from)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    state = dict(step=0, total=args.steps, losses=[], seconds=0.0)
    ck = args.ckpt / "checkpoint.pt"
    if ck.exists():
        saved = torch.load(ck, weights_only=False)
        unet.load_state_dict(saved["unet"]); ema.load_state_dict(saved["ema"]); opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"]); state = saved["state"]
        if args.steps and args.steps != state["total"]:
            log.info("planned steps changed from %d to %d (the cosine schedule follows the new total)", state["total"], args.steps)
            state.setdefault("replanned", []).append([state["step"], state["total"], args.steps])
            state["total"] = args.steps
        log.info("resumed from %s at step %d of %d", ck, state["step"], state["total"])
    warmup = 200

    def lr_at(s: int) -> float:
        total = max(state["total"], 1)
        return args.lr * min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))

    n_params = sum(q.numel() for q in unet.parameters())
    log.info("UNet2DModel %.2fM parameters, %d crops + %d faces, bf16 autocast: %s", n_params / 1e6, len(crops), len(faces), bf16)
    t_start = time.time() - state["seconds"]
    while state["total"] == 0 or state["step"] < state["total"]:
        s = state["step"]
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        x0 = batch(crops, faces, args.batch_size, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch_size,), generator=gen)
        if args.low_t_share > 0:
            low = torch.rand(args.batch_size, generator=gen) < args.low_t_share
            t = torch.where(low, torch.randint(0, 400, (args.batch_size,), generator=gen), t)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(xt, t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + s) / (10 + s))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pm, 1 - decay)
        state["losses"].append(loss.item())
        state["step"] = s + 1
        state["seconds"] = time.time() - t_start
        if state["total"] == 0 and state["step"] == 30:
            rate = 30 / state["seconds"]
            state["total"] = int(rate * args.minutes * 60 * 0.93)  # 7% margin for checkpoints and a busy machine
            log.info("%.2f steps/s: %d steps in the %.0f-minute budget", rate, state["total"], args.minutes)
        if state["step"] % 50 == 0:
            log.info("step %d/%d loss(avg50) %.4f lr %.2e %.1f min", state["step"], state["total"],
                     np.mean(state["losses"][-50:]), lr_at(s), state["seconds"] / 60)
        if state["step"] % args.ckpt_every == 0 or state["step"] == state["total"]:
            tmp = ck.with_suffix(".tmp")
            torch.save(dict(unet=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), state=state), tmp)
            tmp.replace(ck)
            save_model(ema, args, state, n_params, bf16, DDPMPipeline, DDPMScheduler)
    log.info("done: %d steps in %.1f min", state["step"], state["seconds"] / 60)
    write_card(args.out)


def save_model(ema, args, state, n_params, bf16, DDPMPipeline, DDPMScheduler) -> None:
    """Save the EMA weights as a diffusers folder with training.json (after every checkpoint)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    ema.eval()
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(args.out, safe_serialization=True)
    losses = state["losses"]
    curve = [round(float(np.mean(losses[i : i + 50])), 5) for i in range(0, len(losses), 50)]
    stats = dict(steps=state["step"], planned_steps=state["total"], batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                 seed=args.seed, bf16_autocast=bf16, final_loss_avg200=round(float(np.mean(losses[-200:])), 5),
                 minutes=round(state["seconds"] / 60, 1), parameters=n_params, torch=torch.__version__,
                 threads=torch.get_num_threads(), replanned_at_step_from_to=state.get("replanned", []),
                 init_from=str(args.init_from) if args.init_from else None,
                 blur_share=args.blur_share, low_t_share=args.low_t_share,
                 loss_curve_every50=curve)
    (args.out / "training.json").write_text(json.dumps(stats, indent=1) + "\n")


def write_card(out: Path) -> None:
    """Sample grids, loss curve and model card (README.md) of a saved model."""
    from diffusers import UNet2DModel

    stats = json.loads((out / "training.json").read_text())
    unet = UNet2DModel.from_pretrained(out / "unet").eval()
    eps_fn = lambda x, t: unet(x, torch.full((x.shape[0],), t)).sample  # noqa: E731
    z = torch.randn(32, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1234))
    ab = linear_alphas_cumprod()
    with torch.inference_mode():
        samples = ddim.denoise(eps_fn, z, ab, t_end=999, steps=100, eta=1.0, generator=torch.Generator().manual_seed(0), clip_x0=True)
    save_grid(samples, out / "samples.png")
    crops, faces = training_pool(stats["seed"])
    save_grid(torch.cat([crops[:28], faces[:4]]).float() / 127.5 - 1, out / "training_data.png")
    _loss_plot(stats["loss_curve_every50"], out / "training_curve.png")
    size_mb = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size / 1e6
    card = f"""# {out.parent.name if out.name == "model" else out.name}: a base model trained by oodgen

A small unconditional DDPM (diffusers `UNet2DModel`, {stats["parameters"] / 1e6:.2f}M parameters, {size_mb:.1f} MB,
64x64 RGB) trained by `scripts/train_photos_model.py` so that oodgen works offline at the native
resolution of its bundled galaxy and dust sets. Its domain is natural photographs (people, animals,
objects, scenery, textures, faces); galaxies and dust maps are out of its domain, as the paper requires.

- **Data**: multi-scale random crops (side log-uniform from 48 px to the whole photo, resized to 64x64)
  of the photographs shipped by scikit-image (astronaut, coffee, chelsea, rocket, immunohistochemistry,
  the two motorcycle stereo views, camera, coins, gravel, brick, grass, clock) and scikit-learn (china,
  flower), 90% of each batch, and the 88 training faces of `lfw_subset` upscaled to 64x64, 10%;
  horizontal flips. Left out on purpose: the Hubble Deep Field (source of the galaxy set), the moon,
  the retina images. Crops are seeded (seed {stats["seed"]}).
- **Objective**: epsilon prediction, linear betas 1e-4 to 0.02 over 1000 steps (`scheduler/`, `clip_sample: false`).
- **Training**: {stats["steps"]} AdamW steps, batch {stats["batch_size"]}, lr {stats["lr"]} (200 warm-up steps,
  cosine to 5%), gradient clipping 1.0, EMA {stats["ema"]} (saved weights are the EMA), bf16 autocast:
  {stats["bf16_autocast"]}; {stats["minutes"]} minutes on {stats["threads"]} CPU threads (torch {stats["torch"]}),
  sharing the 2-core machine with other work.
- **Final loss** (mean of the last 200 steps): {stats["final_loss_avg200"]:.4f}.

![training curve](training_curve.png)

## Its own unconditional samples
From N(0, I) at t = 999, 100 steps, eta = 1 with x0 clipped to [-1, 1] at each step, noise seed 1234
(`samples.png`):

![samples](samples.png)

Training images for comparison (`training_data.png`):

![training data](training_data.png)

Reproduce: `python scripts/train_photos_model.py --steps {stats["steps"]}` (seeded; equal up to the
floating-point non-determinism of multi-threaded CPU kernels); `--card-only` redraws this card.
{_replanned_note(stats)}
The previous default, `oodgen-faces-32`, stays available by name.
"""
    (out / "README.md").write_text(card)
    log.info("card written to %s", out)


def _replanned_note(stats: dict) -> str:
    """One honest sentence when the run's planned length changed while it trained (resume with a new --steps)."""
    r = stats.get("replanned_at_step_from_to") or []
    if not r:
        return ""
    parts = "; ".join(f"at step {a} from {b} to {c} steps" for a, b, c in r)
    return (f"This run's plan was shortened while it trained ({parts}; the cosine learning-rate schedule follows "
            "the new total from that step), so `--steps` alone reproduces a similar, not the identical, schedule.")


def _loss_plot(curve: list[float], path: Path) -> None:
    """Training loss (mean of 50 steps, log scale) against step, drawn with Pillow as a small PNG."""
    from PIL import Image, ImageDraw

    w, h, m = 480, 260, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    if len(curve) >= 2:
        y = np.log10(np.asarray(curve))
        lo, hi = float(y.min()), float(y.max()) + 1e-9
        pts = [(m + (w - 2 * m) * k / (len(y) - 1), h - m - (h - 2 * m) * (v - lo) / (hi - lo)) for k, v in enumerate(y)]
        d.line(pts, fill=(31, 119, 180), width=2)
        d.text((m, 8), f"epsilon MSE (mean of 50 steps), log scale: {curve[0]:.3f} -> {curve[-1]:.4f}", fill="black")
        d.text((m, h - m + 8), f"optimizer step 0 .. {len(curve) * 50}", fill="black")
    d.rectangle([m, m, w - m, h - m], outline="black")
    img.save(path)


if __name__ == "__main__":
    main()
