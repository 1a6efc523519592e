"""Latent files round trip with metadata; bad files give clear errors."""

import pytest
import torch
from safetensors.torch import save_file

from oodgen import __version__
from oodgen.latents import LatentFileError, load_latents, read_metadata, save_latents


def test_round_trip_with_metadata(tmp_path):
    z = torch.randn(5, 3, 8, 8)
    p = save_latents(tmp_path / "a" / "z.safetensors", z, {"model": "m", "t_end": 900, "sources": [{"name": "x.png", "sha256": "ab"}]})
    x, meta = load_latents(p)
    assert torch.equal(x, z)
    assert meta["model"] == "m" and meta["t_end"] == 900 and meta["sources"][0]["name"] == "x.png"
    assert meta["oodgen_version"] == __version__ and meta["shape"] == [5, 3, 8, 8]
    assert read_metadata(p)["t_end"] == 900
    assert not list((tmp_path / "a").glob("*.tmp"))  # no leftovers of the atomic write


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(LatentFileError, match="oodgen invert"):
        load_latents(tmp_path / "nope.safetensors")


def test_not_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"not a safetensors file at all")
    with pytest.raises(LatentFileError, match="not a readable safetensors"):
        load_latents(p)


def test_wrong_tensor_name(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2, 3, 4, 4)}, str(p))
    with pytest.raises(LatentFileError, match="no tensor named 'latents'"):
        load_latents(p)


def test_wrong_rank_is_refused(tmp_path):
    with pytest.raises(LatentFileError, match=r"\[N, C, H, W\]"):
        save_latents(tmp_path / "r.safetensors", torch.zeros(3, 4), {})


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    p = save_latents(tmp_path / "z.safetensors", torch.ones(1, 3, 2, 2), {"v": 1})
    import oodgen.latents as L

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(L, "save_file", boom)
    with pytest.raises(OSError):
        save_latents(p, torch.zeros(1, 3, 2, 2), {"v": 2})
    x, meta = load_latents(p)
    assert meta["v"] == 1 and x.sum() == 12
