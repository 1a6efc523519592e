"""Bulk inversion: chunks of files read ahead, checkpointed, resumed; the CLI path for data sets larger than memory."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from oodgen import bulk, cli, engine
from oodgen.config import DDIMSettings
from oodgen.data import DataError, list_files, load_paths, to_model_input
from oodgen.latents import LatentFileError, load_latents, save_latents, save_latents_from_parts
from oodgen.models import load_model


def _pngs(folder, n, seed=7, size=(12, 14)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"im{k:03d}.png")
    return folder


def _invert(model_dir, src, out, *extra):
    args = ["-q", "invert", "--input", str(src), "--out", str(out), "--model", str(model_dir), "--steps", "3", "--batch-size", "2",
            "--device", "cpu", *extra]
    return cli.main(args)


# ---------------------------------------------------------------- pieces
def test_chunk_ranges_cover_the_files_once_in_order():
    assert bulk.chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert bulk.chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert bulk.chunk_ranges(0, 4) == []
    with pytest.raises(ValueError):
        bulk.chunk_ranges(3, 0)


def test_latent_file_written_from_parts_equals_one_written_whole(tmp_path):
    z = torch.randn(7, 3, 5, 5)
    save_latents_from_parts(tmp_path / "parts.safetensors", [z[:3], z[3:3], z[3:]], tuple(z.shape), {"model": "m"})
    save_latents(tmp_path / "whole.safetensors", z, {"model": "m"})
    (a, meta_a), (b, meta_b) = load_latents(tmp_path / "parts.safetensors"), load_latents(tmp_path / "whole.safetensors")
    assert torch.equal(a, z) and torch.equal(b, z)
    meta_a.pop("created"), meta_b.pop("created")
    assert meta_a == meta_b


@pytest.mark.parametrize("parts", [[torch.zeros(2, 3, 5, 5)], [torch.zeros(4, 3, 5, 5)], [torch.zeros(3, 1, 5, 5)]])
def test_parts_that_do_not_add_up_leave_no_file(tmp_path, parts):
    out = tmp_path / "z.safetensors"
    with pytest.raises(LatentFileError):
        save_latents_from_parts(out, parts, (3, 3, 5, 5), {})
    assert list(tmp_path.iterdir()) == []


def test_listing_without_a_limit_takes_more_than_ten_thousand_files(tmp_path):
    for k in range(10_001):
        (tmp_path / f"g{k:05d}.png").touch()
    with pytest.raises(DataError, match="more than 10000"):
        load_paths(tmp_path)  # the in-memory loader keeps its limit
    listing = list_files(tmp_path, max_files=None)
    assert len(listing.files) == 10_001 and listing.files[0][0].endswith("g00000.png")


# ---------------------------------------------------------------- the CLI path
def test_chunked_inversion_equals_one_pass_over_everything(tiny_pipeline_dir, tmp_path):
    src = _pngs(tmp_path / "imgs", 10)
    out = tmp_path / "z.safetensors"
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "4") == 0
    z, meta = load_latents(out)
    model = load_model(str(tiny_pipeline_dir), device="cpu")
    x, _ = to_model_input(load_paths(src).samples, model.resolution, model.channels)
    assert torch.equal(z, engine.invert(model, x, DDIMSettings(t_end=DDIMSettings().t_end, steps=3, batch_size=2)))  # chunks of 4 = 2 whole batches
    assert [s["name"] for s in meta["sources"]] == [f"imgs/im{k:03d}.png" for k in range(10)]
    assert not bulk.parts_dir(out).exists()  # checkpoints are removed once the file is written


def test_a_crashed_run_resumes_from_its_checkpoints(tiny_pipeline_dir, tmp_path, monkeypatch):
    src = _pngs(tmp_path / "imgs", 10)
    whole, out = tmp_path / "whole.safetensors", tmp_path / "z.safetensors"
    assert _invert(tiny_pipeline_dir, src, whole, "--chunk-size", "4") == 0
    real, calls = engine.invert, []

    def crash_on_third(model, x, settings, **kw):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or a crash) while the third chunk runs
        return real(model, x, settings, **kw)

    monkeypatch.setattr(engine, "invert", crash_on_third)
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "4") == 130
    assert not out.exists()
    assert sorted(p.name for p in bulk.parts_dir(out).iterdir()) == ["chunk_000000.safetensors", "chunk_000001.safetensors"]

    calls.clear()
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "4") == 0
    assert calls == [2]  # only the last chunk (2 files) was inverted again
    assert torch.equal(load_latents(out)[0], load_latents(whole)[0])
    assert not bulk.parts_dir(out).exists()


def _leave_checkpoints(monkeypatch):
    monkeypatch.setattr(bulk.ChunkStore, "remove", lambda self: None)


def test_appended_files_keep_earlier_chunks_and_changed_settings_redo_everything(tiny_pipeline_dir, tmp_path, monkeypatch):
    src = _pngs(tmp_path / "imgs", 8)
    out = tmp_path / "z.safetensors"
    _leave_checkpoints(monkeypatch)
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "4") == 0
    real, calls = engine.invert, []
    monkeypatch.setattr(engine, "invert", lambda m, x, s, **kw: calls.append(len(x)) or real(m, x, s, **kw))

    _pngs(tmp_path / "more", 2, seed=8)
    for f in (tmp_path / "more").iterdir():
        f.rename(src / f.name.replace("im", "new"))  # sorted after the im*.png: a third chunk
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "4") == 0
    assert calls == [2] and load_latents(out)[0].shape[0] == 10

    calls.clear()
    (src / "im001.png").write_bytes((src / "im002.png").read_bytes())  # a changed file (other size or mtime)
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "4") == 0
    assert calls == [4]  # just its chunk

    calls.clear()
    args = ["-q", "invert", "--input", str(src), "--out", str(out), "--model", str(tiny_pipeline_dir), "--steps", "4", "--batch-size", "2",
            "--device", "cpu", "--chunk-size", "4"]
    assert cli.main(args) == 0
    assert calls == [4, 4, 2]  # other steps: nothing reused


def test_bad_and_mismatched_files_are_skipped_and_reported(tiny_pipeline_dir, tmp_path, capsys):
    src = _pngs(tmp_path / "imgs", 5)
    (src / "im002.png").write_bytes(b"not a png")
    np.save(src / "map.npy", np.random.default_rng(0).normal(size=(12, 12)).astype(np.float32))  # physical among images
    out = tmp_path / "z.safetensors"
    assert _invert(tiny_pipeline_dir, src, out, "--chunk-size", "2") == 0
    err = capsys.readouterr().err
    assert "oodgen: skipped imgs/im002.png: is corrupt, or not a PNG" in err
    assert "oodgen: skipped imgs/map.npy: is physical data but this set is images" in err
    assert "wrote 4 latents" in err and "skipped 2" in err
    z, meta = load_latents(out)
    assert [s["name"] for s in meta["sources"]] == ["imgs/im000.png", "imgs/im001.png", "imgs/im003.png", "imgs/im004.png"]


def test_a_folder_without_usable_images_is_one_clear_error(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nope")
    assert _invert(tiny_pipeline_dir, tmp_path / "bad", tmp_path / "z.safetensors") == 2
    assert "no usable images" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _invert(tiny_pipeline_dir, tmp_path / "empty", tmp_path / "z.safetensors") == 2
    assert "no data files in" in capsys.readouterr().err


def test_physical_stretch_is_fitted_on_all_files_or_evenly_spaced_ones(tmp_path, monkeypatch):
    from oodgen.data import fit_stretch

    rng = np.random.default_rng(1)
    for k in range(9):
        np.save(tmp_path / f"m{k}.npy", (rng.lognormal(size=(10, 10)) * (k + 1)).astype(np.float32))
    files = list_files(tmp_path).files
    kind, stretch, note = bulk.probe(files)
    assert kind == "physical" and note is None
    assert stretch == fit_stretch(load_paths(tmp_path).samples)
    kind, stretch, note = bulk.probe(files, max_fit_files=3)
    assert note == "stretch fitted on 3 evenly spaced of 9 files"
    assert stretch == fit_stretch(load_paths([tmp_path / "m0.npy", tmp_path / "m4.npy", tmp_path / "m8.npy"]).samples)


def test_the_next_chunk_is_read_while_the_current_one_inverts(tmp_path):
    src = _pngs(tmp_path / "imgs", 6)
    files = list_files(src).files
    plan = bulk.BulkPlan(files, "image", None, 8, 3, settings_key="test", chunk_files=2)
    started = {k: threading.Event() for k in range(3)}
    real_read = bulk.read_chunk

    def spy(plan, k, pool=None):
        started[k].set()
        return real_read(plan, k, pool)

    seen = []

    def invert(x, progress):
        k = len(seen)
        seen.append(k)
        if k + 1 < 3:  # the read of chunk k + 1 must start before chunk k's inversion ends
            assert started[k + 1].wait(timeout=20), f"chunk {k + 1} was not read ahead"
        return x * 2

    orig = bulk.read_chunk
    bulk.read_chunk = spy
    try:
        metas = bulk.invert_chunks(plan, range(3), bulk.ChunkStore(tmp_path / "parts"), invert, steps=1)
    finally:
        bulk.read_chunk = orig
    assert seen == [0, 1, 2] and sorted(metas) == [0, 1, 2]
    z = torch.cat(list(bulk.chunk_parts(plan, bulk.ChunkStore(tmp_path / "parts"), range(3))))
    x, _ = to_model_input(load_paths(src).samples, 8, 3)
    assert torch.equal(z, x * 2)


def test_progress_counts_image_steps_and_ends_exact(tmp_path):
    src = _pngs(tmp_path / "imgs", 5)
    plan = bulk.BulkPlan(list_files(src).files, "image", None, 8, 3, settings_key="test", chunk_files=2)
    seen = []
    bulk.invert_chunks(plan, range(3), bulk.ChunkStore(tmp_path / "parts"), lambda x, cb: (cb(len(x) * 4, len(x) * 4), x)[1],
                       steps=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_at_most_two_chunks_of_input_are_alive_at_once(tmp_path, monkeypatch):
    """The memory bound of the README: the chunk being inverted and the one read ahead, whatever the number of chunks."""
    import gc
    import weakref

    src = _pngs(tmp_path / "imgs", 12)
    plan = bulk.BulkPlan(list_files(src).files, "image", None, 8, 3, settings_key="test", chunk_files=2)
    alive: list[weakref.ref] = []
    real_read = bulk.read_chunk

    def tracked(*a, **k):
        inp = real_read(*a, **k)
        alive.append(weakref.ref(inp.x))
        return inp

    monkeypatch.setattr(bulk, "read_chunk", tracked)
    most = []

    def invert(x, progress):
        gc.collect()
        most.append(sum(r() is not None for r in alive))
        return x

    bulk.invert_chunks(plan, range(6), bulk.ChunkStore(tmp_path / "parts"), invert, steps=1)
    assert len(most) == 6 and max(most) <= 2, most


def test_in_memory_commands_point_to_invert_beyond_their_file_limit(tmp_path, monkeypatch, capsys):
    from oodgen import data

    _pngs(tmp_path / "imgs", 4)
    monkeypatch.setattr(data.load_paths, "__defaults__", (3,))  # max_files 3 instead of 10,000
    assert cli.main(["-q", "reconstruct", "--input", str(tmp_path / "imgs")]) == 2
    err = capsys.readouterr().err
    assert "more than 3 data files in all: this command holds every image in memory" in err and "use `invert`" in err
