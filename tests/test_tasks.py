"""Job runners on the bundled model: chunked inversion that resumes after a crash, generated sets, zips."""

import json
import zipfile

import numpy as np
import pytest
import torch

from oodgen import engine, tasks
from oodgen.config import DDIMSettings
from oodgen.data import load_paths, to_model_input
from oodgen.jobs import Job, JobQueue
from oodgen.latents import load_latents
from oodgen.workspace import Workspace
from tests.conftest import SAMPLES, require_bundled_model

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
    assert meta["t_end"] == 900 and meta["steps"] == 5 and len(meta["sources"]) == 12
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
    assert rec.meta["unit"] == "MJy/sr" and len(rec.meta["draws"]) == 5
    phys = [np.load(f) for f in sorted((rec.root / "physical").glob("*.npy"))]
    assert len(phys) == 5 and phys[0].shape == (32, 32, 3) and np.isfinite(phys[0]).all()
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
