"""UNet forward throughput per batch size and precision: decides oodgen's CPU batch size and reduced precision.

    python benchmarks/bench_batch.py [--model oodgen-photos-64-smooth] [--batches 4 8 16 32 64] [--repeats 3]

For each batch size, three variants of one eps forward of the same weights, interleaved so that a
disturbance hits all of them alike (best of --repeats, after one warm-up each):
    float32     the UNet in float32 (oodgen --dtype float32)
    bfloat16    the UNet's weights and activations in bfloat16 (oodgen --dtype bfloat16, and auto on a CPU
                with native bf16), inputs and outputs float32 as FrozenDDPM.eps runs them
    autocast    float32 weights under torch.autocast(bfloat16) (what the notes measured; not an oodgen path)
Prints images per second (one image-step = one forward of one image), the ratio to float32 at the same
batch, and the max abs eps difference against float32. Runs in the environment the user has: no thread
or OpenMP setting is changed here; the CPU's native bf16 support is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oodgen.models import load_model, native_bf16  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="oodgen-photos-64-smooth")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["float32", "bfloat16", "autocast"], choices=["float32", "bfloat16", "autocast"])
    a = p.parse_args(argv)
    f32 = load_model(a.model, device="cpu", dtype="float32")
    bf16 = load_model(a.model, device="cpu", dtype="bfloat16")
    print(f"{a.model}: {f32.resolution}x{f32.resolution}, {f32.num_parameters / 1e6:.1f}M parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {native_bf16()}")

    def fwd(variant: str, x: torch.Tensor) -> torch.Tensor:
        if variant == "float32":
            return f32.eps(x, 500)
        if variant == "bfloat16":
            return bf16.eps(x, 500)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return f32.eps(x, 500)

    g = torch.Generator().manual_seed(0)
    print(f"{'batch':>5} " + " ".join(f"{v + ' img/s':>16}" for v in a.variants) + "   ratios to float32, max |d eps|")
    for b in a.batches:
        x = torch.randn(b, f32.channels, f32.resolution, f32.resolution, generator=g)
        ref = fwd("float32", x)
        diff = {v: float((fwd(v, x) - ref).abs().max()) for v in a.variants}  # also the warm-up
        best = {v: float("inf") for v in a.variants}
        for _ in range(a.repeats):
            for v in a.variants:
                t = time.perf_counter()
                fwd(v, x)
                best[v] = min(best[v], time.perf_counter() - t)
        rate = {v: b / best[v] for v in a.variants}
        ratios = ", ".join(f"{v} {rate[v] / rate['float32']:.2f}x ({diff[v]:.1e})" for v in a.variants
                           if v != "float32" and "float32" in rate)
        print(f"{b:>5} " + " ".join(f"{rate[v]:>16.1f}" for v in a.variants) + f"   {ratios}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
