"""Background jobs: one worker thread runs queued work (inversions, diagnostics, generation) in order.

One worker on purpose: there is one accelerator, and jobs from several users queue on it. Each
job's state lives in ``HOME/jobs/<id>.json`` (rewritten atomically on every change, progress at
most once a second), so a page that was refreshed or closed finds its jobs again, and jobs that
were queued or running when the process died are resumed when it starts again (runners keep
finished chunks in ``HOME/jobs/<id>/`` and skip them).

A runner is ``runner(ctx: JobContext) -> str | None`` (the id of the record it made); it reports
``ctx.progress(done, total)`` and stops when ``ctx.cancelled()`` turns True (raise
:class:`oodgen.ddim.Cancelled`).
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from .ddim import Cancelled
from .workspace import Workspace, check_id, utc_now, write_json

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
SAVE_EVERY_S = 1.0


@dataclass
class Job:
    """One unit of background work and its live state (what ``HOME/jobs/<id>.json`` holds)."""

    id: str  # job id (also the folder of its chunks)
    kind: str  # runner name: invert | diagnose | sweep | generate
    owner: str  # owner id of the user who started it
    label: str  # one line for people, e.g. "invert galaxy with oodgen-faces-32"
    params: dict  # runner arguments (JSON)
    status: str = "queued"  # queued | running | done | failed | cancelled
    done: int = 0  # work units done (image-steps for the model passes)
    total: int = 0  # work units in all (0 while unknown)
    stage: str = ""  # what it is doing now, e.g. "inverting chunk 2/4"
    message: str = ""  # result or error text for people
    result: Optional[str] = None  # id of the record it made
    created: str = field(default_factory=utc_now)  # UTC ISO 8601
    started: Optional[str] = None
    finished: Optional[str] = None
    resumed: int = 0  # how many times it was picked up again after a restart
    rate: float = 0.0  # work units per second since it (re)started
    eta_s: Optional[float] = None  # seconds left at that rate

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class JobContext:
    """What a runner sees: its job's parameters, progress reporting, cancellation, a chunk folder."""

    def __init__(self, queue_: "JobQueue", job: Job) -> None:
        self._q, self.job = queue_, job
        self.workspace = queue_.workspace
        self.params = job.params
        self.chunk_dir: Path = queue_.workspace.job_dir(job.id)
        self._t0 = time.monotonic()
        self._d0: Optional[int] = None
        self._last_save = 0.0

    def progress(self, done: int, total: int, stage: Optional[str] = None) -> None:
        """Record progress (any units, usually image-steps); saved at most once a second."""
        job = self.job
        now = time.monotonic()
        if self._d0 is None:  # rate counts from the first report of this (re)start
            self._d0, self._t0 = done, now
        job.done, job.total = int(done), int(total)
        if stage is not None:
            job.stage = stage
        if now > self._t0 and done > self._d0:
            job.rate = (done - self._d0) / (now - self._t0)
            job.eta_s = max(0.0, (total - done) / job.rate)
        if now - self._last_save >= SAVE_EVERY_S or done >= total:
            self._last_save = now
            self._q._save(job)

    def cancelled(self) -> bool:
        return self._q._cancel_flags.get(self.job.id, threading.Event()).is_set()


Runner = Callable[[JobContext], Optional[str]]


class JobQueue:
    """A FIFO of jobs run one at a time by a daemon thread; state persisted in the workspace."""

    def __init__(self, workspace: Workspace, runners: dict[str, Runner], *, start: bool = True, resume: bool = True) -> None:
        self.workspace = workspace
        self.runners = dict(runners)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._cancel_flags: dict[str, threading.Event] = {}
        self._queue: "queue.Queue[str]" = queue.Queue()
        self._idle = threading.Condition(self._lock)
        self._thread: Optional[threading.Thread] = None
        self._run_lock = threading.Lock()  # one job at a time, whether from the worker or run_now
        self._load(resume)
        if start:
            self.start()

    # ---------------------------------------------------------------- state on disk
    def _save(self, job: Job) -> None:
        try:
            write_json(self.workspace.job_path(job.id), job.to_json())
        except OSError as e:  # progress is not worth crashing a job over; the final state is retried
            log.warning("could not save job %s: %s", job.id, e)

    def _load(self, resume: bool) -> None:
        folder = self.workspace.home / "jobs"
        found = []
        for p in folder.glob("*.json"):
            if p.name.startswith("."):
                continue
            try:
                job = Job.from_json(json.loads(p.read_text(encoding="utf-8")))
                check_id(job.id)
            except (ValueError, TypeError, KeyError) as e:
                log.warning("skipping damaged job file %s: %s", p.name, e)
                continue
            found.append(job)
        for job in sorted(found, key=lambda j: j.created):
            self._jobs[job.id] = job
            if job.status in ACTIVE:
                if resume and job.kind in self.runners:
                    job.status, job.resumed, job.stage = "queued", job.resumed + 1, "resuming after a restart"
                    self._cancel_flags[job.id] = threading.Event()
                    self._queue.put(job.id)
                    log.info("resuming job %s (%s)", job.id, job.label)
                else:
                    job.status, job.message, job.finished = "failed", "interrupted by a restart; start it again", utc_now()
                self._save(job)

    # ---------------------------------------------------------------- API
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="oodgen-jobs", daemon=True)
            self._thread.start()

    def submit(self, kind: str, owner: str, label: str, params: dict[str, Any]) -> Job:
        """Queue a job and return it at once."""
        if kind not in self.runners:
            raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(self.runners)}")
        json.dumps(params)  # params must survive a restart
        job = Job(id=f"{kind}-{secrets.token_hex(5)}", kind=kind, owner=owner, label=label, params=params)
        with self._lock:
            self._jobs[job.id] = job
            self._cancel_flags[job.id] = threading.Event()
        self._save(job)
        self._queue.put(job.id)
        log.info("queued job %s: %s", job.id, label)
        return job

    def cancel(self, job_id: str, owner: Optional[str] = None) -> Job:
        """Ask a job to stop (a queued job stops before it starts). Owners cancel only their own jobs."""
        job = self.get(job_id, owner)
        with self._lock:
            if job.status in ACTIVE:
                self._cancel_flags.setdefault(job.id, threading.Event()).set()
                if job.status == "queued":
                    job.status, job.finished, job.message = "cancelled", utc_now(), "cancelled before it started"
                    shutil.rmtree(self.workspace.job_dir(job.id), ignore_errors=True)
        self._save(job)
        return job

    def get(self, job_id: str, owner: Optional[str] = None) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise KeyError(f"no job {job_id!r} for you")
        return job

    def jobs(self, owner: Optional[str] = None, kind: Optional[str] = None) -> list[Job]:
        """Jobs of ``owner`` (all when None), newest first."""
        with self._lock:
            js = [j for j in self._jobs.values() if (owner is None or j.owner == owner) and (kind is None or j.kind == kind)]
        return sorted(js, key=lambda j: j.created, reverse=True)

    def position(self, job_id: str) -> int:
        """1-based place among queued jobs (0 when running or finished)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != "queued":
                return 0
            queued = sorted((j for j in self._jobs.values() if j.status == "queued"), key=lambda j: j.created)
        return 1 + [j.id for j in queued].index(job_id)

    def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Block until the job has finished (for scripts and tests); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._jobs[job_id].status in ACTIVE:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} still {self._jobs[job_id].status} after {timeout} s")
                self._idle.wait(min(left, 0.5))
            return self._jobs[job_id]

    def run_now(self, job_id: str) -> Job:
        """Run a queued job in the calling thread (queue started with ``start=False``).

        For ZeroGPU, where GPU calls must come from the request of a page event: the event that
        submits a job runs it. Jobs still run one at a time.
        """
        with self._run_lock:
            job = self.get(job_id)
            if job.status == "queued":
                self._run(job)
            return job

    # ---------------------------------------------------------------- the worker
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            job = self._jobs.get(job_id)
            if job is None or job.status != "queued":
                continue
            with self._run_lock:
                if job.status == "queued":
                    self._run(job)

    def _run(self, job: Job) -> None:
        with self._lock:
            job.status, job.started, job.stage = "running", utc_now(), job.stage or "starting"
        self._save(job)
        ctx = JobContext(self, job)
        try:
            job.result = self.runners[job.kind](ctx)
            job.status, job.stage = "done", "finished"
            job.done = max(job.done, job.total)
            job.message = job.message or "finished"
        except Cancelled:
            job.status, job.message = "cancelled", "cancelled; nothing was saved"
        except Exception as e:  # the message is shown to the user; the traceback goes to the log
            log.exception("job %s failed", job.id)
            job.status, job.message = "failed", f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        job.finished, job.eta_s = utc_now(), None
        shutil.rmtree(ctx.chunk_dir, ignore_errors=True)  # chunks only outlive a crash, for the resume
        with self._idle:
            self._save(job)
            self._idle.notify_all()
        log.info("job %s %s: %s", job.id, job.status, job.message)
