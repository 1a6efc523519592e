"""Deterministic DDIM inversion and (optionally stochastic) DDIM denoising.

Pure math on tensors: no files, no UI, no model loading. The noise predictor is any callable
``eps_fn(x, t) -> eps`` with ``x`` of shape [B, C, H, W] and ``t`` an int timestep.

Notation (paper, appendix C; Song et al. 2021):
    alpha_bar_t   cumulative product of (1 - beta) up to t   (``alphas_cumprod[t]``, float64)
    x_t           noisy latent at timestep t; the image is x_{tau_0} with tau_0 = 0
    tau_0..tau_S  the DDIM grid: ``round(linspace(0, t_end, S + 1))``, S = ``steps``
    eps           predicted noise, eps_theta(x_t, t)
    eta           stochasticity of denoising (0 = deterministic DDIM, 1 = DDPM-like)

One update, both directions (inversion uses eta = 0 and evaluates eps at the lower timestep,
as the authors' code does):
    x0_hat  = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
    x_next  = sqrt(alpha_bar_next) * x0_hat + sqrt(1 - alpha_bar_next - sigma^2) * eps + sigma * z
    sigma   = eta * sqrt((1 - alpha_bar_next) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_next)

The grid is symmetric: inversion walks tau_0 -> tau_S and denoising walks tau_S -> tau_0 over the
same timesteps, so with a noise predictor that is exact along the trajectory (the oracle in the
tests) the round trip is exact. Schedule coefficients are computed in float64 as Python floats
and applied to the float32 state; no clipping is ever applied.

Device traffic: every step's coefficients are computed once, before the loop, as Python floats; they
reach the kernels as scalar arguments, so the step loop builds no tensors from host values, makes no
host-device copies and never synchronises (no ``.item()``/``float(tensor)``). The one exception is
eta > 0 with a CPU generator (reproducible across devices): that step's noise is drawn on the host
into pinned memory and copied asynchronously.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
"""Noise predictor: (x [B, C, H, W], timestep) -> eps [B, C, H, W]."""

Callback = Callable[[dict], None]
"""Progress callback, k-diffusion style: receives {"i": step done (1-based), "n": total, "t": timestep, "x": state}."""


class Cancelled(RuntimeError):
    """Raised inside a DDIM loop when its ``cancel`` predicate returns True."""


def timesteps(t_end: int, steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The DDIM grid tau_0 = 0 < ... < tau_S = t_end (S + 1 integers, strictly increasing)."""
    if not 1 <= t_end <= num_train_timesteps - 1:
        raise ValueError(f"t_end={t_end} is outside 1..{num_train_timesteps - 1}; pick a timestep inside the model's schedule")
    if not 1 <= steps <= t_end:
        raise ValueError(f"steps={steps} must be between 1 and t_end={t_end} (one model call per step)")
    grid = np.round(np.linspace(0, t_end, steps + 1)).astype(int).tolist()
    assert len(set(grid)) == len(grid), grid
    return grid


def grid_through(t_values: Sequence[int], steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """A DDIM grid from 0 that passes exactly through every timestep in ``t_values``.

    About ``steps`` steps up to ``max(t_values)``, spread over the segments between consecutive
    requested timesteps in proportion to their length (at least one step each). Used by the t sweep,
    so one inversion pass yields the latents at every requested t.
    """
    ts = sorted(set(int(t) for t in t_values))
    if not ts or ts[0] < 1 or ts[-1] > num_train_timesteps - 1:
        raise ValueError(f"timesteps {t_values} must lie in 1..{num_train_timesteps - 1}")
    grid = [0]
    for lo, hi in zip([0] + ts[:-1], ts):
        n = min(hi - lo, max(1, round(steps * (hi - lo) / ts[-1])))
        grid += np.round(np.linspace(lo, hi, n + 1)[1:]).astype(int).tolist()
    return grid


def _grid(t_end: int, steps: int, n_train: int, grid: Optional[Sequence[int]]) -> list[int]:
    if grid is None:
        return timesteps(t_end, steps, n_train)
    g = [int(t) for t in grid]
    if g[0] != 0 or any(b <= a for a, b in zip(g, g[1:])) or g[-1] > n_train - 1:
        raise ValueError("an explicit DDIM grid must start at 0 and increase strictly within the schedule")
    return g


def ddim_sigma(a_t: float, a_next: float, eta: float) -> float:
    """Standard DDIM sigma for a step from alpha_bar ``a_t`` to ``a_next`` (float64 math)."""
    if eta == 0.0:
        return 0.0
    return eta * math.sqrt((1.0 - a_next) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_next))


@dataclass(frozen=True)
class StepCoefficients:
    """The float64 scalars of one DDIM update from alpha_bar ``a_t`` to ``a_next`` (see the module docstring)."""

    c_x: float  # 1 / sqrt(a_t): x0_hat = c_x x - c_eps_in eps
    c_eps_in: float  # sqrt(1 - a_t) / sqrt(a_t)
    c_x0: float  # sqrt(a_next): x_next = c_x0 x0_hat + c_eps_out eps + sigma z
    c_eps_out: float  # sqrt(1 - a_next - sigma^2)
    sigma: float  # DDIM sigma (0 for eta = 0)
    sqrt_a_t: float  # sqrt(a_t), for re-deriving eps from a clipped x0_hat
    sqrt_1m_a_t: float  # sqrt(1 - a_t)

    @classmethod
    def of(cls, a_t: float, a_next: float, eta: float = 0.0) -> "StepCoefficients":
        sigma = ddim_sigma(a_t, a_next, eta)
        return cls(
            c_x=1.0 / math.sqrt(a_t),
            c_eps_in=math.sqrt(1.0 - a_t) / math.sqrt(a_t),
            c_x0=math.sqrt(a_next),
            c_eps_out=math.sqrt(max(0.0, 1.0 - a_next - sigma**2)),
            sigma=sigma,
            sqrt_a_t=math.sqrt(a_t),
            sqrt_1m_a_t=math.sqrt(1.0 - a_t),
        )


def _apply_step(
    x: torch.Tensor, eps: torch.Tensor, c: StepCoefficients, noise: Optional[torch.Tensor] = None, clip_x0: bool = False
) -> torch.Tensor:
    """x_next [B, C, H, W] from x and eps [B, C, H, W]; host scalars only, no device sync."""
    x0_hat = x * c.c_x - eps * c.c_eps_in
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps = (x - x0_hat * c.sqrt_a_t) / c.sqrt_1m_a_t
    out = x0_hat * c.c_x0 + eps * c.c_eps_out
    if c.sigma > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        out = out + noise * c.sigma
    return out


def _schedule(alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """alpha_bar as a host float64 array (one copy before the loop if it lives on a device)."""
    if isinstance(alphas_cumprod, torch.Tensor):
        return alphas_cumprod.detach().to("cpu", torch.float64).numpy()
    return np.asarray(alphas_cumprod, dtype=np.float64)


def _noise(shape: torch.Size, generator: Optional[torch.Generator], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise for one step, drawn where the generator lives (CPU by default).

    Drawing on the CPU keeps results equal across devices; on CUDA the draw goes to pinned memory
    and is copied asynchronously, so the host never waits for the device.
    """
    gen_device = generator.device if generator is not None else device
    if gen_device.type == "cpu" and device.type == "cuda":
        host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        torch.randn(shape, generator=generator, out=host)
        return host.to(device, dtype, non_blocking=True)
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def _check(cancel: Optional[Callable[[], bool]]) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


@torch.no_grad()
def invert(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    alphas_cumprod: np.ndarray | torch.Tensor,
    t_end: int,
    steps: int,
    callback: Optional[Callback] = None,
    cancel: Optional[Callable[[], bool]] = None,
    grid: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """DDIM-invert images ``x0`` [B, C, H, W] in [-1, 1] to latents x_{t_end} [B, C, H, W].

    Deterministic (eta = 0); ``steps`` model evaluations, eps taken at the lower timestep.
    An explicit increasing ``grid`` (from 0) replaces ``t_end``/``steps``; the callback sees every
    intermediate state, so snapshots at grid points come for free.
    """
    grid = _grid(t_end, steps, len(alphas_cumprod), grid)
    steps = len(grid) - 1
    ab = _schedule(alphas_cumprod)
    coeffs = [StepCoefficients.of(float(ab[t]), float(ab[t_next])) for t, t_next in zip(grid[:-1], grid[1:])]
    x = x0
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        _check(cancel)
        eps = eps_fn(x, t)
        x = _apply_step(x, eps, coeffs[i])
        if callback is not None:
            callback({"i": i + 1, "n": steps, "t": t_next, "x": x})
    return x


@torch.no_grad()
def denoise(
    eps_fn: EpsFn,
    x_t: torch.Tensor,
    alphas_cumprod: np.ndarray | torch.Tensor,
    t_end: int,
    steps: int,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callback] = None,
    cancel: Optional[Callable[[], bool]] = None,
    grid: Optional[Sequence[int]] = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM-denoise latents ``x_t`` [B, C, H, W] at ``t_end`` back to images [B, C, H, W] (about [-1, 1]).

    ``eta`` = 0 is deterministic; eta > 0 draws noise from ``generator`` (seeded by the caller).
    An explicit increasing ``grid`` (from 0) replaces ``t_end``/``steps`` and is walked downwards.
    ``clip_x0`` (off by default) clips x0_hat at each step, as DDPM samplers do when sampling the prior.
    """
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    grid = _grid(t_end, steps, len(alphas_cumprod), grid)
    steps = len(grid) - 1
    ab = _schedule(alphas_cumprod)
    pairs = list(zip(grid[1:], grid[:-1]))[::-1]
    coeffs = [StepCoefficients.of(float(ab[t]), float(ab[t_prev]), eta) for t, t_prev in pairs]
    x = x_t
    for i, (t, t_prev) in enumerate(pairs):
        _check(cancel)
        eps = eps_fn(x, t)
        noise = _noise(x.shape, generator, x.device, x.dtype) if eta > 0 else None
        x = _apply_step(x, eps, coeffs[i], noise=noise, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i + 1, "n": steps, "t": t_prev, "x": x})
    return x


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Forward diffusion marginal x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise, any shape."""
    return x0 * math.sqrt(alpha_bar) + noise * math.sqrt(1.0 - alpha_bar)
