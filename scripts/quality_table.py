"""The README's sample-quality tables: tune on other seeded data, report on the bundled sets.

    python scripts/quality_table.py search   # bandwidth search on a separately seeded tuning set (runs/tune)
    python scripts/quality_table.py report   # old default, new default, crossfade and floor on the bundled sets

``search`` makes a tuning set with ``make_samples.py --seed 1`` (120 GalSim galaxies, no Hubble
cutouts, 120 dust maps: none of them in ``assets/samples``) and runs ``python -m oodgen search`` on
it; the defaults in ``GenerationSettings``/``DDIMSettings`` are chosen from those results. ``report``
runs ``invert`` + ``generate`` with the original default (oodgen-faces-32, t_end 900, random pairs),
the previous default (oodgen-photos-64, t_end 500, nearest pairs, slerp about the origin) and the
current defaults on the bundled galaxy and radiation sets, then ``evaluate`` with the other two sets as
baselines. Outputs: ``docs/results/search_<set>.json``, ``docs/results/quality_<set>.json`` and
``docs/results/quality_<set>.png`` (montage); the HTML pages go to ``out/`` (not committed).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT, RESULTS, TUNE = ROOT / "out" / "quality", ROOT / "docs" / "results", ROOT / "runs" / "tune"
SETS = ("galaxy", "radiation")


def oodgen(*args: str) -> None:
    cmd = [sys.executable, "-m", "oodgen", "-q", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"  ({time.time() - t:.0f} s)", flush=True)


def search(extra: list[str]) -> None:
    if not (TUNE / "radiation").exists():
        subprocess.run([sys.executable, "scripts/make_samples.py", "--out", str(TUNE), "--seed", "1", "--per-class", "24",
                        "--n-hdf", "0", "--n-dust", "120"], cwd=ROOT, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    for s in SETS:
        oodgen("search", "--input", str(TUNE / s), "--json", str(RESULTS / f"search_{s}.json"), "--html", str(OUT / f"search_{s}.html"), *extra)


def report(extra: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for s in SETS:
        src = ROOT / "assets" / "samples" / s
        n = "100" if s == "galaxy" else "64"
        oodgen("invert", "--input", str(src), "--out", str(OUT / f"old_{s}.safetensors"), "--model", "oodgen-faces-32", "--t-end", "900")
        oodgen("generate", "--latents", str(OUT / f"old_{s}.safetensors"), "--n", n, "--out", str(OUT / f"old default {s}"), "--pairing", "random", "--eta", "0", "--noise", "none", "--centre", "origin")
        oodgen("invert", "--input", str(src), "--out", str(OUT / f"prev_{s}.safetensors"), "--t-end", "500")
        oodgen("generate", "--latents", str(OUT / f"prev_{s}.safetensors"), "--n", n, "--out", str(OUT / f"previous default {s}"),
               "--pairing", "nearest", "--eta", "0", "--noise", "match", "--centre", "origin")
        oodgen("invert", "--input", str(src), "--out", str(OUT / f"new_{s}.safetensors"), *extra)
        oodgen("generate", "--latents", str(OUT / f"new_{s}.safetensors"), "--n", n, "--out", str(OUT / f"new default {s}"))
        oodgen("evaluate", "--generated", str(OUT / f"new default {s}"), "--baseline", str(OUT / f"previous default {s}"),
               str(OUT / f"old default {s}"), "--real", str(src),
               "--json", str(RESULTS / f"quality_{s}.json"), "--html", str(OUT / f"quality_{s}.html"), "--montage", str(RESULTS / f"quality_{s}.png"))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("search", "report"):
        sys.exit(__doc__)
    {"search": search, "report": report}[sys.argv[1]](sys.argv[2:])
