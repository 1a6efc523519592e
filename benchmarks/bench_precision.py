"""Reduced precision against float32: reconstruction MAE of the bundled out-of-domain sets per UNet dtype.

    python benchmarks/bench_precision.py                  # CPU: 1 image in 5, 20 steps, float32 + bfloat16 (about 20 s)
    python benchmarks/bench_precision.py --device cuda    # GPU: whole sets, 50 steps, float32 + bfloat16 + float16

Each bundled out-of-domain set (galaxy, radiation; :data:`oodgen.bundled.SAMPLE_SETS`) is inverted to
t_end and denoised back with the bundled model (the only one with trained weights offline), once per
UNet dtype; only the UNet runs in that dtype, the schedule math stays float64/float32. The claim checked:
the set's mean reconstruction MAE (on the [0, 1] scale) is within 0.005 of float32's. Batches are sized
by :func:`oodgen.engine.auto_batch_size`. A dtype the device cannot run is reported as such. float16 on
CPU works in torch 2.13 but through the reference convolution (about 30x float32 for the bundled model),
so it is left out on CPU unless asked for with --precision-dtypes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oodgen import engine  # noqa: E402
from oodgen.bundled import SAMPLE_SETS  # noqa: E402
from oodgen.config import DDIMSettings  # noqa: E402
from oodgen.data import load_paths, to_model_input  # noqa: E402
from oodgen.models import DEFAULT_MODEL, DTYPES, load_model, resolve_device, resolve_dtype  # noqa: E402

TOLERANCE = 0.005  # |MAE(dtype) - MAE(float32)| allowed, [0, 1] pixel scale
SETS = tuple(k for k, s in SAMPLE_SETS.items() if s.domain == "out-of-domain")  # galaxy, radiation


def default_dtypes(device: torch.device) -> tuple[str, ...]:
    """float32 and bfloat16 everywhere; float16 where it has fast kernels (not on CPU)."""
    return ("float32", "bfloat16") if device.type == "cpu" else tuple(DTYPES)


def sampling_text(every: int) -> str:
    return "all images" if every == 1 else f"1 image in {every}"


def run(
    device: str = "auto",
    sets: Sequence[str] = SETS,
    dtypes: Optional[Sequence[str]] = None,
    every: Optional[int] = None,
    steps: Optional[int] = None,
    t_end: int = DDIMSettings().t_end,
    log=print,
) -> dict:
    """MAE per set and dtype. ``every``: take every k-th image (default 5 on CPU, 1 elsewhere);
    ``steps``: DDIM steps (default 20 on CPU, 50 elsewhere). Returns the figures (times in s)."""
    dev = resolve_device(device)
    cpu = dev.type == "cpu"
    dtypes = list(dtypes or default_dtypes(dev))
    if "float32" not in dtypes:
        dtypes.insert(0, "float32")
    every = every or (5 if cpu else 1)
    steps = steps or (20 if cpu else DDIMSettings().steps)
    r: dict = {"device": str(dev), "model": DEFAULT_MODEL, "every": every, "steps": steps, "t_end": t_end,
               "tolerance": TOLERANCE, "dtypes": dtypes, "sets": {}}
    r["auto"] = resolve_dtype("auto", dev)
    log(f"precision: {', '.join(sets)} ({sampling_text(every)}), {steps} steps to t={t_end}, {', '.join(dtypes)} on {dev} "
        f"(oodgen's default --dtype auto is {r['auto']} here)")
    models = {}
    for dtype in dtypes:
        try:
            m = load_model(device=str(dev), dtype=dtype)
            m.eps(torch.zeros(1, m.channels, m.resolution, m.resolution, device=dev), 500)  # can the device run it?
            models[dtype] = m
        except Exception as e:
            models[dtype] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
            log(f"  {dtype}: unsupported on {dev} ({models[dtype]})")
    for name in sets:
        samples = load_paths([SAMPLE_SETS[name].path]).samples[::every]
        rows: dict = {}
        for dtype, m in models.items():
            if isinstance(m, str):
                rows[dtype] = {"error": m}
                continue
            x, _ = to_model_input(samples, m.resolution, m.channels)
            bs = engine.auto_batch_size(m, n=x.shape[0])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rec = engine.reconstruct(m, x, DDIMSettings(t_end=t_end, steps=steps, batch_size=bs))
            rows[dtype] = {"mae": rec.summary()["mae"], "batch_size": bs, "seconds": time.perf_counter() - t0}
        ref = rows.get("float32", {}).get("mae")
        for dtype, row in rows.items():
            if "mae" not in row:
                continue
            verdict = ""
            if ref is not None and dtype != "float32":
                row["diff"] = row["mae"] - ref
                row["pass"] = abs(row["diff"]) < TOLERANCE
                verdict = f", vs float32 {row['diff']:+.1e} ({'PASS' if row['pass'] else 'FAIL'})"
            log(f"  {name:9s} {dtype:8s}: MAE {row['mae']:.5f}{verdict}, batch {row['batch_size']}, {row['seconds']:.1f} s")
        r["sets"][name] = {"n": len(samples), "rows": rows}
    r["all_pass"] = all(row.get("pass", True) for s in r["sets"].values() for row in s["rows"].values() if "mae" in row)
    return r


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(part, figure, measured, ratio / target) rows for report.py's table."""
    out = []
    for name, s in r["sets"].items():
        for dtype, row in s["rows"].items():
            what = f"{name} ({s['n']} images) {dtype}"
            if "error" in row:
                out.append(("precision", what, "unsupported on this device", row["error"]))
            elif "diff" not in row:
                out.append(("precision", what, f"MAE {row['mae']:.5f} (batch {row['batch_size']}, {row['seconds']:.1f} s)",
                            "reference" if dtype == "float32" else "no float32 reference"))
            else:
                out.append(("precision", what, f"MAE {row['mae']:.5f} (batch {row['batch_size']}, {row['seconds']:.1f} s)",
                            f"{row['diff']:+.1e} vs float32 (target within {r['tolerance']}) {'PASS' if row['pass'] else 'FAIL'}"))
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    """The precision check's options (shared with report.py; --device is the inversion benchmark's)."""
    p.add_argument("--precision-dtypes", nargs="+", choices=list(DTYPES), default=None,
                   help="UNet dtypes to compare (default: float32 bfloat16, and float16 off CPU)")
    p.add_argument("--precision-every", type=int, default=None, help="take every k-th image of each set (default: 5 on CPU, 1 elsewhere)")
    p.add_argument("--precision-steps", type=int, default=None, help="DDIM steps (default: 20 on CPU, 50 elsewhere)")


def run_args(args: argparse.Namespace, log=None) -> dict:
    """:func:`run` with the options of :func:`add_args` (and --device, --t-end)."""
    kw = {} if log is None else {"log": log}
    return run(args.device, SETS, args.precision_dtypes, args.precision_every, args.precision_steps, args.t_end, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--t-end", type=int, default=DDIMSettings().t_end)
    add_args(p)
    r = run_args(p.parse_args(argv))
    print("\n| set | dtype | measured | vs float32 |\n|---|---|---|---|")
    for _, what, measured, target in rows(r):
        name, dtype = what.rsplit(" ", 1)
        print(f"| {name} | {dtype} | {measured} | {target} |")
    return 0 if r["all_pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
