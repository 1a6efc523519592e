"""The peers oodgen's inversion is measured against: the DDIM inversion a diffusers user writes without oodgen.

    python benchmarks/peer_invert.py --model assets/models/oodgen-photos-64-smooth --input assets/samples/galaxy --steps 50 --batch 16
    python benchmarks/peer_invert.py ... --batch 1           # the plain per-image loop

Deliberately self-contained (torch, diffusers, numpy and Pillow only; no oodgen import), so that it is
the loop a competent user writes in twenty lines: load the UNet in float32, read the images, and run the
deterministic DDIM update x_{t'} = sqrt(a') x0_hat + sqrt(1 - a') eps(x_t, t) over the grid
round(linspace(0, t_end, steps + 1)) in batches of --batch under ``torch.inference_mode``. ``--batch 1`` is
the per-image loop. ``peer_invert`` is what ``bench_inversion.py`` times in-process; the command line is
what it times as a whole process beside ``python -m oodgen invert``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch


def peer_invert(unet: torch.nn.Module, x: torch.Tensor, alphas_cumprod, t_end: int, steps: int, batch: int = 16) -> torch.Tensor:
    """DDIM-invert images x [N, C, H, W] in [-1, 1] to x_{t_end} [N, C, H, W], ``batch`` images per UNet call."""
    grid = np.round(np.linspace(0, t_end, steps + 1)).astype(int).tolist()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xt = x[i : i + batch]
            for t, t_next in zip(grid[:-1], grid[1:]):
                eps = unet(xt, torch.full((len(xt),), t, device=xt.device)).sample
                a, a_next = float(alphas_cumprod[t]), float(alphas_cumprod[t_next])
                x0 = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
                xt = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
            out.append(xt)
    return torch.cat(out)


def linear_alphas_cumprod(cfg: dict) -> np.ndarray:
    """alpha_bar_t of the DDPM linear beta schedule in the scheduler config."""
    betas = np.linspace(cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02), cfg.get("num_train_timesteps", 1000), dtype=np.float64)
    return np.cumprod(1.0 - betas)


def load_images(folder: Path, res: int) -> torch.Tensor:
    """The PNG/JPEG files of ``folder``, centre-cropped, resized to res x res, as [N, 3, res, res] in [-1, 1]."""
    from PIL import Image

    imgs = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg") or p.name.startswith("preview"):
            continue
        im = Image.open(p).convert("RGB")
        s = min(im.size)
        im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2)).resize((res, res), Image.BICUBIC)
        imgs.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(imgs)


def main(argv=None) -> int:
    from diffusers import UNet2DModel

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a diffusers folder (unet/ and scheduler/)")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--t-end", type=int, default=300)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="save the latents here (torch.save)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    unet = UNet2DModel.from_pretrained(a.model / "unet").eval()
    cfg = json.loads((a.model / "scheduler" / "scheduler_config.json").read_text())
    x = load_images(a.input, unet.config.sample_size)
    z = peer_invert(unet, x, linear_alphas_cumprod(cfg), a.t_end, a.steps, a.batch)
    if a.out:
        torch.save(z, a.out)
    print(f"inverted {len(x)} images x {a.steps} steps, batch {a.batch}, in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
