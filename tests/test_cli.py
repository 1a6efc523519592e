"""The command line, in process (fast) and as ``python -m oodgen`` (exit codes)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from oodgen.cli import main
from oodgen.latents import load_latents
from tests.conftest import REPO, SAMPLES


@pytest.fixture
def pngs(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"im{k}.png")
    return d


def test_invert_then_generate_images(tiny_pipeline_dir, pngs, tmp_path, capsys):
    out = tmp_path / "z.safetensors"
    assert main(["-q", "invert", "--input", str(pngs), "--out", str(out), "--model", str(tiny_pipeline_dir), "--t-end", "800", "--steps", "8", "--batch-size", "2"]) == 0
    z, meta = load_latents(out)
    assert z.shape == (5, 3, 8, 8)
    assert meta["ddim"]["t_end"] == 800 and meta["ddim"]["steps"] == 8 and meta["kind"] == "image" and meta["stretch"] is None
    assert [s["name"] for s in meta["sources"]] == [f"imgs/im{k}.png" for k in range(5)]
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])
    gen = tmp_path / "gen"
    assert main(["-q", "generate", "--latents", str(out), "--n", "3", "--out", str(gen), "--method", "lerp", "--alpha", "0.3", "--seed", "4"]) == 0
    pngs_out = sorted(gen.glob("*.png"))
    assert len(pngs_out) == 3 and not list(gen.glob("*.npy"))
    manifest = json.loads((gen / "generated.json").read_text())
    assert manifest["ddim"]["t_end"] == 800 and manifest["generation"]["alpha"] == 0.3
    assert Image.open(pngs_out[0]).size == (8, 8)


def test_generate_physical_writes_npy_in_physical_units(tiny_pipeline_dir, tmp_path):
    src = tmp_path / "maps"
    src.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):  # 3 bands, ascending wavelength, very different levels
        m = np.stack([rng.gamma(2, 0.5, (16, 16)), rng.gamma(2, 10, (16, 16)), rng.gamma(2, 100, (16, 16))]).astype(np.float32)
        np.save(src / f"m{k}.npy", m)
    z = tmp_path / "z.safetensors"
    assert main(["-q", "invert", "--input", str(src), "--out", str(z), "--model", str(tiny_pipeline_dir), "--steps", "4"]) == 0
    meta = load_latents(z)[1]
    assert meta["kind"] == "physical" and meta["stretch"] is not None
    gen = tmp_path / "gen"
    assert main(["-q", "generate", "--latents", str(z), "--n", "2", "--out", str(gen)]) == 0
    arr = np.load(gen / "gen_0000.npy")
    assert arr.shape == (3, 8, 8) and arr.dtype == np.float32
    # band order and scale come back: each band lies in its own physical range (a reversed order would
    # put the ~1000-level 3rd band into the ~5-level 1st); the random tiny model saturates, so no medians
    lo, hi = meta["stretch"]["lo"], meta["stretch"]["hi"]
    assert hi[2] > 10 * hi[1] > 10 * hi[0]
    for b in range(3):
        assert lo[b] - 1e-5 <= arr[b].min() and arr[b].max() <= hi[b] * (1 + 1e-4)
    assert arr[2].max() > hi[1]


def test_reconstruct_json(tiny_pipeline_dir, pngs, capsys):
    assert main(["-q", "reconstruct", "--input", str(pngs), "--model", str(tiny_pipeline_dir), "--steps", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 5 and 0 <= result["mae"] <= 1 and len(result["per_image"]) == 5


def test_bad_input_is_one_line_and_exit_2(tiny_pipeline_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = main(["-q", "invert", "--input", str(bad), "--out", str(tmp_path / "z.safetensors"), "--model", str(tiny_pipeline_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.png" in err and "oodgen: error: no usable images" in err
    assert not (tmp_path / "z.safetensors").exists()


def test_generate_with_inconsistent_t_end_is_refused(tiny_pipeline_dir, pngs, tmp_path, capsys):
    z = tmp_path / "z.safetensors"
    main(["-q", "invert", "--input", str(pngs), "--out", str(z), "--model", str(tiny_pipeline_dir), "--steps", "4", "--t-end", "900"])
    assert main(["-q", "generate", "--latents", str(z), "--n", "1", "--out", str(tmp_path / "g"), "--t-end", "500"]) == 2
    assert "latents live at t=900" in capsys.readouterr().err


def test_module_entry_point_help_and_exit_code():
    env_cmd = [sys.executable, "-m", "oodgen"]
    r = subprocess.run([*env_cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "invert" in r.stdout and "generate" in r.stdout and "reconstruct" in r.stdout
    for cmd in ("invert", "reconstruct", "generate"):
        r = subprocess.run([*env_cmd, cmd, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "--model" in r.stdout
    r = subprocess.run([*env_cmd, "generate", "--latents", "missing.safetensors", "--n", "2", "--out", "x"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("oodgen: error: missing.safetensors: no such latent file")


def test_diagnose_json_has_the_documented_keys_and_html_is_offline(tiny_pipeline_dir, pngs, tmp_path, capsys):
    z = tmp_path / "ood.safetensors"
    main(["-q", "invert", "--input", str(pngs), str(SAMPLES / "galaxy"), "--out", str(z), "--model", str(tiny_pipeline_dir), "--steps", "4", "--t-end", "999"])
    zid = tmp_path / "id.safetensors"
    main(["-q", "invert", "--input", str(SAMPLES / "faces_train"), "--out", str(zid), "--model", str(tiny_pipeline_dir), "--steps", "4", "--t-end", "999"])
    out_json, out_html = tmp_path / "d.json", tmp_path / "d.html"
    assert main(["-q", "diagnose", "--ood", str(z), "--id", str(zid), "--json", str(out_json), "--html", str(out_html)]) == 0
    printed = capsys.readouterr().out
    assert "Origin angle" in printed and "Linear SVM test accuracy" in printed
    j = json.loads(out_json.read_text())
    for key in ("d", "d_quarter", "n_id", "n_ood", "center_distance", "separable_by_criterion", "svm_test_accuracy"):
        assert key in j
    for key in ("pair_angle_deg", "origin_angle_deg", "pair_distance"):
        assert {"mean", "std"} <= set(j[key]) and {"mean", "std"} <= set(j["id"][key])
    assert j["d"] == 3 * 8 * 8 and j["n_ood"] == 105 and j["n_id"] == 88
    page = out_html.read_text()
    assert "plotly" in page.lower() and "<script src=\"http" not in page
    # prior reference at t = 999 needs no model
    assert main(["-q", "diagnose", "--ood", str(z), "--id-prior", "40", "--no-umap", "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["id_source"].startswith("model prior")


def test_sweep_rows_cover_each_t(tiny_pipeline_dir, pngs, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["-q", "sweep", "--input", str(SAMPLES / "radiation"), "--id-prior", "12", "--model", str(tiny_pipeline_dir),
                 "--steps", "6", "--t", "400", "999", "--json", str(out), "--html", str(tmp_path / "s.html")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["t_end"] for r in rows] == [400, 999]
    assert all(0 <= r["svm_test_accuracy"] <= 1 for r in rows)
    assert (tmp_path / "s.html").stat().st_size > 10000


@pytest.mark.parametrize("domain", ["galaxy", "radiation"])
def test_default_model_reconstructs_bundled_ood_sets(domain, capsys, tmp_path):
    """The default model's DDIM round trip on 8 images of each bundled OOD set (evenly spaced files, with the
    set's manifest) at 20 steps: MAE <= 0.02 on the [0, 1] scale (the paper: 0.07; measured 0.006 for both sets,
    0.0025 at the default 50 steps). Kept small so the default test run stays short; the whole sets are in the README."""
    import shutil

    from oodgen.models import DEFAULT_MODEL
    from tests.conftest import require_bundled_model

    require_bundled_model()
    sub = tmp_path / domain
    sub.mkdir()
    suffix = {"galaxy": ".png", "radiation": ".npy"}[domain]  # the radiation folder also holds a preview.png
    files = sorted((SAMPLES / domain).glob(f"*{suffix}"))
    files = files[:: len(files) // 8][:8]
    for f in files + [f for f in (SAMPLES / domain).glob("manifest.json")]:
        shutil.copy(f, sub / f.name)
    assert main(["-q", "reconstruct", "--input", str(sub), "--json", "--batch-size", "32", "--steps", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 8 and result["model"] == DEFAULT_MODEL
    assert result["mae"] <= 0.02


def test_batch_size_auto_is_the_default_and_falls_back_when_the_probe_fails(tiny_pipeline_dir, pngs, tmp_path, monkeypatch, capsys, caplog):
    from oodgen import engine

    out = tmp_path / "z.safetensors"
    common = ["-q", "invert", "--input", str(pngs), "--out", str(out), "--model", str(tiny_pipeline_dir), "--steps", "2", "--device", "cpu"]
    assert main(common) == 0
    assert load_latents(out)[1]["ddim"]["batch_size"] == 5  # auto on CPU: the measured batch (4 to 64), clipped to the 5 images

    def broken(*a, **k):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(engine, "auto_batch_size", broken)
    assert main(common) == 0
    assert load_latents(out)[1]["ddim"]["batch_size"] == 32
    assert "could not size the batch (RuntimeError: probe exploded); using 32" in caplog.text
    assert main([*common, "--batch-size", "3"]) == 0  # a number never probes
    assert load_latents(out)[1]["ddim"]["batch_size"] == 3
    with pytest.raises(SystemExit):
        main([*common, "--batch-size", "0"])
    assert "0 must be at least 1" in capsys.readouterr().err


def test_diagnose_samples_large_latent_files_without_loading_them(tmp_path, capsys):
    from oodgen.latents import count_latents, save_latents

    import torch

    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 3, 4, 4, generator=g) + 3.0
    sources = [{"name": f"g{k:02d}.png", "sha256": "0" * 64} for k in range(40)]
    save_latents(tmp_path / "ood.safetensors", z, {"t_end": 999, "sources": sources})
    assert count_latents(tmp_path / "ood.safetensors") == 40
    rows = [0, 5, 39]
    part, meta = load_latents(tmp_path / "ood.safetensors", rows)
    assert torch.equal(part, z[rows]) and len(meta["sources"]) == 40
    out = tmp_path / "d.json"
    assert main(["-q", "diagnose", "--ood", str(tmp_path / "ood.safetensors"), "--id-prior", "12", "--max-n", "10", "--no-umap",
                 "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "diagnosing a random 10 of its 40 latents (--max-n)" in err
    report = json.loads(out.read_text())
    assert report["n_ood"] == 10 and report["n_id"] == 12
    assert main(["-q", "diagnose", "--ood", str(tmp_path / "ood.safetensors"), "--id-prior", "12", "--max-n", "1"]) == 2


def test_generate_calibrates_each_sample_to_its_sources_intensity_distribution(tiny_pipeline_dir, tmp_path):
    """invert records each source's quantile functions; generate (default --calibration quantiles) gives each sample,
    per channel, the distribution (1 - alpha) Q_i + alpha Q_j of its two sources (read from generated.json), which
    --calibration none does not; a latent file without them still generates, with a warning."""
    import torch

    from oodgen.latents import save_latents
    from oodgen.sampling import QUANTILE_LEVELS
    from oodgen.sampling import match_quantiles

    d = tmp_path / "src"
    d.mkdir()
    rng = np.random.default_rng(1)
    for k in range(5):  # sources with very different brightness per channel, none like the random model's output
        img = np.clip(rng.gamma(1 + k, 0.05, (16, 16, 3)) * np.array([1.0, 0.5, 2.0]), 0, 1)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(d / f"s{k}.png")
    z_file = tmp_path / "z.safetensors"
    assert main(["-q", "invert", "--input", str(d), "--out", str(z_file), "--model", str(tiny_pipeline_dir), "--t-end", "300", "--steps", "3"]) == 0
    z, meta = load_latents(z_file)
    q_src = torch.tensor([s["quantiles"] for s in meta["sources"]])
    assert q_src.shape == (5, 3, QUANTILE_LEVELS)
    read = lambda folder: torch.from_numpy(np.stack([np.asarray(Image.open(f), np.float32) / 127.5 - 1  # noqa: E731
                                                     for f in sorted(folder.glob("*.png"))])).permute(0, 3, 1, 2)
    errors = {}
    for cal in ("quantiles", "none"):
        out = tmp_path / cal
        assert main(["-q", "generate", "--latents", str(z_file), "--n", "6", "--out", str(out), "--steps", "3", "--alpha", "0.3",
                     "--calibration", cal]) == 0
        man = json.loads((out / "generated.json").read_text())
        assert man["generation"]["calibration"] == cal
        draws = [(it["i"], it["j"], it["alpha"]) for it in man["samples"]]
        want = torch.stack([(1 - a) * q_src[i] + a * q_src[j] for i, j, a in draws])
        got = read(out)
        errors[cal] = (got - match_quantiles(got, want)).abs().max().item()  # 0 when got already has the wanted distribution
    assert errors["quantiles"] < 0.01 < 0.1 < errors["none"]  # within the PNG's 8-bit rounding, against far off
    bare = dict(meta)
    bare["sources"] = [{k: v for k, v in s.items() if k != "quantiles"} for s in meta["sources"]]
    save_latents(tmp_path / "old.safetensors", z, bare)
    assert main(["-q", "generate", "--latents", str(tmp_path / "old.safetensors"), "--n", "2", "--out", str(tmp_path / "old"), "--steps", "3"]) == 0


def test_inversion_records_source_noise_and_generate_matches_it(tiny_pipeline_dir, tmp_path):
    """invert stores each source's pixel noise; generate --noise match adds noise up to their median."""
    from oodgen.latents import source_noise
    from oodgen.sampling import pixel_noise

    d = tmp_path / "noisy"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        img = 0.5 + rng.normal(0, 0.2, (8, 8, 3))  # noisier than anything the tiny random model makes
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(d / f"n{k}.png")
    z_file = tmp_path / "z.safetensors"
    assert main(["-q", "invert", "--input", str(d), "--out", str(z_file), "--model", str(tiny_pipeline_dir), "--t-end", "300", "--steps", "4"]) == 0
    _, meta = load_latents(z_file)
    assert all(len(s["noise"]) == 3 for s in meta["sources"])
    target = source_noise(meta)
    assert 0.25 < np.mean(target) < 0.5  # 0.2 in [0, 1] units is 0.4 in the model's [-1, 1] (less after clipping)
    for noise in ("none", "match"):
        out = tmp_path / noise
        assert main(["-q", "generate", "--latents", str(z_file), "--n", "4", "--out", str(out), "--noise", noise, "--steps", "4",
                     "--calibration", "none"]) == 0
        man = json.loads((out / "generated.json").read_text())
        assert man["generation"]["noise"] == noise
    import torch
    x = lambda folder: torch.from_numpy(np.stack([np.asarray(Image.open(f), np.float32) / 127.5 - 1 for f in sorted(folder.glob("*.png"))])).permute(0, 3, 1, 2)  # noqa: E731
    matched, plain = pixel_noise(x(tmp_path / "match")), pixel_noise(x(tmp_path / "none"))
    assert matched.mean() > plain.mean() and (matched >= plain - 0.03).all()  # noise is only ever added
    assert matched.mean(0).min() >= 0.85 * min(target)  # and reaches the sources' level
