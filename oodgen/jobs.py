"""Background jobs: one worker runs queued work (inversions, diagnostics, generation) in order.

One worker on purpose: there is one accelerator, and jobs from several users queue on it. The
disk is the source of truth, so several app processes may share one ``$OODGEN_HOME`` (an old and
a new process overlapping during a Space restart, ``python app.py`` started twice):

* each job's state lives in ``HOME/jobs/<id>.json`` (rewritten atomically on every change,
  progress at most once a second); every process lists and shows jobs from these files, so a page
  that was refreshed or closed, or served by another process, finds its jobs again;
* only the process holding the worker lock ``HOME/jobs/.worker.lock`` (an OS file lock, released
  by the OS when its holder dies) runs jobs. Any process may submit (the job is queued on disk)
  and cancel (a flag file ``HOME/jobs/<id>.cancel`` that the running job polls). The others keep
  trying to take the lock over, so when the holder exits or crashes another process goes on;
* whoever takes the lock resumes the jobs its dead predecessor left running (runners keep
  finished chunks in ``HOME/jobs/<id>/`` and skip them);
* state changes that two processes could race on (queued -> running, queued -> cancelled, the
  final state) happen under a short lock ``HOME/jobs/.state.lock``.

A runner is ``runner(ctx: JobContext) -> str | None`` (the id of the record it made); it reports
``ctx.progress(done, total)`` and stops when ``ctx.cancelled()`` turns True (raise
:class:`oodgen.ddim.Cancelled`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from filelock import FileLock
from filelock import Timeout as LockTimeout

from .ddim import Cancelled
from .fsutil import utc_now, write_json
from .workspace import Workspace, check_id

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
SAVE_EVERY_S = 1.0  # progress is written at most this often
POLL_S = 0.5  # the worker looks for jobs queued by other processes this often
TAKE_OVER_S = 2.0  # a process without the worker lock tries to take it this often
REFRESH_S = 0.3  # listings re-read the job folder at most this often (changed files only)
STATE_LOCK_TIMEOUT_S = 30.0
WORKER_LOCK = ".worker.lock"
WORKER_INFO = ".worker.json"  # pid and host of the lock holder, for the other processes' Jobs panel
STATE_LOCK = ".state.lock"
CANCEL_SUFFIX = ".cancel"


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
    order: float = 0.0  # submission time in epoch seconds: the FIFO order across processes (0 in older files)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _fifo(job: Job) -> tuple:
    return job.created, job.order, job.id


class JobContext:
    """What a runner sees: its job's parameters, progress reporting, cancellation, a chunk folder."""

    def __init__(self, queue_: "JobQueue", job: Job) -> None:
        self._q, self.job = queue_, job
        self.workspace = queue_.workspace
        self.params = job.params
        self.chunk_dir: Path = queue_.workspace.job_dir(job.id)
        self._flag = queue_.cancel_path(job.id)
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
        """Whether any process asked this job to stop (its cancel flag file exists)."""
        return self._flag.exists()


Runner = Callable[[JobContext], Optional[str]]


class JobQueue:
    """A FIFO of jobs in the workspace, run one at a time by the process that holds the worker lock.

    ``start=True`` starts the worker thread (it runs jobs while this process holds the lock, and
    keeps trying to take the lock over otherwise). ``start=False`` runs nothing in the background:
    :meth:`run_now` runs a job in the calling thread (ZeroGPU). Every instance, with or without a
    worker, lists, submits and cancels jobs through the files in ``HOME/jobs/``.
    """

    def __init__(self, workspace: Workspace, runners: dict[str, Runner], *, start: bool = True, resume: bool = True) -> None:
        self.workspace = workspace
        self.runners = dict(runners)
        self.folder = workspace.home / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._resume = resume
        self._lock = threading.Lock()  # guards _jobs, _keys, _live
        self._idle = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}  # cache of the job files
        self._keys: dict[str, tuple] = {}  # (inode, mtime, size) of each file when read, to re-read only changed ones
        self._live: dict[str, Job] = {}  # jobs this process is running: fresher than their files
        self._refreshed = 0.0
        self._run_lock = threading.Lock()  # one job at a time in this process, whether from the worker or run_now
        self._worker_lock = FileLock(str(self.folder / WORKER_LOCK), thread_local=False)  # across processes
        self._state_lock = FileLock(str(self.folder / STATE_LOCK), timeout=STATE_LOCK_TIMEOUT_S)
        self._holding = False
        self._told_other = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._refresh(force=True)
        with self._run_lock:
            self._take_over()  # at once: a restarted app resumes (and reports) what the dead one left
            if not start:
                self._give_up()
        if start:
            self.start()

    # ---------------------------------------------------------------- state on disk
    def cancel_path(self, job_id: str) -> Path:
        return self.folder / f"{check_id(job_id, 'job id')}{CANCEL_SUFFIX}"

    def _save(self, job: Job) -> None:
        try:
            write_json(self.workspace.job_path(job.id), job.to_json())
        except OSError as e:  # progress is not worth crashing a job over; the final state is retried
            log.warning("could not save job %s: %s", job.id, e)

    def _read(self, job_id: str) -> Optional[Job]:
        """The job as its file says now; None when it is missing or damaged."""
        path = self.workspace.job_path(job_id)
        try:
            job = Job.from_json(json.loads(path.read_text(encoding="utf-8")))
            if check_id(job.id) != job_id:
                raise ValueError(f"the file names job {job.id!r}")
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("skipping damaged job file %s: %s", path.name, e)
            return None
        return job

    def _remember(self, job: Job) -> Job:
        """Put a job read or written by this process into the cache (a live job stays as it is)."""
        with self._lock:
            live = self._live.get(job.id)
            if live is not None:
                return live
            self._jobs[job.id] = job
            self._keys.pop(job.id, None)  # re-read on the next refresh
            return job

    def _refresh(self, force: bool = False) -> None:
        """Re-read the job files that changed since the last look (at most every REFRESH_S unless forced)."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_S:
            return
        self._refreshed = now
        found: dict[str, tuple] = {}
        try:
            with os.scandir(self.folder) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or not name.endswith(".json"):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    found[name[:-5]] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return
        with self._lock:
            changed = [jid for jid, key in found.items() if self._keys.get(jid) != key and jid not in self._live]
            for jid in [j for j in self._jobs if j not in found and j not in self._live]:
                del self._jobs[jid]
                self._keys.pop(jid, None)
        for jid in changed:
            try:
                check_id(jid)
            except ValueError:
                continue
            job = self._read(jid)
            with self._lock:
                self._keys[jid] = found[jid]  # a damaged file is not read (nor warned about) again until it changes
                if job is not None and jid not in self._live:
                    self._jobs[jid] = job

    @contextmanager
    def _state(self) -> Iterator[None]:
        """Hold the short cross-process lock of job state changes."""
        try:
            self._state_lock.acquire()
        except LockTimeout:
            raise TimeoutError(f"{self._state_lock.lock_file} has been locked for {STATE_LOCK_TIMEOUT_S:.0f} s; "
                               "check for a stuck app process on this workspace and try again") from None
        try:
            yield
        finally:
            self._state_lock.release()

    # ---------------------------------------------------------------- the worker lock
    @property
    def runs_jobs(self) -> bool:
        """Whether this process holds the worker lock (runs the jobs of this workspace)."""
        return self._holding

    def worker_note(self) -> Optional[str]:
        """One line for people when another process runs this workspace's jobs (None when this one does, or none tries)."""
        if self._holding or self._thread is None or not self._thread.is_alive():
            return None
        try:
            info = json.loads((self.folder / WORKER_INFO).read_text(encoding="utf-8"))
            who = f" (pid {int(info['pid'])} on {info['host']})"
        except (OSError, ValueError, KeyError, TypeError):
            who = ""
        return f"Jobs of this workspace run in another app process{who}; jobs started here queue for it."

    def _take_over(self) -> bool:
        """Take the worker lock if it is free (caller holds _run_lock); then resume what a dead holder left."""
        if self._holding:
            return True
        try:
            self._worker_lock.acquire(timeout=0)
        except LockTimeout:
            if not self._told_other:
                self._told_other = True
                log.warning("another process holds %s and runs the jobs of %s; this process queues jobs for it "
                            "and takes over when it exits", self._worker_lock.lock_file, self.workspace.home)
            return False
        self._holding = True
        if self._told_other:
            log.info("took over the jobs of %s", self.workspace.home)
        self._told_other = False
        try:
            write_json(self.folder / WORKER_INFO, {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()})
            self._recover()
        except (OSError, TimeoutError) as e:
            log.warning("could not check for interrupted jobs in %s: %s", self.folder, e)
        self._wake.set()
        return True

    def _give_up(self) -> None:
        """Release the worker lock (caller holds _run_lock)."""
        if self._holding:
            (self.folder / WORKER_INFO).unlink(missing_ok=True)
            self._worker_lock.release()
            self._holding = False

    def _recover(self) -> None:
        """Just after taking the worker lock: jobs still 'running' on disk belong to a process that died."""
        self._refresh(force=True)
        with self._state():
            for job in sorted(self.jobs(), key=_fifo):
                if job.status not in ACTIVE:
                    continue
                job = self._read(job.id) or job
                if job.status == "running" and self.cancel_path(job.id).exists():
                    self._finish_unrun(job, "cancelled", "cancelled; nothing was saved")
                elif job.kind not in self.runners or (job.status == "running" and not self._resume):
                    self._finish_unrun(job, "failed", "interrupted by a restart; start it again")
                elif job.status == "running":
                    job.status, job.resumed, job.stage = "queued", job.resumed + 1, "resuming after a restart"
                    self._save(job)
                    self._remember(job)
                    log.info("resuming job %s (%s)", job.id, job.label)

    def _finish_unrun(self, job: Job, status: str, message: str) -> None:
        """End a job that will not run (again), under the state lock."""
        job.status, job.message, job.finished, job.eta_s = status, message, utc_now(), None
        self._save(job)
        self.cancel_path(job.id).unlink(missing_ok=True)
        shutil.rmtree(self.workspace.job_dir(job.id), ignore_errors=True)
        self._remember(job)
        log.info("job %s %s: %s", job.id, status, message)

    # ---------------------------------------------------------------- API
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="oodgen-jobs", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Stop the worker after its current job and release the worker lock, so another process takes over."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._run_lock.acquire(timeout=timeout):
            try:
                self._give_up()
            finally:
                self._run_lock.release()
        else:
            log.warning("a job is still running after %.0f s; the worker lock of %s stays held", timeout, self.workspace.home)

    def submit(self, kind: str, owner: str, label: str, params: dict[str, Any]) -> Job:
        """Queue a job (on disk) and return it at once; the process that holds the worker lock runs it."""
        if kind not in self.runners:
            raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(self.runners)}")
        json.dumps(params)  # params must survive a restart
        job = Job(id=f"{kind}-{secrets.token_hex(5)}", kind=kind, owner=owner, label=label, params=params, order=time.time())
        write_json(self.workspace.job_path(job.id), job.to_json())  # a job that is not on disk would never run: raise
        self._remember(job)
        self._wake.set()
        log.info("queued job %s: %s", job.id, label)
        return job

    def cancel(self, job_id: str, owner: Optional[str] = None) -> Job:
        """Ask a job to stop (a queued job stops before it starts), from any process. Owners cancel only their own jobs."""
        job = self.get(job_id, owner)
        if job.status not in ACTIVE:
            return job
        with self._state():
            current = self._read(job_id) or job
            if current.status == "queued":
                self._finish_unrun(current, "cancelled", "cancelled before it started")
            elif current.status == "running":
                self.cancel_path(job_id).touch()  # the runner polls it; the holder removes it when the job ends
            return self._remember(current)

    def forget(self, job_id: str, owner: str) -> Job:
        """Remove a finished job of ``owner`` from the list (its file and folder; what it saved stays). Active jobs are refused."""
        job = self.get(job_id, owner)
        with self._state():
            current = self._read(job_id) or job
            if current.status in ACTIVE or job_id in self._live:
                raise ValueError(f"job {current.label!r} is {current.status}: cancel it first, then remove it once it has ended")
            self.workspace.job_path(job_id).unlink(missing_ok=True)
            shutil.rmtree(self.workspace.job_dir(job_id), ignore_errors=True)
        with self._lock:
            self._jobs.pop(job_id, None)
            self._keys.pop(job_id, None)
        return current

    def get(self, job_id: str, owner: Optional[str] = None) -> Job:
        self._refresh()
        with self._lock:
            job = self._live.get(job_id) or self._jobs.get(job_id)
        if job is None:  # made by another process since the last look?
            self._refresh(force=True)
            with self._lock:
                job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise KeyError(f"no job {job_id!r} for you")
        return job

    def jobs(self, owner: Optional[str] = None, kind: Optional[str] = None) -> list[Job]:
        """Jobs of ``owner`` (all when None), newest first, as their files say (live state for jobs run here)."""
        self._refresh()
        with self._lock:
            everything = {**self._jobs, **self._live}
        js = [j for j in everything.values() if (owner is None or j.owner == owner) and (kind is None or j.kind == kind)]
        return sorted(js, key=_fifo, reverse=True)

    def position(self, job_id: str) -> int:
        """1-based place among queued jobs (0 when running or finished)."""
        queued = sorted((j for j in self.jobs() if j.status == "queued"), key=_fifo)
        ids = [j.id for j in queued]
        return 1 + ids.index(job_id) if job_id in ids else 0

    def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Block until the job has finished, whichever process runs it (scripts and tests); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status not in ACTIVE:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            with self._idle:
                self._idle.wait(min(left, 0.2))

    def run_now(self, job_id: str) -> Job:
        """Run a queued job in the calling thread (queue started with ``start=False``).

        For ZeroGPU, where GPU calls must come from the request of a page event: the event that
        submits a job runs it. Jobs still run one at a time. When another process holds the
        worker lock the job stays queued, and that process runs it.
        """
        with self._run_lock:
            took = not self._holding
            if not self._take_over():
                log.info("job %s stays queued: another process runs the jobs of %s", job_id, self.workspace.home)
                return self.get(job_id)
            try:
                job = self._claim(job_id)
                if job is not None:
                    self._run(job)
            finally:
                if took and (self._thread is None or not self._thread.is_alive()):
                    self._give_up()
            return self.get(job_id)

    # ---------------------------------------------------------------- the worker
    def _next(self) -> Optional[str]:
        self._refresh(force=True)
        queued = [j for j in self.jobs() if j.status == "queued"]
        return min(queued, key=_fifo).id if queued else None

    def _claim(self, job_id: str) -> Optional[Job]:
        """Mark a queued job running, atomically across processes; None when it is not queued any more."""
        with self._state():
            job = self._read(job_id)
            if job is None or job.status != "queued":
                if job is not None:
                    self._remember(job)
                return None
            if job.kind not in self.runners:
                self._finish_unrun(job, "failed", f"this app version has no {job.kind!r} jobs; start it again")
                return None
            job.status, job.started, job.stage = "running", utc_now(), job.stage or "starting"
            self._save(job)
            with self._lock:
                self._live[job.id] = self._jobs[job.id] = job
            return job

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._holding:
                    with self._run_lock:
                        holding = self._take_over()
                    if not holding:
                        self._stop.wait(TAKE_OVER_S)
                        continue
                job_id = self._next()
                if job_id is None:
                    self._wake.wait(POLL_S)
                    self._wake.clear()
                    continue
                with self._run_lock:
                    if self._stop.is_set():
                        break
                    job = self._claim(job_id)
                    if job is not None:
                        self._run(job)
            except Exception:  # the worker must survive a full disk or a stuck lock; it retries
                log.exception("job worker of %s", self.workspace.home)
                self._stop.wait(POLL_S)

    def _run(self, job: Job) -> None:
        with self._lock:
            self._live[job.id] = self._jobs[job.id] = job
        try:
            if job.status != "running":
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
            try:
                with self._state():
                    self._save(job)
                    self.cancel_path(job.id).unlink(missing_ok=True)
            except TimeoutError as e:
                log.warning("%s; saving job %s without it", e, job.id)
                self._save(job)
                self.cancel_path(job.id).unlink(missing_ok=True)
        finally:  # also after a KeyboardInterrupt: the file then still says "running" and the job resumes later
            with self._idle:
                self._live.pop(job.id, None)
                self._jobs[job.id] = job
                self._keys.pop(job.id, None)
                self._idle.notify_all()
        log.info("job %s %s: %s", job.id, job.status, job.message)
