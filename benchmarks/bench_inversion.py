"""Inversion throughput of oodgen against the plain approach a user would write, same model and inputs.

    python benchmarks/bench_inversion.py                       # bundled 32x32 model on CPU
    python benchmarks/bench_inversion.py --arch church256 --n 64 --steps 20 --device cuda --dtype bfloat16

The plain approach: a per-image, unbatched float32 loop of the same DDIM update (eps evaluated at the
lower timestep, as the paper's code does), calling the diffusers UNet once per step. Both produce
latents from the same images; the script checks they agree (max abs difference, float32 within 1e-4)
and prints image-steps per second for each and their ratio. On CUDA it also prints the achieved
TFLOP/s from the measured FLOPs of one forward pass.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oodgen import ddim, engine  # noqa: E402
from oodgen.config import DDIMSettings  # noqa: E402
from oodgen.models import FrozenDDPM, load_model, resolve_device  # noqa: E402
from oodgen.schedule import linear_alphas_cumprod  # noqa: E402

CHURCH_256 = dict(  # google/ddpm-ema-church-256's UNet2DModel config (random weights: speed only)
    sample_size=256, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def plain_inversion(unet: torch.nn.Module, x: torch.Tensor, ab, t_end: int, steps: int) -> torch.Tensor:
    """What a user would write: one image at a time, one UNet call per step, float32."""
    grid = ddim.timesteps(t_end, steps)
    out = []
    for img in x:
        xi = img[None]
        for t, t_next in zip(grid[:-1], grid[1:]):
            eps = unet(xi, torch.tensor([t], device=xi.device)).sample
            a, a_next = float(ab[t]), float(ab[t_next])
            x0 = (xi - math.sqrt(1 - a) * eps) / math.sqrt(a)
            xi = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        out.append(xi)
    return torch.cat(out)


def forward_flops(unet: torch.nn.Module, res: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, res, res, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        unet(x, torch.tensor([500], device=device))
    return float(fc.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["bundled", "church256"], default="bundled")
    p.add_argument("--n", type=int, default=32, help="images")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--t-end", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="oodgen's UNet precision")
    p.add_argument("--plain-n", type=int, default=None, help="images for the plain loop (default: all); throughput is per image-step")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)

    if args.arch == "bundled":
        model = load_model(device=str(device), dtype=args.dtype)
        plain_unet = load_model(device=str(device)).unet
    else:
        from diffusers import UNet2DModel

        plain_unet = UNet2DModel(**CHURCH_256).eval().requires_grad_(False).to(device)
        fast = UNet2DModel(**CHURCH_256).eval().requires_grad_(False)
        fast.load_state_dict(plain_unet.state_dict())
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        model = FrozenDDPM(fast.to(device, dt), linear_alphas_cumprod(), "church256-random", 256, 3, device, dt)
    res = model.resolution
    x = torch.rand(args.n, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = DDIMSettings(t_end=args.t_end, steps=args.steps, batch_size=args.batch_size)

    engine.invert(model, x[: min(2, args.n)], DDIMSettings(t_end=args.t_end, steps=2, batch_size=args.batch_size))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    z_fast = engine.invert(model, x, settings)
    sync(device)
    t_fast = time.perf_counter() - t0

    n_plain = args.plain_n or args.n
    with torch.no_grad():
        plain_inversion(plain_unet, x[:1].to(device), model.alphas_cumprod, args.t_end, 2)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        z_plain = plain_inversion(plain_unet, x[:n_plain].to(device), model.alphas_cumprod, args.t_end, args.steps).cpu()
        sync(device)
        t_plain = time.perf_counter() - t0

    fast_rate = args.n * args.steps / t_fast
    plain_rate = n_plain * args.steps / t_plain
    diff = (z_fast[:n_plain] - z_plain).abs().max().item()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"device {device}{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}")
    print(f"model: {args.arch} ({res}x{res}), {args.n} images x {args.steps} steps to t={args.t_end}")
    print(f"plain per-image float32 loop : {plain_rate:9.1f} image-steps/s  ({n_plain} images, {t_plain:.2f} s)")
    print(f"oodgen batched ({args.dtype:8s})   : {fast_rate:9.1f} image-steps/s  (batch {args.batch_size}, {t_fast:.2f} s)")
    print(f"speed-up: {fast_rate / plain_rate:.2f}x (target >= 3x on CPU); max |latent difference| = {diff:.2e} "
          f"({'within' if diff <= 1e-4 else 'OUTSIDE'} 1e-4{'' if args.dtype == 'float32' else '; reduced precision, compare reconstruction MAE instead'})")
    if device.type == "cuda":
        flops = forward_flops(plain_unet, res, device)
        tflops = flops * fast_rate / 1e12
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in DENSE_BF16_PEAK_TFLOPS.items() if k in name), None)
        print(f"forward: {flops / 1e9:.1f} GFLOP/image; achieved {tflops:.1f} TFLOP/s" + (f" = {tflops / peak:.1%} of dense bf16 peak ({peak:.0f})" if peak else ""))


if __name__ == "__main__":
    main()
