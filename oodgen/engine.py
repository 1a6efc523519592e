"""The paper's pipeline on whole datasets: batched inversion, denoising, reconstruction, generation.

Glue between :mod:`oodgen.models` (the frozen net), :mod:`oodgen.ddim` (the math) and
:mod:`oodgen.sampling` (new latents). Tensors in, tensors out, on CPU; the model's device is used
inside. Long loops report ``progress(done, total)`` in image-steps (one image through one DDIM
step) and stop with :class:`oodgen.ddim.Cancelled` when ``cancel()`` returns True.

On CUDA the next batch is copied to the device (pinned memory, a side stream) while the current one
runs, and the DDIM step loop itself never waits for the device (see :mod:`oodgen.ddim`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from . import ddim
from .config import DDIMSettings, GenerationSettings
from .models import FrozenDDPM, is_out_of_memory
from .sampling import Draw, sample_latents

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
    bs = max(1, batch_size)
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
    batch_size: int = 32,
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
    batch_size: int = 32,
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
) -> Generated:
    """n new images in [-1, 1] from the OOD region of ``latents`` [N, C, H, W], with their latents and provenance."""
    z, draws = sample_latents(latents, n, settings)
    images = denoise(model, z, ddim_settings, settings.eta, settings.seed, progress, cancel)
    return Generated(images.clamp(-1, 1), z, draws)
