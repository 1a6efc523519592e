"""Invert data sets larger than memory: chunks of files, read ahead, checkpointed, resumable, shardable.

The files of a data set (:func:`oodgen.data.list_files`, no count limit) are cut into chunks of
``chunk_files`` consecutive files (:func:`chunk_ranges`). Chunks are the unit of work:

- **read ahead**: chunk k + 1 is read, decoded and converted to model input (files in parallel
  threads) while chunk k is inverted, so file I/O and decoding overlap the model's compute;
- **checkpointed**: each chunk's latents go to ``<out>.parts/chunk_NNNNNN.safetensors`` (with the
  chunk's sources and skipped files) as soon as it is done, so at most one chunk's work is in
  memory and a crash or Ctrl-C loses at most the chunk in flight;
- **resumable**: running the same command again skips every chunk whose checkpoint carries the
  same key (model, DDIM settings, precision, stretch and the chunk's file names, sizes and
  modification times; :meth:`BulkPlan.chunk_key`); files appended to a folder leave earlier chunks valid;
- **shardable**: a chunk's batches depend only on its files, so the latents of a chunk are the
  same whichever process inverts it; under torchrun each rank takes a contiguous run of chunks
  (:func:`oodgen.distributed.shard_range`) and rank 0 streams all of them, in input order, into one
  latent file (:func:`oodgen.latents.save_latents_from_parts`; the other ranks send their chunks over gloo).

Physical data (FITS, arrays) need one stretch for the whole set: it is fitted on all files when there
are at most :data:`STRETCH_FILES`, else on that many evenly spaced ones (:func:`probe`).

A file that cannot be read, or whose samples do not match the set (an image among physical maps,
another band count or unit), is skipped and reported, like everywhere in oodgen; it never stops a
long run. Math lives in :mod:`oodgen.engine`; this module only schedules files and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from .data import DataError, LoadReport, Sample, Stretch, fit_stretch, read_files, to_model_input
from .latents import LatentFileError, load_latents, read_metadata, save_latents, sources_of

log = logging.getLogger(__name__)

CHUNK_FILES = 256
"""Default number of files per chunk: the unit of read-ahead, checkpointing and sharding."""
STRETCH_FILES = 1024
"""Physical data: the stretch is fitted on all files up to this many, else on this many evenly spaced files."""

Progress = Callable[[int, int], None]
"""progress(done, total): image-steps done so far and (estimated) in all."""


def parts_dir(out: str | Path) -> Path:
    """The checkpoint folder of latent file ``out``: ``<out>.parts`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def chunk_ranges(n_files: int, chunk_files: int) -> list[tuple[int, int]]:
    """[start, stop) file ranges of the chunks: consecutive, ``chunk_files`` long (the last one shorter)."""
    if chunk_files < 1:
        raise ValueError(f"chunk_files={chunk_files} must be at least 1")
    return [(a, min(a + chunk_files, n_files)) for a in range(0, n_files, chunk_files)]


def _file_id(name: str, path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
        return name, st.st_size, st.st_mtime_ns
    except OSError:
        return name, -1, -1  # unreadable now: reading it later reports why


@dataclass(frozen=True)
class BulkPlan:
    """What a bulk inversion reads and how; identical on every rank."""

    files: list[tuple[str, Path]]  # (display name, path) of the data files, in input order
    kind: str  # "image" or "physical": the data kind of the set (from the first readable file)
    stretch: Optional[Stretch]  # physical data: the stretch of the whole set (None for images)
    resolution: int  # model input side R
    channels: int  # model input channels C
    settings_key: str  # model, DDIM settings and precision, as text (part of every chunk key)
    chunk_files: int = CHUNK_FILES  # files per chunk

    @cached_property
    def chunks(self) -> list[tuple[int, int]]:
        """[start, stop) file ranges of the chunks (:func:`chunk_ranges`)."""
        return chunk_ranges(len(self.files), self.chunk_files)

    def chunk_key(self, k: int) -> str:
        """SHA-256 of everything that determines chunk k's latents (stretch, settings, its files' names, sizes, mtimes)."""
        a, b = self.chunks[k]
        what = {"settings": self.settings_key, "kind": self.kind, "stretch": self.stretch.to_json() if self.stretch else None,
                "shape": [self.channels, self.resolution], "files": [_file_id(n, p) for n, p in self.files[a:b]]}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@dataclass
class ChunkInput:
    """One chunk read and converted: model input x [n, C, R, R] in [-1, 1], and what was read and skipped."""

    x: torch.Tensor  # [n, C, R, R]; n may be 0 when every file of the chunk was skipped
    samples: list[Sample]  # the n samples, in order
    errors: list[tuple[str, str]] = field(default_factory=list)  # (name, message) of skipped files and samples


def _fits_set(s: Sample, plan: BulkPlan) -> Optional[str]:
    """Why sample ``s`` cannot join the set (None if it can)."""
    if s.kind != plan.kind:
        return f"is {'an image' if s.kind == 'image' else 'physical data'} but this set is {'images' if plan.kind == 'image' else 'physical data'}; invert it separately"
    st = plan.stretch
    if st is not None and s.channels != st.channels:
        return f"has {s.channels} band(s), the set has {st.channels}; invert it separately"
    if st is not None and s.unit is not None and st.unit is not None and s.unit != st.unit:
        return f"is in {s.unit}, the set is in {st.unit}; convert it, or invert it separately"
    return None


def read_chunk(plan: BulkPlan, k: int, pool: Optional[ThreadPoolExecutor] = None) -> ChunkInput:
    """Read chunk ``k``'s files (in parallel threads when ``pool`` is given) and convert them to model input."""
    a, b = plan.chunks[k]
    files = plan.files[a:b]
    if pool is None:
        reports = [read_files(files)]
    else:
        reports = list(pool.map(lambda f: read_files([f]), files))
    samples: list[Sample] = []
    errors: list[tuple[str, str]] = []
    for r in reports:
        errors += r.errors
        for s in r.samples:
            why = _fits_set(s, plan)
            if why is None:
                samples.append(s)
            else:
                errors.append((s.name, f"{s.name}: {why}"))
    if not samples:
        return ChunkInput(torch.zeros((0, plan.channels, plan.resolution, plan.resolution)), [], errors)
    x, _ = to_model_input(samples, plan.resolution, plan.channels, plan.stretch)
    return ChunkInput(x, samples, errors)


def probe(files: Sequence[tuple[str, Path]], max_fit_files: int = STRETCH_FILES) -> tuple[str, Optional[Stretch], Optional[str]]:
    """(kind, stretch, note) of a data set: its kind from the first readable file; for physical data one stretch.

    The stretch is fitted on every file when there are at most ``max_fit_files``, else on
    ``max_fit_files`` evenly spaced files (``note`` says so). Raises :class:`DataError` if no file is readable.
    """
    kind = None
    for i in range(len(files)):
        report = read_files(files[i : i + 1])
        if report.samples:
            kind = report.samples[0].kind
            break
        log.debug("probe: %s", report.errors[0][1] if report.errors else f"{files[i][0]}: no data")  # reported when its chunk is read
    if kind is None:
        raise DataError(f"no usable images: none of the {len(files)} data files could be read" + (" (see above)" if len(files) > 1 else f" ({report.errors[0][1]})" if report.errors else ""))
    if kind == "image":
        return kind, None, None
    if len(files) <= max_fit_files:
        picked, note = list(files), None
    else:
        idx = sorted({round(j * (len(files) - 1) / (max_fit_files - 1)) for j in range(max_fit_files)})
        picked, note = [files[j] for j in idx], f"stretch fitted on {len(idx)} evenly spaced of {len(files)} files"
    samples = [s for s in read_files(picked).samples if s.kind == "physical"] or read_files(files[i : i + 1]).samples
    bands = max({s.channels for s in samples}, key=lambda c: sum(s.channels == c for s in samples))  # the set's band count
    samples = [s for s in samples if s.channels == bands]
    units = [s.unit for s in samples if s.unit is not None]
    if units:
        unit = max(set(units), key=units.count)
        samples = [s for s in samples if s.unit in (None, unit)]
    if note:
        log.info("%s", note)
    return kind, fit_stretch(samples), note


class ChunkStore:
    """The checkpoint folder of one bulk run: one latent file per chunk, valid while its key matches."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, k: int) -> Path:
        return self.root / f"chunk_{k:06d}.safetensors"

    def load(self, k: int, key: str) -> Optional[tuple[torch.Tensor, dict]]:
        """(latents [n, C, H, W], metadata) of chunk ``k`` if saved with ``key``; None otherwise (missing, stale, damaged)."""
        f = self.path(k)
        if not f.exists():
            return None
        try:
            z, meta = load_latents(f)
        except (LatentFileError, OSError, ValueError) as e:
            log.warning("ignoring damaged checkpoint %s (%s)", f, e)
            return None
        return (z, meta) if meta.get("key") == key else None

    def load_meta(self, k: int, key: str) -> Optional[dict]:
        """The metadata of chunk ``k`` if saved with ``key`` (the tensor is not read); None otherwise."""
        try:
            meta = read_metadata(self.path(k))
        except (LatentFileError, OSError, ValueError):
            return None
        return meta if meta.get("key") == key else None

    def save(self, k: int, key: str, z: torch.Tensor, inp: ChunkInput) -> dict:
        meta = {"key": key, "chunk": k, "sources": sources_of(inp.samples, inp.x), "errors": [list(e) for e in inp.errors]}
        save_latents(self.path(k), z, meta)
        return meta

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


InvertFn = Callable[[torch.Tensor, Optional[Progress]], torch.Tensor]
"""invert(x [n, C, R, R], progress) -> latents [n, C, R, R] on CPU (e.g. :func:`oodgen.engine.invert` with its settings)."""


def invert_chunks(
    plan: BulkPlan,
    mine: Sequence[int],
    store: ChunkStore,
    invert: InvertFn,
    steps: int,
    progress: Optional[Progress] = None,
    readers: int = 4,
    timings: Optional[dict[str, float]] = None,
    on_skip: Optional[Callable[[str], None]] = None,
) -> dict[int, dict]:
    """Invert chunks ``mine`` (indices into ``plan.chunks``) that ``store`` lacks; {k: chunk metadata} of all of ``mine``.

    Chunk k + 1 is read in a background thread while chunk k is inverted. Progress is in image-steps,
    with the total estimated at one sample per file until a chunk is read. ``timings``, if given,
    receives seconds spent ``read`` (in the background), ``waited`` for reads (not hidden behind
    compute) and ``inverted``. ``on_skip(message)`` hears of each skipped file or sample (default: a logged warning).
    """
    t = {"read": 0.0, "waited": 0.0, "inverted": 0.0} if timings is None else timings
    t.update(read=0.0, waited=0.0, inverted=0.0)

    def read(k: int) -> ChunkInput:
        t0 = time.perf_counter()
        inp = read_chunk(plan, k, pool)
        t["read"] += time.perf_counter() - t0
        return inp

    metas: dict[int, dict] = {}
    todo = []
    for k in mine:
        meta = store.load_meta(k, plan.chunk_key(k))
        if meta is None:
            todo.append(k)
        else:
            metas[k] = meta
    if metas:
        log.info("resuming: %d of %d chunks already done in %s", len(metas), len(mine), store.root)
    files_left = sum(b - a for a, b in (plan.chunks[k] for k in todo))
    done, total = 0, files_left * steps
    if progress is not None:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="oodgen-read") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="oodgen-ahead") as ahead:
        pending: Optional[Future] = ahead.submit(read, todo[0]) if todo else None
        for i, k in enumerate(todo):
            t0 = time.perf_counter()
            inp: ChunkInput = pending.result()  # type: ignore[union-attr]
            t["waited"] += time.perf_counter() - t0
            pending = ahead.submit(read, todo[i + 1]) if i + 1 < len(todo) else None
            a, b = plan.chunks[k]
            total += (len(inp.samples) - (b - a)) * steps  # the estimate becomes exact for this chunk
            for _, msg in inp.errors:
                (on_skip or (lambda m: log.warning("skipped %s", m)))(msg)
            base = done
            cb = None if progress is None else (lambda d, _total, base=base: progress(base + d, total))
            t0 = time.perf_counter()
            z = invert(inp.x, cb) if len(inp.samples) else inp.x
            t["inverted"] += time.perf_counter() - t0
            metas[k] = store.save(k, plan.chunk_key(k), z, inp)
            done = base + len(inp.samples) * steps
            del inp, z  # held otherwise until the next chunk's inversion ends: a third chunk in memory
            if progress is not None:
                progress(done, total)
    if todo:
        log.info("read %d chunks in %.1f s, of which %.1f s were not hidden behind %.1f s of inversion", len(todo), t["read"], t["waited"], t["inverted"])
    return metas


def chunk_parts(plan: BulkPlan, store: ChunkStore, order: Sequence[int]) -> Iterator[torch.Tensor]:
    """The saved latents of chunks ``order``, one chunk in memory at a time (for :func:`oodgen.latents.save_latents_from_parts`)."""
    for k in order:
        loaded = store.load(k, plan.chunk_key(k))
        if loaded is None:
            raise LatentFileError(f"checkpoint {store.path(k)} is missing or stale; run the command again to redo it")
        yield loaded[0]


def cpu_readers() -> int:
    """Threads that read files: up to 8, at most the CPU count."""
    return max(1, min(8, os.cpu_count() or 1))
