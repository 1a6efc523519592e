"""Benchmark: `evaluate` on n generated vs n real 64x64 galaxy images (target: n = 1000 within 120 s on 2 CPU cores).

    .venv/bin/python benchmarks/bench_quality.py [--n 1000] [--kind galaxy] [--workers 2]

Data (not timed): 2n GalSim galaxies rendered by ``scripts/make_samples.py`` (the same code as the
bundled set, five classes, seeded), shown with the same Lupton colour composite; the first n play
"real", the other n "generated". Timed: ``oodgen.evaluation.evaluate_sets`` exactly as the
``evaluate`` command runs it (statistics of both halves of the real set, the generated set and the
pixel-crossfade baseline, statmorph on its default subset, bootstrap CIs, both C2STs, memorization),
then the HTML report. Prints the seconds, the share of each stage and the ratio to the target.
Runs in the environment the user has: no thread or OpenMP setting is changed here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import numpy as np  # noqa: E402

TARGET_S = 120.0


def galaxies(n: int, seed: int) -> np.ndarray:
    from make_samples import GALAXY_CLASSES as CLASSES, galaxy_rgb, item_seed, render_galaxy

    out = [galaxy_rgb(render_galaxy(CLASSES[k % len(CLASSES)], item_seed(seed, "galaxy", k))) for k in range(n)]
    return np.stack(out).astype(np.float32) / 255.0


def main() -> None:
    from oodgen import evaluation, quality

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--kind", default="galaxy", choices=("galaxy", "image"))
    p.add_argument("--workers", type=int, default=quality.QualitySettings().workers)
    a = p.parse_args()
    t0 = time.time()
    x = galaxies(2 * a.n, seed=7)
    print(f"rendered {2 * a.n} GalSim galaxies in {time.time() - t0:.1f} s (not timed)")
    mk = lambda arr, name: evaluation.ImageSet(name, arr, "image", None, None, ())  # noqa: E731
    stages: dict[str, float] = {}
    last = [time.time(), "start"]

    def progress(stage: str, frac: float) -> None:
        key = stage.split(":")[0]
        now = time.time()
        stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
        last[:] = [now, key]

    t1 = time.time()
    ev = evaluation.evaluate_sets(mk(x[a.n :], "generated"), mk(x[: a.n], "galaxy"), kind=a.kind,
                                  settings=quality.QualitySettings(workers=a.workers), progress=progress)
    t_eval = time.time() - t1
    with tempfile.TemporaryDirectory() as d:
        t2 = time.time()
        evaluation.write_quality_report(ev, Path(d) / "q.json", Path(d) / "q.html")
        t_html = time.time() - t2
    total = t_eval + t_html
    print(evaluation.summary_text(ev))
    print(f"\nevaluate {a.n} vs {a.n} ({a.kind}): {t_eval:.1f} s + report {t_html:.1f} s = {total:.1f} s; "
          f"target {TARGET_S:.0f} s: {'met' if total <= TARGET_S else 'MISSED'} ({total / TARGET_S:.2f} of the budget)")
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {k:40s} {v:6.1f} s")


if __name__ == "__main__":
    main()
