"""The vanilla fine-tuning baseline (the paper's Table 1 / App. E.1 "vanilla tuning"): tune a copy of the base model.

A deep copy of the frozen base UNet is trained on the out-of-domain images with the standard DDPM
loss (Ho et al. 2020): for x0 from the set, t ~ U{0..T-1} and eps ~ N(0, I),
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` and the loss is ``|| eps_theta(x_t, t) - eps ||^2``
(the target is v or x0 for models that predict those), with the base model's own schedule
(:attr:`oodgen.models.FrozenDDPM.alphas_cumprod`, the linear betas of its scheduler config). The base
model is never touched, in memory or on disk. Training stops after ``steps`` optimizer steps or a
wall-clock budget, whichever comes first; it reports progress, polls a cancel callback and writes a
checkpoint (weights, optimizer, RNG state, step, loss curve) every ``checkpoint_every`` steps, at the end and when
cancelled, from which the same call resumes exactly (seeded: a resumed run ends with the weights of an
uninterrupted one). The tuned model is saved as a diffusers folder (``unet/``, the base model's
scheduler config, ``model_index.json``) with a record ``finetune.json`` (base model, data names and
SHA-256, steps, seconds, loss curve, the stretch of physical data), and sampled from its own prior
N(0, I) at t = T - 1 with the repo's DDIM sampler (:func:`oodgen.engine.denoise`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .config import JSONSettings
from .ddim import Cancelled
from .models import FrozenDDPM

log = logging.getLogger(__name__)

RECORD = "finetune.json"
CHECKPOINT = "checkpoint.pt"
Progress = Callable[[int, int], None]
"""progress(steps done, steps in all: the step budget, or an estimate from the time budget)."""


class FinetuneError(ValueError):
    """Bad fine-tuning input; the message names the problem and the fix."""


@dataclass(frozen=True)
class FinetuneSettings(JSONSettings):
    """How the copy of the base model is tuned (the CLI and the app read the same fields)."""

    steps: Optional[int] = 500  # optimizer steps at most (None: only the time budget stops it)
    seconds: Optional[float] = None  # wall-clock budget of the training loop, summed over resumes (None: steps only)
    batch_size: int = 16  # images per optimizer step (drawn with replacement)
    lr: float = 1e-4  # Adam learning rate
    seed: int = 0  # seeds batches, flips, timesteps and noise
    flip: bool = True  # random horizontal flips of the training images
    checkpoint_every: int = 50  # steps between checkpoints (one is also written when cancelled)

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("give a number of steps or a time budget (seconds) for the fine-tuning")
        if (self.steps is not None and self.steps < 1) or (self.seconds is not None and self.seconds <= 0):
            raise ValueError(f"steps={self.steps} must be at least 1 and seconds={self.seconds} positive")
        if self.batch_size < 1 or self.checkpoint_every < 1 or not self.lr > 0:
            raise ValueError("batch_size and checkpoint_every must be at least 1 and lr positive")


@dataclass
class FinetuneResult:
    """A finished (or budget-stopped) fine-tuning."""

    unet: torch.nn.Module  # the tuned copy, float32, eval mode, no gradients
    steps: int  # optimizer steps done in all (resumed ones included)
    seconds: float  # training-loop seconds in all
    losses: list[float] = field(default_factory=list)  # training loss of every step
    resumed_from: int = 0  # the checkpoint step this call started from (0: from the base model)


def _target(x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    if prediction_type == "sample":
        return x0
    raise FinetuneError(f"cannot fine-tune a model with prediction_type {prediction_type!r}")


def ddpm_loss(unet: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
              prediction_type: str = "epsilon") -> torch.Tensor:
    """The DDPM training loss: mean squared error of the UNet's prediction at x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise.

    x0, noise [B, C, H, W]; t [B] long; alphas_cumprod [T] float32 on the same device. Learned-sigma
    outputs (2C channels) are cut to their first C (the eps half), as :meth:`FrozenDDPM.eps` does.
    """
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = unet(xt, t).sample[:, : x0.shape[1]]
    return torch.nn.functional.mse_loss(out.float(), _target(x0, noise, a, prediction_type))


def _batch(x: torch.Tensor, settings: FinetuneSettings, n_t: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One seeded training batch (x0, t, noise) drawn from x [N, C, H, W] with generator ``g`` (CPU)."""
    idx = torch.randint(0, x.shape[0], (settings.batch_size,), generator=g)
    x0 = x[idx]
    if settings.flip:
        flip = torch.rand(settings.batch_size, generator=g) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    t = torch.randint(0, n_t, (settings.batch_size,), generator=g)
    return x0, t, torch.randn(x0.shape, generator=g)


def evaluation_loss(unet: torch.nn.Module, base: FrozenDDPM, x: torch.Tensor, n_draws: int = 4, seed: int = 1234) -> float:
    """The DDPM loss of ``unet`` on all of x [N, C, H, W], averaged over ``n_draws`` fixed seeded (t, noise) draws per image."""
    g = torch.Generator().manual_seed(seed)
    acp = torch.tensor(base.alphas_cumprod, dtype=torch.float32, device=base.device)
    total = 0.0
    with torch.no_grad():
        for _ in range(n_draws):
            t = torch.randint(0, len(acp), (x.shape[0],), generator=g)
            noise = torch.randn(x.shape, generator=g)
            total += float(ddpm_loss(unet, x.to(base.device), t.to(base.device), noise.to(base.device), acp, base.prediction_type))
    return total / n_draws


def data_key(x: torch.Tensor) -> str:
    """SHA-256 of the training tensor (what a checkpoint must have been trained on to be resumed)."""
    return hashlib.sha256(np.ascontiguousarray(x.detach().cpu().float().numpy()).tobytes()).hexdigest()


def _key(base: FrozenDDPM, x: torch.Tensor, settings: FinetuneSettings) -> dict:
    """What a checkpoint must match to be resumed (the budget may change between runs)."""
    return {"base": base.name, "data": data_key(x), "batch_size": settings.batch_size, "lr": settings.lr, "seed": settings.seed,
            "flip": settings.flip}


def _save_checkpoint(folder: Path, unet, opt, g: torch.Generator, step: int, losses: list[float], seconds: float, key: dict) -> None:
    from .fsutil import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    state = {"unet": unet.state_dict(), "optimizer": opt.state_dict(), "rng": g.get_state(), "step": step, "losses": list(losses),
             "seconds": seconds, "key": key}
    atomic_write(folder / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    log.info("fine-tuning checkpoint at step %d in %s", step, folder)


def _load_checkpoint(folder: Optional[Path], key: dict) -> Optional[dict]:
    f = folder / CHECKPOINT if folder is not None else None
    if f is None or not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn or foreign file: start over rather than fail
        log.warning("ignoring unreadable fine-tuning checkpoint %s (%s); starting from the base model", f, e)
        return None
    if state.get("key") != key:
        log.warning("ignoring the fine-tuning checkpoint in %s: it was made with another base model, data or settings", folder)
        return None
    return state


def finetune(base: FrozenDDPM, x: torch.Tensor, settings: FinetuneSettings = FinetuneSettings(),
             checkpoint_dir: Optional[str | Path] = None, progress: Optional[Progress] = None,
             cancel: Optional[Callable[[], bool]] = None) -> FinetuneResult:
    """Fine-tune a deep copy of ``base``'s UNet on x [N, C, H, W] in [-1, 1] (the model's input range) with the DDPM loss.

    Stops after ``settings.steps`` steps or ``settings.seconds`` of training, whichever comes first. With
    ``checkpoint_dir``, a checkpoint is written every ``settings.checkpoint_every`` steps and on cancel, and a
    matching checkpoint found there is resumed (same base, data, batch size, lr, seed and flips). ``cancel()``
    returning True stops with :class:`oodgen.ddim.Cancelled` after saving. ``base`` is left untouched.
    """
    want = (base.channels, base.resolution, base.resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise FinetuneError(f"expected training images [N, {want[0]}, {want[1]}, {want[2]}] for {base.name}, got {tuple(x.shape)}")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    key = _key(base, x, settings)
    unet = copy.deepcopy(base.unet).to(base.device)
    if next(unet.parameters()).dtype != torch.float32:
        log.warning("%s runs in %s: fine-tuning starts from its rounded weights (load it with dtype='float32' to avoid that)",
                    base.name, str(base.dtype).replace("torch.", ""))
        unet.float()  # trained in float32 whatever precision the base runs in
    unet.requires_grad_(True).train()
    opt = torch.optim.Adam(unet.parameters(), lr=settings.lr)
    g = torch.Generator().manual_seed(settings.seed)
    step, losses, seconds = 0, [], 0.0
    state = _load_checkpoint(folder, key)
    if state is not None:
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"])
        step, losses, seconds = int(state["step"]), list(state["losses"]), float(state["seconds"])
        log.info("resuming fine-tuning from step %d (%.0f s) in %s", step, seconds, folder)
    resumed_from = step
    acp = torch.tensor(base.alphas_cumprod, dtype=torch.float32, device=base.device)
    x = x.detach().to("cpu", torch.float32)

    def done() -> bool:
        return (settings.steps is not None and step >= settings.steps) or (settings.seconds is not None and seconds >= settings.seconds)

    def total() -> int:
        if settings.seconds is None or seconds <= 0:
            return int(settings.steps or max(step, 1))
        estimate = int(np.ceil(step * settings.seconds / seconds))
        return max(step, min(estimate, settings.steps) if settings.steps is not None else estimate)

    while not done():
        if cancel is not None and cancel():
            if folder is not None:
                _save_checkpoint(folder, unet, opt, g, step, losses, seconds, key)
            raise Cancelled()
        t0 = time.perf_counter()
        x0, t, noise = _batch(x, settings, len(acp), g)
        loss = ddpm_loss(unet, x0.to(base.device), t.to(base.device), noise.to(base.device), acp, base.prediction_type)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seconds += time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if folder is not None and (step % settings.checkpoint_every == 0 or done()):  # the last one: a rerun returns at once
            _save_checkpoint(folder, unet, opt, g, step, losses, seconds, key)
        if progress is not None:
            progress(step, total())
    unet.eval().requires_grad_(False)
    return FinetuneResult(unet, step, seconds, losses, resumed_from)


def checkpoint_dir_for(out: str | Path) -> Path:
    """Where :func:`finetune` keeps the checkpoints of a model to be saved at ``out`` (``OUT.ckpt/``, removed once saved)."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def scheduler_config(base: FrozenDDPM) -> dict:
    """The base model's scheduler config: the file of its diffusers folder when there is one, else its exact betas."""
    from .models import REGISTRY, find_layout

    spec = REGISTRY.get(base.name)
    src = Path(spec.source if spec else base.name).expanduser()
    if src.is_dir():
        try:
            sched = find_layout(src)[2]
            if sched.is_file():
                return json.loads(sched.read_text())
        except Exception as e:  # noqa: BLE001 - fall back to the schedule the model was loaded with
            log.info("no scheduler config file for %s (%s); writing its betas", base.name, e)
    acp = np.asarray(base.alphas_cumprod, dtype=np.float64)
    betas = 1.0 - acp / np.concatenate([[1.0], acp[:-1]])
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": len(acp), "trained_betas": betas.tolist(),
            "prediction_type": base.prediction_type, "clip_sample": False}


def save_tuned(result: FinetuneResult, base: FrozenDDPM, out: str | Path, record: Optional[dict] = None) -> Path:
    """Save the tuned UNet as a diffusers folder (DDPMPipeline layout) with ``finetune.json``; atomic (temp folder, rename).

    ``record`` adds fields to the record (data names and SHA-256, the stretch, ...). An existing folder at
    ``out`` is replaced only when it is an earlier fine-tuned model (it holds ``finetune.json``).
    """
    import diffusers

    from . import __version__

    out = Path(out)
    if out.exists() and not (out / RECORD).is_file() and any(out.iterdir()):
        raise FinetuneError(f"{out} exists and is not a fine-tuned model folder; pass a new --out folder")
    from .fsutil import atomic_dir

    def fill(tmp: Path) -> None:
        result.unet.save_pretrained(tmp / "unet")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(base), indent=1))
        (tmp / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                                                          "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=1))
        rec = {"base_model": base.name, "base_parameters": base.num_parameters, "resolution": base.resolution, "channels": base.channels,
               "steps": result.steps, "seconds": round(result.seconds, 3), "resumed_from": result.resumed_from,
               "loss": [round(v, 6) for v in result.losses], "oodgen": __version__, "torch": torch.__version__,
               "device": str(base.device), **(record or {})}
        (tmp / RECORD).write_text(json.dumps(rec, indent=1))

    atomic_dir(out, fill)
    log.info("saved the fine-tuned model (%d steps, %.0f s) to %s", result.steps, result.seconds, out)
    return out


def read_record(folder: str | Path) -> dict:
    """The ``finetune.json`` of a fine-tuned model folder ({} for another model)."""
    f = Path(folder) / RECORD
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return {}


def as_frozen(result: FinetuneResult, base: FrozenDDPM, name: str) -> FrozenDDPM:
    """The tuned UNet as a :class:`FrozenDDPM` with the base model's schedule (to sample it without saving it first)."""
    unet = result.unet if next(result.unet.parameters()).dtype == base.dtype else result.unet.to(dtype=base.dtype)
    unet.eval().requires_grad_(False)
    return FrozenDDPM(unet=unet, alphas_cumprod=base.alphas_cumprod, name=name, resolution=base.resolution, channels=base.channels,
                      device=base.device, dtype=base.dtype, prediction_type=base.prediction_type)


def sample(model: FrozenDDPM, n: int, steps: int, eta: float = 0.0, seed: int = 0, batch_size: int = 0,
           progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """n images [n, C, H, W] in [-1, 1] from the model's own prior: x_T ~ N(0, I) at T = num_train_timesteps - 1,
    DDIM-denoised in ``steps`` steps with ``eta`` (:func:`oodgen.engine.denoise`), seeded."""
    from . import engine
    from .config import DDIMSettings

    if n < 1:
        raise FinetuneError(f"n={n}: ask for at least one image")
    T = model.num_train_timesteps - 1
    z = torch.randn((n, model.channels, model.resolution, model.resolution), generator=torch.Generator().manual_seed(seed))
    d = DDIMSettings(t_end=T, steps=min(steps, T), batch_size=batch_size)
    return engine.denoise(model, z, d, eta=eta, seed=seed, progress=progress, cancel=cancel).clamp(-1, 1)


def prior_records(n: int) -> list[dict]:
    """Per-image provenance of samples from a tuned model's prior (no source pair)."""
    return [{"method": "finetune", "i": None, "j": None, "alpha": None, "source_i": None, "source_j": None} for _ in range(n)]


def data_record(samples: Sequence[Any], stretch: Any, kind: str) -> dict:
    """The training data as the record states it: names and SHA-256 of the images, kind and stretch."""
    return {"data": [{"name": s.name, "sha256": getattr(s, "sha256", None)} for s in samples], "n_images": len(samples), "kind": kind,
            "stretch": stretch.to_json() if stretch is not None else None}
