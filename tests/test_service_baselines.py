"""The baselines in the app's batch generation (through oodgen.service): pixel crossfade and fine-tuning as jobs."""

import json
import zipfile

import numpy as np
import pytest

from oodgen import ratings, service, tasks


def test_pixel_and_finetune_jobs_make_generated_sets_that_studies_and_quality_read(service_backend, tmp_path):
    from tests.conftest import SAMPLES, require_bundled_model

    require_bundled_model()
    owner, jobs = "anon-a", service_backend.jobs
    inv = jobs.wait(service.start_invert(owner, "bundled:radiation", "oodgen-faces-32", service.DDIMSettings(900, 5, 8), "dust run").id, 300)
    assert inv.status == "done", inv.message
    with pytest.raises(service.UserError, match="the baselines are pixel, finetune"):
        service.start_baseline(owner, inv.result, 4, "", "slerp")
    with pytest.raises(service.UserError, match="fine-tuning budget"):
        service.finetune_settings(0, 0)

    pix = jobs.wait(service.start_baseline(owner, inv.result, 5, "dust pixel", "pixel", alpha=0.5, seed=1).id, 300)
    assert pix.status == "done", pix.message
    rec = service_backend.ws.get("generated", pix.result, owner)
    assert rec.meta["generation"]["method"] == "pixel" and rec.meta["unit"] == "MJy/sr" and len(rec.meta["samples"]) == 5
    for s in rec.meta["samples"]:  # the map is the mean of the recorded pair of source maps (64 x 64 at the model's 32: resampled alike)
        assert s["method"] == "pixel" and s["alpha"] == 0.5 and s["i"] != s["j"]
        assert np.load(rec.root / s["npy"]).shape == (3, 32, 32)
    from oodgen.crossfade import crossfade_set
    from oodgen.data import load_paths

    src = {x.name: x for x in load_paths([SAMPLES / "radiation"]).samples}
    s0 = rec.meta["samples"][0]
    _, phys, _ = crossfade_set([src[s0["source_i"]], src[s0["source_j"]]], 1, 32, 0.5, 0)
    got = np.load(rec.root / s0["npy"])
    pair_mean = np.moveaxis(phys[0], -1, 0)  # the two sources only: pair (0, 1) or (1, 0), the same mean
    np.testing.assert_allclose(got, pair_mean, rtol=1e-5, atol=1e-5)

    ft = service.finetune_settings(4, 0)
    ft = type(ft)(**{**ft.to_json(), "batch_size": 4, "checkpoint_every": 2})
    job = service.start_baseline(owner, inv.result, 5, "dust finetune", "finetune", eta=0.0, seed=2, finetune=ft)
    assert "fine-tuned oodgen-faces-32, 4 steps" in job.label
    job = jobs.wait(job.id, 600)
    assert job.status == "done", job.message
    rec_ft = service_backend.ws.get("generated", job.result, owner)
    assert rec_ft.meta["generation"]["method"] == "finetune" and rec_ft.meta["finetune"]["steps"] == 4
    assert len(list(rec_ft.root.glob("gen_*.npy"))) == 5
    record = json.loads((rec_ft.root / tasks.TUNED_DIR / "finetune.json").read_text())
    assert record["base_model"] == "oodgen-faces-32" and record["n_images"] == 64 and len(record["loss"]) == 4
    assert not (service_backend.ws.job_dir(job.id) / "finetune").exists()  # the checkpoints go once the set is saved
    with zipfile.ZipFile(tasks.zip_generated(rec_ft, tmp_path / "dl")) as zf:
        assert not [n for n in zf.namelist() if ".model" in n]  # the tuned weights are not in the set's download
    assert "finetune" in service.generated_summary(owner, rec_ft.id)

    # the study records each set's method
    note = service.create_study(owner, "dust-baselines", "radiation", [pix.result, rec_ft.id], "bundled:radiation", 3, "", 0.0)
    assert "Created study" in note
    methods = {(e.source, e.method) for e in ratings.load_study(service_backend.ws.home, "dust-baselines").items}
    assert {("generated", "pixel"), ("generated", "finetune"), ("real", "")} <= methods
    q = jobs.wait(service.start_quality(owner, rec_ft.id, service.quality_settings("physical", n_boot=20)).id, 300)
    assert q.status == "done", q.message
    assert tasks.cached_quality(rec_ft)["summary"][1]["n"] == 5


def test_batch_panel_offers_the_baselines_and_passes_their_settings(monkeypatch, tmp_path):
    """No browser: the method radio lists pixel and finetune; on_generate sends them to start_baseline with the budget."""
    monkeypatch.setenv("OODGEN_HOME", str(tmp_path))
    import app

    by_id = {b.elem_id: b for b in app.demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"pixel", "finetune"} <= {c[1] if isinstance(c, tuple) else c for c in by_id["gen_method"].choices}
    assert by_id["gen_ft_steps"].value == app.FinetuneSettings().steps and not by_id["gen_ft_steps"].visible
    seen = []
    monkeypatch.setattr(app.service, "start_baseline", lambda owner, run, n, name, method, **kw: seen.append((n, name, method, kw)) or
                        type("J", (), {"label": "fake"})())
    monkeypatch.setattr(app.service, "run_in_request", lambda job: None)
    monkeypatch.setattr(app.service, "jobs_html", lambda owner: "")
    app.on_generate("anon-a", "run-1", "finetune", 8, 0.5, 0.0, 3, False, 0.05, False, "nearest", 5, 0.0, 1, " tuned ", "match", 40, 1.5)
    n, name, method, kw = seen[-1]
    assert (n, name, method, kw["seed"], kw["finetune"].steps, kw["finetune"].seconds, kw["finetune"].seed) == (8, "tuned", "finetune", 3, 40, 90.0, 3)
    app.on_generate("anon-a", "run-1", "pixel", 4, 0.3, 0.0, 0, False, 0.05, False, "nearest", 5, 0.0, 1, "")
    assert seen[-1][2] == "pixel" and seen[-1][3]["alpha"] == 0.3 and seen[-1][3]["finetune"] is None
    vis = app.on_gen_method("finetune", "nearest")
    assert [v.visible for v in vis] == [False, False, False, False, False, True, True]
