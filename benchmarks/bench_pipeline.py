"""End-to-end timing: invert N bundled galaxies and generate N new ones with the bundled model.

    python benchmarks/bench_pipeline.py [--n 64] [--steps 50] [--t-end 900] [--device auto]

Prints the wall-clock time of each stage (data loading, model loading, inversion, generation),
the throughput in image-steps per second, and the ratio to the target (invert + generate 64
galaxies at 32x32 with 50 steps in under 60 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oodgen import engine  # noqa: E402
from oodgen.bundled import SAMPLE_SETS  # noqa: E402
from oodgen.config import DDIMSettings, GenerationSettings  # noqa: E402
from oodgen.data import load_paths, to_model_input  # noqa: E402
from oodgen.models import load_model  # noqa: E402

TARGET_S = 60.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t-end", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    t0 = time.perf_counter()
    samples = load_paths([SAMPLES_PATH := SAMPLE_SETS["galaxy"].path]).samples[: args.n]
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_model(device=args.device)
    t_model = time.perf_counter() - t0
    x, _ = to_model_input(samples, model.resolution, model.channels)
    settings = DDIMSettings(t_end=args.t_end, steps=args.steps, batch_size=args.batch_size)

    t0 = time.perf_counter()
    z = engine.invert(model, x, settings)
    t_inv = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = engine.generate(model, z, args.n, settings, GenerationSettings(seed=0))
    t_gen = time.perf_counter() - t0
    assert gen.images.shape[0] == args.n

    total = t_inv + t_gen
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {model.device}")
    print(f"data: {len(samples)} galaxies from {SAMPLES_PATH} loaded in {t_data:.2f} s; model loaded in {t_model:.2f} s")
    print(f"invert   {args.n} x {args.steps} steps: {t_inv:6.2f} s  ({args.n * args.steps / t_inv:7.1f} image-steps/s)")
    print(f"generate {args.n} x {args.steps} steps: {t_gen:6.2f} s  ({args.n * args.steps / t_gen:7.1f} image-steps/s)")
    print(f"invert + generate: {total:.2f} s; target < {TARGET_S:.0f} s: ratio {total / TARGET_S:.2f} ({'PASS' if total < TARGET_S else 'FAIL'})")


if __name__ == "__main__":
    main()
