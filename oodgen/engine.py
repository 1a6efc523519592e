"""The paper's pipeline on whole datasets: batched inversion, denoising, reconstruction, generation.

Glue between :mod:`oodgen.models` (the frozen net), :mod:`oodgen.ddim` (the math) and
:mod:`oodgen.sampling` (new latents). Tensors in, tensors out, on CPU; the model's device is used
inside. Long loops report ``progress(done, total)`` in image-steps (one image through one DDIM
step) and stop with :class:`oodgen.ddim.Cancelled` when ``cancel()`` returns True.

On CUDA the next batch is copied to the device (pinned memory, a side stream) while the current one
runs, and the DDIM step loop itself never waits for the device (see :mod:`oodgen.ddim`).
:func:`auto_batch_size` sizes batches to the free GPU memory; an out-of-memory error still halves the
batch and retries it (:func:`_run_batched`), so a guess that is too large costs one retry, not the run.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from . import ddim
from .config import DDIMSettings, GenerationSettings
from .fsutil import cache_dir, write_json
from .models import FrozenDDPM, is_out_of_memory
from .sampling import Draw, SourceProfile, finish, sample_latents

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""progress(done, total): image-steps done so far and in all."""


class _Stager:
    """Puts batches of ``x`` on the model's device as float32.

    On CUDA a batch goes through pinned host memory and is copied on a side stream, so staging batch
    k + 1 overlaps the compute of batch k; :meth:`ready` makes the compute stream wait for the copy.
    Elsewhere it is a plain ``.to`` (a view when ``x`` is already float32 on the device).
    """

    def __init__(self, x: torch.Tensor, device: torch.device) -> None:
        self.x, self.device = x, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        part = self.x[start:stop]
        if self.stream is None:
            return part.to(self.device, torch.float32)
        host = part.to(torch.float32)
        if host.device.type == "cpu":
            host = host.pin_memory()
        with torch.cuda.stream(self.stream):
            return host.to(self.device, non_blocking=True)

    def ready(self, batch: torch.Tensor) -> torch.Tensor:
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            batch.record_stream(current)  # allocated on the side stream, used on the compute stream
        return batch


def batch_for_memory(
    free_bytes: float,
    per_image_bytes: float,
    overhead_bytes: float = 0.0,
    cap: int = 256,
    n: Optional[int] = None,
    fraction: float = 0.8,
) -> int:
    """The largest batch whose memory fits in ``fraction`` of ``free_bytes``; pure arithmetic.

    A batch of b images is taken to need ``overhead_bytes + b * per_image_bytes``. The fitting b is
    rounded down to a multiple of 8 (to a power of two below 8), then clipped to [1, cap] and to ``n``
    (the number of images, when given). At least 1 is returned even when nothing fits: the
    out-of-memory back-off of the engine has the last word.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    if cap < 1:
        raise ValueError(f"cap={cap} must be at least 1")
    budget = fraction * free_bytes - overhead_bytes
    fit = cap if per_image_bytes <= 0 else int(min(cap + 8, max(0.0, budget) // per_image_bytes))
    b = fit - fit % 8 if fit >= 8 else (1 << (fit.bit_length() - 1) if fit >= 1 else 1)
    b = min(b, cap)
    if n is not None:
        b = min(b, n)
    return max(1, b)


MemoryProbe = Callable[[int], float]
"""measure(batch_size) -> peak bytes one eps forward of that batch allocates beyond what was allocated before it."""

PROBE_SIZES = (1, 4)  # the two batch sizes measured by auto_batch_size; the per-image cost is the slope between them
# float32 [C, H, W] tensors per image held outside the UNet: x, eps, x0 estimate, next x, prefetched batch, output...
DDIM_STATE_TENSORS = 8


def _cuda_probe(model: FrozenDDPM, sample_shape: tuple[int, int, int]) -> MemoryProbe:
    """Peak CUDA memory of one plain (uncompiled) UNet forward of a zero batch, as :meth:`FrozenDDPM.eps` runs it.

    The plain forward is measured even for a compiled model: measuring the compiled one would compile once
    per probe size, and the fused graph usually needs no more memory than the eager forward.
    """
    dev = model.device

    def measure(b: int) -> float:
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            with torch.no_grad():
                x = torch.zeros((b, *sample_shape), device=dev, dtype=torch.float32)
                t = torch.full((b,), model.num_train_timesteps // 2, device=dev, dtype=torch.long)
                model.unet(x.to(model.dtype), t).sample.float()
            torch.cuda.synchronize(dev)
            return float(torch.cuda.max_memory_allocated(dev) - base)
        finally:
            x = t = None
            torch.cuda.empty_cache()

    return measure


def measure_batch_memory(
    model: FrozenDDPM,
    sample_shape: Optional[tuple[int, int, int]] = None,
    measure: Optional[MemoryProbe] = None,
) -> tuple[float, float]:
    """(bytes per image, fixed bytes) of one eps call, from its peak memory at batch sizes :data:`PROBE_SIZES`.

    ``sample_shape`` (C, H, W) defaults to the model's. ``measure`` defaults to the CUDA peak-memory probe
    (``torch.cuda.max_memory_allocated``); pass one to use another allocator or to test. The per-image figure
    adds the DDIM loop's own float32 state (:data:`DDIM_STATE_TENSORS` images' worth) to the UNet's slope.
    An out-of-memory error at the larger probe size falls back to the smaller size alone (all of it per image).
    """
    shape = sample_shape or (model.channels, model.resolution, model.resolution)
    if measure is None:
        if model.device.type != "cuda":
            raise ValueError(f"no memory probe for device {model.device}: pass measure=")
        measure = _cuda_probe(model, shape)
    lo, hi = PROBE_SIZES
    peak_lo = measure(lo)
    try:
        peak_hi = measure(hi)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        log.warning("out of memory while probing batch size %d; sizing from batch size %d alone", hi, lo)
        per_image, overhead = peak_lo / lo, 0.0
    else:
        per_image = max(0.0, (peak_hi - peak_lo) / (hi - lo))
        overhead = max(0.0, peak_lo - lo * per_image)
    state = DDIM_STATE_TENSORS * math.prod(shape) * 4
    return per_image + state, overhead


FALLBACK_BATCH = 32  # the batch size where none can be measured (MPS, a failed probe)
CPU_BATCH_CANDIDATES = (4, 8, 16, 32, 64)  # batch sizes cpu_batch_size may measure, in order
ForwardTimer = Callable[[int], float]
"""time(batch_size) -> seconds of one eps forward of that batch (after a warm-up)."""


def _cpu_timer(model: FrozenDDPM, sample_shape: tuple[int, int, int]) -> ForwardTimer:
    """Times the plain UNet forward (never the compiled one: that would compile once per candidate shape)."""

    def time_forward(b: int) -> float:
        x = torch.zeros((b, *sample_shape), dtype=model.dtype)
        if model._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.full((b,), model.num_train_timesteps // 2, dtype=torch.long)
        best = math.inf
        with torch.inference_mode():
            for k in range(4):  # the first is a warm-up: allocator, oneDNN primitives for this shape
                t0 = time.perf_counter()
                model.unet(x, t)
                if k:
                    best = min(best, time.perf_counter() - t0)
        return best

    return time_forward


def _cpu_key(model: FrozenDDPM, sample_shape: tuple[int, int, int]) -> str:
    """What a measured CPU batch size depends on: the CPU, its threads, torch, the model and its precision."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dtype = str(model.dtype).replace("torch.", "")
    return f"{cpu}|{torch.get_num_threads()} threads|torch {torch.__version__}|{model.name}|{model.num_parameters}|{dtype}|{'x'.join(map(str, sample_shape))}|{'channels_last' if model._channels_last else 'contiguous'}"


def cpu_batch_size(
    model: FrozenDDPM,
    sample_shape: Optional[tuple[int, int, int]] = None,
    time_forward: Optional[ForwardTimer] = None,
    cache_file: Optional[Path] = None,
    candidates: Sequence[int] = CPU_BATCH_CANDIDATES,
) -> int:
    """The batch size of highest throughput (images per second of one eps forward) for ``model`` on this CPU.

    Measured once per CPU, thread count, torch version, model, precision and image shape, and remembered in
    ``cache_file`` (default ``cache_dir()/cpu_batch_sizes.json``), so a later process pays nothing. The
    candidates are timed in increasing order (a warm-up and the best of three forwards each) and the search
    stops once two batches in a row are more than 10% slower per image than the best so far: throughput on a CPU rises while a
    batch amortises per-call overhead and falls once its activations spill out of the caches (the bundled
    64x64 model on 2 cores: best at 16 in float32, 32 in bfloat16, README "Speed"). ``time_forward`` replaces
    the timer (tests). A cache that cannot be read or written is ignored (logged), never an error.
    """
    shape = sample_shape or (model.channels, model.resolution, model.resolution)
    key = _cpu_key(model, shape)
    path = Path(cache_file) if cache_file is not None else cache_dir() / "cpu_batch_sizes.json"
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        log.warning("ignoring the batch-size cache %s (%s)", path, e)
        cached = {}
    if isinstance(cached.get(key), dict) and int(cached[key].get("batch_size", 0)) >= 1:
        return int(cached[key]["batch_size"])
    timer = time_forward or _cpu_timer(model, shape)
    rates: dict[int, float] = {}
    t0 = time.perf_counter()
    slower = 0  # consecutive candidates more than 10% below the best so far
    for b in candidates:
        rates[b] = b / max(timer(b), 1e-12)
        slower = slower + 1 if rates[b] < 0.9 * max(rates.values()) else 0
        if slower == 2:
            break
    best = max(rates, key=rates.get)
    log.info("batch size %d on this CPU for %s (images/s per batch: %s; measured in %.1f s, cached in %s)", best, model.name,
             ", ".join(f"{b}: {r:.1f}" for b, r in rates.items()), time.perf_counter() - t0, path)
    cached[key] = {"batch_size": best, "images_per_s": {str(b): round(r, 2) for b, r in rates.items()}}
    try:
        write_json(path, cached)
    except OSError as e:
        log.warning("could not write the batch-size cache %s (%s)", path, e)
    return best


def auto_batch_size(
    model: FrozenDDPM,
    sample_shape: Optional[tuple[int, int, int]] = None,
    n: Optional[int] = None,
    cap: int = 256,
    fraction: float = 0.8,
    measure: Optional[MemoryProbe] = None,
    free_bytes: Optional[float] = None,
) -> int:
    """A batch size for ``model`` on its device: sized to free GPU memory on CUDA, measured on CPU, 32 elsewhere.

    On CUDA (or whenever ``measure`` is given) the peak memory of one eps forward of ``sample_shape``
    (C, H, W; default the model's) is measured at two small batch sizes (:func:`measure_batch_memory`),
    which gives the bytes per image and the fixed overhead; the batch is the largest that fits in
    ``fraction`` of the free memory (``torch.cuda.mem_get_info``, or ``free_bytes``), rounded down to a
    multiple of 8 and clipped to [1, cap] and to ``n`` (:func:`batch_for_memory`). The engine still halves
    the batch on an out-of-memory error, so a wrong guess (memory taken by another process meanwhile,
    a compiled graph that needs more) costs a retry, not the run.

    On CPU it is :func:`cpu_batch_size` (the fastest batch measured once per machine and model, cached), on MPS
    :data:`FALLBACK_BATCH`, clipped to ``n`` either way: host memory is large next to one batch and not worth
    probing, but throughput depends on the batch (the caches). ``measure`` and ``free_bytes`` replace the CUDA probe and
    ``torch.cuda.mem_get_info`` (tests, other allocators). Logs its choice; never raises for lack of memory.
    """
    if measure is None and model.device.type != "cuda":
        b = cpu_batch_size(model, sample_shape) if model.device.type == "cpu" else FALLBACK_BATCH
        return max(1, min(b, n)) if n is not None else b
    try:
        per_image, overhead = measure_batch_memory(model, sample_shape, measure)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        log.warning("out of memory while probing batch size %d on %s; batch size 1", PROBE_SIZES[0], model.device)
        return 1
    if free_bytes is None:
        if model.device.type != "cuda":
            raise ValueError(f"free_bytes is needed to size batches on {model.device}")
        free_bytes = float(torch.cuda.mem_get_info(model.device)[0])
    b = batch_for_memory(free_bytes, per_image, overhead, cap, n, fraction)
    log.info(
        "batch size %d on %s: %.1f MiB per image + %.1f MiB fixed, %.2f of %.2f GiB free (cap %d%s)",
        b, model.device, per_image / 2**20, overhead / 2**20, fraction, free_bytes / 2**30, cap, f", {n} images" if n is not None else "",
    )
    return b


def _run_batched(
    fn: Callable[[torch.Tensor, int, Callable[[dict], None]], torch.Tensor],
    x: torch.Tensor,
    model: FrozenDDPM,
    batch_size: int,
    steps: int,
    progress: Optional[Progress],
) -> torch.Tensor:
    """Apply ``fn(batch_on_device, start, step_callback)`` over ``x`` [N, ...] in batches; results on CPU.

    On out-of-memory the batch size is halved and the batch retried (down to 1). The next batch is
    staged on the device before waiting for the current result (overlapped on CUDA, see :class:`_Stager`).
    """
    n = x.shape[0]
    total = n * steps
    done = 0
    out: list[torch.Tensor] = []
    start = 0
    bs = batch_size if batch_size >= 1 else auto_batch_size(model, tuple(x.shape[1:]), n=n)
    stage = _Stager(x, model.device)
    staged: Optional[tuple[int, int, torch.Tensor]] = None  # (start, size, batch) prefetched for the next round
    while start < n:
        b = min(bs, n - start)
        batch = staged[2] if staged is not None and staged[:2] == (start, b) else stage(start, start + b)
        staged = None
        batch = stage.ready(batch)
        base = done

        def step_cb(info: dict, b: int = b, base: int = base) -> None:
            if progress is not None:
                progress(base + info["i"] * b, total)

        try:
            y = fn(batch, start, step_cb)
        except Exception as e:
            if not is_out_of_memory(e) or bs == 1:
                raise
            bs = max(1, b // 2)
            log.warning("out of memory at batch size %d; retrying with %d", b, bs)
            del batch
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        nxt = start + b
        if nxt < n:  # queued now, so the copy runs while the device finishes this batch
            staged = (nxt, min(bs, n - nxt), stage(nxt, nxt + min(bs, n - nxt)))
        out.append(y.to("cpu", torch.float32))  # waits for this batch only
        done = base + b * steps
        start = nxt
    return torch.cat(out) if out else x.new_zeros((0, *x.shape[1:]))


def invert(
    model: FrozenDDPM,
    x0: torch.Tensor,
    settings: DDIMSettings = DDIMSettings(),
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> torch.Tensor:
    """DDIM-invert images ``x0`` [N, C, H, W] in [-1, 1] to latents x_{t_end} [N, C, H, W] (CPU float32)."""
    _check_shape(model, x0)

    def fn(batch: torch.Tensor, start: int, cb: Callable[[dict], None]) -> torch.Tensor:
        return ddim.invert(model.eps, batch, model.alphas_cumprod, settings.t_end, settings.steps, callback=cb, cancel=cancel)

    return _run_batched(fn, x0, model, settings.batch_size, settings.steps, progress)


def denoise(
    model: FrozenDDPM,
    z: torch.Tensor,
    settings: DDIMSettings = DDIMSettings(),
    eta: float = 0.0,
    seed: int = 0,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> torch.Tensor:
    """DDIM-denoise latents ``z`` [N, C, H, W] at ``settings.t_end`` to images [N, C, H, W] (about [-1, 1], CPU).

    With eta > 0 the noise of each batch comes from a generator seeded by (seed, first index of the batch).
    """
    _check_shape(model, z)

    def fn(batch: torch.Tensor, start: int, cb: Callable[[dict], None]) -> torch.Tensor:
        gen = None
        if eta > 0:
            gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + start)
        return ddim.denoise(model.eps, batch, model.alphas_cumprod, settings.t_end, settings.steps, eta=eta, generator=gen, callback=cb, cancel=cancel)

    return _run_batched(fn, z, model, settings.batch_size, settings.steps, progress)


def _collect_snapshots(
    model: FrozenDDPM,
    x: torch.Tensor,
    wanted: set[int],
    n_steps: int,
    walk: Callable[[torch.Tensor, Callable[[dict], None]], torch.Tensor],
    batch_size: int,
    progress: Optional[Progress],
) -> dict[int, torch.Tensor]:
    """Run ``walk(batch, callback)`` over ``x`` in batches and keep the states at the ``wanted`` timesteps.

    A batch's snapshots are kept only once its walk has finished, so an out-of-memory retry
    never leaves partial results behind. Returns {t: [N, C, H, W]} on CPU.
    """
    parts: dict[int, list[torch.Tensor]] = {t: [] for t in wanted}

    def fn(batch: torch.Tensor, start: int, cb: Callable[[dict], None]) -> torch.Tensor:
        snaps: dict[int, torch.Tensor] = {}

        def record(info: dict) -> None:
            if info["t"] in wanted:
                snaps[info["t"]] = info["x"]  # kept on the device: no copy, no sync inside the step loop
            cb(info)

        walk(batch, record)
        for t in wanted:
            parts[t].append(snaps[t].to("cpu", torch.float32))
        return batch[:, :0]  # nothing to concatenate: the snapshots are collected above

    _run_batched(fn, x, model, batch_size, n_steps, progress)
    return {t: torch.cat(p) for t, p in parts.items()}


def invert_snapshots(
    model: FrozenDDPM,
    x0: torch.Tensor,
    t_values: Sequence[int],
    steps: int = 50,
    batch_size: int = 0,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> dict[int, torch.Tensor]:
    """Latents of ``x0`` [N, C, H, W] at every t in ``t_values`` from ONE inversion pass.

    The DDIM grid passes exactly through each requested t (:func:`oodgen.ddim.grid_through`), so each
    snapshot is a true DDIM inversion to that t. Returns {t: [N, C, H, W]} on CPU.
    """
    _check_shape(model, x0)
    grid = ddim.grid_through(t_values, steps, model.num_train_timesteps)

    def walk(batch: torch.Tensor, record: Callable[[dict], None]) -> torch.Tensor:
        return ddim.invert(model.eps, batch, model.alphas_cumprod, 0, 0, callback=record, cancel=cancel, grid=grid)

    return _collect_snapshots(model, x0, {int(t) for t in t_values}, len(grid) - 1, walk, batch_size, progress)


def prior_latents(
    model: FrozenDDPM,
    n: int,
    t_values: Sequence[int],
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 0,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> dict[int, torch.Tensor]:
    """The model's own prior as an in-domain reference at each t in ``t_values``: {t: [n, C, H, W]}.

    x_T ~ N(0, I) at T = num_train_timesteps - 1; for t < T the prior samples are pushed down to t
    along the model's deterministic DDIM trajectory (one pass through a grid hitting every t).
    """
    T = model.num_train_timesteps - 1
    z = torch.randn((n, model.channels, model.resolution, model.resolution), generator=torch.Generator().manual_seed(seed))
    out = {T: z} if T in t_values else {}
    lower = sorted(int(t) for t in t_values if int(t) < T)
    if not lower:
        return out
    full = ddim.grid_through(lower + [T], steps, model.num_train_timesteps)
    grid = [0] + [g for g in full if g >= lower[0]]  # walk down to the lowest requested t, then one last step

    def walk(batch: torch.Tensor, record: Callable[[dict], None]) -> torch.Tensor:
        return ddim.denoise(model.eps, batch, model.alphas_cumprod, 0, 0, callback=record, cancel=cancel, grid=grid)

    out.update(_collect_snapshots(model, z, set(lower), len(grid) - 1, walk, batch_size, progress))
    return out


def _check_shape(model: FrozenDDPM, x: torch.Tensor) -> None:
    want = (model.channels, model.resolution, model.resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"expected a batch [N, {want[0]}, {want[1]}, {want[2]}] for {model.name}, got {tuple(x.shape)}")


@dataclass
class Reconstruction:
    """Result of inversion followed by denoising."""

    latents: torch.Tensor  # [N, C, H, W] at t_end
    images: torch.Tensor  # reconstructions [N, C, H, W] clipped to [-1, 1]
    mae: torch.Tensor  # [N] mean absolute error per image on the [0, 1] pixel scale

    def summary(self) -> dict:
        return {"n": int(self.mae.numel()), "mae": float(self.mae.mean()), "mae_std": float(self.mae.std()) if self.mae.numel() > 1 else 0.0}


def reconstruct(
    model: FrozenDDPM,
    x0: torch.Tensor,
    settings: DDIMSettings = DDIMSettings(),
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Reconstruction:
    """Invert ``x0`` [N, C, H, W] to t_end and denoise back (eta = 0); MAE on the [0, 1] scale (paper Table 2)."""
    n = x0.shape[0]
    total = 2 * n * settings.steps

    def half(offset: int) -> Optional[Progress]:
        return None if progress is None else (lambda d, _t: progress(offset + d, total))

    z = invert(model, x0, settings, half(0), cancel)
    rec = denoise(model, z, settings, 0.0, 0, half(n * settings.steps), cancel).clamp(-1, 1)
    mae = ((rec - x0.float()).abs() / 2).flatten(1).mean(1)
    return Reconstruction(z, rec, mae)


@dataclass
class Generated:
    """New samples."""

    images: torch.Tensor  # [n, C, H, W] in [-1, 1]
    latents: torch.Tensor  # [n, C, H, W] the sampled latents at t_end
    draws: list[Draw]  # provenance of each latent


def generate(
    model: FrozenDDPM,
    latents: torch.Tensor,
    n: int,
    ddim_settings: DDIMSettings = DDIMSettings(),
    settings: GenerationSettings = GenerationSettings(),
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
    sources: Optional[SourceProfile] = None,
) -> Generated:
    """n new images in [-1, 1] from the OOD region of ``latents`` [N, C, H, W], with their latents and provenance.

    After decoding, :func:`oodgen.sampling.finish` applies ``settings.noise`` and ``settings.calibration``
    with what ``sources`` (rows as ``latents``; :func:`oodgen.latents.source_profile` of the latent file, or
    :meth:`SourceProfile.from_images`) records; a step it lacks is skipped with a warning.
    """
    z, draws = sample_latents(latents, n, settings)
    if sources is not None and sources.quantiles is not None and len(sources.quantiles) != len(latents):
        raise ValueError(f"the source profile has {len(sources.quantiles)} rows for {len(latents)} latents; take SourceProfile.subset of the same rows")
    images = denoise(model, z, ddim_settings, settings.eta, settings.seed, progress, cancel)
    images, warnings = finish(images, draws, settings, sources)
    for w in warnings:
        log.warning(w)
    return Generated(images, z, draws)
