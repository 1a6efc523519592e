"""What the tuning experiments share: evaluate several generated sets against the real one and save the record."""
import json

from PIL import Image

from oodgen import evaluation as ev, quality


def evaluate_and_save(gens: list, real, tag: str, morph_max: int = 80) -> list[dict]:
    """Evaluate ``gens`` (ImageSets, the first the main one) against ``real`` with the crossfade; print the summary
    and the worst statistics of each set; write runs/<tag>.png (montage) and runs/<tag>.json. Returns the rows."""
    res = ev.evaluate_sets(gens[0], real, gens[1:], "auto", quality.QualitySettings(morph_max=morph_max), with_crossfade=True)
    rows = res.report.summary()
    width = max(len(r["label"]) for r in rows)
    for r in rows:
        print(f"{r['label']:{width}s} c2st={r['c2st_stats']:.3f} px={r['c2st_pixels']:.3f} within={r['within_floor_frac']:.2f} "
              f"frechet={r['frechet']:.1f} copies={r['near_copies']} div={r['diversity_ratio']}", flush=True)
    for r in rows[1:]:
        print(r["label"], res.report.worst(r["label"], 8))
    Image.fromarray(res.montage(k=8)).save(f"runs/{tag}.png")
    with open(f"runs/{tag}.json", "w") as f:
        json.dump({"rows": rows, "stats": res.report.rows()}, f, indent=1, default=str)
    return rows
