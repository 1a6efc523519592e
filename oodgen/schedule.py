"""Noise schedules: beta_t and alpha_bar_t from a diffusers scheduler config, in float64.

diffusers builds its schedules in float32; inversion needs the exact values, so they are
recomputed here from the config fields (``beta_start``, ``beta_end``, ``beta_schedule``,
``num_train_timesteps``, ``trained_betas``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def betas_from_config(config: Mapping[str, Any]) -> np.ndarray:
    """beta_1..beta_T [T] in float64 for a DDPM/DDIM scheduler config."""
    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
        if betas.shape != (n,):
            raise ValueError(f"trained_betas has {betas.size} values but num_train_timesteps is {n}")
        return betas
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if kind == "scaled_linear":
        return np.linspace(math.sqrt(start), math.sqrt(end), n, dtype=np.float64) ** 2
    if kind == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=np.float64)
    raise ValueError(f"unsupported beta_schedule {kind!r}; oodgen knows linear, scaled_linear and squaredcos_cap_v2")


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), [T] float64."""
    return np.cumprod(1.0 - betas_from_config(config))


def linear_alphas_cumprod(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """alpha_bar for the DDPM linear schedule (Ho et al. 2020), [n] float64."""
    return alphas_cumprod_from_config({"num_train_timesteps": n, "beta_start": beta_start, "beta_end": beta_end})
