"""One run, one table: inversion throughput (per-image loop, oodgen, oodgen --compile), the latent
diagnostics at the paper's scale, and reduced precision against float32 on the bundled sets, as Markdown
with the device named.

    python benchmarks/report.py                                   # CPU defaults: about 3-5 minutes on 2 cores
    python benchmarks/report.py --device cuda --arch church256 --n 64 --dtype bfloat16 --json out/bench.json

The inversion part is :func:`bench_inversion.run` (same options; it also names the batch size
:func:`oodgen.engine.auto_batch_size` picks for that model), the diagnostics part is
:func:`bench_diagnostics.run` (n ID + n OOD latents of dimension d; the paper: 1,000 each at d = 196,608),
the precision part is :func:`bench_precision.run` (reconstruction MAE of the bundled galaxy and radiation sets
with the bundled model per UNet dtype, within 0.005 of float32; whole sets at 50 steps on a GPU, a subsample
at 20 steps on CPU, about 20 s; --no-precision skips it).
The diagnostics run first, so their peak memory (process-wide ru_maxrss) is not inflated by the
compiler. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_diagnostics  # noqa: E402
import bench_inversion  # noqa: E402
import bench_precision  # noqa: E402


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _range(times: list[float], work: int) -> str:
    return f" ({work / max(times):.1f}-{work / min(times):.1f})" if len(times) > 1 else ""


def markdown(inv: dict, diag: dict, prec: dict | None = None) -> str:
    """The combined table."""
    n, steps = inv["n"], inv["steps"]
    p, b, f, c = inv["plain"], inv["batched"], inv["oodgen"], inv.get("compiled")
    rows = [
        ("inversion", "plain per-image float32 loop", f"{p['rate']:.1f} image-steps/s{_range(p['times'], p['n'] * steps)}", "1.00x"),
        ("inversion", f"batched float32 loop (batch {inv['peer_batch']}, inference_mode)",
         f"{b['rate']:.1f} image-steps/s{_range(b['times'], n * steps)}", f"{b['rate'] / p['rate']:.2f}x plain"),
        ("inversion", f"oodgen ({inv['dtype']}, batch {inv['batch_size']})",
         f"{f['rate']:.1f} image-steps/s{_range(f['times'], n * steps)}",
         f"{f['rate'] / p['rate']:.2f}x plain (target >= 3.5x), {f['rate'] / b['rate']:.2f}x batched (target >= 1.5x)"),
    ]
    if c:
        mode = f"{c['backend']}, {c['mode'] or 'default'} mode" + ("" if c["active"] else ", UNAVAILABLE: plain forward")
        be = c["break_even_image_steps"]
        rows += [
            ("inversion", f"oodgen --compile ({mode})", f"{c['rate']:.1f} image-steps/s{_range(c['times'], n * steps)}",
             f"{c['rate'] / f['rate']:.2f}x oodgen, {c['rate'] / p['rate']:.2f}x plain"),
            ("inversion", f"compile time ({'cold' if c['cold_cache'] else 'warm'} cache, once per batch shape)", f"{c['compile_s']:.1f} s",
             f"pays off after {be:,.0f} image-steps" if be is not None else "not faster here"),
        ]
    diffs = f"oodgen {f['diff_vs_plain']:.1e}" + (f", compiled {c['diff_vs_plain']:.1e}" if c else "")
    rows.append(("inversion", "max abs latent difference vs plain loop", diffs, "float32 tolerance 1e-4" if inv["dtype"] == "float32" else "reduced precision"))
    rows.append(("inversion", "1,000 images x 80 steps (projected from the best rate)",
                 *bench_inversion.target_projection(max(f["rate"], c["rate"] if c else 0.0))))
    rf = inv["roofline"]
    for k, v in rf["variants"].items():
        rows.append(("roofline", f"{k}: GFLOP/s ({rf['gflop_per_image_step']:.2f} GFLOP per forward)", f"{v['gflops']:.1f}",
                     f"{v['fraction']:.0%} of the measured {v['dtype']} matrix-product peak "
                     f"({rf['peak_gflops'][v['dtype']]:,.0f} GFLOP/s = {v['limit_image_steps']:,.0f} image-steps/s; aim 80%)"))
    if "tflops" in inv:
        rows.append(("inversion", "achieved TFLOP/s", f"{inv['tflops']:.1f} ({inv['gflop_per_image_step']:.1f} GFLOP per forward)",
                     f"{inv['peak_fraction']:.1%} of dense bf16 peak (target about 40%)" if inv["peak_fraction"] else "peak unknown for this device"))
    if "auto_batch" in inv:
        rows.append(("inversion", f"auto batch size ({inv['dtype']}, engine.auto_batch_size)", bench_inversion.auto_batch_text(inv["auto_batch"]), ""))

    T, B = bench_diagnostics.TARGET_S, bench_diagnostics.TARGET_BYTES
    js = diag["report"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in diag["timings"].items())
    rows += [
        ("diagnostics", "diagnose() total", f"{diag['total_s']:.1f} s", f"{diag['total_s'] / T:.2f} of {T:.0f} s target {'PASS' if diag['total_s'] <= T else 'FAIL'}"),
        ("diagnostics", "stages (s)", stages, ""),
        ("diagnostics", "peak RSS (data included)", f"{diag['peak_bytes'] / 1e9:.2f} GB",
         f"{diag['peak_bytes'] / B:.2f} of {B / 2**30:.0f} GiB target {'PASS' if diag['peak_bytes'] < B else 'FAIL'}"),
        ("diagnostics", "HTML report (not in the target)", f"{diag['html_s']:.1f} s, {diag['html_bytes'] / 1e6:.1f} MB", ""),
        ("diagnostics", "SVM test accuracy / centre distance", f"{js['svm_test_accuracy']:.3f} / {js['center_distance']:.2f}",
         f"d^(1/4) = {js['d_quarter']:.2f}, noise floor {js['noise_floor']:.2f}"),
    ]
    if prec:
        rows += bench_precision.rows(prec)
    head = [
        f"### oodgen benchmarks ({datetime.date.today().isoformat()})",
        "",
        f"Device: **{inv['device_name']}** ({inv['device']}), torch {inv['torch']}, {inv['threads']} threads. "
        f"Inversion: {inv['arch']} model {inv['resolution']}x{inv['resolution']}, {n} images x {steps} DDIM steps to "
        f"t = {inv['t_end']} (plain loop on {p['n']}); best of {inv['repeats']} interleaved runs, range in brackets. "
        f"Diagnostics: {diag['n']:,} ID + {diag['n']:,} OOD synthetic latents, d = {diag['d']:,}."
        + (f" Precision: bundled {prec['model']} model, {bench_precision.sampling_text(prec['every'])} of each set, "
           f"{prec['steps']} DDIM steps to t = {prec['t_end']}, MAE on the [0, 1] scale." if prec else ""),
        "",
        "| part | figure | measured | ratio / target |",
        "|---|---|---|---|",
    ]
    return "\n".join(head + [f"| {a} | {b} | {v} | {r} |" for a, b, v, r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_inversion.add_args(ap)
    ap.add_argument("--diag-n", type=int, default=1000, help="latents per set for the diagnostics")
    ap.add_argument("--d", type=int, default=196_608, help="latent dimension for the diagnostics")
    ap.add_argument("--no-umap", action="store_true")
    bench_precision.add_args(ap)
    ap.add_argument("--no-precision", action="store_true", help="skip the precision check")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write every figure as JSON")
    args = ap.parse_args(argv)

    diag = bench_diagnostics.run(n=args.diag_n, d=args.d, with_umap=not args.no_umap, log=_log)
    inv = bench_inversion.run_args(args, log=_log)
    prec = None if args.no_precision else bench_precision.run_args(args, log=_log)
    print(markdown(inv, diag, prec))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"inversion": inv, "diagnostics": diag, "precision": prec}, indent=2, default=str))
        _log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
