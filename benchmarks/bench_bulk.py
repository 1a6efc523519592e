"""Large data sets: `python -m oodgen invert` (chunked, read ahead) against loading everything first.

    python benchmarks/bench_bulk.py [--files 3000] [--side 256] [--steps 4] [--chunk-size 256] [--device cpu]

Writes ``--files`` PNG galaxies of ``--side`` pixels (the bundled galaxies, resized and jittered)
to a temporary folder, then runs, each in a fresh process:

- **all in memory**: what the command did before and what a script would do: ``load_paths`` (every
  file decoded and kept), ``to_model_input``, ``engine.invert``, ``save_latents``;
- **oodgen invert**: the chunked pipeline that the command runs (:mod:`oodgen.pipeline`), chunks of
  ``--chunk-size`` files read ahead in threads while the previous chunk inverts, checkpointed to disk.

Prints wall time, image-steps per second and peak resident memory of each, the ratios, how much of
the reading the read-ahead hid behind compute, and checks that the two latent files are equal.
Few steps by default, so that reading weighs as it does in a long GPU run, where the model is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
mode, src, out, steps, chunk, device = sys.argv[1:7]
import torch, diffusers  # imports are not part of the measurement
from oodgen import bulk, engine, models
t0 = time.perf_counter()
if mode == "memory":
    from oodgen import engine
    from oodgen.config import DDIMSettings
    from oodgen.data import load_paths, to_model_input
    from oodgen.latents import save_latents
    from oodgen.models import load_model
    model = load_model(device=device)
    t1 = time.perf_counter()
    samples = load_paths(src, max_files=None).samples
    x, _ = to_model_input(samples, model.resolution, model.channels)
    t_read = time.perf_counter() - t1
    z = engine.invert(model, x, DDIMSettings(steps=int(steps)))
    save_latents(out, z, {{}})
    n, waited = len(samples), t_read
else:
    from oodgen import pipeline
    from oodgen.config import DDIMSettings
    timings = {{}}
    model, settings = models.load_model(device=device), DDIMSettings(steps=int(steps))
    inputs = pipeline.inversion_inputs([src])
    plan = pipeline.inversion_plan(inputs, model, settings, int(chunk))
    store = bulk.ChunkStore(bulk.parts_dir(out))
    inv = pipeline.invert_chunked(inputs, plan, store, lambda x, cb: engine.invert(model, x, settings, progress=cb), model.name, None,
                                  settings, readers=bulk.cpu_readers(), timings=timings)
    pipeline.write_latents(out, inv)
    store.remove()
    t_read, waited = timings["read"], timings["waited"]
    n = len(inv.meta["sources"])
wall = time.perf_counter() - t0
print(json.dumps({{"wall": wall, "read": t_read, "waited": waited, "n": n, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_files(folder: Path, n: int, side: int) -> None:
    import numpy as np
    from PIL import Image

    from oodgen.bundled import SAMPLE_SETS

    srcs = sorted(p for p in SAMPLE_SETS["galaxy"].path.iterdir() if p.suffix == ".png")
    rng = np.random.default_rng(0)
    base = [np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.int16) for p in srcs]
    for k in range(n):
        im = base[k % len(base)] + rng.integers(-6, 7, (side, side, 3), dtype=np.int16)
        Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(folder / f"g{k:06d}.png", compress_level=1)


def run(mode: str, src: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, str(src), str(out), str(args.steps),
                           str(args.chunk_size), args.device], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--side", type=int, default=256, help="side of the PNG files in pixels (the model input is resized)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from oodgen.latents import load_latents

    with tempfile.TemporaryDirectory(prefix="oodgen-bulk-") as tmp:
        src = Path(tmp) / "galaxies"
        src.mkdir()
        t0 = time.perf_counter()
        make_files(src, args.files, args.side)
        size_mb = sum(f.stat().st_size for f in src.iterdir()) / 2**20
        decoded_mb = args.files * args.side * args.side * 3 * 4 / 2**20
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}")
        print(f"data: {args.files} PNG files of {args.side}x{args.side} ({size_mb:.0f} MB on disk, {decoded_mb:.0f} MB decoded as float32), "
              f"written in {time.perf_counter() - t0:.1f} s; {args.steps} DDIM steps, bundled model")
        mem = run("memory", src, Path(tmp) / "memory.safetensors", args)
        blk = run("bulk", src, Path(tmp) / "bulk.safetensors", args)
        same = torch.equal(load_latents(Path(tmp) / "memory.safetensors")[0], load_latents(Path(tmp) / "bulk.safetensors")[0])

    work = args.files * args.steps
    rows = [("all in memory (load_paths + engine.invert)", mem), (f"oodgen invert (chunks of {args.chunk_size}, read ahead)", blk)]
    print(f"\n| run | wall s | image-steps/s | reading s (waited) | peak RSS MB |\n|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['wall']:.1f} | {work / r['wall']:.1f} | {r['read']:.1f} ({r['waited']:.1f}) | {r['maxrss_mb']:.0f} |")
    hidden = 1 - blk["waited"] / blk["read"] if blk["read"] > 0 else 0.0
    print(f"\nspeed: oodgen invert {mem['wall'] / blk['wall']:.2f}x the all-in-memory run; "
          f"peak memory {mem['maxrss_mb'] / blk['maxrss_mb']:.2f}x lower ({blk['maxrss_mb']:.0f} vs {mem['maxrss_mb']:.0f} MB)")
    print(f"read-ahead hid {100 * hidden:.0f}% of the {blk['read']:.1f} s of reading behind compute (waited {blk['waited']:.1f} s); "
          f"on {os.cpu_count()} CPU cores reading and a CPU model compete for the same cores, on a GPU they do not")
    print(f"latents equal: {same} ({mem['n']} and {blk['n']} images)")


if __name__ == "__main__":
    main()
