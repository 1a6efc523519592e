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


def test_thumbnail_picks_alternate_i_and_j_in_click_order():
    import copy
    import threading

    picker = service.PairPicker()
    assert picker.note().startswith("Click a thumbnail for sample i")
    assert [picker.pick(n, k) for n, k in ((1, 7), (2, 30), (3, 12))] == ["i", "j", "i"]
    assert picker.note() == "Sample i = 12; click another thumbnail for j."
    # clicks 4 (j = 44), 5 (i = 3) and 6 (j = 60) reach the server as 6, 5, 4: the stale one changes nothing
    assert [picker.pick(6, 60), picker.pick(5, 3), picker.pick(4, 44)] == ["j", "i", None]
    assert picker.note() == "Sample j = 60."
    assert copy.deepcopy(picker).pick(1, 5) == "i"  # a new page session starts afresh
    picker.reset()  # another run: the next click sets i again
    assert picker.pick(5, 9) is None and [picker.pick(7, 1), picker.pick(8, 2)] == ["i", "j"]  # 5 was before the reset
    assert [picker.pick(None, 4), picker.pick(0, 5)] == ["i", "j"]  # unnumbered clicks: in arrival order

    fresh, seen, start = service.PairPicker(), [], threading.Barrier(16)

    def click(n):
        start.wait()
        seen.append((n, fresh.pick(n, n)))

    threads = [threading.Thread(target=click, args=(n,)) for n in range(1, 17)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(which in (None, "i" if n % 2 else "j") for n, which in seen)  # parity decides, whatever the order
    assert fresh.note() == "Sample j = 16."


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
