"""Inversion throughput of oodgen (plain and torch.compile'd) against the loops a user would write, and the roofline.

    python benchmarks/bench_inversion.py                       # bundled default model on CPU, oodgen at --dtype auto
    python benchmarks/bench_inversion.py --arch church256 --n 64 --steps 20 --device cuda --dtype bfloat16
    python benchmarks/bench_inversion.py --arch church256 --n 64 --steps 20 --device cuda --compile-mode reduce-overhead

Four variants invert the same images with the same weights:
    plain loop       per image, unbatched, float32, one diffusers UNet call per step (eps at the lower
                     timestep, as the paper's code does): ``peer_invert.peer_invert(..., batch=1)``
    batched loop     the same in batches of --peer-batch (16) under torch.inference_mode: the twenty lines a
                     competent diffusers user writes (``benchmarks/peer_invert.py``), float32
    oodgen           engine.invert at oodgen's defaults: --dtype (auto: bfloat16 on a CPU with native bf16,
                     float32 elsewhere) and --batch-size (0: the engine's default)
    oodgen --compile engine.invert on the torch.compile'd UNet (--compile-backend/--compile-mode; channels_last on
                     CUDA). Its compile time (first call per batch shape, with an empty inductor cache unless
                     --warm-cache) is printed apart from its steady-state throughput, with the break-even point.
After warm-ups the variants run in --repeats interleaved rounds; each one's best (least disturbed) run is
reported, with the range. Prints image-steps per second, the ratios, and the max abs latent difference between variants
(float32: within 1e-4). Roofline: the FLOPs of one forward (torch's FlopCounterMode) times each variant's rate,
against the peak matrix-product rate measured here in float32 and bfloat16 (on CUDA, the dense bf16 peak of the
data sheet). Runs in the environment the user has: no thread or OpenMP setting is changed here. Whole-process
timings of ``python -m oodgen invert`` against the peers' command line are ``bench_process.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oodgen import ddim, engine  # noqa: E402
from oodgen.config import DDIMSettings  # noqa: E402
from oodgen.config import DTYPE_CHOICES  # noqa: E402
from oodgen.models import DTYPES, FrozenDDPM, load_model, resolve_device, resolve_dtype  # noqa: E402
from oodgen.schedule import linear_alphas_cumprod  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_invert import peer_invert  # noqa: E402

CHURCH_256 = dict(  # google/ddpm-ema-church-256's UNet2DModel config (random weights: speed only)
    sample_size=256, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
TARGET_IMAGE_STEPS, TARGET_S = 1000 * 80, 150.0  # the GPU target: 1,000 images x 80 steps at 256x256 within 150 s on one H100 / H200


def target_projection(rate: float) -> tuple[str, str]:
    """(time, against the target) of 1,000 images x 80 steps at ``rate`` image-steps/s: the GPU target's workload."""
    t = TARGET_IMAGE_STEPS / rate
    return f"{t:,.0f} s", f"{t / TARGET_S:.2f} of the {TARGET_S:.0f} s target (256x256 on one H100/H200)"


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU model from /proc/cpuinfo, with the core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def forward_flops(unet: torch.nn.Module, res: int, device: torch.device) -> float:
    """FLOPs of one forward of one image (multiply-add = 2), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, unet.config.in_channels, res, res, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        unet(x, torch.tensor([500], device=device))
    return float(fc.get_total_flops())


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> float:
    """The best GFLOP/s of square matrix products in ``dtype`` on ``device`` over ``sizes`` (the best of ``repeats``
    after a warm-up each): the roofline's compute ceiling, as the BLAS of this torch reaches it here."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def roofline(flops: float, rates: dict[str, float], dtypes: dict[str, str], device: torch.device) -> dict:
    """Per variant: achieved GFLOP/s (``flops`` per image-step x its rate) and the fraction of the measured peak
    of its own precision (float32 sgemm, bf16 gemm); on CUDA also of the data sheet's dense bf16 peak."""
    peaks = {d: matmul_peak_gflops(device, DTYPES[d]) for d in sorted(set(dtypes.values()) | {"float32"})}
    r: dict = {"gflop_per_image_step": flops / 1e9, "peak_gflops": peaks, "variants": {}}
    for k, rate in rates.items():
        g = flops * rate / 1e9
        r["variants"][k] = {"gflops": g, "dtype": dtypes[k], "fraction": g / peaks[dtypes[k]],
                            "limit_image_steps": peaks[dtypes[k]] * 1e9 / flops}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = next((v for k, v in DENSE_BF16_PEAK_TFLOPS.items() if k in name), None)
        best = max(rates.values())
        r["tflops"] = flops * best / 1e12
        r["peak_fraction"] = r["tflops"] / sheet if sheet else None
    return r


def roofline_lines(rf: dict) -> list[str]:
    """Report lines: one per variant, its GFLOP/s against its precision's measured peak."""
    pk = rf["peak_gflops"]
    lines = [f"roofline: one forward = {rf['gflop_per_image_step']:.2f} GFLOP/image-step; measured matrix-product peak "
             + ", ".join(f"{d} {g:,.0f} GFLOP/s ({g / rf['gflop_per_image_step']:,.0f} image-steps/s)" for d, g in pk.items())]
    for k, v in rf["variants"].items():
        lines.append(f"  {k:10s}: {v['gflops']:8.1f} GFLOP/s = {v['fraction']:.0%} of the {v['dtype']} peak")
    return lines


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> tuple[torch.Tensor, float]:
    """(result, wall time in s) of one run."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def _models(arch: str, device: torch.device, dtype: str) -> tuple[torch.nn.Module, FrozenDDPM, FrozenDDPM]:
    """(plain float32 UNet, oodgen model, oodgen model to compile): three copies of the same weights."""
    if arch == "bundled":
        return load_model(device=str(device), dtype="float32").unet, load_model(device=str(device), dtype=dtype), load_model(device=str(device), dtype=dtype)
    from diffusers import UNet2DModel

    plain = UNet2DModel(**CHURCH_256).eval().requires_grad_(False).to(device)
    copies = []
    for _ in range(2):
        u = UNet2DModel(**CHURCH_256).eval().requires_grad_(False)
        u.load_state_dict(plain.state_dict())
        copies.append(FrozenDDPM(u.to(device, DTYPES[dtype]), linear_alphas_cumprod(), "church256-random", 256, 3, device, DTYPES[dtype]))
    return plain, copies[0], copies[1]


def run(
    arch: str = "bundled",
    n: int = 32,
    steps: int = 20,
    t_end: int = DDIMSettings().t_end,
    batch_size: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    plain_n: Optional[int] = 8,
    repeats: int = 3,
    compile: bool = True,
    compile_backend: str = "inductor",
    compile_mode: Optional[str] = None,
    warm_cache: bool = False,
    peer_batch: int = 16,
    log=print,
) -> dict:
    """Measure the variants; returns the figures (rates in image-steps/s, times in s)."""
    dev = resolve_device(device)
    dtype = resolve_dtype(dtype, dev)
    torch.manual_seed(0)
    plain_unet, model, to_compile = _models(arch, dev, dtype)
    res = model.resolution
    batch_size = batch_size or engine.auto_batch_size(model, n=n)
    x = torch.rand(n, model.channels, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = DDIMSettings(t_end=t_end, steps=steps, batch_size=batch_size)
    one_step = DDIMSettings(t_end=t_end, steps=1, batch_size=batch_size)  # warm-up: the same batch shapes, 1 step
    r: dict = {"arch": arch, "resolution": res, "n": n, "steps": steps, "t_end": t_end, "batch_size": batch_size,
               "peer_batch": peer_batch, "dtype": dtype, "device": str(dev), "device_name": device_name(dev),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats}
    log(f"inversion benchmark: {arch} {res}x{res}, {n} images x {steps} steps to t={t_end}, oodgen batch {batch_size} "
        f"{dtype}, peers float32 (batch 1 and {peer_batch}), on {r['device_name']} ({dev}), torch {torch.__version__}, "
        f"{r['threads']} threads")

    r["auto_batch"] = auto_batch(model)

    n_plain = min(plain_n or n, n)
    ab = model.alphas_cumprod
    xd = x.to(dev)
    variants = {  # name -> run(); timed in interleaved rounds, so a burst of load from elsewhere hits all of them
        "plain": lambda: peer_invert(plain_unet, xd[:n_plain], ab, t_end, steps, batch=1).cpu(),
        "batched": lambda: peer_invert(plain_unet, xd, ab, t_end, steps, batch=peer_batch).cpu(),
        "oodgen": lambda: engine.invert(model, x, settings),
    }
    peer_invert(plain_unet, xd[:peer_batch], ab, t_end, 1, batch=peer_batch)  # warm-ups
    peer_invert(plain_unet, xd[:1], ab, t_end, 1, batch=1)
    engine.invert(model, x, one_step)
    compile_s = 0.0
    if compile:
        import torch._inductor.config as inductor_config

        cache = contextlib.nullcontext() if warm_cache else inductor_config.patch(force_disable_caches=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*force_disable_caches.*")  # "dynamo_pgo force disabled by ..."
            t0 = time.perf_counter()
            to_compile.compile(backend=compile_backend, mode=compile_mode)
            with cache:
                engine.invert(to_compile, x, one_step)  # compiles once per batch shape of the timed runs
            sync(dev)
            compile_s = time.perf_counter() - t0
        variants["compiled"] = lambda: engine.invert(to_compile, x, settings)
    times: dict[str, list[float]] = {k: [] for k in variants}
    z: dict[str, torch.Tensor] = {}
    for _ in range(max(1, repeats)):
        for k, fn in variants.items():
            with torch.no_grad():
                z[k], t = _timed(fn, dev)
            times[k].append(t)
    work = {"plain": n_plain * steps, "batched": n * steps, "oodgen": n * steps, "compiled": n * steps}
    for k in variants:
        r[k] = {"times": times[k], "rate": work[k] / min(times[k])}
        log(f"  {k:8s}: {r[k]['rate']:8.1f} image-steps/s (best of {len(times[k])})")
    r["plain"]["n"] = n_plain
    r["batched"]["diff_vs_plain"] = (z["batched"][:n_plain] - z["plain"]).abs().max().item()
    r["oodgen"]["diff_vs_plain"] = (z["oodgen"][:n_plain] - z["plain"]).abs().max().item()
    if compile:
        rate = r["compiled"]["rate"]
        compile_s = max(0.0, compile_s - n / rate)  # the warm-up's one step at steady-state speed is not compile time
        gain = 1 / r["oodgen"]["rate"] - 1 / rate  # seconds saved per image-step
        r["compiled"].update({
            "backend": compile_backend, "mode": compile_mode, "active": to_compile.is_compiled, "cold_cache": not warm_cache,
            "compile_s": compile_s, "break_even_image_steps": compile_s / gain if gain > 0 else None,
            "diff_vs_plain": (z["compiled"][:n_plain] - z["plain"]).abs().max().item(),
            "diff_vs_oodgen": (z["compiled"] - z["oodgen"]).abs().max().item(),
        })

    flops = forward_flops(plain_unet, res, dev)
    dtypes = {k: ("float32" if k in ("plain", "batched") else dtype) for k in variants}
    r["roofline"] = roofline(flops, {k: r[k]["rate"] for k in variants}, dtypes, dev)
    for k in ("gflop_per_image_step", "tflops", "peak_fraction"):
        if k in r["roofline"]:
            r[k] = r["roofline"][k]
    return r


def auto_batch(model: FrozenDDPM) -> dict:
    """What :func:`oodgen.engine.auto_batch_size` picks for ``model`` (cap 256, not clipped to --n), and on CUDA
    the probed memory it is sized from (MiB per image, fixed MiB, free GiB)."""
    r: dict = {"batch_size": engine.auto_batch_size(model), "device": model.device.type}
    if model.device.type == "cuda":
        per_image, fixed = engine.measure_batch_memory(model)
        r.update(per_image_mib=per_image / 2**20, fixed_mib=fixed / 2**20, free_gib=torch.cuda.mem_get_info(model.device)[0] / 2**30)
    return r


def auto_batch_text(a: dict) -> str:
    """One line for the reports."""
    if "per_image_mib" not in a:
        return f"{a['batch_size']} (measured once on this CPU, cached)" if a.get("device") == "cpu" else f"{a['batch_size']} (the default off CUDA)"
    return (f"{a['batch_size']} ({a['per_image_mib']:.1f} MiB per image + {a['fixed_mib']:.0f} MiB fixed, "
            f"{a['free_gib']:.1f} GiB free, cap 256)")


def _spread(times: list[float], work: int) -> str:
    return f"{work / max(times):.1f}-{work / min(times):.1f}" if len(times) > 1 else f"{work / times[0]:.1f}"


def print_report(r: dict) -> None:
    n, steps = r["n"], r["steps"]
    p, f, c = r["plain"], r["oodgen"], r.get("compiled")
    tol = "float32: within 1e-4" if r["dtype"] == "float32" else "reduced precision: compare reconstruction MAE instead"
    print(f"\nmodel {r['arch']} ({r['resolution']}x{r['resolution']}), {n} images x {steps} steps to t={r['t_end']}, "
          f"device {r['device']} = {r['device_name']}, torch {r['torch']} ({r['threads']} threads); "
          f"best of {r['repeats']} runs (range in brackets)")
    b = r["batched"]
    print(f"plain per-image float32 loop : {p['rate']:9.1f} image-steps/s  [{_spread(p['times'], p['n'] * steps)}] ({p['n']} images)")
    print(f"batched float32 loop         : {b['rate']:9.1f} image-steps/s  [{_spread(b['times'], n * steps)}] "
          f"(batch {r['peer_batch']}, inference_mode)")
    print(f"{'oodgen batched (' + r['dtype'] + ')':29s}: {f['rate']:9.1f} image-steps/s  [{_spread(f['times'], n * steps)}] (batch {r['batch_size']})")
    if c:
        state = "" if c["active"] else "  (compile unavailable here: this is the plain forward)"
        print(f"oodgen --compile             : {c['rate']:9.1f} image-steps/s  [{_spread(c['times'], n * steps)}] "
              f"(backend {c['backend']}, mode {c['mode'] or 'default'}){state}")
        be = c["break_even_image_steps"]
        print(f"compile time                 : {c['compile_s']:9.1f} s (first call per batch shape, "
              f"{'cold' if c['cold_cache'] else 'warm'} inductor cache); pays off after "
              + (f"{be:,.0f} image-steps" if be is not None else "never (not faster here)"))
    print(f"speed-up oodgen / plain loop : {f['rate'] / p['rate']:.2f}x (target >= 3.5x on CPU)")
    print(f"speed-up oodgen / batched    : {f['rate'] / b['rate']:.2f}x (target >= 1.5x on CPU)")
    if c:
        print(f"speed-up compiled / oodgen   : {c['rate'] / f['rate']:.2f}x; compiled / plain loop {c['rate'] / p['rate']:.2f}x")
    print(f"max |latent difference|      : batched vs plain {b['diff_vs_plain']:.2e}, oodgen vs plain {f['diff_vs_plain']:.2e}"
          + (f", compiled vs plain {c['diff_vs_plain']:.2e}, compiled vs oodgen {c['diff_vs_oodgen']:.2e}" if c else "") + f" ({tol})")
    if "auto_batch" in r:
        print(f"{'auto batch size (' + r['dtype'] + ')':29s}: {auto_batch_text(r['auto_batch'])}")
    when, versus = target_projection(max(f["rate"], c["rate"] if c else 0.0))
    print(f"1,000 images x 80 steps      : {when} at the best steady rate = {versus}")
    for line in roofline_lines(r["roofline"]):
        print(line)
    if "tflops" in r:
        print(f"forward: {r['gflop_per_image_step']:.1f} GFLOP/image; achieved {r['tflops']:.1f} TFLOP/s"
              + (f" = {r['peak_fraction']:.1%} of dense bf16 peak" if r["peak_fraction"] else ""))


def add_args(p: argparse.ArgumentParser) -> None:
    """The inversion benchmark's options (shared with report.py)."""
    p.add_argument("--arch", choices=["bundled", "church256"], default="bundled")
    p.add_argument("--n", type=int, default=32, help="images")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--t-end", type=int, default=DDIMSettings().t_end)
    p.add_argument("--batch-size", type=int, default=0, help="oodgen's batch (default 0: the engine's default)")
    p.add_argument("--peer-batch", type=int, default=16, help="the batched peer loop's batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="oodgen's UNet precision (default: auto, as oodgen)")
    p.add_argument("--plain-n", type=int, default=8, help="images for the plain loop (throughput is per image-step; 0: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the best is reported")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) or max-autotune")
    p.add_argument("--warm-cache", action="store_true", help="let inductor reuse its on-disk cache (compile time of a second run)")


def run_args(args: argparse.Namespace, log=None) -> dict:
    """:func:`run` with the options of :func:`add_args`."""
    kw = {} if log is None else {"log": log}
    return run(args.arch, args.n, args.steps, args.t_end, args.batch_size, args.device, args.dtype, args.plain_n or None,
               args.repeats, not args.no_compile, args.compile_backend, args.compile_mode, args.warm_cache, args.peer_batch, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    print_report(run_args(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
