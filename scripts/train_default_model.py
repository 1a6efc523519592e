"""Train oodgen's bundled default model: a small DDPM on 32x32 face crops (offline, seeded, CPU).

    python scripts/train_default_model.py [--steps 4000] [--out assets/models/oodgen-faces-32]

Data: the 100 face crops of scikit-image's ``lfw_subset`` (grey, replicated to RGB), resized to
32x32; the last 12 are held out as the bundled in-domain samples; training uses the other 88 with
horizontal flips and +-2 px random shifts. Objective: the DDPM epsilon loss with linear betas
1e-4..0.02 over 1000 steps. The EMA weights are saved with ``DDPMPipeline.save_pretrained``,
with a model card (README.md) and a grid of the model's own unconditional DDIM samples.
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

# Sleeping (not spinning) OpenMP workers: a spinning pool slows down 3x or more whenever another
# process holds one of the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asset_sources import N_HELD_OUT, train_and_held_out_faces  # noqa: E402
from oodgen import ddim  # noqa: E402
from oodgen.schedule import linear_alphas_cumprod  # noqa: E402

log = logging.getLogger("train")

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
    attention_head_dim=32,
)


def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and +-2 px shift (reflect padding) of [B, C, 32, 32]."""
    b = batch.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    padded = F.pad(batch, (2, 2, 2, 2), mode="reflect")
    dx = torch.randint(0, 5, (b,), generator=gen)
    dy = torch.randint(0, 5, (b,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(b)])


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save [N, 3, H, W] images in [-1, 1] as one PNG grid."""
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n, h, w, c = x.shape
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + 2) + 2, nrow * (w + 2) + 2, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = x[k]
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("assets/models/oodgen-faces-32"))
    p.add_argument("--card-only", action="store_true", help="only redraw the sample grids and the model card of a trained model")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.card_only:
        train, _ = train_and_held_out_faces()
        write_card(args.out, torch.from_numpy(train)[:, None].repeat(1, 3, 1, 1) * 2 - 1)
        return

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train, _ = train_and_held_out_faces()
    data = torch.from_numpy(train)[:, None].repeat(1, 3, 1, 1) * 2 - 1  # [88, 3, 32, 32] in [-1, 1]
    ab = torch.from_numpy(linear_alphas_cumprod()).float()

    unet = UNet2DModel(**UNET_CONFIG)
    ema = UNet2DModel(**UNET_CONFIG)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    )
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet2DModel with %.2fM parameters, %d training faces", n_params / 1e6, len(data))

    losses: list[float] = []
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x0 = augment(data[idx], gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch_size,), generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log.info("step %d/%d loss(avg100) %.4f  %.1f min", step + 1, args.steps, np.mean(losses[-100:]), (time.time() - t0) / 60)
    minutes = (time.time() - t0) / 60

    args.out.mkdir(parents=True, exist_ok=True)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    ema.eval()
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(args.out, safe_serialization=True)
    stats = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema=args.ema, seed=args.seed,
                 final_loss_avg200=round(float(np.mean(losses[-200:])), 5), minutes=round(minutes, 1), parameters=n_params,
                 torch=torch.__version__, threads=torch.get_num_threads())
    (args.out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(args.out, data)


def write_card(out: Path, data: torch.Tensor) -> None:
    """Sample grids of the saved model and its model card (README.md), from ``training.json``."""
    from diffusers import UNet2DModel

    stats = json.loads((out / "training.json").read_text())
    unet = UNet2DModel.from_pretrained(out / "unet").eval()
    eps_fn = lambda x, t: unet(x, torch.full((x.shape[0],), t)).sample  # noqa: E731
    z = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    ab = linear_alphas_cumprod()
    with torch.inference_mode():
        ddpm_like = ddim.denoise(eps_fn, z, ab, t_end=999, steps=100, eta=1.0, generator=torch.Generator().manual_seed(0), clip_x0=True)
        plain = ddim.denoise(eps_fn, z, ab, t_end=999, steps=100)
    save_grid(ddpm_like, out / "samples.png")
    save_grid(plain, out / "samples_ddim_eta0.png")
    save_grid(data[:32], out / "training_data.png")
    n_params = stats["parameters"]
    card = f"""# oodgen-faces-32: oodgen's bundled default DDPM

A small unconditional DDPM (diffusers `UNet2DModel`, {n_params / 1e6:.2f}M parameters, {(out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size / 1e6:.1f} MB,
32x32 RGB) trained by `scripts/train_default_model.py` so that oodgen works offline. It is the
*in-domain* model: its domain is grey face crops. Galaxies and dust maps are out of its domain,
which is the point of the paper.

- **Data**: the 100 face crops of scikit-image's `lfw_subset` (Labeled Faces in the Wild, 25x25 grey),
  resized to 32x32 (bicubic) and replicated to 3 channels; the first {100 - N_HELD_OUT} are the training set
  (shipped as `assets/samples/faces_train/`), the last {N_HELD_OUT} are held out (`assets/samples/faces/`).
  Augmentation: horizontal flips, +-2 px shifts.
- **Objective**: epsilon prediction, linear betas 1e-4 to 0.02 over 1000 steps (`scheduler/`, `clip_sample: false`).
- **Training**: {stats["steps"]} AdamW steps, batch {stats["batch_size"]}, lr {stats["lr"]} (200 warm-up steps, cosine to 10%),
  gradient clipping 1.0, EMA {stats["ema"]} (saved weights are the EMA), seed {stats["seed"]};
  {stats["minutes"]} minutes on {stats["threads"]} CPU threads (torch {stats["torch"]}), with other jobs sharing
  the 2 cores (about 3 optimizer steps per second on an idle 2-core machine, so about 25 minutes).
- **Final loss** (mean of the last 200 steps): {stats["final_loss_avg200"]:.4f}.

## Its own unconditional samples
From N(0, I) at t = 999, 100 steps, eta = 1 with x0 clipped to [-1, 1] at each step (the usual way to
sample a DDPM's prior), noise seed 1234 (`samples.png`):

![samples](samples.png)

Training images for comparison (`training_data.png`):

![training data](training_data.png)

The same start noise decoded by deterministic DDIM (eta = 0, no clipping: the decoder oodgen uses for
inverted latents) is in `samples_ddim_eta0.png`. From pure noise at t = 999 this small model's
deterministic, unclipped samples are unstable (over-saturated colours: the factor 1/sqrt(alpha_bar_999) = 158
amplifies every error of the first noise predictions); the stochastic, clipped sampler corrects them.
Inverted latents of real images do not start from that regime, which is why reconstruction and
generation from inverted latents work well (see the main README). The slight colour casts of some
samples come from the grey training data: the model never learned to remove colour from the noise.

Reproduce: `python scripts/train_default_model.py` (seeded; results match up to floating-point
non-determinism of multi-threaded CPU kernels); `--card-only` redraws the grids and this card.
"""
    (out / "README.md").write_text(card)
    log.info("saved to %s (final loss %.4f, %s min)", out, stats["final_loss_avg200"], stats["minutes"])


if __name__ == "__main__":
    main()
