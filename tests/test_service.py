"""App-facing service functions: access control, limits and clear messages (no browser needed)."""

import numpy as np
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


def test_thumbnail_picks_alternate_i_and_j_in_click_order():
    """Each event carries the page's click count and its last two clicks, taken when the event is sent."""
    import copy
    import threading

    picker = service.PairPicker()
    assert picker.note().startswith("Click a thumbnail for sample i")
    assert [picker.pick(1, [7]), picker.pick(2, [7, 30]), picker.pick(3, [30, 12])] == [{"i": 7}, {"j": 30}, {"i": 12}]
    assert picker.note() == "Sample i = 12; click another thumbnail for j."
    # three more clicks (j = 44, i = 3, j = 60): the first event sent knew of all of them, the later two of fewer
    assert picker.pick(6, [3, 60]) == {"i": 3, "j": 60}
    assert picker.pick(5, [44, 3]) == {} and picker.pick(4, [12, 44]) == {}  # stale records change nothing
    assert picker.note() == "Sample j = 60."
    # the failure under load: six quick clicks on 8..13 whose events sent their counts out of order (an earlier fix
    # numbered each event when its own JavaScript ran, so clicks 10 and 11 got the last numbers and won)
    burst = service.PairPicker()
    clicks = [8, 9, 10, 11, 12, 13]
    records = [(n, clicks[max(0, n - 2):n]) for n in range(1, 7)]
    for n, last in (records[0], records[1], records[4], records[5], records[2], records[3]):
        burst.pick(n, last)
    assert burst.note() == "Sample j = 13." and burst.pick(6, [12, 13]) == {}  # i = 12 and j = 13 were set
    assert burst.slots() == {"i": 12, "j": 13}  # what the page shows after the burst
    assert copy.deepcopy(picker).pick(1, [5]) == {"i": 5}  # a new page session starts afresh
    picker.reset()  # another run: the next click sets i again
    assert picker.slots() == {}  # nothing set on the new run's thumbnails yet: the sliders keep their reset values
    assert picker.pick(5, [44, 3]) == {} and picker.pick(7, [9, 1]) == {"i": 1}  # clicks up to 6 were before the reset
    assert picker.slots() == {"i": 1} and picker.pick(8, [1, 2]) == {"j": 2}
    assert [picker.pick(None, [4]), picker.pick(0, [5])] == [{"i": 4}, {"j": 5}]  # a page that counts nothing: arrival order

    fresh, start = service.PairPicker(), threading.Barrier(16)

    def click(n):
        start.wait()
        fresh.pick(n, [n - 1, n] if n > 1 else [n])

    threads = [threading.Thread(target=click, args=(n,)) for n in range(1, 17)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fresh.note() == "Sample j = 16." and fresh.pick(16, [15, 16]) == {}  # whatever the order: i = 15, j = 16
    assert fresh.pick(17, [16, 3]) == {"i": 3}


def test_results_table_clips_the_interval_to_the_scale(backend):
    from oodgen import ratings

    rows = [ratings.Rating(timestamp="2025-05-03T09:00:00.000Z", study="s", rater=f"r{k}", session="x", item=f"item_{k}", source="generated",
                           domain="galaxy", method="slerp", model="", score=v, repeat=0, response_ms=None, comment="")
            for k, v in enumerate((1, 1, 3))]
    ratings.write_ratings(ratings.default_ratings_path(backend.ws.home), rows)
    groups = service.results(None)[0]
    g = groups.iloc[0]
    assert (g["ci95_low"], g["ci95_high"], bool(g["ci95_clipped"])) == (1.0, 4.535, True)  # t interval: [-1.202, 4.535]


def test_a_second_process_on_the_workspace_queues_jobs_for_the_first(tmp_path, monkeypatch):
    from oodgen import tasks
    from oodgen.jobs import JobQueue

    first = JobQueue(Workspace(tmp_path), tasks.RUNNERS, start=True)  # the process that was there first
    monkeypatch.setenv("OODGEN_HOME", str(tmp_path))
    monkeypatch.setattr(service, "_BACKEND", None)
    try:
        assert not service.backend().jobs.runs_jobs and first.runs_jobs
        assert "run in another app process" in service.jobs_html("anon-a")
        queued = service.backend().jobs.submit("diagnose", "anon-a", "diagnostics of nothing", {"run": "no-such-run", "reference": "prior"})
        done = service.backend().jobs.wait(queued.id, 60)  # run (and failed fast: no such run) by the first process
        assert done.status == "failed" and "no run 'no-such-run'" in done.message and first.get(queued.id).status == "failed"
        assert "diagnostics of nothing" in service.jobs_html("anon-a")
    finally:
        first.close()
        monkeypatch.setattr(service, "_BACKEND", None)


def test_on_zerogpu_a_page_load_runs_the_jobs_a_restart_left_queued(tmp_path, monkeypatch):
    from oodgen import jobs, zerogpu

    monkeypatch.setenv("OODGEN_HOME", str(tmp_path))
    monkeypatch.setattr(zerogpu, "active", lambda: True)  # ZeroGPU mode: no worker thread; page events run jobs
    ran = []
    runners = {"echo": lambda ctx: ran.append(ctx.params["k"]) or f"r{ctx.params['k']}"}
    ws = Workspace(tmp_path)
    before = jobs.JobQueue(ws, runners, start=False)  # the process before the restart queued two jobs, then died
    first, second = before.submit("echo", "anon-a", "one", {"k": 1}), before.submit("echo", "anon-a", "two", {"k": 2})
    other = before.submit("echo", "anon-b", "theirs", {"k": 3})
    before.close()
    monkeypatch.setattr(service, "_BACKEND", service.Backend(ws, jobs.JobQueue(ws, runners, start=False), service.Limits()))
    try:
        panel = service.resume_in_request("anon-a")
        assert ran == [1, 2]  # oldest first, and only this owner's
        assert all(service.backend().jobs.get(j.id).status == "done" for j in (first, second))
        assert service.backend().jobs.get(other.id).status == "queued"
        assert "one" in panel and "two" in panel
        monkeypatch.setattr(zerogpu, "active", lambda: False)  # elsewhere the worker thread resumes jobs: nothing to do here
        service.resume_in_request("anon-b")
        assert ran == [1, 2]
    finally:
        service.backend().jobs.close()
        monkeypatch.setattr(service, "_BACKEND", None)


# ---------------------------------------------------------------- quality of generated sets
def _fake_set(ws, owner, run_meta, name="fake set"):
    """A generated-set record (no images) pointing at a run record with ``run_meta`` (None: no run)."""
    run_id = None
    if run_meta is not None:
        run_id = ws.create("runs", "fake run", owner, lambda tmp: {"settings": {"t_end": 900, "steps": 5}, **run_meta}).id
    return ws.create("generated", name, owner, lambda tmp: {"n": 4, "run": run_id or "gone-run-0000", "run_name": "old run"}).id


def test_quality_start_refuses_missing_sets_gone_sources_and_too_few_real_images(backend):
    ws = backend.ws
    with pytest.raises(service.UserError, match="no generated set chosen"):
        service.start_quality("anon-a", "")
    with pytest.raises(service.UserError, match="pick one from the list"):
        service.start_quality("anon-a", "no-such-set")
    gone_run = _fake_set(ws, "anon-a", None)
    with pytest.raises(service.UserError, match="run 'old run' that 'fake set' was generated from is gone"):
        service.start_quality("anon-a", gone_run)
    gone_data = _fake_set(ws, "anon-a", {"dataset": "deleted-set-0000", "dataset_name": "my uploads", "n": 40})
    with pytest.raises(service.UserError, match="dataset 'my uploads' .* is gone"):
        service.start_quality("anon-a", gone_data)
    few = _fake_set(ws, "anon-a", {"dataset": "bundled:faces", "dataset_name": "faces", "n": 8})
    with pytest.raises(service.UserError, match="has 8 images; .* needs at least 10"):
        service.start_quality("anon-a", few)
    with pytest.raises(service.UserError, match="pick one from the list"):
        service.start_quality("anon-b", few)  # someone else's set
    with pytest.raises(service.UserError, match="kind"):
        service.quality_settings("pixels")
    with pytest.raises(service.UserError, match="n_boot"):
        service.quality_settings("image", n_boot=2)
    assert backend.jobs.jobs("anon-a") == []  # nothing was queued
    view = service.quality_view("anon-a", few)
    assert view.table is None and view.montage is None and view.html is None  # not evaluated: nothing to show
    assert service.quality_stamp("anon-a", few) == "" and not service.quality_cached("anon-a", few, service.quality_settings())


def test_quality_view_tables_figures_pictures_and_study_summary(backend):
    from tests.conftest import require_bundled_model

    require_bundled_model()
    owner, jobs = "anon-a", backend.jobs
    inv = jobs.wait(service.start_invert(owner, "bundled:faces", "oodgen-faces-32", service.DDIMSettings(900, 5, 4), "faces run").id, 300)
    assert inv.status == "done", inv.message
    gens = []
    for name in ("faces gaussian", "faces other"):
        g = jobs.wait(service.start_generate(owner, inv.result, 6, name, service.GenerationSettings(method="gaussian", seed=len(gens))).id, 300)
        assert g.status == "done", g.message
        gens.append(g.result)
    settings = service.quality_settings("image", n_boot=20, morph_max=10)
    assert not service.quality_cached(owner, gens[0], settings)
    job = jobs.wait(service.start_quality(owner, gens[0], settings).id, 300)
    assert job.status == "done", job.message
    assert service.quality_cached(owner, gens[0], settings) and not service.quality_cached(owner, gens[0], service.quality_settings())
    assert service.quality_stamp(owner, gens[0]) and not service.quality_stamp(owner, gens[1])

    v = service.quality_view(owner, gens[0])
    assert list(v.table["set"]) == ["floor (real A vs B)", "faces gaussian", "crossfade"]
    assert list(v.table.columns) == list(service.SUMMARY_COLUMNS)
    assert v.table["C2ST statistics 95% CI"].iloc[1].startswith("[")
    assert {"statistic", "floor", "faces gaussian: distance", "faces gaussian: verdict", "crossfade: verdict"} <= set(v.statistics.columns)
    ratio = (v.statistics["faces gaussian: distance"] / v.statistics["floor"]).dropna().to_numpy()
    assert (ratio[:-1] >= ratio[1:] - 1e-9).all()  # farthest above the floor first
    assert set(v.figures) == {"distances", "histograms", "power spectra", "memorization"}
    assert v.montage.dtype == v.nn_pairs.dtype == np.uint8 and v.montage.shape[0] > 3 * 32
    assert v.html.endswith(".html") and "faces gaussian" in open(v.html).read()
    assert not v.html.startswith(str(backend.ws.home))  # a copy: the workspace itself is never served
    assert "faces gaussian" in v.summary and "C2ST" in v.summary and "12" in v.summary
    assert "quality of faces gaussian" in service.jobs_html(owner)

    # the Results tab: each generated set of a study with its cached quality, or "not evaluated"
    note = service.create_study(owner, "faces-mos", "faces", gens, "bundled:faces", 3, "", 0.0)
    assert "Created study" in note
    rows = service.study_quality(None, "faces-mos").set_index("generated set")
    assert rows.loc["faces gaussian", "items in study"] == 3 and rows.loc["faces other", "items in study"] == 3
    assert rows.loc["faces gaussian", "C2ST statistics"] == v.table["C2ST statistics"].iloc[1]
    assert rows.loc["faces gaussian", "C2ST floor"] == v.table["C2ST statistics"].iloc[0]
    assert rows.loc["faces gaussian", "quality"].startswith("image, 12 real")
    assert rows.loc["faces other", "quality"] == "not evaluated"
    assert service.study_quality(None, "no-such-study").empty


def test_study_quality_needs_the_admin_token(backend, monkeypatch):
    monkeypatch.setenv("OODGEN_ADMIN_TOKEN", "s3cret")
    with pytest.raises(service.UserError, match="admin token"):
        service.study_quality("wrong")
    assert service.study_quality("s3cret").empty


def test_batch_generation_with_nearest_pairing_and_alpha_spread_records_and_follows_them(backend):
    import torch

    from oodgen import tasks
    from oodgen.latents import load_latents
    from oodgen.sampling import interpolate, interpolation_centre
    from tests.conftest import require_bundled_model

    require_bundled_model()
    owner, jobs = "anon-a", backend.jobs
    inv = jobs.wait(service.start_invert(owner, "bundled:faces", "oodgen-faces-32", service.DDIMSettings(900, 5, 4), "faces run").id, 300)
    assert inv.status == "done", inv.message
    settings = service.GenerationSettings(method="slerp", alpha=0.5, pairing="nearest", neighbours=3, alpha_spread=0.1, seed=4)
    job = service.start_generate(owner, inv.result, 16, "faces nearest", settings)
    assert "nearest pairs (3 neighbours)" in job.label and "alpha 0.5 ± 0.1" in job.label
    job = jobs.wait(job.id, 300)
    assert job.status == "done", job.message
    rec = backend.ws.get("generated", job.result, owner)

    # the manifest and the latents file record every setting, the new ones included
    assert rec.meta["generation"] == settings.to_json()
    assert rec.meta["generation"]["pairing"] == "nearest" and rec.meta["generation"]["alpha_spread"] == 0.1
    gen_z, gen_meta = load_latents(rec.root / tasks.LATENTS)
    assert gen_meta["generation"] == settings.to_json()
    summary = service.generated_summary(owner, rec.id)
    assert "pairing nearest" in summary and "alpha_spread 0.1" in summary and "neighbours 3" in summary

    # every pair is (i, j) with j among the 3 latents nearest to i; alpha within 0.5 ± 0.1, and really spread
    z, _ = load_latents(backend.ws.get("runs", inv.result, owner).root / tasks.LATENTS)
    flat = z.reshape(len(z), -1).double()
    d = torch.cdist(flat, flat)
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(3, dim=1, largest=False).indices.tolist()
    draws = rec.meta["samples"]
    assert len(draws) == 16
    for k, dr in enumerate(draws):
        assert dr["method"] == "slerp" and dr["j"] in nearest[dr["i"]], (k, dr, nearest[dr["i"]])
        assert 0.4 - 1e-9 <= dr["alpha"] <= 0.6 + 1e-9, dr
        # the saved latent is the interpolation the draw records
        assert torch.allclose(gen_z[k], interpolate(z[dr["i"]], z[dr["j"]], dr["alpha"], "slerp", interpolation_centre(z, "cloud")), atol=1e-4), k
    assert len({round(dr["alpha"], 6) for dr in draws}) > 8
    assert len({dr["i"] for dr in draws}) > 4  # i itself is drawn at random

    # the single decode follows the slerp centre: about the cloud's mean and about the origin give other images
    about_cloud = service.decode_pair(owner, inv.result, 0, 5, 0.5, "slerp", centre="cloud")
    about_origin = service.decode_pair(owner, inv.result, 0, 5, 0.5, "slerp", centre="origin")
    assert about_cloud.shape == about_origin.shape and not np.array_equal(about_cloud, about_origin)
    assert np.array_equal(service.decode_pair(owner, inv.result, 0, 5, 0.5, "lerp", centre="cloud"),
                          service.decode_pair(owner, inv.result, 0, 5, 0.5, "lerp", centre="origin"))  # lerp has no centre
    # the single decode and the strip are finished as a batch set is: the noise model and the intensity calibration change
    # the image (seeded: the same call gives the same image), and both off give the decoder's own output
    plain = service.decode_pair(owner, inv.result, 0, 5, 0.5, "slerp", noise="none", calibration="none")
    calibrated = service.decode_pair(owner, inv.result, 0, 5, 0.5, "slerp", noise="none", calibration="quantiles")
    assert not np.array_equal(plain, calibrated) and not np.array_equal(plain, about_cloud)
    assert np.array_equal(about_cloud, service.decode_pair(owner, inv.result, 0, 5, 0.5, "slerp"))
    ends = service.decode_strip(owner, inv.result, 0, 5, 3, noise="none", calibration="none")
    assert not np.array_equal(ends[0][0], service.decode_strip(owner, inv.result, 0, 5, 3)[0][0])
    with pytest.raises(ValueError, match="calibration"):
        service.decode_pair(owner, inv.result, 0, 5, 0.5, calibration="curves")
    # out-of-range numbers are refused with the range, never clamped or read from the end of the run
    rec_n = len(z)
    for bad in ((-1, 2), (0, rec_n), (rec_n + 5, 1)):
        with pytest.raises(service.UserError, match=f"between 0 and {rec_n - 1}"):
            service.decode_pair(owner, inv.result, *bad, 0.5)
        with pytest.raises(service.UserError, match=f"between 0 and {rec_n - 1}"):
            service.decode_strip(owner, inv.result, *bad, 5)
    for k in (0, 1, 1000):
        with pytest.raises(service.UserError, match="strip length k"):
            service.decode_strip(owner, inv.result, 0, 1, k)
    with pytest.raises(ValueError, match="alpha"):
        service.decode_pair(owner, inv.result, 0, 1, 1.5)
    assert len(service.decode_strip(owner, inv.result, 0, 1, 3)) == 3

    # the download zip: the set's files, in a scratch folder that a later download removes once it is stale
    import os
    import time
    import zipfile

    from oodgen import scratch

    first = service.download_generated(owner, rec.id)
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
    assert f"{rec.id}/{tasks.LATENTS}" in names and sum(n.endswith(".png") for n in names) == 16
    folder = os.path.dirname(first)
    assert os.path.dirname(folder) == str(scratch._root()) and os.path.basename(folder).startswith("dl-")
    stale = time.time() - scratch.KEEP_S - 60
    os.utime(folder, (stale, stale))  # Gradio copied the zip long ago
    second = service.download_generated(owner, rec.id)
    assert not os.path.exists(folder) and os.path.isfile(second) and os.path.dirname(second) != folder


def test_batch_generation_label_names_the_options_that_apply():
    g = service.GenerationSettings
    assert service.generation_label(g(pairing="random")) == "slerp, random pairs, alpha 0.5"
    assert service.generation_label(g(pairing="random", centre="origin")) == "slerp, random pairs, alpha 0.5, about the origin"
    assert service.generation_label(g(method="lerp", pairing="nearest", neighbours=4, alpha_spread=0.2)) == \
        "lerp, nearest pairs (4 neighbours), alpha 0.5 ± 0.2"
    assert service.generation_label({"method": "gaussian", "clusters": 3, "pairing": "nearest"}) == "gaussian, 3 clusters"
    assert service.generation_label(g(calibration="none")) == "slerp, random pairs, alpha 0.5, no intensity calibration"
