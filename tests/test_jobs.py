"""The job queue: one worker, FIFO, progress and ETA, cancel, state on disk, resume after a restart,
one worker per workspace across processes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from oodgen.ddim import Cancelled
from oodgen.jobs import Job, JobQueue
from oodgen.workspace import Workspace
from tests.conftest import REPO


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


def _tagged(tag, ran, delay=0.01):
    """A counting runner that says which queue ran it and records every job it ran."""

    def run(ctx):
        ran.append((tag, ctx.job.id))
        n = ctx.params["n"]
        for k in range(n + 1):
            ctx.progress(k, n, "counting")
            if ctx.cancelled():
                raise Cancelled()
            time.sleep(delay)
        return f"{tag}-{n}"

    return run


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_queues_on_one_workspace_run_each_job_once_in_the_lock_holder(tmp_path):
    ran = []
    a = JobQueue(Workspace(tmp_path), {"count": _tagged("a", ran), "forever": _until_cancelled})
    b = JobQueue(Workspace(tmp_path), {"count": _tagged("b", ran), "forever": _until_cancelled})  # a second app process
    jobs = [(a if k % 2 else b).submit("count", "anon-x", f"job {k}", {"n": 3}) for k in range(6)]
    done = [b.wait(j.id, 60) for j in jobs]
    assert [d.result for d in done] == ["a-3"] * 6  # b queued half of them; a ran them all
    assert sorted(job_id for _, job_id in ran) == sorted(j.id for j in jobs)  # each exactly once
    assert [d.started for d in done] == sorted(d.started for d in done)  # FIFO across both queues
    assert {j.id: j.status for j in a.jobs()} == {j.id: j.status for j in b.jobs()}  # one truth: the files
    assert a.runs_jobs and not b.runs_jobs
    assert a.worker_note() is None and f"another app process (pid {os.getpid()}" in b.worker_note()

    # cancel from the process that does not run the job
    running = b.submit("forever", "anon-b", "long", {})
    queued = b.submit("count", "anon-b", "waits", {"n": 3})
    _until(lambda: b.get(running.id).status == "running")
    assert b.position(queued.id) == 1
    assert b.cancel(queued.id, "anon-b").status == "cancelled"
    with pytest.raises(KeyError):
        b.cancel(running.id, "anon-a")  # not someone else's
    b.cancel(running.id, "anon-b")
    assert b.wait(running.id, 30).status == "cancelled" and a.get(running.id).status == "cancelled"
    assert a.get(queued.id).started is None  # never ran
    assert not list((tmp_path / "jobs").glob("*.cancel"))  # the flag goes with the job

    # the holder exits: the other queue takes the lock over and runs what is queued
    ran.clear()
    a.close()
    after = a.submit("count", "anon-a", "after a left", {"n": 2})  # a can still queue
    assert b.wait(after.id, 30).result == "b-2" and b.runs_jobs and ran == [("b", after.id)]


_CHILD = """
import sys, time
from oodgen.ddim import Cancelled
from oodgen.jobs import JobQueue
from oodgen.workspace import Workspace

def count(ctx):
    n = ctx.params["n"]
    for k in range(n + 1):
        ctx.progress(k, n, "counting")
        if ctx.cancelled():
            raise Cancelled()
        time.sleep(0.05)
    return "child"

q = JobQueue(Workspace(sys.argv[1]), {"count": count})
print("holder" if q.runs_jobs else "not holder", flush=True)
time.sleep(600)
"""


def test_jobs_of_a_crashed_holder_process_resume_in_the_next_one(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        line = child.stdout.readline().strip()
        assert line == "holder", child.stderr.read() if child.poll() is not None else line
        ran = []
        q = JobQueue(Workspace(tmp_path), {"count": _tagged("parent", ran)})
        assert not q.runs_jobs and f"pid {child.pid}" in q.worker_note()

        stopped = q.submit("count", "anon-a", "cancel me", {"n": 10_000})  # queued here, run by the child
        _until(lambda: q.get(stopped.id).status == "running")
        q.cancel(stopped.id, "anon-a")  # a flag file: the child's runner sees it
        assert q.wait(stopped.id, 30).message == "cancelled; nothing was saved"

        job = q.submit("count", "anon-a", "crash in the middle", {"n": 100})
        _until(lambda: q.get(job.id).done >= 5)  # progress written by the child
        os.kill(child.pid, signal.SIGKILL)  # no clean-up: the OS drops its lock
        child.wait(30)
        assert json.loads(Workspace(tmp_path).job_path(job.id).read_text())["status"] == "running"
        done = q.wait(job.id, 60)  # this process takes over and resumes it
        assert done.status == "done" and done.result == "parent-100" and done.resumed == 1
        assert q.runs_jobs and ran == [("parent", job.id)]  # the cancelled job was not run again
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
