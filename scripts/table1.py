"""The paper's Table 1 analogue: oodgen's latent sampling against the baselines it is compared with, on the bundled sets.

    python scripts/table1.py [--model NAME] [--sets galaxy radiation] [--out docs/results]
    python scripts/table1.py --quick        # a few images and steps: checks that every step runs (minutes, not hours)

For each bundled set (galaxy, radiation), with the bundled default model unless ``--model``:

* **ours**: ``invert`` then ``generate`` at the defaults of ``DDIMSettings()`` / ``GenerationSettings()`` (read
  when the script runs, so a change of defaults is measured, never a copy of them), as many images as the real set;
* **vanilla tuning**: ``finetune`` a copy of the same model on the same images for the same wall-clock budget as our
  inversion + generation took (``--minutes``), then ``generate --method finetune`` (its own prior, the same DDIM steps);
* **pixel crossfade**: ``generate --method pixel`` (random pairs of the real images at alpha 0.5).

Then one ``evaluate`` of the three sets against the real set (floor = real half A vs half B; its own crossfade row
is the same baseline, re-drawn). Every step is the command line a user runs, timed as a whole process. Prints a
Markdown table (method, C2ST on statistics with its 95% CI, C2ST on pixels, share of statistics within 2x the floor,
Frechet distance, near-copies, diversity, seconds) and writes ``table1_<set>.json`` (the rows, the evaluate report,
the settings and the machine) to ``--out``; the sets and HTML reports go to ``out/table1/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oodgen.bundled import SAMPLE_SETS  # noqa: E402
from oodgen.config import DDIMSettings, GenerationSettings  # noqa: E402
from oodgen.data import load_paths  # noqa: E402
from oodgen.models import DEFAULT_MODEL  # noqa: E402

QUICK = {"files": 12, "steps": "5", "n_boot": "20", "morph_max": "10"}


def oodgen(*args: str) -> float:
    """Run ``python -m oodgen ARGS`` in the repository; returns its wall-clock seconds."""
    cmd = [sys.executable, "-m", "oodgen", "-q", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    dt = time.perf_counter() - t
    print(f"  ({dt:.1f} s)", flush=True)
    return dt


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": platform.python_version(), "system": platform.platform()}


def subset(src: Path, k: int, dest: Path) -> Path:
    """The first k data files of ``src`` (with its manifest.json, which names the bands and units) copied to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(f for f in src.iterdir() if f.is_file() and f.suffix.lower() in (".png", ".npy", ".fits", ".jpg", ".tif", ".tiff"))
    for f in files[:k]:
        shutil.copy2(f, dest / f.name)
    if (src / "manifest.json").is_file():
        shutil.copy2(src / "manifest.json", dest / "manifest.json")
    return dest


def run_set(key: str, args: argparse.Namespace, work: Path) -> dict:
    src = SAMPLE_SETS[key].path
    if args.quick:
        src = subset(src, QUICK["files"], work / "subsets" / key)  # the folder keeps the set's name (the statistics kind follows it)
    n_real = len(load_paths([src]).samples)  # the samples oodgen reads (a folder's preview.png or README is not one)
    n = str(n_real)
    model = ["--model", args.model]
    steps = ["--steps", QUICK["steps"]] if args.quick else []
    d = work / key
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    sets = {"ours": d / "ours", "vanilla tuning": d / "finetune", "pixel crossfade": d / "pixel"}
    times: dict = {}
    # ours: inversion + generation at the current defaults
    t_inv = oodgen("invert", "--input", str(src), "--out", str(d / "latents.safetensors"), *model, *steps)
    t_gen = oodgen("generate", "--latents", str(d / "latents.safetensors"), "--n", n, "--out", str(sets["ours"]))
    times["ours"] = {"invert_s": round(t_inv, 1), "generate_s": round(t_gen, 1), "total_s": round(t_inv + t_gen, 1)}
    # vanilla tuning at the same wall-clock budget (the training loop gets all of it; sampling is timed apart)
    budget_min = (t_inv + t_gen) / 60
    t_ft = oodgen("finetune", "--input", str(src), "--out", str(d / "tuned"), *model, "--minutes", f"{budget_min:.4f}")
    t_fs = oodgen("generate", "--method", "finetune", "--model", str(d / "tuned"), "--n", n, "--out", str(sets["vanilla tuning"]), *steps)
    record = json.loads((d / "tuned" / "finetune.json").read_text())
    times["vanilla tuning"] = {"finetune_s": round(t_ft, 1), "training_loop_s": record["seconds"], "steps": record["steps"],
                               "generate_s": round(t_fs, 1), "total_s": round(t_ft + t_fs, 1)}
    # pixel crossfade of the same images (their order, resolution and stretch from our latent file)
    t_px = oodgen("generate", "--method", "pixel", "--input", str(src), "--latents", str(d / "latents.safetensors"), "--n", n,
                  "--out", str(sets["pixel crossfade"]))
    times["pixel crossfade"] = {"total_s": round(t_px, 1)}
    # one evaluation of all three against the real set
    report = d / "evaluate.json"
    quick = ["--n-boot", QUICK["n_boot"], "--morph-max", QUICK["morph_max"]] if args.quick else []
    oodgen("evaluate", "--generated", str(sets["ours"]), "--baseline", str(sets["vanilla tuning"]), str(sets["pixel crossfade"]),
           "--real", str(src), "--json", str(report), "--html", str(d / "evaluate.html"), "--montage", str(d / "montage.png"), *quick)
    payload = json.loads(report.read_text())
    by_label = {r["label"]: r for r in payload["summary"]}
    rows = []
    for method, folder in sets.items():
        r = by_label[folder.name]
        rows.append({"method": method, "n": r["n"], "c2st_stats": r["c2st_stats"], "c2st_stats_ci": r["c2st_stats_ci"],
                     "c2st_pixels": r["c2st_pixels"], "within_floor_frac": r["within_floor_frac"], "frechet": r["frechet"],
                     "near_copies": r["near_copies"], "diversity_ratio": r["diversity_ratio"], "seconds": times[method]["total_s"]})
    floor = payload["summary"][0]
    rows.append({"method": "floor (real A vs B)", "n": floor["n"], "c2st_stats": floor["c2st_stats"], "c2st_stats_ci": floor["c2st_stats_ci"],
                 "c2st_pixels": floor["c2st_pixels"], "within_floor_frac": floor["within_floor_frac"], "frechet": floor["frechet"],
                 "near_copies": floor["near_copies"], "diversity_ratio": floor["diversity_ratio"], "seconds": None})
    return {"set": key, "n_real": n_real, "kind": payload.get("kind"), "rows": rows, "times": times, "report": payload}


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    p.add_argument("--sets", nargs="+", default=["galaxy", "radiation"], choices=["galaxy", "radiation"])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="where table1_<set>.json go")
    p.add_argument("--work", type=Path, default=ROOT / "out" / "table1", help="generated sets, tuned models, HTML reports")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['files']} images per set, {QUICK['steps']} DDIM steps, few bootstraps: "
                                                        "checks the pipeline; its numbers mean nothing")
    args = p.parse_args()
    if args.quick and args.out == ROOT / "docs" / "results":
        args.out = args.work / "results"  # quick figures never overwrite the measured ones
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"ddim": asdict(DDIMSettings()), "generation": asdict(GenerationSettings()), "model": args.model, "quick": args.quick}
    mach = machine()
    print(f"defaults: {settings}\nmachine: {mach}", flush=True)
    results = []
    for key in args.sets:
        res = run_set(key, args, args.work)
        res.update({"settings": settings, "machine": mach})
        (args.out / f"table1_{key}.json").write_text(json.dumps(res, indent=1))
        results.append(res)
    for res in results:
        print(f"\n#### {res['set']}: {res['n_real']} real images, statistics kind `{res['kind']}`, model `{args.model}`\n")
        print("| method | C2ST on statistics (95% CI) | C2ST on pixels | statistics within 2x floor | Frechet (statistics) | near-copies | diversity | time (s) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            within = f"{100 * r['within_floor_frac']:.0f}%" if r["within_floor_frac"] is not None else ""
            copies = f"{100 * r['near_copies']:.0f}%" if r["near_copies"] is not None else ""
            print(f"| {r['method']} | {fmt(r['c2st_stats'])} {fmt(r['c2st_stats_ci'])} | {fmt(r['c2st_pixels'])} | {within} | "
                  f"{fmt(r['frechet'], 1)} | {copies} | {fmt(r['diversity_ratio'])} | {fmt(r['seconds'], 0)} |")
        t = res["times"]
        print(f"\nours: invert {t['ours']['invert_s']} s + generate {t['ours']['generate_s']} s; vanilla tuning: {t['vanilla tuning']['steps']} "
              f"steps in a {t['vanilla tuning']['training_loop_s']:.0f} s training loop (budget = ours), then sampling {t['vanilla tuning']['generate_s']} s")
    print(f"\nmachine: {mach['cores']} cores ({mach['cpu']}), torch {mach['torch']}, {mach['torch_threads']} threads, CUDA {mach['cuda']}")


if __name__ == "__main__":
    main()
