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
    from .pipeline import id_reference  # the one chooser of the in-domain reference (the layer above)

    t_values = sorted(set(int(t) for t in t_values))
    cb = (lambda stage: (lambda d, t: progress(stage, d, t))) if progress else (lambda stage: None)
    ood = engine.invert_snapshots(model, x_ood, t_values, steps, batch_size, cb("ood"))
    ref, label = id_reference(model, t_values, x_id=x_id, n_prior=n_prior, steps=steps, batch_size=batch_size, seed=seed, progress=cb("id"))
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
