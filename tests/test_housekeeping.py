"""Housekeeping: temporary export folders removed after use, out-of-range numbers refused (no browser)."""

import os
import time

import pytest

from oodgen import ratings as R
from oodgen import scratch, service
from oodgen.config import DDIMSettings
from tests.conftest import SAMPLES, require_bundled_model


@pytest.fixture
def backend(service_backend_home):
    return service_backend_home


def test_export_folders_are_removed_after_use(backend, tmp_path, monkeypatch):
    """Every export left a /tmp/oodgen-mos-* folder behind for the life of the machine."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(scratch, "_ROOT", None)
    items = [R.StudyItem(p, "real") for p in sorted((SAMPLES / "galaxy").glob("*.png"))[:2]]
    items += [R.StudyItem(p, "generated", "slerp", "m") for p in sorted((SAMPLES / "faces").glob("*.png"))[:2]]
    R.create_study(backend.ws.home, "s1", "galaxy", items, repeat_fraction=0.0)
    first = service.export_results(None, "s1")
    assert all(os.path.isfile(f) for f in first)
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [scratch._root().name]  # one root, not a folder per export
    old = os.path.dirname(first[0])
    stale = time.time() - scratch.KEEP_S - 60
    os.utime(old, (stale, stale))  # Gradio copied the files long ago
    second = service.export_results(None, "s1")
    assert not os.path.exists(old) and all(os.path.isfile(f) for f in second)
    assert len(list(scratch._root().iterdir())) == 1


def test_t_end_outside_the_schedule_is_refused_not_clamped(backend):
    require_bundled_model()
    with pytest.raises(service.UserError, match=r"t_end 5000 is outside oodgen-faces-32's schedule \(1 to 999\)"):
        service.start_invert("anon-a", "bundled:galaxy", "oodgen-faces-32", DDIMSettings(5000, 50, 32))
    assert backend.jobs.jobs("anon-a") == []  # nothing queued


def test_finished_jobs_leave_the_jobs_panel_after_an_hour(backend, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from oodgen.jobs import Job

    def ago(minutes):
        return (datetime.now(timezone.utc) - timedelta(minutes=minutes)).isoformat(timespec="seconds").replace("+00:00", "Z")

    jobs = [Job("j-run", "invert", "anon-a", "still running", {}, status="running"),
            Job("j-new", "invert", "anon-a", "finished just now", {}, status="done", finished=ago(5)),
            Job("j-old", "invert", "anon-a", "finished yesterday", {}, status="done", finished=ago(24 * 60)),
            Job("j-bad", "invert", "anon-a", "failed two hours ago", {}, status="failed", finished=ago(120))]
    monkeypatch.setattr(backend.jobs, "jobs", lambda owner: jobs)
    panel = service.jobs_html("anon-a")
    assert "still running" in panel and "finished just now" in panel
    assert "finished yesterday" not in panel and "failed two hours ago" not in panel
    del jobs[:2]
    assert "No jobs in the last hour" in service.jobs_html("anon-a")


# ---------------------------------------------------------------- deleting one's own things
def _fill(tmp):
    (tmp / "payload.txt").write_text("x")
    return {"n": 3}


def test_an_owner_deletes_their_own_datasets_runs_sets_and_finished_jobs(backend):
    import threading

    ws, q = backend.ws, backend.jobs
    mine = {kind: ws.create(kind, f"my {kind}", "anon-a", _fill) for kind in service.DELETABLE}
    theirs = ws.create("runs", "their shared run", "anon-b", _fill)
    theirs = ws.update("runs", theirs.id, shared=True)
    release = threading.Event()
    q.runners["hold"] = lambda ctx: release.wait(60) and {}
    q.runners["noop"] = lambda ctx: {}
    done = q.wait(q.submit("noop", "anon-a", "a finished job", {}).id, 60)
    busy = q.submit("hold", "anon-a", "a job reading the dataset", {"dataset": mine["datasets"].id})
    deadline = time.monotonic() + 60
    while q.get(busy.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)

    refs = [ref for _, ref in service.deletable_choices("anon-a")]
    assert sorted(refs) == sorted([f"{k}:{r.id}" for k, r in mine.items()] + [f"jobs:{done.id}"])  # not the shared run, not the active job
    assert "all its files" in service.delete_question("anon-a", f"runs:{mine['runs'].id}")
    with pytest.raises(service.UserError, match="in use by the job 'a job reading the dataset'"):
        service.delete_own("anon-a", f"datasets:{mine['datasets'].id}")
    with pytest.raises(service.UserError, match="cancel it first"):
        service.delete_own("anon-a", f"jobs:{busy.id}")
    with pytest.raises(service.UserError, match="only its owner can delete it"):
        service.delete_own("anon-a", f"runs:{theirs.id}")
    with pytest.raises(service.UserError, match="not yours"):
        service.delete_own("anon-b", f"generated:{mine['generated'].id}")  # another visitor cannot reach it at all

    for kind in ("runs", "generated"):
        root = mine[kind].root
        assert "Deleted" in service.delete_own("anon-a", f"{kind}:{mine[kind].id}")
        assert not root.exists() and ws.list(kind, "anon-a") == ([theirs] if kind == "runs" else [])
    assert "Removed" in service.delete_own("anon-a", f"jobs:{done.id}")
    assert done.id not in [j.id for j in q.jobs("anon-a")] and not ws.job_path(done.id).exists()
    release.set()
    q.wait(busy.id, 60)
    service.delete_own("anon-a", f"datasets:{mine['datasets'].id}")  # free once its job has ended
    assert ws.list("datasets", "anon-a") == [] and ws.get("runs", theirs.id).root.exists()
    with pytest.raises(service.UserError, match="gone"):
        service.delete_own("anon-a", f"datasets:{mine['datasets'].id}")
    with pytest.raises(service.UserError, match="nothing chosen"):
        service.delete_question("anon-a", None)
