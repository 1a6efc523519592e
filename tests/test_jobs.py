"""The job queue: one worker, FIFO, progress and ETA, cancel, state on disk, resume after a restart."""

import json
import threading
import time

import pytest

from oodgen.ddim import Cancelled
from oodgen.jobs import Job, JobQueue
from oodgen.workspace import Workspace


def _counting(ctx):
    n = ctx.params["n"]
    for k in range(n + 1):
        ctx.progress(k, n, "counting")
        time.sleep(0.01)
    return f"made-{n}"


def _until_cancelled(ctx):
    k = 0
    while True:
        ctx.progress(k, 10_000)
        if ctx.cancelled():
            raise Cancelled()
        k += 1
        time.sleep(0.01)


def _fails(ctx):
    raise ValueError("the dataset has no usable images")


RUNNERS = {"count": _counting, "forever": _until_cancelled, "fail": _fails}


def test_jobs_run_in_order_with_progress_and_result(tmp_path):
    q = JobQueue(Workspace(tmp_path), RUNNERS)
    a = q.submit("count", "anon-a", "first", {"n": 20})
    b = q.submit("count", "anon-b", "second", {"n": 5})
    done_b = q.wait(b.id, 30)
    done_a = q.get(a.id)
    assert done_a.status == done_b.status == "done"
    assert (done_a.result, done_b.result) == ("made-20", "made-5")
    assert done_a.finished <= done_b.started  # one worker: the second started after the first finished
    assert done_a.done == done_a.total == 20 and done_a.rate > 0
    assert [j.id for j in q.jobs("anon-a")] == [a.id]  # owners see their own jobs
    on_disk = json.loads(Workspace(tmp_path).job_path(a.id).read_text())
    assert on_disk["status"] == "done" and on_disk["result"] == "made-20"


def test_eta_is_estimated_from_the_rate(tmp_path):
    seen = []

    def slow(ctx):
        for k in range(6):
            ctx.progress(k, 10)
            seen.append(ctx.job.eta_s)
            time.sleep(0.05)

    q = JobQueue(Workspace(tmp_path), {"slow": slow})
    q.wait(q.submit("slow", "o", "slow", {}).id, 30)
    assert seen[0] is None and all(e is not None for e in seen[2:])
    assert 0.1 < seen[-1] < 2.0  # 5 units left at ~20 units/s


def test_cancel_running_and_queued_jobs(tmp_path):
    q = JobQueue(Workspace(tmp_path), RUNNERS)
    running = q.submit("forever", "anon-a", "forever", {})
    queued = q.submit("count", "anon-a", "waits", {"n": 3})
    while q.get(running.id).status != "running":
        time.sleep(0.01)
    assert q.position(queued.id) == 1
    with pytest.raises(KeyError):
        q.cancel(running.id, owner="anon-b")  # not someone else's
    q.cancel(queued.id, "anon-a")
    assert q.get(queued.id).status == "cancelled"
    q.cancel(running.id, "anon-a")
    assert q.wait(running.id, 30).status == "cancelled"
    time.sleep(0.2)
    assert q.get(queued.id).status == "cancelled" and q.get(queued.id).started is None  # never ran


def test_failures_are_reported_not_raised(tmp_path):
    q = JobQueue(Workspace(tmp_path), RUNNERS)
    job = q.wait(q.submit("fail", "o", "bad", {}).id, 30)
    assert job.status == "failed" and job.message == "the dataset has no usable images"
    ok = q.wait(q.submit("count", "o", "after", {"n": 2}).id, 30)  # the worker survives
    assert ok.status == "done"


def test_unfinished_jobs_resume_after_a_restart(tmp_path):
    ws = Workspace(tmp_path)
    interrupted = Job(id="count-aaaa", kind="count", owner="anon-a", label="was running", params={"n": 4}, status="running", done=2, total=4)
    (tmp_path / "jobs" / "count-aaaa.json").write_text(json.dumps(interrupted.to_json()))
    (tmp_path / "jobs" / "garbage.json").write_text("{half")  # a damaged file is skipped, not fatal
    q = JobQueue(ws, RUNNERS)
    job = q.wait("count-aaaa", 30)
    assert job.status == "done" and job.resumed == 1 and job.result == "made-4"


def test_unknown_kinds_fail_on_restart_instead_of_hanging(tmp_path):
    j = Job(id="gone-bbbb", kind="gone", owner="o", label="old", params={}, status="queued")
    (tmp_path / "jobs").mkdir(parents=True)
    (tmp_path / "jobs" / "gone-bbbb.json").write_text(json.dumps(j.to_json()))
    q = JobQueue(Workspace(tmp_path), RUNNERS)
    assert q.get("gone-bbbb").status == "failed" and "restart" in q.get("gone-bbbb").message


def test_params_must_be_json(tmp_path):
    q = JobQueue(Workspace(tmp_path), RUNNERS, start=False)
    with pytest.raises(TypeError):
        q.submit("count", "o", "x", {"n": threading.Lock()})
    with pytest.raises(ValueError, match="unknown job kind"):
        q.submit("nope", "o", "x", {})


def test_run_now_runs_in_the_calling_thread_without_a_worker(tmp_path):
    q = JobQueue(Workspace(tmp_path), RUNNERS, start=False)  # the ZeroGPU mode
    job = q.submit("count", "o", "in request", {"n": 3})
    assert q.get(job.id).status == "queued"
    assert q.run_now(job.id).status == "done" and q.get(job.id).result == "made-3"
