"""Benchmark: MOS rating throughput and latency with many raters on a large ratings CSV.

    .venv/bin/python benchmarks/bench_ratings.py [--rows 100000] [--raters 20] [--ratings 30] [--home DIR]

Target (issue 17): with 20 concurrent raters and 100,000 rows already in the CSV, at least 9 ratings
per second and a p95 latency under 1 s on 2 CPU cores.

Setup (not timed): a workspace with a 100-item study (the bundled galaxies as "real", the bundled
training faces as "generated", at 256 px like the app's studies) and a ratings CSV pre-filled with
``--rows`` rows spread over this and ten other studies. Timed: each of ``--raters`` threads is one
rater doing what one click in the Rate tab does: ``service.submit_rating`` for the item on screen,
then ``service.rate_view`` for the next one (the session is re-derived from the CSV every time, as in
the app), ``--ratings`` times. The first call after start reads the whole CSV once; it is timed
separately ("cold"). Prints ratings per second, p50 / p95 / max latency of one click and the ratios to
the targets (>= 1 meets a target), and checks that every rating was written once. In-process
(threads, like the app's worker threads), without the HTTP and Gradio queue overhead.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TARGET_RATE = 9.0  # ratings per second
TARGET_P95_S = 1.0  # seconds per click, 95th percentile
STUDY = "bench-mos"


def make_workspace(home: Path, rows: int) -> int:
    """The study and a pre-filled CSV; returns the study's plan length per rater."""
    from oodgen import ratings as R

    samples = REPO / "assets" / "samples"
    real = sorted((samples / "galaxy").glob("*.png"))[:50]
    gen = sorted((samples / "faces_train").glob("*.png"))[:50]
    items = [R.StudyItem(p, "real") for p in real] + [R.StudyItem(p, "generated", "slerp", "oodgen-photos-64") for p in gen]
    study = R.create_study(home, STUDY, "galaxy", items, repeat_fraction=0.1, display_size=256)
    path = R.default_ratings_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(R.CSV_COLUMNS)
        for k in range(rows):
            study_id = STUDY if k % 11 == 0 else f"old-study-{k % 11}"
            item = f"item_{1 + k % 100:04d}"
            w.writerow(["2026-01-01T00:00:00.000Z", study_id, f"past-rater-{k // 100}", "0" * 16, item, "real" if k % 2 else "generated",
                        "galaxy", "" if k % 2 else "slerp", "" if k % 2 else "m", 1 + k % 5, 0, 1500, ""])
        f.flush()
        os.fsync(f.fileno())
    return len(R.rater_plan(study, "rater-00"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows already in the ratings CSV")
    p.add_argument("--raters", type=int, default=20, help="concurrent raters (threads)")
    p.add_argument("--ratings", type=int, default=30, help="ratings per rater")
    p.add_argument("--home", type=Path, default=None, help="workspace folder (default: a new temporary one)")
    a = p.parse_args()
    home = (a.home or Path(tempfile.mkdtemp(prefix="oodgen-bench-ratings-"))).resolve()
    os.environ["OODGEN_HOME"] = str(home)
    from oodgen import ratings as R
    from oodgen import service

    t0 = time.perf_counter()
    plan_len = make_workspace(home, a.rows)
    if a.ratings > plan_len:
        sys.exit(f"--ratings {a.ratings} is more than the study's {plan_len} items per rater")
    print(f"setup: study of 100 items, {a.rows:,} rows in the CSV ({R.default_ratings_path(home).stat().st_size / 1e6:.1f} MB), "
          f"{time.perf_counter() - t0:.1f} s (not timed)")

    t0 = time.perf_counter()
    service.rate_view(STUDY, "rater-warmup")
    cold = time.perf_counter() - t0
    print(f"cold: first session after start (reads the whole CSV once): {cold:.2f} s")

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(a.raters + 1)

    def rater(k: int) -> None:
        name = f"rater-{k:02d}"
        try:
            view = service.rate_view(STUDY, name)
            start.wait()
            for n in range(a.ratings):
                t = time.perf_counter()
                service.submit_rating(STUDY, name, view.position, 1 + (k + n) % 5, "", 1000, shown_item=view.item_id)
                view = service.rate_view(STUDY, name)
                with lock:
                    latencies.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {e!r}")
            start.abort()

    threads = [threading.Thread(target=rater, args=(k,)) for k in range(a.raters)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit("errors:\n" + "\n".join(errors[:10]))

    mine = [r for r in R.read_ratings(R.default_ratings_path(home)) if r.study == STUDY and r.rater.startswith("rater-")]
    keys = {(r.rater, r.item, r.repeat) for r in mine}
    expected = a.raters * a.ratings
    lat = sorted(latencies)
    p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    rate = len(lat) / wall
    print(f"{a.raters} raters x {a.ratings} ratings on {a.rows:,} existing rows, {os.cpu_count()} CPUs: {len(lat)} ratings in {wall:.1f} s")
    print(f"  throughput {rate:.1f} ratings/s   (target >= {TARGET_RATE:g}: ratio {rate / TARGET_RATE:.2f})")
    print(f"  latency per click p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms   "
          f"(target p95 < {TARGET_P95_S:g} s: ratio {TARGET_P95_S / p95:.2f})")
    print(f"  written: {len(mine)} rows, {len(keys)} distinct (expected {expected}); "
          + ("OK" if len(mine) == len(keys) == expected else "MISMATCH"))
    if not (len(mine) == len(keys) == expected):
        sys.exit(1)


if __name__ == "__main__":
    main()
