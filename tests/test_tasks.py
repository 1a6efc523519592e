"""Job runners on the bundled model: chunked inversion that resumes after a crash, generated sets, zips."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from oodgen import engine, tasks
from oodgen.config import DDIMSettings
from oodgen.data import load_paths, to_model_input
from oodgen.jobs import Job, JobQueue
from oodgen.latents import load_latents
from oodgen.models import ModelLoadError
from oodgen.workspace import Workspace
from tests.conftest import REPO, SAMPLES, require_bundled_model

SETTINGS = DDIMSettings(t_end=900, steps=5, batch_size=4)


@pytest.fixture(autouse=True)
def _bundled():
    require_bundled_model()


def _invert_params(dataset="bundled:faces", name="faces run"):
    return {"dataset": dataset, "model": "oodgen-faces-32", "settings": SETTINGS.to_json(), "name": name}


def test_chunked_inversion_resumes_after_a_crash_and_equals_one_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "CHUNK_IMAGES", 4)  # 12 faces -> 3 chunks
    ws = Workspace(tmp_path)
    real_chunk = tasks.invert_chunk
    calls = []

    def crash_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # like a kill: not handled by the job, the state stays "running"
        calls.append(1)
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(tasks, "invert_chunk", crash_after_first)
    q = JobQueue(ws, tasks.RUNNERS, start=False)
    job = q.submit("invert", "anon-a", "invert faces", _invert_params())
    with pytest.raises(KeyboardInterrupt):
        q._run(q.get(job.id))
    assert json.loads(ws.job_path(job.id).read_text())["status"] == "running"
    assert len(list(ws.job_dir(job.id).glob("chunk_*.safetensors"))) == 1
    assert ws.list("runs") == []  # nothing half-made is listed

    resumed_calls = []
    monkeypatch.setattr(tasks, "invert_chunk", lambda *a, **k: resumed_calls.append(1) or real_chunk(*a, **k))
    q2 = JobQueue(ws, tasks.RUNNERS)  # "the app restarted"
    done = q2.wait(job.id, 120)
    assert done.status == "done" and done.resumed == 1, done.message
    assert len(resumed_calls) == 2  # the finished chunk was not recomputed
    assert not ws.job_dir(job.id).exists()
    run = ws.get("runs", done.result, "anon-a")
    z, meta = load_latents(run.root / tasks.LATENTS)
    x, _ = to_model_input(load_paths([SAMPLES / "faces"]).samples, 32, 3)
    direct = engine.invert(tasks.get_model("oodgen-faces-32"), x, SETTINGS)
    assert torch.allclose(z, direct, atol=1e-5)
    assert meta["ddim"]["t_end"] == 900 and meta["ddim"]["steps"] == 5 and len(meta["sources"]) == 12
    assert np.load(run.root / tasks.THUMBS).shape == (12, 32, 32, 3)


def test_generate_physical_set_and_zip(tmp_path):
    ws = Workspace(tmp_path)
    q = JobQueue(ws, tasks.RUNNERS)
    inv = q.wait(q.submit("invert", "anon-a", "inv", _invert_params("bundled:radiation", "dust")).id, 300)
    assert inv.status == "done", inv.message
    gen = q.wait(q.submit("generate", "anon-a", "gen", {"run": inv.result, "n": 5, "name": "dust gaussian",
                                                         "generation": {"method": "gaussian", "seed": 3}}).id, 300)
    assert gen.status == "done", gen.message
    rec = ws.get("generated", gen.result, "anon-a")
    assert rec.meta["unit"] == "MJy/sr" and len(rec.meta["samples"]) == 5
    phys = [np.load(f) for f in sorted(rec.root.glob("gen_*.npy"))]
    assert len(phys) == 5 and phys[0].shape == (3, 32, 32) and np.isfinite(phys[0]).all()
    with zipfile.ZipFile(tasks.zip_generated(rec, tmp_path / "dl")) as zf:
        names = zf.namelist()
    assert sum(n.endswith(".png") for n in names) == 5 and sum(n.endswith(".npy") for n in names) == 5
    # another owner cannot generate from this run
    other = q.wait(q.submit("generate", "anon-b", "steal", {"run": inv.result, "n": 2, "name": "x", "generation": {}}).id, 60)
    assert other.status == "failed" and "pick one from the list" in other.message


def test_diagnostics_are_cached_per_run_and_reference(tmp_path):
    ws = Workspace(tmp_path)
    q = JobQueue(ws, tasks.RUNNERS)
    inv = q.wait(q.submit("invert", "anon-a", "inv", _invert_params("bundled:faces_train", "faces train")).id, 300)
    diag = q.wait(q.submit("diagnose", "anon-a", "diag", {"run": inv.result, "reference": "prior"}).id, 300)
    assert diag.status == "done", diag.message
    folder = tasks.diagnostics_dir(ws.get("runs", inv.result), "prior")
    report = json.loads((folder / "report.json").read_text())
    assert report["n_ood"] == 88 and report["d"] == 3 * 32 * 32
    assert set(json.loads((folder / "figures.json").read_text())) == {"Geometry", "Radii", "UMAP"}
    with np.load(folder / "recon.npz") as r:
        assert r["original"].shape == r["reconstruction"].shape == (8, 32, 32, 3)
        mae = r["mae"]
    x, _ = to_model_input(load_paths([SAMPLES / "faces_train"]).samples[:8], 32, 3)
    expected = engine.reconstruct(tasks.get_model("oodgen-faces-32"), x, SETTINGS).mae
    assert np.allclose(mae, expected.numpy(), atol=0.01)  # the same round trip (inputs were 8-bit thumbnails)


def test_zerogpu_decorator_is_the_identity_without_spaces(monkeypatch):
    from oodgen import zerogpu

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not zerogpu.active()
    f = lambda x: x + 1  # noqa: E731
    assert zerogpu.gpu(30)(f) is f
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setitem(__import__("sys").modules, "spaces", None)  # not installed
    assert not zerogpu.active() and zerogpu.gpu(30)(f) is f


def test_zerogpu_decorates_with_spaces_gpu_when_on_zerogpu(monkeypatch):
    import types

    from oodgen import zerogpu

    seen = []
    fake = types.SimpleNamespace(GPU=lambda duration: (lambda fn: seen.append(duration) or (lambda *a: ("gpu", fn(*a)))))
    monkeypatch.setitem(__import__("sys").modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    wrapped = zerogpu.gpu(120)(lambda x: x * 2)
    assert seen == [120] and wrapped(4) == ("gpu", 8)


# ---------------------------------------------------------------- quality of a generated set
FAST_QUALITY = {"kind": "image", "n_boot": 20, "workers": 1, "morph_max": 10}


def _invert_and_generate(q, owner, dataset, name, n=6):
    inv = q.wait(q.submit("invert", owner, "inv", _invert_params(dataset, name)).id, 300)
    assert inv.status == "done", inv.message
    gen = q.wait(q.submit("generate", owner, "gen", {"run": inv.result, "n": n, "name": f"{name} gaussian",
                                                     "generation": {"method": "gaussian", "seed": 1}}).id, 300)
    assert gen.status == "done", gen.message
    return inv.result, gen.result


def test_quality_report_is_written_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from oodgen import evaluation

    ws = Workspace(tmp_path)
    q = JobQueue(ws, tasks.RUNNERS)
    try:
        _, gen_id = _invert_and_generate(q, "anon-a", "bundled:faces", "faces")
        params = {"generated": gen_id, "settings": FAST_QUALITY}
        first = q.wait(q.submit("quality", "anon-a", "quality", params).id, 300)
        assert first.status == "done" and first.result == gen_id, first.message
        assert "C2ST" in first.message and "floor" in first.message
        rec = ws.get("generated", gen_id)
        folder = tasks.quality_dir(rec)
        assert sorted(f.name for f in folder.iterdir()) == ["figures.json", "montage.png", "nn_pairs.png", "report.html", "report.json"]
        payload = json.loads((folder / "report.json").read_text())
        labels = [r["label"] for r in payload["summary"]]
        assert labels == ["floor (real A vs B)", "faces gaussian", "crossfade"]
        assert payload["real"]["n"] == 12 and payload["kind"] == "image" and payload["settings"]["n_boot"] == 20
        assert payload["dataset"]["ref"] == "bundled:faces" and payload["generated"]["id"] == gen_id
        assert all("faces gaussian verdict" in r for r in payload["statistics"])
        assert set(json.loads((folder / "figures.json").read_text())) == {"distances", "histograms", "power spectra", "memorization"}
        html = (folder / "report.html").read_text()
        assert "<script src=" not in html and "faces gaussian" in html  # offline page
        from PIL import Image
        assert Image.open(folder / "montage.png").size[1] > 3 * 32  # real, generated and crossfade rows
        assert not list(folder.parent.glob(".quality.*"))  # no temp folder left behind

        # the same request again reads the cache: nothing is evaluated, the files are untouched
        stamp = (folder / "report.json").stat().st_mtime_ns
        def evaluated_again(*a, **k):
            raise RuntimeError("evaluated again instead of reading the cache")

        monkeypatch.setattr(evaluation, "evaluate_sets", evaluated_again)
        again = q.wait(q.submit("quality", "anon-a", "quality", params).id, 60)
        assert again.status == "done" and "from the cache" in again.message, again.message
        assert (folder / "report.json").stat().st_mtime_ns == stamp
        # other settings (or force) recompute
        monkeypatch.undo()
        forced = q.wait(q.submit("quality", "anon-a", "quality", {**params, "force": True}).id, 300)
        assert forced.status == "done" and "from the cache" not in forced.message, forced.message
        assert (folder / "report.json").stat().st_mtime_ns != stamp
        # the cache is no part of the set: neither its zip nor reading its folder as images picks it up
        with zipfile.ZipFile(tasks.zip_generated(rec, tmp_path / "dl")) as zf:
            assert not [n for n in zf.namelist() if ".quality" in n]
        assert len(load_paths([rec.root]).samples) == 6
        # another owner cannot evaluate it
        other = q.wait(q.submit("quality", "anon-b", "q", params).id, 60)
        assert other.status == "failed" and "pick one from the list" in other.message
    finally:
        q.close()


def test_quality_of_physical_maps_uses_the_npy_files(tmp_path):
    ws = Workspace(tmp_path)
    q = JobQueue(ws, tasks.RUNNERS)
    try:
        _, gen_id = _invert_and_generate(q, "anon-a", "bundled:radiation", "dust")
        job = q.wait(q.submit("quality", "anon-a", "q", {"generated": gen_id, "settings": {**FAST_QUALITY, "kind": "auto"}}).id, 300)
        assert job.status == "done", job.message
        payload = tasks.cached_quality(ws.get("generated", gen_id))
        assert payload["kind"] == "physical" and payload["real"]["unit"] == "MJy/sr" and payload["real"]["n"] == 64
        assert payload["summary"][1]["n"] == 6  # the 6 .npy maps, not their 6 PNG previews as well
        assert any("IRAC 4.5" in r["statistic"] for r in payload["statistics"])  # band names came from the run's stretch
    finally:
        q.close()


def test_quality_fails_clearly_for_too_few_real_images_and_gone_sources(tmp_path):
    from PIL import Image

    ws = Workspace(tmp_path)
    rng = np.random.default_rng(0)
    files = []
    for k in range(8):
        f = tmp_path / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(f)
        files.append(f)
    ds = tasks.save_dataset(ws, "anon-a", "eight", files, load_paths(files))
    q = JobQueue(ws, tasks.RUNNERS)
    try:
        run_id, gen_id = _invert_and_generate(q, "anon-a", ds.id, "eight", n=3)
        params = {"generated": gen_id, "settings": FAST_QUALITY}
        few = q.wait(q.submit("quality", "anon-a", "q", params).id, 120)
        assert few.status == "failed" and "has 8 usable images" in few.message and "at least 10" in few.message, few.message
        ws.delete("datasets", ds.id, "anon-a")
        no_data = q.wait(q.submit("quality", "anon-a", "q", params).id, 60)
        assert no_data.status == "failed" and "dataset 'eight' that run" in no_data.message and "is gone" in no_data.message, no_data.message
        ws.delete("runs", run_id, "anon-a")
        no_run = q.wait(q.submit("quality", "anon-a", "q", params).id, 60)
        assert no_run.status == "failed" and "run 'eight' that 'eight gaussian' was generated from is gone" in no_run.message, no_run.message
        assert tasks.cached_quality(ws.get("generated", gen_id)) is None
    finally:
        q.close()


# ---------------------------------------------------------------- which models the app loads
class _FakeLoads:
    """Stands in for models.load_model: records what would have been loaded (nothing is read from disk)."""

    def __init__(self):
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, source, device="auto", dtype="auto", local=True):
        self.calls.append((source, local))
        return object()


@pytest.fixture
def fake_loads(monkeypatch, tmp_path):
    fake = _FakeLoads()
    monkeypatch.setattr(tasks, "load_model", fake)
    monkeypatch.setattr(tasks, "_MODELS", tasks.OrderedDict())
    monkeypatch.setenv("OODGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(tasks.MODEL_ROOT_ENV, raising=False)
    monkeypatch.delenv(tasks.ALLOW_HUB_ENV, raising=False)
    return fake


def test_the_app_loads_registry_names_and_folders_under_its_model_root(fake_loads, tmp_path, monkeypatch):
    tasks.get_model("oodgen-faces-32")
    root = tmp_path / "home" / "models"
    (root / "mine").mkdir(parents=True)
    tasks.get_model(str(root / "mine"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.setenv(tasks.MODEL_ROOT_ENV, f"{tmp_path / 'nowhere'}{os.pathsep}{other}")
    tasks.get_model(str(other / "x"))  # under a second configured root
    assert fake_loads.calls == [("oodgen-faces-32", True), (str((root / "mine").resolve()), True), (str((other / "x").resolve()), True)]


@pytest.mark.parametrize("name", ["/etc", "/work", "../assets/models/oodgen-faces-32", "assets/models/oodgen-faces-32/unet",
                                  "~/x", "/tmp/../etc/passwd.ckpt", ""])
def test_the_app_refuses_other_paths_without_probing_them(fake_loads, name):
    with pytest.raises(ModelLoadError) as e:
        tasks.get_model(name)
    assert fake_loads.calls == []  # never handed to the loader, which would look at the path
    assert "/work" not in str(e.value).replace(repr(name), "")  # the message names no server path but the one typed


def test_a_symlink_out_of_the_model_root_is_refused(fake_loads, tmp_path):
    root = tmp_path / "home" / "models"
    root.mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(ModelLoadError, match="not under the app's model root"):
        tasks.get_model(str(root / "escape"))
    assert fake_loads.calls == []


def test_hub_ids_only_where_the_owner_allows_them_and_never_as_paths(fake_loads, monkeypatch):
    with pytest.raises(ModelLoadError, match="OODGEN_ALLOW_HUB=1"):
        tasks.get_model("google/ddpm-church-256")
    monkeypatch.setenv(tasks.ALLOW_HUB_ENV, "1")
    tasks.get_model("assets/samples")  # hub-shaped: a hub id, not the folder of that name here
    assert fake_loads.calls == [("assets/samples", False)]


def test_the_model_cache_keeps_the_most_recently_used(fake_loads, tmp_path, monkeypatch):
    monkeypatch.setenv(tasks.MODEL_CACHE_ENV, "2")
    root = tmp_path / "home" / "models"
    names = [str(root / n) for n in "abc"]
    a = tasks.get_model(names[0])
    tasks.get_model(names[1])
    assert tasks.get_model(names[0]) is a  # a hit, and now the most recent
    tasks.get_model(names[2])  # drops b, the least recently used
    assert len(tasks._MODELS) == 2
    assert tasks.get_model(names[0]) is a
    tasks.get_model(names[1])  # loaded again
    assert [c[0] for c in fake_loads.calls] == [str(Path(n).resolve()) for n in (names[0], names[1], names[2], names[1])]


def test_load_model_with_local_off_never_reads_a_folder(monkeypatch, tmp_path):
    from oodgen import models

    seen = []
    monkeypatch.setattr(models, "_hub_snapshot", lambda repo: seen.append(repo) or (_ for _ in ()).throw(ModelLoadError("offline")))
    monkeypatch.chdir(REPO)
    with pytest.raises(ModelLoadError, match="offline"):
        models.load_model("assets/models", local=False)  # a folder of that name exists here
    assert seen == ["assets/models"]
