"""Benchmark: full latent diagnostics for n ID + n OOD latents of dimension d.

    .venv/bin/python benchmarks/bench_diagnostics.py [--n 1000] [--d 196608] [--seed 0] [--no-umap] [--html PATH]

Synthetic data, generated in float32 with torch.randn (not timed): ID ~ N(0, I) (the prior), OOD ~
N(mu, 1.05^2 I) with |mu| = 2 d^(1/4) along a random direction (--shift, --ood-scale). Times every stage of
oodgen.diagnostics.diagnose (Gram, all-pairs geometry, SVM with 5-fold CV, Gaussianity, UMAP),
then the HTML report separately, and reports peak resident memory (ru_maxrss, which includes the
data itself: 2 n d x 4 bytes). Targets: diagnostics <= 60 s on 2 CPU cores, peak memory < 8 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oodgen import diagnostics as D  # noqa: E402

TARGET_S = 60.0
TARGET_BYTES = 8 * 1024**3


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run(
    n: int = 1000,
    d: int = 196_608,
    seed: int = 0,
    shift: float = 2.0,
    ood_scale: float = 1.05,
    with_umap: bool = True,
    html: Optional[str] = None,
    log=print,
) -> dict:
    """Generate the data, time oodgen.diagnostics.diagnose and the HTML report; returns the figures.

    ``peak_bytes`` is the process's peak resident memory so far (ru_maxrss), data included.
    """
    log(f"oodgen diagnostics benchmark: n_id = n_ood = {n}, d = {d:,}, seed {seed}, "
        f"OOD shift {shift} d^(1/4), OOD scale {ood_scale}, "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    t = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    x_id = torch.randn(n, d, generator=g, dtype=torch.float32)
    x_ood = torch.randn(n, d, generator=g, dtype=torch.float32)
    u = torch.randn(d, generator=g, dtype=torch.float32)
    x_ood.mul_(ood_scale).add_(u * (shift * d**0.25 / u.norm()))
    data_s = time.perf_counter() - t
    log(f"data generation (not timed): {data_s:.1f} s, {2 * n * d * 4 / 1e9:.2f} GB float32, "
        f"peak RSS so far {peak_rss_bytes() / 1e9:.2f} GB")

    last = {"stage": None}

    def progress(stage: str, frac: float) -> None:
        if stage != last["stage"]:
            last["stage"] = stage
            log(f"  [{frac * 100:5.1f} %] {stage}")

    t = time.perf_counter()
    rep = D.diagnose(x_ood, x_id, "prior N(0, I)", seed=seed, with_umap=with_umap, progress=progress)
    total = time.perf_counter() - t
    t = time.perf_counter()
    path = Path(html) if html else Path(tempfile.mkdtemp(prefix="oodgen-bench-")) / "report.html"
    D.write_html_report(rep, path)
    html_s = time.perf_counter() - t
    return {"n": n, "d": d, "seed": seed, "data_s": data_s, "data_bytes": 2 * n * d * 4, "total_s": total,
            "timings": {k: v for k, v in rep.timings.items() if k != "total"}, "html_s": html_s, "html": str(path),
            "html_bytes": path.stat().st_size, "peak_bytes": peak_rss_bytes(), "report": rep.to_json()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="latents per set (ID and OOD)")
    ap.add_argument("--d", type=int, default=196_608, help="latent dimension (3 x 256 x 256 = 196,608)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift", type=float, default=2.0, help="OOD centre offset in units of d^(1/4) (0: same centre)")
    ap.add_argument("--ood-scale", type=float, default=1.05, help="OOD standard deviation")
    ap.add_argument("--no-umap", action="store_true")
    ap.add_argument("--html", type=str, default=None, help="where to write the HTML report (default: a temp file)")
    args = ap.parse_args(argv)
    r = run(args.n, args.d, args.seed, args.shift, args.ood_scale, not args.no_umap, args.html)
    total, peak, html = r["total_s"], r["peak_bytes"], Path(r["html"])

    print("\nstage times (s):")
    for k, v in r["timings"].items():
        print(f"  {k:<12} {v:7.2f}")
    print(f"  {'total':<12} {total:7.2f}   (diagnose)")
    print(f"  {'html':<12} {r['html_s']:7.2f}   ({html}, {r['html_bytes'] / 1e6:.1f} MB; not in the target)")

    js = r["report"]
    print("\nresults (OOD vs ID):")
    print(f"  pair angle   {js['pair_angle_deg']['mean']:.3f} ± {js['pair_angle_deg']['std']:.3f} deg "
          f"(ID {js['id']['pair_angle_deg']['mean']:.3f} ± {js['id']['pair_angle_deg']['std']:.3f}; "
          f"ref 60 ± {js['pair_angle_deg']['reference_std']:.3f})")
    print(f"  origin angle {js['origin_angle_deg']['mean']:.3f} ± {js['origin_angle_deg']['std']:.3f} deg "
          f"(ID {js['id']['origin_angle_deg']['mean']:.3f})")
    print(f"  pair dist    {js['pair_distance']['mean']:.2f} (ref s·√(2d) {js['pair_distance']['reference']:.2f}; "
          f"ID {js['id']['pair_distance']['mean']:.2f}, √(2d) {js['pair_distance']['unit_reference']:.2f})")
    print(f"  centre dist  {js['center_distance']:.2f} vs d^¼ {js['d_quarter']:.2f}, noise floor {js['noise_floor']:.2f} "
          f"-> separable {js['separable_by_criterion']}, debiased {js['center_distance_debiased']:.2f}")
    print(f"  SVM test acc {js['svm_test_accuracy']:.3f}, CV {js['svm_cv']['mean']:.3f} ± {js['svm_cv']['std']:.3f}")
    print(f"  radii gaussian-like: ID {js['radius_test']['id']['gaussian_like']}, "
          f"OOD {js['radius_test']['ood']['gaussian_like']}; coord normality passing: "
          f"ID {js['coordinate_normality']['id']['fraction_passing']:.3f}, "
          f"OOD {js['coordinate_normality']['ood']['fraction_passing']:.3f}")

    ok_t, ok_m = total <= TARGET_S, peak < TARGET_BYTES
    print("\ntargets:")
    print(f"  time   {total:7.2f} s  / {TARGET_S:.0f} s   = {total / TARGET_S:.2f}  {'PASS' if ok_t else 'FAIL'}")
    print(f"  memory {peak / 1e9:7.2f} GB / {TARGET_BYTES / 1e9:.2f} GB = {peak / TARGET_BYTES:.2f}  "
          f"{'PASS' if ok_m else 'FAIL'}  (peak RSS, includes the {r['data_bytes'] / 1e9:.2f} GB of data)")
    return 0 if (ok_t and ok_m) else 1


if __name__ == "__main__":
    raise SystemExit(main())
