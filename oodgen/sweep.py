"""The t sweep (paper Fig. 5 made quantitative): diagnostics that need the model.

The t sweep inverts the OOD images once through a DDIM grid that passes through every requested
t, takes the in-domain reference at the same t (inverted ID images, or the model's prior pushed
down to t), and measures separability and geometry at each t.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from . import diagnostics, engine
from .models import FrozenDDPM

DEFAULT_T_VALUES = (200, 400, 600, 800, 900, 999)


def id_reference(
    model: FrozenDDPM,
    t_values: Sequence[int],
    x_id: Optional[torch.Tensor] = None,
    n_prior: int = 0,
    steps: int = 50,
    batch_size: int = 32,
    seed: int = 0,
    progress: Optional[engine.Progress] = None,
) -> tuple[dict[int, torch.Tensor], str]:
    """In-domain latents at each t, and a label saying where they come from.

    Either ``x_id`` [N, C, H, W] (in-domain images, inverted) or ``n_prior`` draws of the model's
    prior (N(0, I) at T, pushed down to t < T along the model's DDIM trajectory).
    """
    if x_id is not None:
        return engine.invert_snapshots(model, x_id, t_values, steps, batch_size, progress), f"inverted in-domain images (n={len(x_id)})"
    if n_prior < 3:
        raise ValueError("give in-domain images or a prior sample size of at least 3 (--id-prior N)")
    T = model.num_train_timesteps - 1
    label = f"model prior N(0, I) at t={T}" + (", pushed to t by DDIM denoising" if min(t_values) < T else "") + f" (n={n_prior})"
    return engine.prior_latents(model, n_prior, t_values, steps, seed, batch_size, progress), label


def t_sweep(
    model: FrozenDDPM,
    x_ood: torch.Tensor,
    t_values: Sequence[int] = DEFAULT_T_VALUES,
    x_id: Optional[torch.Tensor] = None,
    n_prior: int = 0,
    steps: int = 50,
    batch_size: int = 32,
    seed: int = 0,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> tuple[list[dict], str]:
    """Rows {t_end, svm_test_accuracy, center_distance, d_quarter, noise_floor, pair_angle_deg,
    origin_angle_deg, norm_ratio, radius_gaussian_like} for each t, and the ID source label.

    ``progress(stage, done, total)`` reports the two inversion passes (stage "ood", "id").
    """
    t_values = sorted(set(int(t) for t in t_values))
    cb = (lambda stage: (lambda d, t: progress(stage, d, t))) if progress else (lambda stage: None)
    ood = engine.invert_snapshots(model, x_ood, t_values, steps, batch_size, cb("ood"))
    ref, label = id_reference(model, t_values, x_id, n_prior, steps, batch_size, seed, cb("id"))
    rows = []
    for t in t_values:
        rep = diagnostics.diagnose(ood[t], ref[t], label, seed=seed, with_umap=False)
        j = rep.to_json()
        rows.append({
            "t_end": t,
            "svm_test_accuracy": j["svm_test_accuracy"],
            "center_distance": j["center_distance"],
            "d_quarter": j["d_quarter"],
            "noise_floor": j["noise_floor"],
            "pair_angle_deg": j["pair_angle_deg"]["mean"],
            "origin_angle_deg": j["origin_angle_deg"]["mean"],
            "norm_ratio": j["norm"]["mean"] / math.sqrt(rep.d),
            "radius_gaussian_like": j["radius_test"]["ood"]["gaussian_like"],
        })
    return rows, label
