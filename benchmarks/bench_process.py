"""Whole-process inversion timings: ``python -m oodgen invert`` against the peers' command line, as a user runs them.

    python benchmarks/bench_process.py [--n 48] [--steps 50] [--t-end 300] [--repeats 2]

Copies the first --n bundled galaxies (PNG) to a temporary folder, then runs each command as a fresh process
at --steps and at 2 steps, in interleaved rounds (--repeats), in the environment the user has (no thread or
OpenMP variable is set here; each child inherits this shell's environment as it is):

    oodgen invert              python -m oodgen invert (its defaults: --dtype auto, --batch-size auto)
    oodgen invert float32      the same with --dtype float32
    batched peer (16)          python benchmarks/peer_invert.py --batch 16 (float32, inference_mode)
    per-image peer             python benchmarks/peer_invert.py --batch 1

Start-up, imports, model loading and reading the files cost the same at 2 and at --steps steps, so the
step loop's time is the difference of the two (best of the rounds each); the figure compared is image-steps
per second of that loop, n x (steps - 2) / (T_steps - T_2). Before timing, one untimed ``oodgen invert`` run
fills oodgen's per-machine batch-size cache (the first run on a machine measures it: a few seconds, once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "assets" / "models" / "oodgen-photos-64-smooth"
GALAXIES = REPO / "assets" / "samples" / "galaxy"


def commands(src: Path, out: Path, steps: int, t_end: int) -> dict[str, list[str]]:
    py = sys.executable
    oodgen = [py, "-m", "oodgen", "-q", "invert", "--input", str(src), "--out", str(out / "z.safetensors"),
              "--t-end", str(t_end), "--steps", str(steps)]
    peer = [py, str(REPO / "benchmarks" / "peer_invert.py"), "--model", str(MODEL), "--input", str(src),
            "--t-end", str(t_end), "--steps", str(steps)]
    return {
        "oodgen invert": oodgen,
        "oodgen invert float32": [*oodgen, "--dtype", "float32"],
        "batched peer (16)": [*peer, "--batch", "16"],
        "per-image peer": [*peer, "--batch", "1"],
    }


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t-end", type=int, default=300)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="run only these variants (names as printed)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "galaxies", Path(d) / "out"
        src.mkdir()
        out.mkdir()
        for f in sorted(GALAXIES.glob("*.png"))[: a.n]:
            shutil.copy(f, src / f.name)
        n = len(list(src.glob("*.png")))
        print(f"whole processes: {n} galaxies (64x64 PNG), t_end {a.t_end}, {a.steps} vs 2 steps, best of {a.repeats} "
              f"interleaved rounds; environment as inherited (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), {os.cpu_count()} CPUs", flush=True)
        timed(commands(src, out, 2, a.t_end)["oodgen invert"])  # untimed: fills the batch-size cache, warms the disk cache
        long, short = commands(src, out, a.steps, a.t_end), commands(src, out, 2, a.t_end)
        names = [k for k in long if a.only is None or k in a.only]
        best: dict[tuple[str, int], float] = {}
        for r in range(a.repeats):
            for k in names:
                for steps, cmds in ((a.steps, long), (2, short)):
                    t = timed(cmds[k])
                    best[k, steps] = min(best.get((k, steps), float("inf")), t)
                    print(f"  round {r + 1}: {k:24s} {steps:3d} steps {t:7.1f} s", flush=True)
        rates = {k: n * (a.steps - 2) / max(1e-9, best[k, a.steps] - best[k, 2]) for k in names}
        print(f"\n{'variant':24s} {'T(' + str(a.steps) + ')':>8s} {'T(2)':>7s} {'loop s':>7s} {'image-steps/s':>14s}")
        for k in names:
            print(f"{k:24s} {best[k, a.steps]:8.1f} {best[k, 2]:7.1f} {best[k, a.steps] - best[k, 2]:7.1f} {rates[k]:14.1f}")
        ref = "oodgen invert"
        if ref in rates:
            for k in names:
                if k != ref:
                    target = {"batched peer (16)": " (target >= 1.5x)", "per-image peer": " (target >= 3.5x)"}.get(k, "")
                    print(f"oodgen invert / {k}: {rates[ref] / rates[k]:.2f}x{target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
