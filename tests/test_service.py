"""App-facing service functions: access control, limits and clear messages (no browser needed)."""

import pytest

from oodgen import service
from oodgen.workspace import Workspace


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("OODGEN_HOME", str(tmp_path))
    monkeypatch.setattr(service, "_BACKEND", None)
    b = service.backend()
    yield b
    monkeypatch.setattr(service, "_BACKEND", None)


def test_results_need_the_admin_token_when_one_is_set(backend, monkeypatch):
    monkeypatch.setenv("OODGEN_ADMIN_TOKEN", "s3cret")
    for fn in (service.results, service.export_results):
        with pytest.raises(service.UserError, match="admin token"):
            fn("wrong")
        with pytest.raises(service.UserError, match="admin token"):
            fn(None)
    note = service.results("s3cret")[2]
    assert "0" in note and "ratings" in note
    monkeypatch.delenv("OODGEN_ADMIN_TOKEN")
    assert service.results(None)[0].empty  # open locally


def test_upload_limits_and_bad_files_are_reported(backend, tmp_path, monkeypatch):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(service.UserError, match="no files chosen"):
        service.upload_dataset("anon-a", "x", [])
    with pytest.raises(service.UserError, match="None of the files held a usable image"):
        service.upload_dataset("anon-a", "x", [str(bad)])
    monkeypatch.setattr(service.backend(), "limits", service.Limits(max_files=1))
    with pytest.raises(service.UserError, match="OODGEN_MAX_FILES"):
        service.upload_dataset("anon-a", "x", [str(bad), str(bad)])


def test_upload_keeps_good_files_lists_bad_ones_and_stays_private(backend, tmp_path):
    from PIL import Image

    good = tmp_path / "g.png"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(good)
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  =  garbage")
    ds, gallery, md = service.upload_dataset("anon-a", "mine", [str(good), str(broken)])
    assert len(gallery) == 1 and "broken.fits" in md and "Saved as dataset" in md
    assert ds in [ref for _, ref in service.dataset_choices("anon-a")]
    assert ds not in [ref for _, ref in service.dataset_choices("anon-b")]
    with pytest.raises(ValueError):
        service.show_dataset("anon-b", ds)
    assert Workspace(backend.ws.home).get("datasets", ds).meta["n"] == 1


def test_picking_nothing_gives_a_clear_message(backend):
    with pytest.raises(service.UserError, match="invert a dataset first"):
        service.decode_pair("anon-a", None, 0, 1, 0.5)
    with pytest.raises(service.UserError, match="generate one first"):
        service.download_generated("anon-a", "")
    with pytest.raises(service.UserError, match="pick at least one generated set"):
        service.create_study("anon-a", "s1", "galaxy", [], "bundled:galaxy", 5, "", 0.1)
