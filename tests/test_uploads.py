"""Uploads: one kind of data per dataset, exactly what was kept and skipped, rejected files never saved."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from oodgen import service, tasks
from oodgen.data import load_paths


@pytest.fixture
def backend(service_backend_home):
    return service_backend_home


def _png(path, seed, side=16):
    Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def _npy(path, seed, bands=3):
    np.save(path, np.exp(np.random.default_rng(seed).normal(0, 1, (bands, 16, 16))).astype(np.float32))
    return str(path)


def _saved_files(backend, ds):
    root = backend.ws.get("datasets", ds).root / "files"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_mixed_upload_keeps_one_kind_says_what_was_skipped_and_saves_only_that(backend, tmp_path):
    """Images and physical maps together: the dataset was saved whole, then failed in fit_stretch and inverted part of it."""
    files = [_png(tmp_path / f"img{k}.png", k) for k in range(3)] + [_npy(tmp_path / f"map{k}.npy", k) for k in range(2)]
    ds, gallery, md = service.upload_dataset("anon-a", "mixed", files)
    assert len(gallery) == 3 and "fit_stretch" not in md
    assert "Saved as dataset **mixed**: kept **3** sample(s), images" in md
    for k in range(2):
        assert f"- `map{k}.npy`: a physical map (3 bands), but this dataset holds images (3 of them): one kind per dataset" in md
    assert _saved_files(backend, ds) == ["img0.png", "img1.png", "img2.png"]  # the maps are not in the dataset
    report, _ = tasks.load_dataset(backend.ws, ds, "anon-a")  # what an inversion reads
    assert len(report.samples) == 3 and not report.errors and {s.kind for s in report.samples} == {"image"}
    # the other way round: more maps than images keeps the maps
    files = [_png(tmp_path / "lone.png", 9)] + [_npy(tmp_path / f"m{k}.npy", 10 + k) for k in range(3)]
    ds2, gallery2, md2 = service.upload_dataset("anon-a", "maps", files)
    assert len(gallery2) == 3 and "physical maps (3 bands)" in md2 and "`lone.png`: a plain image, but this dataset holds physical maps" in md2
    assert _saved_files(backend, ds2) == ["m0.npy", "m1.npy", "m2.npy"]


def test_a_zip_upload_lists_non_data_and_rejected_members_and_saves_only_the_kept_ones(backend, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(2):
            with open(_png(tmp_path / f"z{k}.png", 20 + k), "rb") as f:
                zf.writestr(f"set/z{k}.png", f.read())
        zf.writestr("set/notes.txt", "observing log")
        zf.writestr("set/broken.png", b"\x89PNG not really")
        zf.writestr("set/old.gif", b"GIF89a")
    archive = tmp_path / "galaxies.zip"
    archive.write_bytes(buf.getvalue())
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.npy", b"\0" * (1 << 20))
    import oodgen.data as data

    old = data.MAX_ZIP_BYTES
    data.MAX_ZIP_BYTES = 1 << 19  # this archive expands past the limit
    try:
        ds, gallery, md = service.upload_dataset("anon-a", "zipped", [str(archive), str(bomb)])
    finally:
        data.MAX_ZIP_BYTES = old
    assert len(gallery) == 2
    assert "Not data, left out: `galaxies.zip/set/notes.txt`" in md  # said, not dropped silently
    assert "`galaxies.zip/set/broken.png`" in md and "`galaxies.zip/set/old.gif`" in md and "`bomb.zip`: expands to" in md
    assert md.count("galaxies.zip/set/broken.png") == 1  # each skipped file named once
    assert _saved_files(backend, ds) == ["galaxies/set/z0.png", "galaxies/set/z1.png"]  # no rejected file or archive kept
    assert len(load_paths([backend.ws.get("datasets", ds).root / "files"]).samples) == 2


def test_a_zip_of_physical_maps_keeps_their_manifest(backend, tmp_path):
    from tests.conftest import SAMPLES

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((SAMPLES / "radiation").glob("*.npy"))[:3]:
            zf.write(p, f"dust/{p.name}")
        zf.write(SAMPLES / "radiation" / "manifest.json", "dust/manifest.json")
    archive = tmp_path / "dust.zip"
    archive.write_bytes(buf.getvalue())
    ds, _, md = service.upload_dataset("anon-a", "dust", [str(archive)])
    assert "MJy/sr" in md and "kept **3**" in md
    report, _ = tasks.load_dataset(backend.ws, ds, "anon-a")
    assert len(report.samples) == 3 and {s.unit for s in report.samples} == {"MJy/sr"}  # bands and unit survive the saving
