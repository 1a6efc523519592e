"""Plain-value operations behind the web app: datasets, jobs, runs, diagnostics, generation, quality, MOS.

``app.py`` wires widgets to these functions; they take and return plain values (strings, uint8
arrays, plotly figures, DataFrames, file paths) and raise :class:`UserError` (or another
``ValueError``) with a message written for the person at the keyboard. The :class:`Backend`
(workspace + job queue) is shared by all users on purpose: there is one disk and one accelerator;
what a user sees is filtered by their owner id.
"""

from __future__ import annotations

import atexit
import hashlib
import html
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from . import pipeline, ratings, scratch, tasks, uploads, zerogpu
from .config import DDIMSettings, GenerationSettings
from .data import LoadReport, Sample, fit_stretch, load_paths, preview, to_uint8_rgb
from .jobs import ACTIVE, Job, JobQueue
from .models import FrozenDDPM
from .latents import source_profile
from .sampling import Draw, SourceProfile, finish, interpolate, interpolation_centre, interpolation_strip
from .fsutil import atomic_write
from .generated import image_files
from .workspace import Workspace, WorkspaceError, check_name, owner_from_key, owner_from_login

log = logging.getLogger(__name__)

DISPLAY_SIDE = 192  # pixels of a displayed sample (small models are upscaled with nearest neighbour)
THUMB_SIDE = 64  # pixels of a thumbnail
get_model = tasks.get_model


class UserError(ValueError):
    """Bad input from the page: the message names the problem and the fix."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", name, raw, default)
        return default


@dataclass(frozen=True)
class Limits:
    """Upload limits, from the environment so a deployment can change them."""

    max_upload_mb: int = field(default_factory=lambda: _env_int("OODGEN_MAX_UPLOAD_MB", 200))  # per file (enforced by Gradio)
    max_files: int = field(default_factory=lambda: _env_int("OODGEN_MAX_FILES", 500))  # files per upload
    max_images: int = field(default_factory=lambda: _env_int("OODGEN_MAX_IMAGES", 5000))  # samples per dataset
    max_generate: int = field(default_factory=lambda: _env_int("OODGEN_MAX_GENERATE", 1000))  # samples per generated set


@dataclass
class Backend:
    """The workspace and the job queue of this process."""

    ws: Workspace
    jobs: JobQueue
    limits: Limits


_BACKEND: Optional[Backend] = None
_BACKEND_LOCK = threading.Lock()


def backend() -> Backend:
    """The process-wide backend, made on first use from ``$OODGEN_HOME`` (resumes unfinished jobs)."""
    global _BACKEND
    with _BACKEND_LOCK:
        if _BACKEND is None:
            ws = Workspace()
            # on ZeroGPU no background thread may use the GPU: the page event that submits a job runs it (run_now)
            _BACKEND = Backend(ws, JobQueue(ws, tasks.RUNNERS, start=not zerogpu.active()), Limits())
            log.info("workspace: %s", ws.home)
        return _BACKEND


def owner_for(browser_key: Optional[str], username: Optional[str] = None) -> str:
    """The owner id of a visitor: their Hugging Face login when there is one, else their browser key."""
    return owner_from_login(username) if username else owner_from_key(browser_key)


# ---------------------------------------------------------------- models
def model_summary(name: str) -> str:
    """One Markdown line: resolution, parameters, device; or why the model cannot be loaded."""
    try:
        i = get_model(name).info()
    except Exception as e:  # loading errors are written for people (offline hub, bad folder, ...)
        return f"**Cannot load {html.escape(str(name))}**: {e}"
    return f"**{i['name']}**: {i['resolution']}x{i['resolution']} px, {i['parameters'] / 1e6:.2f}M parameters, on {i['device']} ({i['dtype']})"


# ---------------------------------------------------------------- data
def upscale(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [k H, k W, 3], k = side // max(H, W), by pixel repetition (no invented detail)."""
    k = max(1, side // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


_SERVED = Path(tempfile.mkdtemp(prefix="oodgen-served-"))  # images handed to Gradio by content (never the workspace)
atexit.register(shutil.rmtree, _SERVED, True)


def image_file(rgb: np.ndarray) -> str:
    """A PNG file of the uint8 image ``rgb`` for Gradio to serve: named by its content, written once, never rewritten.

    Returning the array instead makes Gradio write it to one cache file per content on every
    request, so two visitors shown the same image (a bundled set's preview) can fetch it while it
    is being rewritten and get it cut. A file here is complete when it appears (atomic rename).
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:32]
    target = _SERVED / digest[:2] / f"{digest}.png"
    if not target.exists():
        atomic_write(target, lambda tmp: tmp.write_bytes(data), fsync=False)
    return str(target)


def gallery(samples: Sequence[Sample], limit: int = 60) -> list[tuple[str, str]]:
    """(image file, caption) pairs for a preview (files from :func:`image_file`); physical data share one fitted per-band asinh stretch."""
    if not samples:
        return []
    stretch = fit_stretch(samples) if samples[0].kind == "physical" else None
    return [(image_file(upscale(preview(s, stretch), 128)), s.name) for s in samples[:limit]]


def report_markdown(report: LoadReport, title: str = "") -> str:
    """What loaded and what was skipped, per file."""
    s = report.samples
    head = f"{title}: " if title else ""
    lines = [f"{head}Loaded **{len(s)}** samples" + (f" ({s[0].kind}{', ' + s[0].unit if s[0].unit else ''})" if s else "") + "."]
    if report.errors:
        lines.append(f"Skipped **{len(report.errors)}** file(s); the others were kept:")
        lines += _skipped_lines(report.errors)
    return "\n".join(lines)


def _skipped_lines(errors: Sequence[tuple[str, str]], limit: int = 50) -> list[str]:
    """One Markdown bullet per skipped file: its name once, then why (messages that start with the name lose it)."""
    out = [f"- `{html.escape(name)}`: {html.escape(msg[len(name) + 2:] if msg.startswith(name + ': ') else msg)}" for name, msg in errors[:limit]]
    if len(errors) > limit:
        out.append(f"- ... and {len(errors) - limit} more")
    return out


def upload_markdown(plan: "uploads.UploadPlan", saved_as: str = "") -> str:
    """Exactly what an upload kept, skipped (with why) and left out as not data."""
    head = f"Saved as dataset **{html.escape(saved_as)}**: kept" if saved_as else "Kept"
    lines = [f"{head} **{len(plan.kept)}** sample(s), {html.escape(plan.look)}; only these are in the dataset (inverting it reads "
             "exactly them)." if plan.kept else "Kept **no** samples."]
    if plan.skipped:
        lines.append(f"Skipped **{len(plan.skipped)}** (not saved in the dataset):")
        lines += _skipped_lines(plan.skipped)
    if plan.ignored:
        shown = ", ".join(f"`{html.escape(n)}`" for n in plan.ignored[:20]) + (f" and {len(plan.ignored) - 20} more" if len(plan.ignored) > 20 else "")
        lines.append(f"Not data, left out: {shown}.")
    return "\n".join(lines)


def dataset_choices(owner: str) -> list[tuple[str, str]]:
    return tasks.dataset_refs(backend().ws, owner)


def show_dataset(owner: str, ref: str) -> tuple[list, str]:
    """(gallery, report) of a bundled or saved dataset."""
    if not ref:
        raise UserError("pick a dataset from the list, or upload files")
    report, name = tasks.load_dataset(backend().ws, ref, owner)
    return gallery(report.samples), report_markdown(report, name)


def upload_dataset(owner: str, name: str, files: Sequence[str], shared: bool = False) -> tuple[str, list, str]:
    """Read uploaded files, keep the good ones as a new dataset: (dataset id, gallery, report)."""
    limits = backend().limits
    files = [f for f in (files or []) if f]
    if not files:
        raise UserError("no files chosen: drop images, FITS, .npy/.npz files or a zip on the upload box")
    if len(files) > limits.max_files:
        raise UserError(f"{len(files)} files is more than this app takes at once ({limits.max_files}); zip them, or raise OODGEN_MAX_FILES")
    plan = uploads.plan_upload(files)
    if not plan.kept:
        raise UserError(upload_markdown(plan) + "\n\nNone of the files held a usable image, so nothing was saved; see the reasons above.")
    if len(plan.kept) > limits.max_images:
        raise UserError(f"the upload holds {len(plan.kept)} images, more than {limits.max_images}; split it, or raise OODGEN_MAX_IMAGES")
    try:
        shown = gallery(plan.kept)  # before saving: a dataset that cannot be shown is not saved
    except ValueError as e:
        raise UserError(f"{e}\n\nNothing was saved.") from None
    try:
        rec = uploads.save_upload(backend().ws, owner, name or Path(files[0]).stem, plan, shared=shared)
    except WorkspaceError as e:
        raise UserError(f"{e}; nothing was saved") from None
    return rec.id, shown, upload_markdown(plan, rec.name) + (" Shared with all users." if shared else " Only you see it.")


# ---------------------------------------------------------------- jobs
def _label(job: Job) -> str:
    return html.escape(job.label)


def _eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "ETA -"
    s = int(round(seconds))
    return f"ETA {s // 60}:{s % 60:02d}"


JOBS_SHOWN_S = 3600.0  # a finished, failed or cancelled job leaves the Jobs panel this long after it ended (its records stay)


def _ended_long_ago(job: Job, now: Optional[float] = None) -> bool:
    if job.status in ACTIVE or not job.finished:
        return False
    try:
        ended = datetime.fromisoformat(job.finished.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return (now if now is not None else time.time()) - ended > JOBS_SHOWN_S


def jobs_html(owner: str, limit: int = 6) -> str:
    """Progress bars of the owner's latest jobs, without those that ended over an hour ago (HTML; user text is escaped)."""
    b = backend()
    every = b.jobs.jobs(owner)
    jobs = [j for j in every if not _ended_long_ago(j)][:limit]
    note = b.jobs.worker_note()  # another app process on this workspace runs the jobs
    note_html = f"<div class='oodgen-worker-note'><i>{html.escape(note)}</i></div>" if note else ""
    if not jobs:
        none = "No jobs in the last hour." if every else "No jobs yet."
        return f"<div class='oodgen-jobs'><i>{none} Start an inversion in the Invert tab.</i>{note_html}</div>"
    rows = []
    for j in jobs:
        pct = int(100 * j.fraction)
        if j.status == "queued":
            pos = b.jobs.position(j.id)
            detail = f"queued, {pos - 1} job(s) ahead" if pos else "queued"
        elif j.status == "running":
            unit = "image-steps" if j.kind in ("invert", "generate") else "units"
            detail = f"{j.done:,} / {j.total:,} {unit} · {pct}% · {_eta(j.eta_s)} · {html.escape(j.stage)}" if j.total else html.escape(j.stage)
        else:
            detail = html.escape(j.message)
        bar = f"<progress max='100' value='{pct if j.status != 'queued' else 0}'></progress>" if j.status in ACTIVE or j.status == "done" else ""
        when = _job_when(j)
        rows.append(f"<div class='oodgen-job' data-status='{j.status}' id='job-{j.id}'><b>{_label(j)}</b> "
                    f"<span class='oodgen-when'>{when}</span> "
                    f"<span class='oodgen-status'>[{j.status}]</span> {bar} <span class='oodgen-detail'>{detail}</span></div>")
    return "<div class='oodgen-jobs'>" + "".join(rows) + note_html + "</div>"


def _job_when(job: Job) -> str:
    """When a job started ("started 18:47 UTC"), or was queued if it has not started yet."""
    from .display import job_time

    return f"started {job_time(job.started)}" if job.started else f"queued {job_time(job.created)}"


def active_jobs(owner: str) -> list[tuple[str, str]]:
    """(label, id) of the owner's queued or running jobs."""
    return [(f"{j.label} [{j.status}, {_job_when(j)}]", j.id) for j in backend().jobs.jobs(owner) if j.status in ACTIVE]


def cancel_job(owner: str, job_id: Optional[str]) -> str:
    if not job_id:
        raise UserError("no job chosen: pick a running or queued job to cancel")
    try:
        job = backend().jobs.cancel(job_id, owner)
    except KeyError as e:
        raise UserError(str(e)) from None
    return f"Asked job **{_label(job)}** to stop."


# ---------------------------------------------------------------- deleting one's own things
DELETABLE = {"datasets": "dataset", "runs": "run", "generated": "generated set"}  # workspace kind -> what the page calls it
_AFTER = {"datasets": "runs made from it keep their latents and thumbnails",
          "runs": "generated sets made from it keep their images",
          "generated": "studies made from it keep their items and ratings"}


def deletable_choices(owner: str) -> list[tuple[str, str]]:
    """(label, ``kind:id``) of what ``owner`` may delete: their own datasets, runs and generated sets (not bundled
    sets, not what others share) and their finished jobs."""
    b = backend()
    out = [(f"{what}: {r.label()} · {r.created}", f"{kind}:{r.id}")
           for kind, what in DELETABLE.items() for r in b.ws.list(kind, owner) if r.owner == owner]
    out += [(f"finished job: {j.label} [{j.status}, {_job_when(j)}]", f"jobs:{j.id}") for j in b.jobs.jobs(owner) if j.status not in ACTIVE]
    return out


def _deletable(owner: str, ref: Optional[str]) -> tuple[str, str, str]:
    """(kind, id, what it is called on the page) of ``ref``, one of the owner's own things, or UserError."""
    kind, _, rid = (ref or "").partition(":")
    if not rid:
        raise UserError("nothing chosen: pick one of your datasets, runs, generated sets or finished jobs to delete")
    try:
        if kind == "jobs":
            job = backend().jobs.get(rid, owner)
            if job.status in ACTIVE:
                raise UserError(f"job {job.label!r} is {job.status}: cancel it first, then remove it once it has ended")
            return kind, rid, f"finished job {job.label!r}"
        if kind not in DELETABLE:
            raise UserError(f"{kind!r} cannot be deleted here")
        rec = backend().ws.get(kind, rid, owner)
    except (KeyError, WorkspaceError):
        raise UserError("that item is gone or is not yours: pick one from the refreshed list") from None
    if rec.owner != owner:
        raise UserError(f"{DELETABLE[kind]} {rec.name!r} is shared by another user: only its owner can delete it")
    busy = [j.label for j in backend().jobs.jobs(owner=None) if j.status in ACTIVE and rid in json.dumps(j.params)]
    if busy:
        raise UserError(f"{DELETABLE[kind]} {rec.name!r} is in use by the job {busy[0]!r}: wait for it to end (or cancel it), then delete")
    return kind, rid, f"{DELETABLE[kind]} {rec.name!r}"


def delete_question(owner: str, ref: Optional[str]) -> str:
    """The confirmation to show before :func:`delete_own` (Markdown), or UserError when ``ref`` cannot be deleted."""
    kind, _, what = _deletable(owner, ref)
    if kind == "jobs":
        return f"Remove **{html.escape(what)}** from your jobs? What it saved stays."
    return f"Delete **{html.escape(what)}** and all its files? This cannot be undone ({_AFTER[kind]})."


def delete_own(owner: str, ref: Optional[str]) -> str:
    """Delete one of the owner's own datasets, runs or generated sets with its files, or remove a finished job."""
    kind, rid, what = _deletable(owner, ref)
    try:
        if kind == "jobs":
            backend().jobs.forget(rid, owner)
        else:
            backend().ws.delete(kind, rid, owner)
    except (KeyError, ValueError) as e:  # ended or changed between the question and the answer
        raise UserError(str(e)) from None
    log.info("%s deleted %s %s", owner, kind, rid)
    return f"Deleted {html.escape(what)}." if kind != "jobs" else f"Removed {html.escape(what)}."


def run_in_request(job: Job) -> None:
    """On ZeroGPU, run a just-submitted job inside the page event that submitted it (else nothing to do)."""
    if zerogpu.active():
        backend().jobs.run_now(job.id)


def resume_in_request(owner: str) -> str:
    """On ZeroGPU, run the owner's jobs that a restart left queued, oldest first, inside this page event.

    Elsewhere the worker thread resumes them by itself and this does nothing. Returns the jobs panel.
    """
    if zerogpu.active() and owner:
        for job in reversed(backend().jobs.jobs(owner)):  # oldest first
            if job.status == "queued":
                backend().jobs.run_now(job.id)
    return jobs_html(owner)


def jobs_stamp(owner: str) -> str:
    """Changes whenever one of the owner's jobs changes state (cheap; for deciding to refresh lists)."""
    return "|".join(f"{j.id}:{j.status}" for j in backend().jobs.jobs(owner))


def start_invert(owner: str, dataset_ref: str, model_name: str, settings: DDIMSettings, name: str = "") -> Job:
    """Queue an inversion and return at once."""
    if not dataset_ref:
        raise UserError("no dataset chosen: pick one in the Data tab first")
    ds = tasks.dataset_name(backend().ws, dataset_ref, owner)  # exists and is visible to this owner
    if name:
        check_name(name, "run name")
    model = get_model(model_name)  # fails here, with the loading message, rather than in the job
    top = model.num_train_timesteps - 1
    if not 1 <= settings.t_end <= top:  # refused, never clamped: the run must be what was asked for
        raise UserError(f"t_end {settings.t_end} is outside {model.name}'s schedule (1 to {top}); pick a value in that range")
    label = f"invert {ds}{f' as run {name!r}' if name else ''} with {model.name} (t={settings.t_end}, {settings.steps} steps)"
    return backend().jobs.submit("invert", owner, label, {"dataset": dataset_ref, "model": model_name,
                                                           "settings": settings.to_json(), "name": name})


# ---------------------------------------------------------------- runs
def run_choices(owner: str) -> list[tuple[str, str]]:
    return [(f"{r.label()} · {r.meta.get('model')} t={r.meta['settings']['t_end']}", r.id) for r in backend().ws.list("runs", owner)]


def runs_table(owner: str) -> pd.DataFrame:
    rows = [{"run": r.name, "dataset": r.meta.get("dataset_name"), "samples": r.meta.get("n"), "model": r.meta.get("model"),
             "t_end": r.meta["settings"]["t_end"], "steps": r.meta["settings"]["steps"], "created (UTC)": r.created}
            for r in backend().ws.list("runs", owner)]
    return pd.DataFrame(rows, columns=["run", "dataset", "samples", "model", "t_end", "steps", "created (UTC)"])


def _record(kind: str, record_id: Optional[str], owner: str, none_chosen: str):
    """The record ``record_id`` of ``kind`` visible to ``owner``; UserError(``none_chosen``) when none is picked."""
    if not record_id:
        raise UserError(none_chosen)
    try:
        return backend().ws.get(kind, record_id, owner)
    except WorkspaceError as e:
        raise UserError(str(e)) from None


def _run(owner: str, run_id: Optional[str]):
    return _record("runs", run_id, owner, "no run chosen: invert a dataset first (Invert tab), then pick its run")


_LATENTS: "OrderedDict[str, tuple[torch.Tensor, SourceProfile]]" = OrderedDict()
_LATENTS_LOCK = threading.Lock()


def _latents_profile(owner: str, run_id: str) -> tuple[torch.Tensor, SourceProfile, Any]:
    """A run's latents and its sources' profile (noise, sky, quantile functions), from a small in-memory cache
    (runs never change once written)."""
    rec = _run(owner, run_id)
    with _LATENTS_LOCK:
        if rec.id not in _LATENTS:
            z, _, meta = tasks.run_latents_meta(backend().ws, rec.id, owner)
            _LATENTS[rec.id] = (z, source_profile(meta))
            while len(_LATENTS) > 8:
                _LATENTS.popitem(last=False)
        _LATENTS.move_to_end(rec.id)
        z, prof = _LATENTS[rec.id]
        return z, prof, rec


def _latents(owner: str, run_id: str) -> tuple[torch.Tensor, Any]:
    """A run's latents and record (cached, :func:`_latents_profile`)."""
    z, _, rec = _latents_profile(owner, run_id)
    return z, rec


class PairPicker:
    """Which sample thumbnail clicks set, for one page session: i, then j, then i, ... in click order.

    The page numbers its clicks as they happen (1, 2, 3, ... counted by a click listener in the
    browser) and every select event sends the count and the thumbnail indices of the last two
    clicks as they stand when the event is sent: odd clicks since the last :meth:`reset` set i, even
    ones j. Events may be sent, and reach the server, in another order than their clicks (the page
    runs their JavaScript asynchronously; a count taken there numbered a loaded browser's clicks out
    of order); an event that knows of fewer clicks than one already applied changes nothing, and the
    one sent last knows them all, so the slots end with the latest clicks. Kept in the session's
    state on the server; a copy (a new session) starts afresh.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = 0  # click count at the last reset
        self._seen = 0  # highest click count seen
        self._last = {"i": 0, "j": 0}  # click number applied to each slot
        self._index = {"i": 0, "j": 0}  # sample index applied to each slot

    def __deepcopy__(self, memo: dict) -> "PairPicker":
        return PairPicker()

    def pick(self, count: Optional[int], recent: Sequence[int]) -> dict[str, int]:
        """The slots ("i", "j") to set, and their sample indices, when the page has counted ``count`` clicks whose
        last ones were on thumbnails ``recent`` (oldest first; the last two matter); {} when nothing changes.

        ``count`` 0 or None (a page that does not count its clicks): one click, the next in arrival order,
        on ``recent[-1]``.
        """
        with self._lock:
            recent = [int(k) for k in recent][-2:]
            if not count:
                count, recent = self._seen + 1, recent[-1:]
            count = int(count)
            self._seen = max(self._seen, count)
            out = {}  # stays empty for a page that knew of fewer clicks than were already applied
            for number, index in zip(range(count - len(recent) + 1, count + 1), recent):
                if number <= self._base:
                    continue  # made before the reset (on the thumbnails of the previous run)
                which = "i" if (number - self._base) % 2 else "j"
                if number > self._last[which]:
                    self._last[which], self._index[which] = number, index
                    out[which] = index
            return out

    def slots(self) -> dict[str, int]:
        """The sample index of each slot ("i", "j") that a click since the last :meth:`reset` set."""
        with self._lock:
            return {k: self._index[k] for k in ("i", "j") if self._last[k] > self._base}

    def note(self) -> str:
        """One line on what the clicks so far set and what the next one sets."""
        with self._lock:
            if self._last["i"] <= self._base:
                return "Click a thumbnail for sample i, then another for sample j."
            if self._last["i"] > self._last["j"]:
                return f"Sample i = {self._index['i']}; click another thumbnail for j."
            return f"Sample j = {self._index['j']}."

    def reset(self) -> None:
        """The next click sets i again (another run was chosen)."""
        with self._lock:
            self._base = self._seen
            self._last = {"i": self._base, "j": self._base}


def run_thumbnails(owner: str, run_id: str) -> list[tuple[np.ndarray, str]]:
    rec = _run(owner, run_id)
    thumbs = np.load(rec.root / tasks.THUMBS)
    names = rec.meta.get("names", [])
    return [(upscale(t, THUMB_SIDE), f"{k}: {names[k] if k < len(names) else ''}") for k, t in enumerate(thumbs)]


def run_size(owner: str, run_id: str) -> int:
    return int(_run(owner, run_id).meta["n"])


# ---------------------------------------------------------------- diagnostics
def start_diagnose(owner: str, run_id: str, reference: str, sweep: bool = False) -> Job:
    rec = _run(owner, run_id)
    if reference not in tasks.REFERENCES:
        raise UserError(f"unknown ID reference {reference!r}; choose one of {', '.join(tasks.REFERENCES)}")
    kind = "sweep" if sweep else "diagnose"
    what = "t sweep" if sweep else "diagnostics"
    return backend().jobs.submit(kind, owner, f"{what} of {rec.name} vs {reference}", {"run": rec.id, "reference": reference})


def diagnostics_stamp(owner: str, run_id: Optional[str], reference: Optional[str]) -> str:
    """Changes when the cached diagnostics of (run, reference) change; "" when there are none."""
    if not run_id or not reference:
        return ""
    try:
        folder = tasks.diagnostics_dir(_run(owner, run_id), reference)
    except (UserError, WorkspaceError):
        return ""
    stamps = [f"{f.name}:{f.stat().st_mtime_ns}" for f in (folder / "report.json", folder / "sweep.json") if f.exists()]
    return "|".join(stamps)


@dataclass
class DiagnosticsView:
    """What the Diagnostics tab shows for one (run, reference); None fields were not computed yet."""

    summary: str  # Markdown verdict
    table: Optional[pd.DataFrame]  # Table-3 style rows
    figures: dict  # name -> plotly figure (UMAP, Geometry, Radii)
    recon: list  # gallery of (image, caption): original | reconstruction pairs
    sweep_table: Optional[pd.DataFrame]
    sweep_figure: Any


def diagnostics_view(owner: str, run_id: str, reference: str) -> DiagnosticsView:
    import plotly.graph_objects as go

    rec = _run(owner, run_id)
    folder = tasks.diagnostics_dir(rec, reference)
    view = DiagnosticsView("", None, {}, [], None, None)
    if (folder / "report.json").exists():
        rep = json.loads((folder / "report.json").read_text())
        view.table = pd.DataFrame(json.loads((folder / "table.json").read_text()))
        view.figures = {k: go.Figure(v) for k, v in json.loads((folder / "figures.json").read_text()).items()}
        with np.load(folder / "recon.npz") as z:
            view.recon = [(upscale(np.concatenate([o, np.full((o.shape[0], 2, 3), 255, np.uint8), r], axis=1), 256),
                           f"{n}: MAE {m:.4f}") for o, r, m, n in zip(z["original"], z["reconstruction"], z["mae"], z["names"])]
            mae = float(np.mean(z["mae"])) if len(z["mae"]) else float("nan")
        sep = "**separable**" if rep["separable_by_criterion"] else "**not separable**"
        view.summary = (f"Run **{html.escape(rec.name)}** (n = {rep['n_ood']}, d = {rep['d']:,}) against {html.escape(rep['id_source'])}: "
                        f"centre distance {rep['center_distance']:.2f} vs d^¼ = {rep['d_quarter']:.2f} → {sep} by the paper's criterion "
                        f"(same-Gaussian noise floor {rep['noise_floor']:.2f}); linear SVM test accuracy **{rep['svm_test_accuracy']:.3f}**; "
                        f"reconstruction MAE of the pairs below {mae:.4f} ([0, 1] scale).")
    if (folder / "sweep.json").exists():
        sw = json.loads((folder / "sweep.json").read_text())
        view.sweep_table = pd.DataFrame(sw["rows"]).round(4)
        view.sweep_figure = go.Figure(sw["figure"])
    return view


# ---------------------------------------------------------------- generation
def _decode(model: FrozenDDPM, rec, z: torch.Tensor, eta: float, seed: int, draws: list[Draw], settings: GenerationSettings,
            sources: Optional[SourceProfile]) -> list[np.ndarray]:
    """Decoded ``z`` [n, C, H, W] for display, finished as a batch set is (the noise model and the intensity
    calibration of ``settings`` for ``draws``, :func:`oodgen.sampling.finish`)."""
    from . import engine

    imgs = engine.denoise(model, z, tasks.run_settings(rec), eta=eta, seed=seed).clamp(-1, 1)
    imgs, warnings = finish(imgs, draws, settings, sources)
    for w in warnings:
        log.warning(w)
    return [upscale(a) for a in to_uint8_rgb(imgs)]


STRIP_K = (2, 32)  # interpolation strip lengths accepted (the app's slider spans 3-15)


def _check_pair(n: int, i: int, j: int) -> None:
    """Samples i and j must both index a run of ``n`` latents (a negative index is refused, not read from the end)."""
    if not (0 <= int(i) < n and 0 <= int(j) < n):
        raise UserError(f"samples i = {i}, j = {j}: pick two samples between 0 and {n - 1}")


def decode_pair(owner: str, run_id: str, i: int, j: int, alpha: float, method: str = "slerp", eta: float = 0.0, seed: int = 0,
                centre: str = GenerationSettings().centre, noise: str = GenerationSettings().noise,
                calibration: str = GenerationSettings().calibration) -> np.ndarray:
    """The image decoded from Interp(x^i, x^j) at ``alpha`` (slerp about ``centre``), finished with the ``noise`` model and
    the intensity ``calibration`` as a batch set is: uint8 [H', W', 3] for display."""
    z, prof, rec = _latents_profile(owner, run_id)
    _check_pair(z.shape[0], i, j)
    g = GenerationSettings(method=method, alpha=alpha, eta=eta, seed=seed, centre=centre, noise=noise, calibration=calibration)  # validates
    zi = interpolate(z[i : i + 1], z[j : j + 1], alpha, method, interpolation_centre(z, centre))
    return _decode(get_model(rec.meta["model"]), rec, zi, eta, seed, [Draw(method, int(i), int(j), float(alpha))], g, prof)[0]


def decode_strip(owner: str, run_id: str, i: int, j: int, k: int = 7, method: str = "slerp",
                 centre: str = GenerationSettings().centre, noise: str = GenerationSettings().noise,
                 calibration: str = GenerationSettings().calibration) -> list[tuple[np.ndarray, str]]:
    """k images along the interpolation path from sample i to sample j (slerp about ``centre``, finished as
    :func:`decode_pair`), captioned with alpha."""
    z, prof, rec = _latents_profile(owner, run_id)
    _check_pair(z.shape[0], i, j)
    if not STRIP_K[0] <= int(k) <= STRIP_K[1]:  # refused, never clamped
        raise UserError(f"strip length k = {k}: pick between {STRIP_K[0]} and {STRIP_K[1]} images")
    g = GenerationSettings(method=method, centre=centre, noise=noise, calibration=calibration)  # validates
    path = interpolation_strip(z[i], z[j], k, method, interpolation_centre(z, centre))
    alphas = [float(a) for a in np.linspace(0, 1, k)]
    imgs = _decode(get_model(rec.meta["model"]), rec, path, 0.0, 0, [Draw(method, int(i), int(j), a) for a in alphas], g, prof)
    return [(im, f"alpha {a:.2f}") for im, a in zip(imgs, alphas)]


def generation_label(settings: GenerationSettings | dict) -> str:
    """A short description of batch-generation settings: the method and the options that apply to it."""
    g = settings if isinstance(settings, GenerationSettings) else GenerationSettings.from_json(settings)
    if g.method == "gaussian":
        parts = ["gaussian", f"{g.clusters} clusters" if g.clusters > 1 else "", "per-dimension variance" if g.per_dim_variance else ""]
    else:
        pairs = f"nearest pairs ({g.neighbours} neighbours)" if g.pairing == "nearest" else "random pairs"
        parts = [g.method, pairs, f"alpha {g.alpha:g} ± {g.alpha_spread:g}" if g.alpha_spread else f"alpha {g.alpha:g}",
                 "about the origin" if g.method == "slerp" and g.centre == "origin" else ""]
    if g.geometric_filter:
        parts.append(f"geometric filter {g.filter_tolerance:g}")
    if g.calibration == "none":
        parts.append("no intensity calibration")
    return ", ".join(p for p in parts if p)


def start_generate(owner: str, run_id: str, n: int, name: str, settings: GenerationSettings) -> Job:
    """Queue a batch generation job; its generated set records ``settings`` (all fields) in its manifest."""
    rec = _run(owner, run_id)
    limit = backend().limits.max_generate
    if not 1 <= int(n) <= limit:
        raise UserError(f"N = {n}: generate between 1 and {limit} samples at once (OODGEN_MAX_GENERATE)")
    if rec.meta["n"] < 2:
        raise UserError("interpolation needs a run with at least 2 samples" if settings.method != "gaussian"
                        else "fitting a Gaussian needs a run with at least 2 samples")
    if name:
        check_name(name, "name of the generated set")
    label = f"generate {int(n)} from {rec.name} ({generation_label(settings)})"
    return backend().jobs.submit("generate", owner, label, {"run": rec.id, "n": int(n), "name": name, "generation": settings.to_json()})


def start_baseline(owner: str, run_id: str, n: int, name: str, method: str, *, alpha: float = 0.5, eta: float = 0.0, seed: int = 0,
                   finetune: Any = None) -> Job:
    """Queue a generated set by a baseline method from the images of run ``run_id``: ``pixel`` (crossfades of random pairs
    at ``alpha``) or ``finetune`` (a copy of the run's model tuned with ``finetune``, a FinetuneSettings, then sampled
    from its prior with the run's DDIM steps and ``eta``)."""
    from .finetune import FinetuneSettings
    from .generated import BASELINE_METHODS

    rec = _run(owner, run_id)
    if method not in BASELINE_METHODS:
        raise UserError(f"method {method!r}: the baselines are {', '.join(BASELINE_METHODS)}")
    limit = backend().limits.max_generate
    if not 1 <= int(n) <= limit:
        raise UserError(f"N = {n}: generate between 1 and {limit} samples at once (OODGEN_MAX_GENERATE)")
    if rec.meta["n"] < 2:
        raise UserError("the baselines need a run with at least 2 source images")
    if name:
        check_name(name, "name of the generated set")
    try:
        tasks.dataset_name(backend().ws, rec.meta.get("dataset") or "", owner)
    except WorkspaceError:
        raise UserError(f"the dataset that run '{rec.name}' inverted is gone, and the baselines need its images; invert the data again") from None
    if method == "pixel":
        if not 0.0 <= float(alpha) <= 1.0:
            raise UserError(f"alpha={alpha} must be in [0, 1]")
        params = {"generation": {"method": "pixel", "alpha": float(alpha), "seed": int(seed)}}
        label = f"generate {int(n)} from {rec.name} (pixel crossfade, alpha {float(alpha):g})"
    else:
        ft = finetune if finetune is not None else FinetuneSettings()
        if float(eta) < 0:
            raise UserError(f"eta={eta} must be >= 0")
        params = {"generation": {"method": "finetune", "eta": float(eta), "seed": int(seed)}, "finetune": ft.to_json()}
        budget = " or ".join(b for b in (f"{ft.steps} steps" if ft.steps else "", f"{ft.seconds / 60:g} min" if ft.seconds else "") if b)
        label = f"generate {int(n)} from {rec.name} (fine-tuned {rec.meta.get('model')}, {budget})"
    return backend().jobs.submit(method, owner, label, {"run": rec.id, "n": int(n), "name": name, **params})


def finetune_settings(steps: Any, minutes: Any, seed: int = 0) -> Any:
    """The :class:`oodgen.finetune.FinetuneSettings` of the batch panel: a step count and/or a time budget (0 or empty: none)."""
    from .finetune import FinetuneSettings

    try:
        st = int(steps) if steps not in (None, "") and float(steps) > 0 else None
        sec = float(minutes) * 60 if minutes not in (None, "") and float(minutes) > 0 else None
        return FinetuneSettings(steps=st, seconds=sec, seed=int(seed))
    except (TypeError, ValueError) as e:
        raise UserError(f"fine-tuning budget: {e}") from None


def generated_choices(owner: str) -> list[tuple[str, str]]:
    return [(f"{r.label()} · {r.meta.get('generation', {}).get('method')} from {r.meta.get('run_name')}", r.id)
            for r in backend().ws.list("generated", owner)]


def _generated(owner: str, gen_id: Optional[str]):
    return _record("generated", gen_id, owner, "no generated set chosen: generate one first, then pick it")


def generated_gallery(owner: str, gen_id: str, limit: int = 60) -> list[tuple[np.ndarray, str]]:
    from PIL import Image

    rec = _generated(owner, gen_id)
    files = image_files(rec.root)[:limit]
    return [(upscale(np.asarray(Image.open(f).convert("RGB")), 128), f.stem) for f in files]


def generated_summary(owner: str, gen_id: Optional[str]) -> str:
    """Markdown: what generated set ``gen_id`` is and the generation settings its manifest records."""
    if not gen_id:
        return ""
    rec = _generated(owner, gen_id)
    g = rec.meta.get("generation") or {}
    try:
        what = generation_label(g)
    except (TypeError, ValueError):  # a set made by another version: show what it recorded
        what = str(g.get("method", "?"))
    recorded = " · ".join(f"{k} {v}" for k, v in g.items())
    return (f"**{html.escape(rec.name)}**: {rec.meta.get('n')} samples from run *{html.escape(str(rec.meta.get('run_name')))}* "
            f"({html.escape(what)}).  \nRecorded settings: {html.escape(recorded)}")


def download_generated(owner: str, gen_id: str) -> str:
    """Path of a zip of the set (in a private temp folder that Gradio may serve)."""
    rec = _generated(owner, gen_id)
    return str(tasks.zip_generated(rec, scratch.new_folder("dl")))  # removed after use (oodgen.scratch)


# ---------------------------------------------------------------- quality of generated sets
QUALITY_KINDS = ("auto", "galaxy", "physical", "image")
SUMMARY_COLUMNS = ("set", "n", "C2ST statistics", "C2ST statistics 95% CI", "C2ST pixels", "C2ST pixels 95% CI", "Frechet distance",
                   "within floor", "median distance", "near-copies", "diversity ratio", "NN distance median", "failures")
_SUMMARY_KEYS = ("label", "n", "c2st_stats", "c2st_stats_ci", "c2st_pixels", "c2st_pixels_ci", "frechet", "within_floor_frac",
                 "median_distance", "near_copies", "diversity_ratio", "nn_median", "failures")


def quality_settings(kind: str = "auto", n_boot: int = 200, morph_max: int = 200) -> Any:
    """The :class:`oodgen.quality.QualitySettings` the Quality panel asks for (UserError for bad values)."""
    from .quality import QualitySettings

    if kind not in QUALITY_KINDS:
        raise UserError(f"kind {kind!r}: choose one of {', '.join(QUALITY_KINDS)}")
    try:
        return QualitySettings(kind=kind, n_boot=int(n_boot), morph_max=int(morph_max), workers=max(1, min(2, os.cpu_count() or 1)))
    except (TypeError, ValueError) as e:
        raise UserError(f"quality settings: {e}") from None


def _quality_source(owner: str, rec) -> None:
    """UserError when the real data of generated set ``rec`` are gone or too few for the floor."""
    try:
        run, _, name = tasks.quality_source(backend().ws, rec, owner)
    except WorkspaceError as e:
        raise UserError(str(e)) from None
    n = int(run.meta.get("n") or 0)
    if n < tasks.MIN_REAL:
        raise UserError(f"the real set '{name}' of '{rec.name}' has {n} images; the quality floor (real half A vs half B) needs at "
                        f"least {tasks.MIN_REAL}: invert a larger dataset and generate from it")


def start_quality(owner: str, gen_id: Optional[str], settings: Any = None, force: bool = False) -> Job:
    """Queue the quality evaluation of a generated set against the real data it came from (cached per set)."""
    from .quality import QualitySettings

    rec = _generated(owner, gen_id)
    _quality_source(owner, rec)
    settings = settings if settings is not None else QualitySettings()
    label = f"quality of {rec.name} ({settings.kind}, {settings.n_boot} bootstraps)"
    return backend().jobs.submit("quality", owner, label, {"generated": rec.id, "settings": settings.to_json(), "force": bool(force)})


def quality_stamp(owner: str, gen_id: Optional[str]) -> str:
    """Changes when the cached quality report of a generated set changes; "" when there is none."""
    if not gen_id:
        return ""
    try:
        f = tasks.quality_dir(_generated(owner, gen_id)) / "report.json"
        return f"{gen_id}:{f.stat().st_mtime_ns}"
    except (ValueError, OSError):
        return ""


def quality_cached(owner: str, gen_id: Optional[str], settings: Any) -> bool:
    """True when the set's cached report was made with ``settings`` (pressing Evaluate again would only reread it)."""
    if not gen_id:
        return False
    try:
        payload = tasks.cached_quality(_generated(owner, gen_id))
    except ValueError:
        return False
    return payload is not None and payload.get("settings") == settings.to_json()


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        return "[" + ", ".join("-" if x is None else f"{x:.3f}" for x in v) + "]"
    return v


def quality_summary_table(payload: dict) -> pd.DataFrame:
    """One row per set: the floor (real half A vs half B) first, then the generated set and the crossfade baseline."""
    rows = [[_cell(r.get(k)) for k in _SUMMARY_KEYS] for r in payload.get("summary") or []]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def quality_statistics_table(payload: dict) -> pd.DataFrame:
    """One row per statistic: the floor and, per set, its distance, 95% CI and verdict; farthest above the floor first."""
    sets = [r["label"] for r in (payload.get("summary") or [])[1:]]
    rows = []
    for r in payload.get("statistics") or []:
        row = {"statistic": r["statistic"], "floor": r.get("floor"), "floor 95% CI": _cell(r.get("floor_ci"))}
        for label in sets:
            row[f"{label}: distance"] = r.get(label)
            row[f"{label}: 95% CI"] = _cell(r.get(f"{label} ci"))
            row[f"{label}: verdict"] = r.get(f"{label} verdict")
        rows.append(row)
    df = pd.DataFrame(rows)
    if sets and not df.empty:
        ratio = df[f"{sets[0]}: distance"].astype(float) / df["floor"].astype(float).clip(lower=1e-12)
        df = df.iloc[np.argsort(-ratio.fillna(-1).to_numpy(), kind="stable")].reset_index(drop=True)
    return df


@dataclass
class QualityView:
    """What the Quality panel shows for one generated set; None fields were not computed yet."""

    summary: str  # Markdown: what was compared with what, the headline numbers
    table: Optional[pd.DataFrame]  # one row per set (floor first)
    statistics: Optional[pd.DataFrame]  # one row per statistic
    figures: dict  # "histograms", "power spectra", "distances", "memorization" -> plotly figure
    montage: Optional[np.ndarray]  # uint8: real row, generated row, crossfade row at one stretch
    nn_pairs: Optional[np.ndarray]  # uint8: the closest generated samples over their nearest real images
    html: Optional[str]  # a copy of the offline HTML report, for download


_QUALITY_DL = Path(tempfile.mkdtemp(prefix="oodgen-quality-"))  # copies of reports that Gradio may serve (never the workspace)


def _download_copy(src: Path, sub: str, name: str) -> str:
    """A copy of workspace file ``src`` under the served download folder (Gradio never serves the workspace itself)."""
    target = _QUALITY_DL / sub / name
    atomic_write(target, lambda tmp: shutil.copyfile(src, tmp), fsync=False)
    return str(target)


def quality_view(owner: str, gen_id: Optional[str]) -> QualityView:
    """The cached quality report of a generated set (nothing is computed here)."""
    import plotly.graph_objects as go
    from PIL import Image

    rec = _generated(owner, gen_id)
    folder = tasks.quality_dir(rec)
    payload = tasks.cached_quality(rec)
    view = QualityView("", None, None, {}, None, None, None)
    if payload is None:
        return view
    try:
        view.figures = {k: go.Figure(v) for k, v in json.loads((folder / "figures.json").read_text()).items()}
        view.montage = np.asarray(Image.open(folder / "montage.png").convert("RGB"))
        view.nn_pairs = np.asarray(Image.open(folder / "nn_pairs.png").convert("RGB"))
        view.html = _download_copy(folder / "report.html", rec.id, f"quality_{rec.id}.html")
    except (OSError, ValueError) as e:  # being rewritten right now: the next refresh shows it
        log.warning("quality cache of %s unreadable: %s", rec.id, e)
        return QualityView("The quality report is being written; it appears here in a moment.", None, None, {}, None, None, None)
    view.table = quality_summary_table(payload)
    view.statistics = quality_statistics_table(payload)
    rows = payload.get("summary") or [{}, {}]
    floor, gen = rows[0], rows[1] if len(rows) > 1 else {}
    real = payload.get("real") or {}
    worst = [r["statistic"] for r in view.statistics.head(4).to_dict("records")] if not view.statistics.empty else []
    view.summary = (f"**{html.escape(rec.name)}** ({gen.get('n')} compared) against **{real.get('n')}** real images of "
                    f"*{html.escape(str(real.get('name')))}*, kind **{payload.get('kind')}**. "
                    f"C2ST on statistics **{gen.get('c2st_stats')}** (floor {floor.get('c2st_stats')}; 0.5 = indistinguishable), "
                    f"**{gen.get('within_floor_frac')}** of the statistics within {payload.get('settings', {}).get('verdict_factor', 2):g}x "
                    f"the floor, near-copies **{gen.get('near_copies')}**, diversity ratio {gen.get('diversity_ratio')}. "
                    f"Farthest from the floor: {html.escape(', '.join(worst))}.")
    return view


def _png_hashes(rec) -> frozenset:
    """SHA-256 of every PNG of a generated set (how a study's items are traced back to their set)."""
    import hashlib

    key = (rec.id, rec.created)
    with _HASHES_LOCK:
        if key not in _HASHES:
            _HASHES[key] = frozenset(hashlib.sha256(f.read_bytes()).hexdigest() for f in image_files(rec.root))
        return _HASHES[key]


_HASHES: dict = {}
_HASHES_LOCK = threading.Lock()
STUDY_QUALITY_COLUMNS = ("study", "generated set", "method", "items in study", "C2ST statistics", "C2ST floor", "within floor",
                         "near-copies", "quality")


def study_quality(token: Optional[str], study_id: Optional[str] = None) -> pd.DataFrame:
    """For the study owner: the cached quality summary of every generated set with items in the study (all studies when empty).

    Items are traced to their generated set by the SHA-256 of the original file the study recorded.
    Read-only: a set without a cached report reads "not evaluated".
    """
    if not ratings.is_admin(token):
        raise UserError("the Results are for the study owner: enter the admin token (OODGEN_ADMIN_TOKEN of this deployment)")
    studies = [s for s in ratings.list_studies(_home()) if not study_id or s.study_id == study_id]
    gens = backend().ws.list("generated")
    rows = []
    for study in studies:
        digests = {e.origin_sha256 for e in study.items if e.source == "generated"}
        for rec in gens:
            n = len(digests & _png_hashes(rec))
            if not n:
                continue
            payload = tasks.cached_quality(rec)
            s = payload.get("summary") if payload else None
            row = {"study": study.study_id, "generated set": rec.name, "method": (rec.meta.get("generation") or {}).get("method"),
                   "items in study": n}
            if s and len(s) > 1:
                row.update({"C2ST statistics": s[1].get("c2st_stats"), "C2ST floor": s[0].get("c2st_stats"),
                            "within floor": s[1].get("within_floor_frac"), "near-copies": s[1].get("near_copies"),
                            "quality": f"{payload.get('kind')}, {payload.get('real', {}).get('n')} real images"})
            else:
                row["quality"] = "not evaluated"
            rows.append(row)
    return pd.DataFrame(rows, columns=list(STUDY_QUALITY_COLUMNS))


# ---------------------------------------------------------------- bandwidth search
def search_sources(owner: str) -> list[tuple[str, str]]:
    """(label, source) choices for a search: every dataset (searched with the chosen model), then every run
    (``run:<id>``: its dataset with its model)."""
    out = [(f"dataset: {label}", ref) for label, ref in dataset_choices(owner)]
    out += [(f"run: {label}", f"run:{rid}") for label, rid in run_choices(owner)]
    return out


def _numbers(text: Any, kind: type, what: str) -> tuple:
    """'500, 700 900' -> (500, 700, 900); UserError naming ``what`` for anything else."""
    parts = [t for t in str(text or "").replace(",", " ").split() if t]
    try:
        values = tuple(kind(float(t)) if kind is int and float(t) == int(float(t)) else kind(t) for t in parts)
    except ValueError:
        values = ()
    if not values:
        raise UserError(f"{what}: enter one or more numbers separated by commas, e.g. {'500, 700' if kind is int else '0, 0.5'}")
    return tuple(dict.fromkeys(values))  # in order, once each


def search_grid(t_end: Any, eta: Any, pairing: Sequence[str], noise: Sequence[str], n_per_cell: Any, steps: Any = None) -> Any:
    """The :class:`oodgen.evaluation.SearchGrid` the Search panel asks for (UserError for bad values)."""
    from .evaluation import SearchGrid

    try:
        return SearchGrid(t_end=_numbers(t_end, int, "t_end values"), eta=_numbers(eta, float, "eta values"), pairing=tuple(pairing or ()),
                          noise=tuple(noise or ()), n_per_cell=int(n_per_cell),
                          steps=int(steps) if steps is not None else SearchGrid().steps)
    except (TypeError, ValueError) as e:
        raise UserError(f"search grid: {e}") from None


def _search_source(owner: str, source: Optional[str], model_name: Optional[str]) -> tuple[str, Path, str, str]:
    if not source:
        raise UserError("no real images chosen: pick a dataset or a run to search on")
    try:
        return tasks.search_source(backend().ws, source, owner, model_name)
    except WorkspaceError as e:
        raise UserError(str(e)) from None


def start_search(owner: str, source: Optional[str], model_name: Optional[str], grid: Any, settings: Any = None,
                 force: bool = False, generation: Optional[GenerationSettings] = None) -> Job:
    """Queue a bandwidth search over ``grid`` on the real images of ``source`` (dataset ref or ``run:<id>``)."""
    from .quality import QualitySettings

    ref, _, name, model = _search_source(owner, source, model_name)
    get_model(model)  # fails here, with the loading message, rather than in the job
    settings = settings if settings is not None else QualitySettings(morph_max=60)
    generation = generation or GenerationSettings()
    label = f"search of {name} with {model} ({len(grid.cells())} cells x {grid.n_per_cell} samples)"
    return backend().jobs.submit("search", owner, label, {"source": source, "model": model, "grid": grid.to_json(),
                                                           "generation": generation.to_json(), "settings": settings.to_json(),
                                                           "force": bool(force)})


def _search_folder(owner: str, source: Optional[str], model_name: Optional[str]) -> Optional[Path]:
    try:
        ref, _, _, model = _search_source(owner, source, model_name)
    except UserError:
        return None
    return tasks.search_dir(backend().ws, ref, model)


def search_stamp(owner: str, source: Optional[str], model_name: Optional[str]) -> str:
    """Changes when the cached search of (source, model) changes; "" when there is none."""
    folder = _search_folder(owner, source, model_name) if source else None
    try:
        return f"{folder.name}:{(folder / 'search.json').stat().st_mtime_ns}" if folder else ""
    except OSError:
        return ""


def search_cached(owner: str, source: Optional[str], model_name: Optional[str], grid: Any, settings: Any,
                  generation: Optional[GenerationSettings] = None) -> bool:
    """True when the cached search of (source, model) was made with this grid and these settings."""
    folder = _search_folder(owner, source, model_name) if source else None
    payload = tasks.cached_search(folder) if folder else None
    want = tasks.search_request(grid.to_json(), (generation or GenerationSettings()).to_json(), settings.to_json())
    return payload is not None and payload.get("request") == want


SEARCH_COLUMNS = ("t_end", "eta", "pairing", "noise", "C2ST statistics", "C2ST statistics 95% CI", "C2ST pixels", "within floor",
                  "Frechet distance", "near-copies", "diversity ratio", "best")
_SEARCH_KEYS = ("t_end", "eta", "pairing", "noise", "c2st_stats", "c2st_stats_ci", "c2st_pixels", "within_floor_frac", "frechet",
                "near_copies", "diversity_ratio", "best")


@dataclass
class SearchView:
    """What the Search panel shows for one (source, model); None fields were not computed yet."""

    summary: str  # Markdown: what was searched, the best cell
    table: Optional[pd.DataFrame]  # one row per cell, then the floor and the crossfade
    figure: Any  # quality (C2ST) against diversity, coloured by near-copies
    montage: Optional[np.ndarray]  # uint8: real row, then a row per cell
    html: Optional[str]  # a copy of the offline HTML report, for download


def search_table(payload: dict) -> pd.DataFrame:
    """One row per cell (the best marked), then the floor and crossfade rows for reference."""
    rows = [[_cell(r.get(k)) for k in _SEARCH_KEYS] for r in payload.get("cells") or []]
    for label in ("floor", "crossfade"):
        r = payload.get(label) or {}
        if r:
            rows.append([label, "", "", "", *(_cell(r.get(k)) for k in _SEARCH_KEYS[4:-1]), False])
    return pd.DataFrame(rows, columns=list(SEARCH_COLUMNS))


def search_view(owner: str, source: Optional[str], model_name: Optional[str]) -> SearchView:
    """The cached search of (source, model) (nothing is computed here)."""
    import plotly.graph_objects as go
    from PIL import Image

    view = SearchView("", None, None, None, None)
    ref, _, name, model = _search_source(owner, source, model_name)
    folder = tasks.search_dir(backend().ws, ref, model)
    payload = tasks.cached_search(folder)
    if payload is None:
        return view
    try:
        view.figure = go.Figure(json.loads((folder / "figures.json").read_text())["quality vs diversity"])
        view.montage = np.asarray(Image.open(folder / "montage.png").convert("RGB"))
        view.html = _download_copy(folder / "search.html", f"search-{folder.name}", f"search_{ref.replace(':', '_')}.html")
    except (OSError, ValueError, KeyError) as e:  # being rewritten right now: the next refresh shows it
        log.warning("search cache %s unreadable: %s", folder, e)
        return SearchView("The search report is being written; it appears here in a moment.", None, None, None, None)
    view.table = search_table(payload)
    best = next((r for r in payload.get("cells") or [] if r.get("best")), {})
    grid = (payload.get("request") or {}).get("grid") or {}
    floor = payload.get("floor") or {}
    view.summary = (f"Search of **{html.escape(name)}** ({payload.get('n_real')} real images) with **{html.escape(str(payload.get('model')))}**: "
                    f"{len(payload.get('cells') or [])} cells x {grid.get('n_per_cell')} samples. **Best: t_end {best.get('t_end')}, "
                    f"eta {best.get('eta')}, pairing {best.get('pairing')}, noise {best.get('noise')}** (C2ST on statistics "
                    f"{best.get('c2st_stats')}, floor {floor.get('c2st_stats')}; {best.get('within_floor_frac')} of the statistics "
                    f"within the floor; near-copies {best.get('near_copies')}). Rule: among cells with at most "
                    f"{grid.get('max_copies', 0.05):g} near-copies, those whose C2ST CI reaches the lowest C2ST tie; the most statistics "
                    "within the floor wins, then the lowest Frechet distance.")
    return view


# ---------------------------------------------------------------- MOS: studies, rating, results
def _home() -> Path:
    return backend().ws.home


def study_choices() -> list[str]:
    return [s.study_id for s in ratings.list_studies(_home())]


def create_study(owner: str, study_id: str, domain: str, generated_ids: Sequence[str], real_ref: str, n_per_source: int,
                 instructions: str, repeat_fraction: float, display_size: int = 256) -> str:
    """A blinded study from generated sets (as 'generated') and a dataset (as 'real'); returns a Markdown note."""
    from .ratings import StudyItem

    if not generated_ids:
        raise UserError("pick at least one generated set")
    if not real_ref:
        raise UserError("pick the real reference dataset (e.g. bundled: galaxy)")
    n = int(n_per_source)
    if n < 1:
        raise UserError("items per source must be at least 1")
    items: list[StudyItem] = []
    for gid in generated_ids:
        rec = _generated(owner, gid)
        # a physical set is shown from its maps (in the data's units), with the real maps' stretch; the PNG stays the record
        items += pipeline.generated_study_items(rec.root, rec.meta, n)
    if real_ref.startswith("bundled:"):
        from .bundled import SAMPLE_SETS

        folder = SAMPLE_SETS[real_ref.split(":", 1)[1]].path
    else:
        folder = backend().ws.get("datasets", real_ref, owner).root / "files"
    try:
        real = pipeline.collect_study_files([folder])
    except ratings.RatingError as e:
        raise UserError(_public(str(e))) from None
    items += [StudyItem(f, "real") for f in real[:n]]
    study_id = (study_id or "").strip()
    if study_id in study_choices():
        raise UserError(f"a study with the id '{study_id}' already exists; choose another id")
    try:
        study = ratings.create_study(_home(), study_id, domain, items, instructions,
                                     float(repeat_fraction), display_size=int(display_size))
    except (ratings.RatingError, WorkspaceError) as e:
        raise UserError(_public(str(e))) from None
    n_real = sum(e.source == "real" for e in study.items)
    look = f"every item at {study.effective_resolution} px (the lowest source resolution), shown at {study.display_size} px"
    if study.stretch is not None:
        look += ", physical maps with one stretch fitted on the real ones"
    return (f"Created study **{study.study_id}**: {len(study.items)} items ({len(study.items) - n_real} generated, {n_real} real), "
            f"{study.n_repeats} repeats per rater; {look}. Raters pick it in the Rate tab.")


def _public(message: str) -> str:
    """A message for the page: the workspace's location on the server is not shown."""
    home = str(_home())
    return message.replace(home + os.sep, "").replace(home, "the workspace")


@dataclass(frozen=True)
class RateView:
    """What the Rate tab shows next."""

    image: Optional[str]  # a file of the blinded item, cached per item and never rewritten (see rate_image_file); None when done
    progress: str  # "k / n"
    position: int  # 1-based position of the item shown (0 when done)
    instructions: str  # Markdown
    done: bool
    item_id: str = ""  # the blinded id of the item shown; the image's file is named after it ("" when done)


_RATE_FILES = Path(tempfile.mkdtemp(prefix="oodgen-rate-"))  # copies of study items that Gradio may serve (never the workspace)
atexit.register(shutil.rmtree, _RATE_FILES, True)
_RATE_FILES_LOCK = threading.Lock()


def rate_image_file(study: "ratings.Study", item_id: str) -> Path:
    """A copy of a study item's image to serve, ``<item_id>.png``: written once (atomically), never rewritten.

    Several raters fetch the same item at once; a file rewritten per request (what Gradio does with
    a returned array) can be served half-written. The folder is per study and creation time, so a
    study made again under the same id never serves the old images.
    """
    tag = hashlib.sha256(f"{study.study_id}\n{study.created}".encode()).hexdigest()[:12]
    target = _RATE_FILES / f"{study.study_id}-{tag}" / f"{item_id}.png"
    if not target.exists():
        with _RATE_FILES_LOCK:
            if not target.exists():
                atomic_write(target, lambda tmp: shutil.copyfile(study.image_path(item_id), tmp), fsync=False)
    return target


def rate_view(study_id: str, rater: str) -> RateView:
    """Start or resume ``rater``'s session in ``study_id`` at the first item they have not rated."""
    if not study_id:
        raise UserError("pick a study")
    try:
        session = ratings.start_or_resume(_home(), study_id, rater)
    except ratings.RatingError as e:
        raise UserError(str(e)) from None
    item = session.current()
    instr = session.study.instructions or f"Rate how realistic each {session.study.domain} image looks compared with real data."
    if item is None:
        k, n = session.progress
        return RateView(None, f"{k} / {n}", 0, instr, True)
    return RateView(str(rate_image_file(session.study, item.item_id)), item.progress_text, item.position, instr, False, item.item_id)


class StaleRatingError(UserError):
    """A score that was not recorded because it was not for the item to rate now (a fast second click, a loading image)."""


def submit_rating(study_id: str, rater: str, position: int, score: int, comment: str = "", response_ms: Optional[int] = None,
                  shown_item: Optional[str] = None) -> None:
    """Record a score for the item at ``position``; ``shown_item``: the item id the rater's screen showed ("" = none yet).

    A score whose position or shown item is not the item to rate now raises :class:`StaleRatingError`.
    """
    try:
        ratings.start_or_resume(_home(), study_id, rater).rate(score, comment, response_ms, position=position, item_id=shown_item)
    except ratings.StaleRating as e:
        raise StaleRatingError(str(e)) from None
    except ratings.RatingError as e:
        raise UserError(str(e)) from None


def _owner_ratings(token: Optional[str], study_id: Optional[str], refused: str) -> list:
    """The ratings of ``study_id`` (all when empty), for the study owner only (UserError(``refused``) otherwise)."""
    if not ratings.is_admin(token):
        raise UserError(refused)
    path = ratings.default_ratings_path(_home())
    rows = ratings.RatingsLog(path).read() if path.exists() else []
    return [r for r in rows if r.study == study_id] if study_id else rows


def results(token: Optional[str], study_id: Optional[str] = None) -> tuple[pd.DataFrame, pd.DataFrame, str, Any]:
    """(groups table, raters table, agreement line, score plot) for the study owner."""
    s = ratings.summarize(_owner_ratings(
        token, study_id, "the Results are for the study owner: enter the admin token (OODGEN_ADMIN_TOKEN of this deployment)"))
    groups = pd.DataFrame([{**g.to_json(), "MOS ± std": g.mos_pm_std} for g in s.groups])
    if not groups.empty:
        # the 95% t interval clipped to the 1-5 scale (ci95_clipped marks where); the export also has the unclipped ends
        groups = groups[["study", "domain", "method", "source", "n", "mos", "std", "ci95_low", "ci95_high", "ci95_clipped", "MOS ± std"]].round(3)
    raters_df = pd.DataFrame([r.to_json() for r in s.raters]).round(3)
    alpha = "n/a (needs 2 raters on common items)" if s.krippendorff_alpha is None else f"{s.krippendorff_alpha:.3f}"
    note = f"**{s.n_ratings}** ratings" + (f" in study **{study_id}**" if study_id else "") + f"; Krippendorff's alpha (ordinal): **{alpha}**."
    return groups, raters_df, note, ratings.score_distribution_figure(s)


def export_results(token: Optional[str], study_id: Optional[str] = None) -> list[str]:
    """Paths of groups.csv, raters.csv, summary.json and the raw ratings.csv (owner only)."""
    rows = _owner_ratings(token, study_id, "the export is for the study owner: enter the admin token")
    s = ratings.summarize(rows)
    out = scratch.new_folder("mos")  # removed after use (oodgen.scratch)
    tag = f"_{study_id}" if study_id else ""
    (out / f"mos_groups{tag}.csv").write_text(s.to_csv("groups"), encoding="utf-8")
    (out / f"mos_raters{tag}.csv").write_text(s.to_csv("raters"), encoding="utf-8")
    (out / f"mos_summary{tag}.json").write_text(json.dumps(s.to_json(), indent=1), encoding="utf-8")
    raw = out / f"ratings{tag}.csv"
    ratings.write_ratings(raw, rows)
    return [str(p) for p in sorted(out.iterdir())]


def now_ms() -> int:
    return int(time.time() * 1000)
