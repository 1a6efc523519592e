"""Checks of the bundled sample sets in ``assets/samples/`` (made by ``scripts/make_samples.py``)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"
GALAXY = SAMPLES / "galaxy"
RADIATION = SAMPLES / "radiation"
FACES = SAMPLES / "faces"

GALSIM_CLASSES = {"elliptical", "disk", "edge_on", "clumpy", "merger"}
# plausible per-map median ranges (MJy/sr) for the 4.5, 24 and 250 micron bands
MEDIAN_RANGE = {0: (0.05, 2.0), 1: (0.5, 100.0), 2: (20.0, 500.0)}


def _scripts_on_path() -> None:
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def labels() -> list[dict]:
    with open(GALAXY / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["file", "class", "source", "seed"]
        return list(reader)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((RADIATION / "manifest.json").read_text())


# ---- galaxies -----------------------------------------------------------------------------------


def test_galaxy_counts():
    assert len(list(GALAXY.glob("galsim_*.png"))) >= 64
    assert len(list(GALAXY.glob("hdf_*.png"))) >= 24


def test_galaxy_images_are_64px_rgb_uint8():
    for path in sorted(GALAXY.glob("*.png")):
        with Image.open(path) as im:
            assert im.mode == "RGB", path.name
            assert im.size == (64, 64), path.name
        arr = np.asarray(Image.open(path))
        assert arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
        assert arr.std() > 2.0, f"{path.name} is blank"


def test_labels_cover_every_galaxy_png(labels):
    files = [row["file"] for row in labels]
    assert len(files) == len(set(files)), "duplicate rows in labels.csv"
    assert set(files) == {p.name for p in GALAXY.glob("*.png")}


def test_labels_classes_and_sources(labels):
    for row in labels:
        if row["source"] == "galsim":
            assert row["class"] in GALSIM_CLASSES, row
            m = re.fullmatch(r"galsim_(\d{4})_([a-z_]+)\.png", row["file"])
            assert m and m.group(2) == row["class"], row
            assert int(row["seed"]) > 0, row
        elif row["source"] == "hubble_deep_field":
            assert row["class"] == "hdf_unlabelled", row
            assert re.fullmatch(r"hdf_\d{4}\.png", row["file"]), row
        else:
            pytest.fail(f"unknown source in {row}")


def test_galsim_classes_balanced(labels):
    counts = {c: 0 for c in GALSIM_CLASSES}
    for row in labels:
        if row["source"] == "galsim":
            counts[row["class"]] += 1
    assert min(counts.values()) >= 12 and max(counts.values()) - min(counts.values()) <= 1, counts


def test_galaxy_readme_exists():
    assert (GALAXY / "README.md").read_text().strip()


def test_galsim_image_reproducible_from_seed(labels):
    pytest.importorskip("galsim")
    pytest.importorskip("astropy")
    _scripts_on_path()
    import make_samples

    row = next(r for r in labels if r["source"] == "galsim")
    rgb = make_samples.galaxy_rgb(make_samples.render_galaxy(row["class"], int(row["seed"])))
    shipped = np.asarray(Image.open(GALAXY / row["file"])).astype(int)
    assert np.abs(rgb.astype(int) - shipped).max() <= 2


# ---- radiation ----------------------------------------------------------------------------------


def _maps() -> list[Path]:
    return sorted(RADIATION.glob("dust_*.npy"))


def test_radiation_count():
    assert len(_maps()) >= 64


@pytest.mark.parametrize("path", _maps(), ids=lambda p: p.name)
def test_radiation_map_shape_values(path):
    x = np.load(path)
    assert x.dtype == np.float32
    assert x.shape == (3, 64, 64)
    assert np.isfinite(x).all()
    # non-negative up to noise: a few slightly negative noise pixels at most
    assert x.min() > -1.0
    assert (x < 0).mean() < 0.01
    med = np.median(x, axis=(1, 2))
    for band, (lo, hi) in MEDIAN_RANGE.items():
        assert lo <= med[band] <= hi, (band, med[band])
    assert med[2] > med[1] > med[0]


def test_manifest_lists_every_map(manifest):
    files = [m["file"] for m in manifest["maps"]]
    assert len(files) == len(set(files))
    assert set(files) == {p.name for p in _maps()}
    for m in manifest["maps"]:
        assert {"file", "seed", "beta", "n_stars", "n_bubbles"} <= set(m)
        assert 3.0 <= m["beta"] <= 4.0
        assert 1 <= m["n_stars"] <= 6 and 0 <= m["n_bubbles"] <= m["n_stars"]


def test_manifest_bands(manifest):
    assert [b["wavelength_um"] for b in manifest["bands"]] == [4.5, 24.0, 250.0]
    assert all(b["unit"] == "MJy/sr" and b["name"] for b in manifest["bands"])
    assert manifest["layout"] == "[band, y, x]"
    assert "display" in manifest


def test_radiation_preview_and_readme():
    with Image.open(RADIATION / "preview.png") as im:
        assert im.mode == "RGB" and min(im.size) >= 4 * 64
    assert (RADIATION / "README.md").read_text().strip()


def test_dust_map_reproducible_from_seed(manifest):
    pytest.importorskip("scipy")
    _scripts_on_path()
    import make_samples

    entry = manifest["maps"][0]
    maps, info = make_samples.dust_map(entry["seed"])
    assert info["n_stars"] == entry["n_stars"] and info["n_bubbles"] == entry["n_bubbles"]
    np.testing.assert_allclose(maps, np.load(RADIATION / entry["file"]), rtol=1e-4, atol=1e-3)


# ---- faces --------------------------------------------------------------------------------------


def test_faces():
    paths = sorted(FACES.glob("lfw_heldout_*.png"))
    assert [p.name for p in paths] == [f"lfw_heldout_{k:02d}.png" for k in range(1, 13)]
    for p in paths:
        arr = np.asarray(Image.open(p))
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert (FACES / "README.md").read_text().strip()


def test_faces_are_the_held_out_ones():
    pytest.importorskip("skimage")
    _scripts_on_path()
    from asset_sources import train_and_held_out_faces

    train, held_out = train_and_held_out_faces()
    shipped = np.stack([np.asarray(Image.open(FACES / f"lfw_heldout_{k:02d}.png"))[..., 0] for k in range(1, 13)])
    np.testing.assert_array_equal(shipped, (np.clip(held_out, 0, 1) * 255).round().astype(np.uint8))
    # and none of them is a training image
    train_u8 = (np.clip(train, 0, 1) * 255).round().astype(np.uint8)
    for face in shipped:
        assert not any(np.array_equal(face, t) for t in train_u8)


def test_training_faces_are_shipped_as_in_domain_reference():
    pytest.importorskip("skimage")
    _scripts_on_path()
    from asset_sources import train_and_held_out_faces

    train, _ = train_and_held_out_faces()
    paths = sorted((SAMPLES / "faces_train").glob("lfw_train_*.png"))
    assert len(paths) == len(train) == 88
    shipped = np.stack([np.asarray(Image.open(p))[..., 0] for p in paths])
    np.testing.assert_array_equal(shipped, (np.clip(train, 0, 1) * 255).round().astype(np.uint8))


def test_samples_folder_small():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024, total
