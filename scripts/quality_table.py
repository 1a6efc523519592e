"""The README's sample-quality tables: tune on other seeded data, report on the bundled sets.

    python scripts/quality_table.py search   # bandwidth search on a separately seeded tuning set (runs/tune)
    python scripts/quality_table.py report   # old default, new default, crossfade and floor on the bundled sets

``search`` makes a tuning set with ``make_samples.py --seed 1`` (120 GalSim galaxies, no Hubble
cutouts, 120 dust maps: none of them in ``assets/samples``) and runs ``python -m oodgen search`` on
it; the defaults in ``GenerationSettings``/``DDIMSettings`` are chosen from those results. ``report``
runs ``invert`` + ``generate`` for each row of ``ROWS`` (the current defaults, the previous default
model and settings without the intensity calibration, the original default oodgen-faces-32 at t_end 900) on the bundled galaxy and
radiation sets, then ``evaluate`` with the other rows as baselines (finished rows are reused).
Outputs: ``docs/results/search_<set>.json``, ``docs/results/quality_<set>.json`` and
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


# The report's generated rows: (label, model, invert options, generate options). "new default" is whatever
# the defaults are (DEFAULT_MODEL, DDIMSettings, GenerationSettings); the others pin what they were.
ROWS = (
    ("new default", None, [], []),
    ("previous default", None, [], ["--calibration", "none"]),  # the defaults before the intensity calibration: same model, latents and draws
    ("old default", "oodgen-faces-32", ["--t-end", "900"], ["--pairing", "random", "--eta", "0", "--noise", "none", "--centre", "origin",
                                                            "--calibration", "none"]),
)


def report(extra: list[str]) -> None:
    """Invert + generate every row of ROWS on both bundled sets, then evaluate them against the real set.

    A row whose latent file and generated set (generated.json) exist is reused, so a stopped report
    resumes where it stopped; delete out/quality to redo everything. ``extra`` goes to every invert."""
    OUT.mkdir(parents=True, exist_ok=True)
    for s in SETS:
        src = ROOT / "assets" / "samples" / s
        n = "100" if s == "galaxy" else "64"
        folders = []
        for label, model, inv, gen in ROWS:
            lat, folder = OUT / f"{label.replace(' ', '_')}_{s}.safetensors", OUT / f"{label} {s}"
            folders.append(str(folder))
            if lat.exists() and (folder / "generated.json").exists():
                print(f"reusing {folder}", flush=True)
                continue
            oodgen("invert", "--input", str(src), "--out", str(lat), *(["--model", model] if model else []), *inv, *extra)
            oodgen("generate", "--latents", str(lat), "--n", n, "--out", str(folder), *gen)
        oodgen("evaluate", "--generated", folders[0], "--baseline", *folders[1:], "--real", str(src),
               "--json", str(RESULTS / f"quality_{s}.json"), "--html", str(OUT / f"quality_{s}.html"), "--montage", str(RESULTS / f"quality_{s}.png"))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("search", "report"):
        sys.exit(__doc__)
    {"search": search, "report": report}[sys.argv[1]](sys.argv[2:])
