"""Files in, quality report out: oodgen.evaluation and the `evaluate` / `search` commands."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from oodgen import evaluation, quality
from oodgen.cli import main
from tests.conftest import BUNDLED_MODEL, SAMPLES

FAST = ["--n-boot", "20", "--workers", "1"]


@pytest.fixture
def galaxies(tmp_path):
    """24 bundled galaxies (real) and 12 pixel crossfades of them written like a generated set (PNG + generated.json)."""
    real = tmp_path / "galaxy"
    real.mkdir()
    files = sorted((SAMPLES / "galaxy").glob("*.png"))[:24]
    for f in files:
        shutil.copy(f, real / f.name)
    gen = tmp_path / "gen"
    gen.mkdir()
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float64)
    for k in range(12):
        Image.fromarray(((x[k] + x[k + 12]) / 2).round().astype(np.uint8)).save(gen / f"gen_{k:04d}.png")
    (gen / "generated.json").write_text(json.dumps({"unit": None, "samples": []}))
    return real, gen


def test_load_set_prefers_physical_arrays_and_reads_units(tmp_path):
    real = evaluation.load_set(SAMPLES / "radiation")
    assert real.kind == "physical" and real.unit == "MJy/sr" and real.x.shape == (64, 64, 64, 3) and real.bands
    gen = tmp_path / "g"
    gen.mkdir()
    for k in range(3):
        np.save(gen / f"gen_{k}.npy", real.x[k].transpose(2, 0, 1))
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(gen / f"gen_{k}.png")
    (gen / "generated.json").write_text(json.dumps({"unit": "MJy/sr", "samples": []}))
    s = evaluation.load_set(gen)
    assert s.kind == "physical" and s.unit == "MJy/sr" and "PNG previews ignored" in s.note
    np.testing.assert_allclose(s.x[1], real.x[1])  # [band, y, x] files read back in the data's units and band order


def test_evaluate_command_writes_json_and_offline_html(galaxies, tmp_path, capsys):
    real, gen = galaxies
    js, page = tmp_path / "q.json", tmp_path / "q.html"
    assert main(["-q", "evaluate", "--generated", str(gen), "--real", str(real), "--kind", "image", *FAST,
                 "--json", str(js), "--html", str(page), "--montage", str(tmp_path / "m.png")]) == 0
    out = capsys.readouterr().out
    assert "floor (real A vs B)" in out and "crossfade" in out and "gen" in out
    payload = json.loads(js.read_text())
    labels = [r["label"] for r in payload["summary"]]
    assert labels == ["floor (real A vs B)", "gen", "crossfade"]
    assert {"c2st_stats", "within_floor_frac", "near_copies", "diversity_ratio"} <= set(payload["summary"][1])
    assert len(payload["statistics"]) > 20 and "gen verdict" in payload["statistics"][0]
    assert Image.open(tmp_path / "m.png").size[1] > 3 * 64  # real, gen and crossfade rows
    text = page.read_text()
    assert "<script src=\"http" not in text and "data:image/png;base64," in text and "Plotly" in text


def test_evaluate_galaxy_kind_runs_statmorph(galaxies, tmp_path, capsys):
    real, gen = galaxies
    assert main(["-q", "evaluate", "--generated", str(gen), "--real", str(real), *FAST, "--morph-max", "6",
                 "--json", str(tmp_path / "q.json")]) == 0  # auto: the folder is named galaxy
    payload = json.loads((tmp_path / "q.json").read_text())
    assert payload["kind"] == "galaxy"
    names = [r["statistic"] for r in payload["statistics"]]
    assert {"Gini", "M20", "Sersic n", "sky noise"} <= set(names)


def test_evaluate_refuses_unlike_sets_with_one_line(galaxies, capsys):
    real, _ = galaxies
    assert main(["-q", "evaluate", "--generated", str(SAMPLES / "radiation"), "--real", str(real), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "physical" in err[0] and "like with like" in err[0]


def test_evaluate_empty_folder_says_what_to_do(galaxies, tmp_path, capsys):
    real, _ = galaxies
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-q", "evaluate", "--generated", str(empty), "--real", str(real)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_generated_set_at_lower_resolution_is_resampled_and_said(galaxies, tmp_path):
    real, gen = galaxies
    small = tmp_path / "small"
    small.mkdir()
    for f in sorted(gen.glob("*.png")):
        Image.open(f).resize((32, 32)).save(small / f.name)
    ev = evaluation.evaluate_sets(evaluation.load_set(small), evaluation.load_set(real), kind="image",
                                  settings=quality.QualitySettings(n_boot=20, workers=1))
    assert "resampled from 32x32 to 64x64" in ev.sets["small"].note


def test_search_command_evaluates_every_cell_and_names_one_best(tmp_path, capsys):
    real = tmp_path / "faces"
    real.mkdir()
    for f in sorted((SAMPLES / "faces_train").glob("*.png"))[:12]:
        shutil.copy(f, real / f.name)
    js = tmp_path / "s.json"
    assert main(["-q", "search", "--input", str(real), "--model", str(BUNDLED_MODEL), "--t-end", "300", "600", "--eta", "0",
                 "--n", "6", "--steps", "4", "--batch-size", "8", "--kind", "image", "--diversity-curve", "--json", str(js), "--html", str(tmp_path / "s.html")]) == 0
    cells = json.loads(js.read_text())["cells"]
    assert [(c["t_end"], c["pairing"], c["noise"]) for c in cells] == [
        (t, p, nz) for t in (300, 600) for p in ("random", "nearest") for nz in ("none", "match", "sky")]
    assert sum(c["best"] for c in cells) == 1
    assert "best: t_end" in capsys.readouterr().out
    curve = json.loads(js.read_text())["diversity_curve"]
    assert [r["k"] for r in curve] == [2, 5, 10, 12] and all(r["diversity_ratio"] >= 0 for r in curve)
    assert curve[-1]["diversity_ratio"] > curve[0]["diversity_ratio"]  # two sources give (nearly) one image
    assert "diversity vs number of sources" in (tmp_path / "s.html").read_text()
