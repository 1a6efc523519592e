"""Diagnostics of latent sets: geometry, separability, Gaussianity, UMAP, figures and an HTML report.

Paper, appendix C and Table 3: DDIM-inverted OOD latents x_t behave like an isotropic Gaussian cloud
that is separable from the model's own N(0, I) prior. This module measures that for any two latent
sets (torch tensors or numpy arrays of any shape [N, ...], flattened to [N, d] float32).

Pure computation: numpy / torch / scipy / scikit-learn in, numbers (dataclasses, dicts) and plotly
figures out. The only file I/O is :func:`write_html_report`.

Memory and speed
    Everything pairwise is derived from Gram matrices G = X X^T, computed by :func:`gram` with torch
    float32 matrix products over column chunks (no copy of X: column slices are strided BLAS
    operands) accumulated in float64, upper-triangular row blocks only. N x N x d or float64 copies
    of a whole set are never formed. :func:`diagnose` computes the Gram of the stacked sets ONCE and
    shares it between the geometry of both sets, the centre distance, the SVM (precomputed linear
    kernel), the radii and the PCA before UMAP. Cost O((n_id + n_ood)^2 d): about 1.6 TFLOP for
    1,000 + 1,000 latents at d = 196,608.

Geometry (Table 3), for one set
    pair angle     angle at one vertex k of a triplet (i, j, k): cos = <x_i - x_k, x_j - x_k> /
                   (|x_i - x_k| |x_j - x_k|); isotropic Gaussian reference 60 deg (any mean, any scale)
    origin angle   angle at the origin between two samples; reference 90 deg (zero-mean Gaussian)
    pair distance  |x_i - x_j|; reference s * sqrt(2 d)
    norm           |x_i|; reference s * sqrt(d)
    where s is the set's fitted scale, s^2 = mean of x^2 over all entries (the zero-mean isotropic
    Gaussian N(0, s^2 I) closest to the set). ``Stat.unit_reference`` holds the unit-variance values
    sqrt(2 d) and sqrt(d) the paper quotes; ``Geometry.mean_norm`` (|sample mean|) and
    ``Geometry.centered_scale`` (per-coordinate std about the sample mean) explain deviations: a
    non-zero mean shrinks the pair distance below s sqrt(2 d) and the origin angle below 90 deg.
    ``Stat.reference_std`` is the isotropic Gaussian's std (delta method, large d): pair angle
    (180/pi)(sqrt(3)/2)/sqrt(d), origin angle (180/pi)/sqrt(d), pair distance s, norm s/sqrt(2).
    Caution: the MEAN pair angle is 60 deg for ANY point set. The three angles of a triangle sum to
    180 deg, so the average over all (vertex, pair) triplets is exactly 60 and a uniform random
    triplet has expectation 60 whatever the distribution (the paper's "60.0 +- 0" row for every
    domain). Only the pair angle's spread (std against ``reference_std``) says anything about
    Gaussianity.

Separation (Lemma C.2)
    Spherical Gaussians separate when their centres are more than d^(1/4) apart. oodgen's addition
    to the paper's test: the sample mean of n unit-variance points is itself off by ~sqrt(d/n), so
    two sets drawn from the SAME Gaussian already have centre distance ~ ``noise_floor`` =
    sqrt(d/n_id + d/n_ood) (19.8 for d = 196,608 and 1,000 + 1,000 samples, against d^(1/4) = 21.1).
    The report therefore also says whether the centre distance exceeds that floor (and the floor with
    the sets' fitted variances, ``noise_floor_fitted``), and gives ``center_distance_debiased`` =
    sqrt(max(0, D^2 - noise_floor_fitted^2)), an unbiased estimate (before the root) of the squared
    distance between the true centres.

SVM (paper: linear SVM, stratified 7:3 split)
    ``sklearn.svm.SVC(kernel="precomputed", C=1)`` on the linear Gram of the raw latents. No
    standardization: latents are already unit-scale, and per-feature scaling at d = 196,608 from ~1,000
    samples would only add noise. This equals ``SVC(kernel="linear")`` on the raw latents; for d >> N
    the data are linearly separable and C = 1 is effectively the hard-margin SVM. Plus stratified
    k-fold CV with a t-distribution 95 % CI of the mean fold accuracy (folds share training data, so
    the interval is approximate).

Gaussianity
    :func:`radius_test` compares radii with scipy's chi(d, scale=s): KS test, a variance test of the
    radii (chi radii have std ~ s / sqrt(2) whatever d is; KS alone is weak against too-thin shells
    such as uniform data), and the thin-annulus property of Lemma C.2's proof (all but
    4/c^2 exp(-c^2/4) of the mass within s (sqrt(d - 1) +- c)). :func:`coordinate_normality` runs
    D'Agostino-Pearson tests on a seeded sample of coordinates.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "Stat", "Geometry", "DiagnosticsReport", "as_matrix", "gram", "geometry", "center_distance",
    "d_quarter", "noise_floor", "separation_criterion", "svm_separability", "sample_radii",
    "radius_test", "coordinate_normality", "umap_embedding", "umap_figure", "radius_figure",
    "angle_histograms_figure", "table_rows", "t_sweep_figure", "diagnose", "write_html_report",
    "gaussian_prior",
]

Progress = Callable[[str, float], None]
"""Progress callback: (stage name, overall fraction done in [0, 1])."""

GRAM_COL_CHUNK = 16384
"""Columns per float32 matrix product; partial products are summed in float64."""
GRAM_ROW_BLOCK = 512
"""Rows per block; only blocks on and above the diagonal are multiplied (symmetry)."""
EXHAUSTIVE_TRIPLET_LIMIT = 2_000_000
"""Exact geometry evaluates every (vertex, pair) triplet when there are at most this many."""
EXACT_TRIPLET_SAMPLE = 1_000_000
"""Otherwise exact geometry draws at least this many seeded triplets from the Gram (O(1) each)."""
SAMPLED_BLOCK = 256
"""Sampled geometry: points are randomly partitioned into blocks of about this size, exact inside."""

PAIR_ANGLE_REF = 60.0
ORIGIN_ANGLE_REF = 90.0


# --------------------------------------------------------------------------------------------------
# inputs and Gram matrices
# --------------------------------------------------------------------------------------------------

def as_matrix(x: Any) -> torch.Tensor:
    """[N, ...] tensor or array -> [N, d] float32 torch tensor; no copy when already float32."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.ascontiguousarray(x, dtype=np.float32)  # no copy for C-contiguous float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only arrays (memmaps): nothing here writes to them
            t = torch.from_numpy(a)
    if t.dim() < 2:
        raise ValueError(f"expected a set of samples [N, ...], got shape {tuple(t.shape)}")
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    t = t.reshape(t.shape[0], -1)
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"empty latent set of shape {tuple(t.shape)}")
    return t


def _blocks(n: int, rows: int) -> list[tuple[int, int]]:
    k = max(1, math.ceil(n / rows))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def gram(
    *sets: Any,
    col_chunk: int = GRAM_COL_CHUNK,
    row_block: int = GRAM_ROW_BLOCK,
    progress: Optional[Callable[[float], None]] = None,
) -> np.ndarray:
    """Gram matrix [N, N] float64 of the row-concatenation of ``sets`` (never concatenated in memory).

    float32 products over ``col_chunk`` columns, summed in float64; only the upper block triangle is
    computed. ``progress(fraction)`` is called after each block.
    """
    mats = [as_matrix(s) for s in sets]
    d = mats[0].shape[1]
    if any(m.shape[1] != d for m in mats):
        raise ValueError(f"sets have different dimensions: {[m.shape[1] for m in mats]}")
    device = mats[0].device
    blocks = []  # (matrix, row0, row1, global offset)
    off = 0
    for m in mats:
        for a, b in _blocks(m.shape[0], row_block):
            blocks.append((m, a, b, off + a))
        off += m.shape[0]
    n = off
    out = torch.zeros(n, n, dtype=torch.float64, device=device)
    todo = len(blocks) * (len(blocks) + 1) // 2
    done = 0
    with torch.no_grad():
        for p, (mp, a0, a1, ga) in enumerate(blocks):
            for mq, b0, b1, gb in blocks[p:]:
                acc = out[ga:ga + (a1 - a0), gb:gb + (b1 - b0)]
                for c0 in range(0, d, col_chunk):
                    c1 = min(d, c0 + col_chunk)
                    acc += torch.mm(mp[a0:a1, c0:c1], mq[b0:b1, c0:c1].T)
                if gb != ga:
                    out[gb:gb + (b1 - b0), ga:ga + (a1 - a0)] = acc.T
                else:  # a float32 product A A^T is not bit-symmetric; make G exactly symmetric
                    acc.copy_(0.5 * (acc + acc.T))
                done += 1
                if progress is not None:
                    progress(done / todo)
    return out.cpu().numpy()


def _sum_and_sq_norms(x: torch.Tensor, rows: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Column sums [d] and row squared norms [N], float64, from float64 row chunks."""
    col_sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    sq = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for a in range(0, x.shape[0], rows):
            c = x[a:a + rows].to(torch.float64)
            col_sum += c.sum(0)
            sq[a:a + rows] = (c * c).sum(1)
    return col_sum.cpu().numpy(), sq.cpu().numpy()


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Mean and std of one geometric quantity, with its isotropic Gaussian reference.

    ``reference`` uses the set's fitted scale s; ``unit_reference`` is the unit-variance value
    (identical for angles); ``reference_std`` is the isotropic Gaussian's std of the quantity
    (large-d approximation), the yardstick for ``std``.
    """

    mean: float
    std: float
    reference: float
    unit_reference: Optional[float] = None
    reference_std: Optional[float] = None

    def to_json(self) -> dict:
        out = {"mean": _f(self.mean), "std": _f(self.std), "reference": _f(self.reference)}
        if self.unit_reference is not None:
            out["unit_reference"] = _f(self.unit_reference)
        if self.reference_std is not None:
            out["reference_std"] = _f(self.reference_std)
        return out


@dataclass
class Geometry:
    """Table-3 geometry of one latent set (see the module docstring for definitions)."""

    pair_angle_deg: Stat
    origin_angle_deg: Stat
    pair_distance: Stat
    norm: Stat
    d: int
    n: int
    method: str  # "exact" (all pairs, from one Gram) or "sampled" (random partition into blocks)
    scale: float  # fitted s, s^2 = mean of x^2 over all entries
    mean_norm: float  # |sample mean|
    centered_scale: float  # per-coordinate std about the sample mean (unbiased)
    n_pairs: int
    n_triplets: int
    triplets_exhaustive: bool
    samples: dict = field(default_factory=dict, repr=False)  # float32 arrays for histograms

    def to_json(self) -> dict:
        return {
            "pair_angle_deg": self.pair_angle_deg.to_json(),
            "origin_angle_deg": self.origin_angle_deg.to_json(),
            "pair_distance": self.pair_distance.to_json(),
            "norm": self.norm.to_json(),
            "d": self.d, "n": self.n, "method": self.method, "scale": _f(self.scale),
            "mean_norm": _f(self.mean_norm), "centered_scale": _f(self.centered_scale),
            "n_pairs": self.n_pairs, "n_triplets": self.n_triplets,
            "triplets_exhaustive": self.triplets_exhaustive,
        }


def _f(v: Any) -> Any:
    """JSON-safe scalar: numpy -> python, non-finite float -> None."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    return _f(obj)


def _stat(values: np.ndarray, reference: float, unit_reference: Optional[float] = None,
          reference_std: Optional[float] = None) -> Stat:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Stat(float("nan"), float("nan"), reference, unit_reference, reference_std)
    return Stat(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, float(reference), unit_reference,
                reference_std)


def _angle_deg(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _distinct_triplets(rng: np.random.Generator, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each entry of ``sizes`` (>= 3), three distinct indices in [0, size): (i, j, k)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    ijk = (rng.random((3, sizes.size)) * sizes).astype(np.int64)
    while True:
        bad = (ijk[0] == ijk[1]) | (ijk[0] == ijk[2]) | (ijk[1] == ijk[2])
        if not bad.any():
            return ijk[0], ijk[1], ijk[2]
        ijk[:, bad] = (rng.random((3, int(bad.sum()))) * sizes[bad]).astype(np.int64)


def _triplet_cos(g: np.ndarray, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
    """cos of the angle at vertex k of triangles (i, j, k), from a Gram matrix."""
    gkk = g[k, k]
    gik, gjk = g[i, k], g[j, k]
    num = g[i, j] - gik - gjk + gkk
    den = (g[i, i] - 2.0 * gik + gkk) * (g[j, j] - 2.0 * gjk + gkk)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.sqrt(np.maximum(den, 0.0))


def _all_triplets(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iu, ju = np.triu_indices(n, 1)
    out_i, out_j, out_k = [], [], []
    for k in range(n):
        keep = (iu != k) & (ju != k)
        out_i.append(iu[keep])
        out_j.append(ju[keep])
        out_k.append(np.full(int(keep.sum()), k, dtype=iu.dtype))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_k)


def _geometry_from_gram(g: np.ndarray, d: int, n_triplets: int, seed: int) -> Geometry:
    """Exact geometry of one set from its Gram [n, n] float64."""
    n = g.shape[0]
    if n < 3:
        raise ValueError(f"geometry needs at least 3 samples, got {n}")
    rng = np.random.default_rng(seed)
    diag = np.diag(g).copy()
    norms = np.sqrt(np.maximum(diag, 0.0))
    iu, ju = np.triu_indices(n, 1)
    gij = g[iu, ju]
    with np.errstate(invalid="ignore", divide="ignore"):
        origin = _angle_deg(gij / (norms[iu] * norms[ju]))
    dist = np.sqrt(np.maximum(diag[iu] + diag[ju] - 2.0 * gij, 0.0))
    n_all = n * (n - 1) * (n - 2) // 2
    if n_all <= EXHAUSTIVE_TRIPLET_LIMIT:
        i, j, k = _all_triplets(n)
        exhaustive = True
    else:
        i, j, k = _distinct_triplets(rng, np.full(max(n_triplets, EXACT_TRIPLET_SAMPLE), n))
        exhaustive = False
    pair = _angle_deg(_triplet_cos(g, i, j, k))
    scale = math.sqrt(max(diag.sum(), 0.0) / (n * d))
    mean_sq = max(g.sum(), 0.0) / n**2  # |sample mean|^2
    centered = math.sqrt(max(diag.sum() / n - mean_sq, 0.0) / d * n / (n - 1))
    return _make_geometry(pair, origin, dist, norms, d, n, "exact", scale, math.sqrt(mean_sq), centered, exhaustive)


def _make_geometry(pair, origin, dist, norms, d, n, method, scale, mean_norm, centered, exhaustive) -> Geometry:
    deg = 180.0 / math.pi
    return Geometry(
        pair_angle_deg=_stat(pair, PAIR_ANGLE_REF, PAIR_ANGLE_REF, deg * math.sqrt(3) / 2 / math.sqrt(d)),
        origin_angle_deg=_stat(origin, ORIGIN_ANGLE_REF, ORIGIN_ANGLE_REF, deg / math.sqrt(d)),
        pair_distance=_stat(dist, scale * math.sqrt(2 * d), math.sqrt(2 * d), scale),
        norm=_stat(norms, scale * math.sqrt(d), math.sqrt(d), scale / math.sqrt(2)),
        d=d, n=n, method=method, scale=scale, mean_norm=mean_norm, centered_scale=centered,
        n_pairs=int(dist.size), n_triplets=int(pair.size), triplets_exhaustive=exhaustive,
        samples={
            "pair_angle_deg": pair.astype(np.float32), "origin_angle_deg": origin.astype(np.float32),
            "pair_distance": dist.astype(np.float32), "norm": norms.astype(np.float32),
        },
    )


def geometry(
    x: Any,
    max_exact: int = 2048,
    n_triplets: int = 20000,
    seed: int = 0,
    *,
    block_size: int = SAMPLED_BLOCK,
    gram_matrix: Optional[np.ndarray] = None,
) -> Geometry:
    """Table-3 geometry of one latent set [N, ...].

    N <= ``max_exact`` (or a precomputed ``gram_matrix``): "exact", from ONE Gram G = X X^T: every pair;
    every (vertex, pair) triplet when there are at most 2e6 of them, else max(n_triplets, 1e6) seeded
    triplets evaluated from G. Otherwise "sampled": the points are split by a seeded random permutation
    into blocks of about ``block_size``; pairs are all within-block pairs (each marginally a uniform
    random pair), ``n_triplets`` seeded triplets are drawn within blocks, and norms are exact for all
    points. Cost O(N * block_size * d) instead of O(N^2 d).
    """
    if gram_matrix is not None:
        return _geometry_from_gram(np.asarray(gram_matrix, dtype=np.float64), as_matrix(x).shape[1], n_triplets, seed)
    xm = as_matrix(x)
    n, d = xm.shape
    if n <= max_exact:
        return _geometry_from_gram(gram(xm), d, n_triplets, seed)
    if block_size < 3:
        raise ValueError("block_size must be >= 3")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    groups = [perm[a:b] for a, b in _blocks(n, block_size)]
    if min(len(gr) for gr in groups) < 3:
        groups = [perm]
    pair_l, origin_l, dist_l, grams = [], [], [], []
    norms = np.empty(n)
    for gr in groups:
        idx = torch.from_numpy(np.sort(gr)).to(xm.device)
        gb = gram(xm.index_select(0, idx))
        grams.append(gb)
        diag = np.diag(gb)
        nb = np.sqrt(np.maximum(diag, 0.0))
        norms[np.sort(gr)] = nb
        iu, ju = np.triu_indices(len(gr), 1)
        gij = gb[iu, ju]
        with np.errstate(invalid="ignore", divide="ignore"):
            origin_l.append(_angle_deg(gij / (nb[iu] * nb[ju])))
        dist_l.append(np.sqrt(np.maximum(diag[iu] + diag[ju] - 2.0 * gij, 0.0)))
    sizes = np.array([len(gr) for gr in groups])
    w = sizes * (sizes - 1) * (sizes - 2) / 2.0
    which = rng.choice(len(groups), size=n_triplets, p=w / w.sum())
    i, j, k = _distinct_triplets(rng, sizes[which])
    for b in range(len(groups)):
        sel = which == b
        if sel.any():
            pair_l.append(_angle_deg(_triplet_cos(grams[b], i[sel], j[sel], k[sel])))
    col_sum, sq = _sum_and_sq_norms(xm)
    scale = math.sqrt(sq.sum() / (n * d))
    mean_sq = float((col_sum / n) @ (col_sum / n))
    centered = math.sqrt(max(sq.sum() / n - mean_sq, 0.0) / d * n / (n - 1))
    return _make_geometry(np.concatenate(pair_l), np.concatenate(origin_l), np.concatenate(dist_l), norms, d, n,
                          "sampled", scale, math.sqrt(mean_sq), centered, False)


# --------------------------------------------------------------------------------------------------
# separation: centre distance, Lemma C.2, noise floor
# --------------------------------------------------------------------------------------------------

def d_quarter(d: int) -> float:
    """d^(1/4), the centre separation of Lemma C.2."""
    return float(d) ** 0.25


def noise_floor(d: int, n_id: int, n_ood: int, var_id: float = 1.0, var_ood: float = 1.0) -> float:
    """Expected centre distance of two sets drawn from the SAME Gaussian: sqrt(var_id d/n_id + var_ood d/n_ood)."""
    return math.sqrt(var_id * d / n_id + var_ood * d / n_ood)


def center_distance(x_id: Any, x_ood: Any) -> float:
    """Euclidean distance between the two sample means (float64 accumulation)."""
    a, b = as_matrix(x_id), as_matrix(x_ood)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    sa, _ = _sum_and_sq_norms(a)
    sb, _ = _sum_and_sq_norms(b)
    return float(np.linalg.norm(sa / a.shape[0] - sb / b.shape[0]))


def _criterion(dist: float, d: int, n_id: int, n_ood: int, var_id: float, var_ood: float) -> dict:
    dq = d_quarter(d)
    floor = noise_floor(d, n_id, n_ood)
    floor_fit = noise_floor(d, n_id, n_ood, var_id, var_ood)
    return {
        "center_distance": float(dist),
        "d_quarter": dq,
        "ratio": float(dist) / dq,
        "separable": bool(dist > dq),
        "noise_floor": floor,
        "exceeds_noise_floor": bool(dist > floor),
        "noise_floor_fitted": floor_fit,
        "exceeds_noise_floor_fitted": bool(dist > floor_fit),
        "center_distance_debiased": math.sqrt(max(float(dist) ** 2 - floor_fit**2, 0.0)),
    }


def separation_criterion(x_id: Any, x_ood: Any) -> dict:
    """Lemma C.2 check plus oodgen's noise-floor check.

    Keys: center_distance, d_quarter, ratio (= center_distance / d_quarter), separable (centre
    distance > d^(1/4), the paper's test); noise_floor = sqrt(d/n_id + d/n_ood) (expected centre
    distance of two unit-variance sets drawn from the SAME Gaussian), exceeds_noise_floor;
    noise_floor_fitted (same with each set's fitted per-coordinate variance about its mean),
    exceeds_noise_floor_fitted; center_distance_debiased = sqrt(max(0, D^2 - noise_floor_fitted^2)).
    """
    a, b = as_matrix(x_id), as_matrix(x_ood)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    (na, d), nb = a.shape, b.shape[0]
    sa, qa = _sum_and_sq_norms(a)
    sb, qb = _sum_and_sq_norms(b)
    ma, mb = sa / na, sb / nb
    var_a = max(qa.sum() / na - ma @ ma, 0.0) / d * na / max(na - 1, 1)
    var_b = max(qb.sum() / nb - mb @ mb, 0.0) / d * nb / max(nb - 1, 1)
    return _criterion(float(np.linalg.norm(ma - mb)), d, na, nb, var_a, var_b)


def _criterion_from_gram(g: np.ndarray, n_id: int, d: int) -> dict:
    """Centre distance from block means of the stacked Gram: |mu_a - mu_b|^2 = <G_aa> + <G_bb> - 2 <G_ab>."""
    n_ood = g.shape[0] - n_id
    gaa, gbb, gab = g[:n_id, :n_id], g[n_id:, n_id:], g[:n_id, n_id:]
    maa, mbb, mab = gaa.mean(), gbb.mean(), gab.mean()
    dist = math.sqrt(max(maa + mbb - 2.0 * mab, 0.0))
    var_a = max(np.trace(gaa) / n_id - maa, 0.0) / d * n_id / max(n_id - 1, 1)
    var_b = max(np.trace(gbb) / n_ood - mbb, 0.0) / d * n_ood / max(n_ood - 1, 1)
    return _criterion(dist, d, n_id, n_ood, var_a, var_b)


# --------------------------------------------------------------------------------------------------
# linear SVM separability
# --------------------------------------------------------------------------------------------------

SVM_STANDARDIZATION = "none: linear kernel on the raw latents (already unit-scale), SVC(kernel='precomputed', C=1)"


def _svm_from_gram(g: np.ndarray, y: np.ndarray, test_size: float, seed: int, k_folds: int, C: float) -> dict:
    from scipy import stats
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.svm import SVC

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)

    def fit_score(tr_idx, te_idx):
        clf = SVC(kernel="precomputed", C=C)
        clf.fit(g[np.ix_(tr_idx, tr_idx)], y[tr_idx])
        train_acc = float((clf.predict(g[np.ix_(tr_idx, tr_idx)]) == y[tr_idx]).mean())
        return float((clf.predict(g[np.ix_(te_idx, tr_idx)]) == y[te_idx]).mean()), train_acc

    test_acc, train_acc = fit_score(tr, te)
    k = int(min(k_folds, np.bincount(y).min()))
    folds: list[float] = []
    if k >= 2:
        for ftr, fte in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, y):
            folds.append(fit_score(ftr, fte)[0])
    arr = np.array(folds)
    mean = float(arr.mean()) if arr.size else float("nan")
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    if arr.size > 1:
        half = float(stats.t.ppf(0.975, arr.size - 1)) * std / math.sqrt(arr.size)
        lo, hi = max(0.0, mean - half), min(1.0, mean + half)
    else:
        lo = hi = float("nan")
    return {
        "test_accuracy": test_acc, "train_accuracy": train_acc,
        "cv_mean": mean, "cv_std": std, "cv_ci95_low": lo, "cv_ci95_high": hi,
        "cv_fold_accuracies": [float(v) for v in folds], "k_folds": k,
        "n_train": int(len(tr)), "n_test": int(len(te)), "test_size": float(test_size), "C": float(C),
        "standardization": SVM_STANDARDIZATION,
    }


def svm_separability(
    x_id: Any, x_ood: Any, test_size: float = 0.3, seed: int = 0, k_folds: int = 5, *, C: float = 1.0,
    gram_matrix: Optional[np.ndarray] = None,
) -> dict:
    """Linear SVM ID (label 0) vs OOD (label 1), on the precomputed linear Gram (memory O(N^2), any d).

    Paper's protocol: stratified ``test_size`` split (7:3), seeded; plus stratified ``k_folds`` CV
    (shuffled, seeded) with the t-distribution 95 % CI of the mean fold accuracy, clipped to [0, 1].
    No standardization (see ``SVM_STANDARDIZATION``). ``gram_matrix``: Gram of the stacked [ID; OOD].
    Returns test_accuracy, cv_mean, cv_std, cv_ci95_low, cv_ci95_high, n_train, n_test and details.
    """
    a, b = as_matrix(x_id), as_matrix(x_ood)
    g = gram(a, b) if gram_matrix is None else np.asarray(gram_matrix, dtype=np.float64)
    y = np.r_[np.zeros(a.shape[0], dtype=int), np.ones(b.shape[0], dtype=int)]
    if g.shape != (len(y), len(y)):
        raise ValueError(f"gram_matrix has shape {g.shape}, expected {(len(y), len(y))}")
    return _svm_from_gram(g, y, test_size, seed, k_folds, C)


# --------------------------------------------------------------------------------------------------
# Gaussianity
# --------------------------------------------------------------------------------------------------

def sample_radii(x: Any) -> np.ndarray:
    """|x_i| for each sample, float64."""
    _, sq = _sum_and_sq_norms(as_matrix(x))
    return np.sqrt(sq)


def annulus_bound(c: float) -> float:
    """Lemma 2.8 (Blum, Hopcroft, Kannan) as quoted in the paper: at least this fraction within sqrt(d-1) +- c."""
    return max(0.0, 1.0 - 4.0 / c**2 * math.exp(-(c**2) / 4.0))


def _radius_test_from_sq(sq: np.ndarray, d: int, scale: Optional[float], c: float, alpha: float) -> dict:
    from scipy import stats

    sq = np.asarray(sq, dtype=np.float64)
    n = sq.size
    r = np.sqrt(np.maximum(sq, 0.0))
    fitted = scale is None
    s = math.sqrt(sq.sum() / (n * d)) if fitted else float(scale)
    chi = stats.chi(d, scale=s)
    chi_std = float(chi.std())
    ks = stats.kstest(r, chi.cdf)
    r_std = float(r.std(ddof=1)) if n > 1 else float("nan")
    # variance test: (n-1) var(r) / var_chi ~ chi2(n-1) (chi radii are nearly normal for large d)
    if n > 1:
        stat = (n - 1) * r_std**2 / chi_std**2
        p_spread = float(min(1.0, 2.0 * min(stats.chi2.cdf(stat, n - 1), stats.chi2.sf(stat, n - 1))))
    else:
        p_spread = float("nan")
    lo, hi = s * (math.sqrt(d - 1) - c), s * (math.sqrt(d - 1) + c)
    frac = float(((r >= lo) & (r <= hi)).mean())
    bound = annulus_bound(c)
    a2 = alpha / 2.0  # Bonferroni over the two tests
    ok = bool(ks.pvalue >= a2 and (p_spread >= a2 or n < 2) and frac >= bound)
    return {
        "n": int(n), "d": int(d), "scale": s, "scale_fitted": fitted,
        "radius_mean": float(r.mean()), "radius_std": r_std,
        "chi_mean": float(chi.mean()), "chi_std": chi_std,
        "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
        "spread_ratio": r_std / chi_std, "spread_pvalue": p_spread,
        "annulus_c": float(c), "annulus_low": lo, "annulus_high": hi, "annulus_fraction": frac,
        "annulus_bound": bound, "annulus_expected": float(chi.cdf(hi) - chi.cdf(lo)),
        "alpha": float(alpha), "gaussian_like": ok,
    }


def radius_test(x: Any, scale: Optional[float] = None, c: float = 3.0, alpha: float = 0.05) -> dict:
    """Are the radii |x_i| those of N(0, s^2 I) in d dimensions, i.e. chi(d) scaled by s?

    s is fitted (s^2 = mean of x^2 over all entries) unless ``scale`` is given (e.g. 1.0 for the
    prior). Checks: KS test against scipy.stats.chi(d, scale=s) (``ks_pvalue``; conservative when s is
    fitted); variance test of the radii against chi's (``spread_ratio`` = std(r) / std_chi,
    ``spread_pvalue``; detects too-thin or too-thick shells KS misses); thin annulus: fraction of radii
    in s (sqrt(d-1) +- c) (``annulus_fraction``) must reach the lemma's bound 1 - 4/c^2 e^(-c^2/4).
    ``gaussian_like`` = both p-values >= alpha/2 (Bonferroni) and the annulus bound holds.
    """
    xm = as_matrix(x)
    _, sq = _sum_and_sq_norms(xm)
    return _radius_test_from_sq(sq, xm.shape[1], scale, c, alpha)


def coordinate_normality(x: Any, n_coords: int = 256, seed: int = 0, alpha: float = 0.05) -> dict:
    """Per-coordinate normality on a seeded sample of coordinates.

    scipy.stats.normaltest (D'Agostino-Pearson) when N >= 20, else shapiro. ``fraction_passing`` is
    the share with p >= alpha. No multiple-testing correction on purpose: for Gaussian data about
    1 - alpha (95 %) pass; ``consistent_with_gaussian`` says whether the fraction is at or above the
    0.5 % binomial quantile of that count. Each coordinate is standardized by the test itself, so this
    checks shape, not isotropy: ``coord_mean_*`` and ``coord_std_*`` summarize the per-coordinate means
    and stds for that (isotropic N(0, s^2 I): means ~0 +- s/sqrt(N), stds all ~s).
    """
    from scipy import stats

    xm = as_matrix(x)
    n, d = xm.shape
    if n < 3:
        raise ValueError(f"coordinate_normality needs at least 3 samples, got {n}")
    rng = np.random.default_rng(seed)
    m = int(min(n_coords, d))
    cols = np.sort(rng.choice(d, size=m, replace=False))
    sub = xm.index_select(1, torch.from_numpy(cols).to(xm.device)).cpu().numpy().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n >= 20:
            p = np.asarray(stats.normaltest(sub, axis=0).pvalue, dtype=np.float64)
            test = "normaltest (D'Agostino-Pearson)"
        else:
            p = np.array([stats.shapiro(sub[:, i]).pvalue for i in range(m)])
            test = "shapiro"
    p = np.where(np.isfinite(p), p, 0.0)  # constant coordinates are not Gaussian
    frac = float((p >= alpha).mean())
    lower = float(stats.binom.ppf(0.005, m, 1 - alpha) / m)
    means, stds = sub.mean(0), sub.std(0, ddof=1)
    return {
        "test": test, "n": int(n), "n_coords": m, "alpha": float(alpha),
        "fraction_passing": frac, "expected_fraction": 1.0 - alpha, "lower_bound_99": lower,
        "consistent_with_gaussian": bool(frac >= lower), "median_pvalue": float(np.median(p)),
        "coord_mean_mean": float(means.mean()), "coord_mean_std": float(means.std()),
        "coord_std_mean": float(stds.mean()), "coord_std_std": float(stds.std()),
        "note": "no multiple-testing correction: about 1 - alpha of the coordinates pass for Gaussian data",
    }


# --------------------------------------------------------------------------------------------------
# UMAP
# --------------------------------------------------------------------------------------------------

def _import_umap():
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "oodgen" / "numba"))
    try:
        Path(os.environ["NUMBA_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap  # noqa: PLC0415  (lazy: numba compiles on first import)
    return umap


def _single_blas_thread():
    """Context limiting numpy/scipy BLAS to one thread.

    On 2 busy cores a multi-threaded OpenBLAS eigendecomposition of a 2000 x 2000 matrix was measured
    at 19 s against 0.5 s single-threaded (its threads wait on each other whenever one is descheduled).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _pca_from_gram(g: np.ndarray, k: int) -> np.ndarray:
    """Top-k PCA scores [N, k] from a Gram matrix (double centring + partial eigendecomposition)."""
    from scipy.linalg import eigh

    n = g.shape[0]
    r = g.mean(0)
    gc = g - r[None, :] - r[:, None] + r.mean()
    k = int(max(1, min(k, n - 1)))
    with _single_blas_thread():
        w, v = eigh(gc, subset_by_index=[n - k, n - 1])
    w, v = w[::-1], v[:, ::-1]
    return v * np.sqrt(np.maximum(w, 0.0))[None, :]


def _knn(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self first) of rows of z, as umap's precomputed_knn wants."""
    sq = (z * z).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.fill_diagonal(d2, -1.0)
    idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
    dd = np.take_along_axis(d2, idx, 1)
    order = np.argsort(dd, axis=1, kind="stable")
    idx, dd = np.take_along_axis(idx, order, 1), np.take_along_axis(dd, order, 1)
    dd = np.sqrt(np.maximum(dd, 0.0))
    dd[:, 0] = 0.0
    return idx.astype(np.int32), dd.astype(np.float32)


def umap_embedding(
    sets: Mapping[str, Any],
    names: Optional[Mapping[str, Sequence[str]]] = None,
    n_pca: int = 50,
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    gram_matrix: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP of the union of ``sets`` -> (embedding [N, 2] float32, labels [N] set names).

    PCA to min(n_pca, N - 1) dims through the N x N Gram (never a d x d matrix), exact k-NN of the PCA
    scores, then umap-learn with ``random_state=seed`` (deterministic, single-threaded) and
    n_neighbors = min(15, N - 1). ``gram_matrix``: Gram of the stacked sets in dict order. With fewer
    than 5 points the first two PCA scores are returned instead. ``names`` is accepted for symmetry
    with :func:`umap_figure` and only checked for length.
    """
    keys = list(sets)
    sizes = [as_matrix(sets[k]).shape[0] for k in keys]
    if names is not None:
        for k, s in zip(keys, sizes):
            if k in names and len(names[k]) != s:
                raise ValueError(f"names[{k!r}] has {len(names[k])} entries for {s} samples")
    labels = np.concatenate([np.full(s, k, dtype=object) for k, s in zip(keys, sizes)])
    g = gram(*[sets[k] for k in keys]) if gram_matrix is None else np.asarray(gram_matrix, dtype=np.float64)
    n = g.shape[0]
    if n != len(labels):
        raise ValueError(f"gram_matrix has {n} rows for {len(labels)} samples")
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32), labels
    z = _pca_from_gram(g, n_pca)
    if n < 5:
        emb = np.zeros((n, 2))
        emb[:, : min(2, z.shape[1])] = z[:, :2]
        return emb.astype(np.float32), labels
    umap = _import_umap()
    k = int(min(n_neighbors, n - 1))
    with _single_blas_thread():
        knn_idx, knn_dist = _knn(z, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=k, n_components=2, random_state=seed, precomputed_knn=(knn_idx, knn_dist))
        emb = reducer.fit_transform(z.astype(np.float32))
    return np.asarray(emb, dtype=np.float32), labels


def _point_names(labels: np.ndarray, names: Any) -> list[str]:
    """One hover name per point: from a per-point list, a dict set -> names (in that set's order), or set[i]."""
    if names is not None and not isinstance(names, Mapping):
        out = [str(v) for v in names]
        if len(out) != len(labels):
            raise ValueError(f"{len(out)} names for {len(labels)} points")
        return out
    names = names or {}
    count: dict = {}
    for lab in labels:
        count[lab] = count.get(lab, 0) + 1
    for lab, cnt in count.items():
        if lab in names and len(names[lab]) != cnt:
            raise ValueError(f"names[{lab!r}] has {len(names[lab])} entries for {cnt} points")
    pos: dict = {}
    out = []
    for lab in labels:
        i = pos.get(lab, 0)
        pos[lab] = i + 1
        out.append(str(names[lab][i]) if lab in names else f"{lab}[{i}]")
    return out


def umap_figure(embedding: np.ndarray, labels: Sequence[str], names: Any = None, title: str = "UMAP of latents"):
    """Scatter of a 2-D embedding, one trace per set (coloured), each point's sample name on hover.

    ``names``: one name per point, or a dict set -> names in that set's order, or None (set[i]).
    """
    import plotly.graph_objects as go

    emb = np.asarray(embedding)
    labels = np.asarray(labels, dtype=object)
    point_names = np.asarray(_point_names(labels, names), dtype=object)
    fig = go.Figure()
    seen: list = []
    for lab in labels:
        if lab not in seen:
            seen.append(lab)
    for lab in seen:
        m = labels == lab
        fig.add_trace(go.Scattergl(
            x=emb[m, 0], y=emb[m, 1], mode="markers", name=str(lab), marker={"size": 5, "opacity": 0.75},
            hovertext=list(point_names[m]), hovertemplate="%{hovertext}<extra>" + html.escape(str(lab)) + "</extra>",
        ))
    fig.update_layout(title=title, xaxis_title="UMAP 1", yaxis_title="UMAP 2", legend_title="set", template="plotly_white")
    return fig


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

@dataclass
class DiagnosticsReport:
    """Everything :func:`diagnose` measured; ``to_json()`` for numbers, figure helpers for plots."""

    d: int
    n_id: int
    n_ood: int
    id_source: str
    seed: int
    geometry_id: Geometry
    geometry_ood: Geometry
    separation: dict
    svm: dict
    radius_id: dict
    radius_ood: dict
    normality_id: dict
    normality_ood: dict
    radii: dict = field(default_factory=dict, repr=False)  # {"ID": [n_id], "OOD": [n_ood]}
    umap_embedding: Optional[np.ndarray] = field(default=None, repr=False)
    umap_labels: Optional[np.ndarray] = field(default=None, repr=False)
    names: dict = field(default_factory=dict, repr=False)  # {"ID": [...], "OOD": [...]}
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        go, gi, sep, svm = self.geometry_ood, self.geometry_id, self.separation, self.svm
        out = {
            "d": self.d, "d_quarter": sep["d_quarter"], "n_id": self.n_id, "n_ood": self.n_ood,
            "id_source": self.id_source, "seed": self.seed,
            **{k: v for k, v in go.to_json().items() if k not in ("d", "n")},
            "id": {k: v for k, v in gi.to_json().items() if k not in ("d", "n")},
            "ood": {k: v for k, v in go.to_json().items() if k not in ("d", "n")},  # same as the top level
            "center_distance": sep["center_distance"], "center_distance_ratio": sep["ratio"],
            "separable_by_criterion": sep["separable"],
            "noise_floor": sep["noise_floor"], "exceeds_noise_floor": sep["exceeds_noise_floor"],
            "noise_floor_fitted": sep["noise_floor_fitted"],
            "exceeds_noise_floor_fitted": sep["exceeds_noise_floor_fitted"],
            "center_distance_debiased": sep["center_distance_debiased"],
            "svm_test_accuracy": svm["test_accuracy"],
            "svm_cv": {"mean": svm["cv_mean"], "std": svm["cv_std"], "ci95": [svm["cv_ci95_low"], svm["cv_ci95_high"]],
                       "folds": svm["k_folds"], "fold_accuracies": svm["cv_fold_accuracies"]},
            "svm": svm,
            "radius_test": {"id": self.radius_id, "ood": self.radius_ood},
            "coordinate_normality": {"id": self.normality_id, "ood": self.normality_ood},
            "umap": None if self.umap_embedding is None else {"n_points": int(len(self.umap_embedding))},
            "timings_s": self.timings,
        }
        return _jsonable(out)


def diagnose(
    x_ood: Any,
    x_id: Any,
    id_source: str,
    names_ood: Optional[Sequence[str]] = None,
    names_id: Optional[Sequence[str]] = None,
    seed: int = 0,
    with_umap: bool = True,
    progress: Optional[Progress] = None,
    *,
    n_triplets: int = 20000,
    test_size: float = 0.3,
    k_folds: int = 5,
    n_coords: int = 256,
) -> DiagnosticsReport:
    """All diagnostics of an OOD latent set against an ID reference set (e.g. :func:`gaussian_prior`).

    The Gram of the stacked [ID; OOD] sets is computed once (O((n_id + n_ood)^2 d)) and shared by the
    geometry of both sets, the centre distance, the SVM, the radii and UMAP's PCA. ``progress(stage,
    fraction)`` is called as stages start and finish; ``id_source`` is a free label (e.g. "prior N(0, I)").
    """
    def report(stage: str, frac: float) -> None:
        if progress is not None:
            progress(stage, float(min(max(frac, 0.0), 1.0)))

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    a, b = as_matrix(x_id), as_matrix(x_ood)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"ID latents have d={a.shape[1]} but OOD latents d={b.shape[1]}")
    (n_id, d), n_ood = a.shape, b.shape[0]
    if n_id < 3 or n_ood < 3:
        raise ValueError(f"need at least 3 latents per set, got n_id={n_id}, n_ood={n_ood}")
    names_id = [f"id_{i}" for i in range(n_id)] if names_id is None else [str(v) for v in names_id]
    names_ood = [f"ood_{i}" for i in range(n_ood)] if names_ood is None else [str(v) for v in names_ood]
    if len(names_id) != n_id or len(names_ood) != n_ood:
        raise ValueError("names_id / names_ood must have one name per latent")

    # overall progress at the start of each stage
    at = {"gram": 0.0, "geometry": 0.55, "svm": 0.6, "gaussianity": 0.7, "umap": 0.75} if with_umap else \
        {"gram": 0.0, "geometry": 0.7, "svm": 0.75, "gaussianity": 0.9}

    t = time.perf_counter()
    report("gram", 0.0)
    g = gram(a, b, progress=lambda f: report("gram", at["geometry"] * f))
    timings["gram"] = time.perf_counter() - t

    t = time.perf_counter()
    report("geometry", at["geometry"])
    geo_id = _geometry_from_gram(g[:n_id, :n_id], d, n_triplets, seed)
    geo_ood = _geometry_from_gram(g[n_id:, n_id:], d, n_triplets, seed + 1)
    sep = _criterion_from_gram(g, n_id, d)
    timings["geometry"] = time.perf_counter() - t

    t = time.perf_counter()
    report("svm", at["svm"])
    y = np.r_[np.zeros(n_id, dtype=int), np.ones(n_ood, dtype=int)]
    svm = _svm_from_gram(g, y, test_size, seed, k_folds, 1.0)
    timings["svm"] = time.perf_counter() - t

    t = time.perf_counter()
    report("gaussianity", at["gaussianity"])
    diag = np.diag(g)
    rad_id = _radius_test_from_sq(diag[:n_id], d, None, 3.0, 0.05)
    rad_ood = _radius_test_from_sq(diag[n_id:], d, None, 3.0, 0.05)
    norm_id = coordinate_normality(a, n_coords=n_coords, seed=seed)
    norm_ood = coordinate_normality(b, n_coords=n_coords, seed=seed)
    timings["gaussianity"] = time.perf_counter() - t

    emb = labels = None
    if with_umap:
        t = time.perf_counter()
        report("umap", at["umap"])
        emb, labels = umap_embedding({"ID": a, "OOD": b}, seed=seed, gram_matrix=g)
        timings["umap"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    report("done", 1.0)
    return DiagnosticsReport(
        d=d, n_id=n_id, n_ood=n_ood, id_source=id_source, seed=seed, geometry_id=geo_id, geometry_ood=geo_ood,
        separation=sep, svm=svm, radius_id=rad_id, radius_ood=rad_ood, normality_id=norm_id, normality_ood=norm_ood,
        radii={"ID": np.sqrt(np.maximum(diag[:n_id], 0)), "OOD": np.sqrt(np.maximum(diag[n_id:], 0))},
        umap_embedding=emb, umap_labels=labels, names={"ID": names_id, "OOD": names_ood}, timings=timings,
    )


# --------------------------------------------------------------------------------------------------
# figures and tables
# --------------------------------------------------------------------------------------------------

def _ms(st: Stat, digits: int = 2) -> str:
    return f"{st.mean:.{digits}f} ± {st.std:.{digits}f}"


def table_rows(report: DiagnosticsReport) -> list[dict]:
    """Table-3-style rows: {"quantity", "ID", "OOD", "isotropic Gaussian reference"} (strings)."""
    gi, go_, sep, svm = report.geometry_id, report.geometry_ood, report.separation, report.svm
    d = report.d
    ref = "isotropic Gaussian reference"
    rows = [
        {"quantity": "Pair angle (deg; mean is 60 for any data)", "ID": _ms(gi.pair_angle_deg),
         "OOD": _ms(go_.pair_angle_deg), ref: f"60 ± {gi.pair_angle_deg.reference_std:.2f}"},
        {"quantity": "Origin angle (deg)", "ID": _ms(gi.origin_angle_deg), "OOD": _ms(go_.origin_angle_deg),
         ref: f"90 ± {gi.origin_angle_deg.reference_std:.2f}"},
        {"quantity": "Pair distance", "ID": _ms(gi.pair_distance), "OOD": _ms(go_.pair_distance),
         ref: f"√(2d) = {math.sqrt(2 * d):.2f} ± 1; s·√(2d): ID {gi.pair_distance.reference:.2f}, "
              f"OOD {go_.pair_distance.reference:.2f}"},
        {"quantity": "Norm", "ID": _ms(gi.norm), "OOD": _ms(go_.norm),
         ref: f"√d = {math.sqrt(d):.2f} ± 0.71; s·√d: ID {gi.norm.reference:.2f}, OOD {go_.norm.reference:.2f}"},
        {"quantity": "Fitted scale s (RMS entry)", "ID": f"{gi.scale:.4f}", "OOD": f"{go_.scale:.4f}", ref: "1 (prior)"},
        {"quantity": "|sample mean|", "ID": f"{gi.mean_norm:.2f}", "OOD": f"{go_.mean_norm:.2f}",
         ref: f"≈ s·√(d/n): ID {gi.centered_scale * math.sqrt(d / gi.n):.2f}, OOD {go_.centered_scale * math.sqrt(d / go_.n):.2f}"},
        {"quantity": "Centre distance", "ID": "-", "OOD": f"{sep['center_distance']:.2f}",
         ref: f"d^¼ = {sep['d_quarter']:.2f} (Lemma C.2); same-Gaussian noise floor {sep['noise_floor']:.2f} "
              f"(fitted {sep['noise_floor_fitted']:.2f})"},
        {"quantity": "Centre distance, debiased", "ID": "-", "OOD": f"{sep['center_distance_debiased']:.2f}", ref: "0"},
        {"quantity": "Separable (centre distance > d^¼)", "ID": "-", "OOD": "yes" if sep["separable"] else "no",
         ref: "no"},
        {"quantity": "Linear SVM test accuracy (7:3)", "ID": "-", "OOD": f"{svm['test_accuracy']:.3f}", ref: "0.5"},
        {"quantity": f"Linear SVM {svm['k_folds']}-fold CV", "ID": "-",
         "OOD": f"{svm['cv_mean']:.3f} ± {svm['cv_std']:.3f} (95% CI {svm['cv_ci95_low']:.3f}–{svm['cv_ci95_high']:.3f})",
         ref: "0.5"},
        {"quantity": "Radius KS p-value vs chi(d)·s", "ID": f"{report.radius_id['ks_pvalue']:.3g}",
         "OOD": f"{report.radius_ood['ks_pvalue']:.3g}", ref: "uniform on [0, 1]"},
        {"quantity": "Radius spread std(r)/std_chi", "ID": f"{report.radius_id['spread_ratio']:.3f}",
         "OOD": f"{report.radius_ood['spread_ratio']:.3f}", ref: "1"},
        {"quantity": "Radii in thin annulus s(√(d-1) ± 3)", "ID": f"{report.radius_id['annulus_fraction']:.3f}",
         "OOD": f"{report.radius_ood['annulus_fraction']:.3f}", ref: f"≥ {report.radius_id['annulus_bound']:.3f}"},
        {"quantity": "Radii Gaussian-like", "ID": "yes" if report.radius_id["gaussian_like"] else "no",
         "OOD": "yes" if report.radius_ood["gaussian_like"] else "no", ref: "yes"},
        {"quantity": "Coordinates passing normality test", "ID": f"{report.normality_id['fraction_passing']:.3f}",
         "OOD": f"{report.normality_ood['fraction_passing']:.3f}",
         ref: f"≈ {report.normality_id['expected_fraction']:.2f} (≥ {report.normality_id['lower_bound_99']:.3f})"},
    ]
    return rows


def _hist_bars(fig, values_by_set: Mapping[str, np.ndarray], row: int, col: int, bins: int = 60, colors=None):
    import plotly.graph_objects as go

    allv = np.concatenate([np.asarray(v, dtype=np.float64)[np.isfinite(v)] for v in values_by_set.values()])
    if allv.size == 0:
        return
    lo, hi = np.percentile(allv, [0.05, 99.95]) if allv.size > 2000 else (allv.min(), allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    centers = 0.5 * (edges[:-1] + edges[1:])
    for idx, (name, v) in enumerate(values_by_set.items()):
        v = np.asarray(v, dtype=np.float64)
        h, _ = np.histogram(v[np.isfinite(v)], bins=edges, density=True)
        fig.add_trace(go.Bar(x=centers, y=h, width=edges[1] - edges[0], name=name, opacity=0.6,
                             legendgroup=name, showlegend=(row == 1 and col == 1),
                             marker_color=(colors or _COLORS)[idx % len(colors or _COLORS)]), row=row, col=col)


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def angle_histograms_figure(source: Any):
    """Histograms of pair angles and origin angles (and pair distances) per set, with Gaussian references.

    ``source``: a :class:`DiagnosticsReport` or a dict {set name: :class:`Geometry`}.
    """
    from plotly.subplots import make_subplots

    geos = {"ID": source.geometry_id, "OOD": source.geometry_ood} if isinstance(source, DiagnosticsReport) else dict(source)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Pair angle (deg)", "Origin angle (deg)", "Pair distance / √(2d)"))
    _hist_bars(fig, {k: g.samples["pair_angle_deg"] for k, g in geos.items()}, 1, 1)
    _hist_bars(fig, {k: g.samples["origin_angle_deg"] for k, g in geos.items()}, 1, 2)
    _hist_bars(fig, {k: g.samples["pair_distance"] / math.sqrt(2 * g.d) for k, g in geos.items()}, 1, 3)
    fig.add_vline(x=PAIR_ANGLE_REF, line_dash="dash", line_color="black", row=1, col=1)
    fig.add_vline(x=ORIGIN_ANGLE_REF, line_dash="dash", line_color="black", row=1, col=2)
    fig.add_vline(x=1.0, line_dash="dash", line_color="black", row=1, col=3)
    fig.update_layout(barmode="overlay", title="Geometry of the latent sets (dashed: isotropic unit Gaussian)",
                      template="plotly_white", yaxis_title="density")
    return fig


def radius_figure(source: Any, d: Optional[int] = None, scales: Optional[Mapping[str, float]] = None):
    """Histogram of radii per set against the fitted chi(d)·s density, annulus s(√(d-1) ± 3) dashed.

    ``source``: a :class:`DiagnosticsReport`, or a dict {set name: radii} with ``d`` (and optional
    ``scales``; default fitted s = sqrt(mean r^2 / d)).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from scipy import stats

    if isinstance(source, DiagnosticsReport):
        radii = dict(source.radii)
        d = source.d
        scales = {"ID": source.radius_id["scale"], "OOD": source.radius_ood["scale"]}
    else:
        radii = {k: np.asarray(v, dtype=np.float64) for k, v in source.items()}
        if d is None:
            raise ValueError("radius_figure needs d with a dict of radii")
    scales = dict(scales or {})
    fig = make_subplots(rows=1, cols=len(radii), subplot_titles=[f"{k}: radius |x|" for k in radii])
    for c, (name, r) in enumerate(radii.items(), start=1):
        r = np.asarray(r, dtype=np.float64)
        s = scales.get(name, math.sqrt(float((r**2).mean()) / d))
        chi = stats.chi(d, scale=s)
        lo = min(r.min(), chi.ppf(1e-4))
        hi = max(r.max(), chi.ppf(1 - 1e-4))
        edges = np.linspace(lo, hi, 61)
        h, _ = np.histogram(r, bins=edges, density=True)
        col = _COLORS[(c - 1) % len(_COLORS)]
        fig.add_trace(go.Bar(x=0.5 * (edges[:-1] + edges[1:]), y=h, width=edges[1] - edges[0], name=name,
                             marker_color=col, opacity=0.6), row=1, col=c)
        xs = np.linspace(lo, hi, 400)
        fig.add_trace(go.Scatter(x=xs, y=chi.pdf(xs), mode="lines", name=f"chi(d)·s, s={s:.3f}",
                                 line={"color": "black"}), row=1, col=c)
        for v in (s * (math.sqrt(d - 1) - 3), s * (math.sqrt(d - 1) + 3)):
            fig.add_vline(x=v, line_dash="dash", line_color="gray", row=1, col=c)
    fig.update_layout(title="Radii against an isotropic Gaussian of the fitted scale", template="plotly_white",
                      barmode="overlay")
    return fig


def t_sweep_figure(rows: Sequence[Mapping[str, Any]]):
    """Diagnostics versus the operating timestep t_end, to choose where to work.

    ``rows``: dicts with t_end, svm_test_accuracy, center_distance, d_quarter, pair_angle_deg,
    origin_angle_deg, norm_ratio (and optionally noise_floor). Missing keys are skipped.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = sorted(rows, key=lambda r: r["t_end"])
    t = [r["t_end"] for r in rows]

    def col(key):
        return [r.get(key) for r in rows]

    fig = make_subplots(rows=5, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=("Linear SVM test accuracy (ID vs OOD)", "Centre distance",
                                        "Pair angle (deg)", "Origin angle (deg)", "Norm ratio"))
    line = dict(mode="lines+markers")
    fig.add_trace(go.Scatter(x=t, y=col("svm_test_accuracy"), name="SVM test accuracy", **line), row=1, col=1)
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", row=1, col=1)
    fig.add_trace(go.Scatter(x=t, y=col("center_distance"), name="centre distance", **line), row=2, col=1)
    fig.add_trace(go.Scatter(x=t, y=col("d_quarter"), name="d^¼ (Lemma C.2)", mode="lines",
                             line={"dash": "dash"}), row=2, col=1)
    if any(r.get("noise_floor") is not None for r in rows):
        fig.add_trace(go.Scatter(x=t, y=col("noise_floor"), name="noise floor", mode="lines",
                                 line={"dash": "dot"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=t, y=col("pair_angle_deg"), name="pair angle", **line), row=3, col=1)
    fig.add_hline(y=PAIR_ANGLE_REF, line_dash="dash", line_color="gray", row=3, col=1)
    fig.add_trace(go.Scatter(x=t, y=col("origin_angle_deg"), name="origin angle", **line), row=4, col=1)
    fig.add_hline(y=ORIGIN_ANGLE_REF, line_dash="dash", line_color="gray", row=4, col=1)
    fig.add_trace(go.Scatter(x=t, y=col("norm_ratio"), name="norm ratio", **line), row=5, col=1)
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray", row=5, col=1)
    fig.update_xaxes(title_text="t_end (operating timestep)", row=5, col=1)
    fig.update_layout(height=1100, title="Choosing the operating timestep", template="plotly_white", hovermode="x unified")
    return fig


def report_figures(report: DiagnosticsReport) -> dict:
    """The report's own figures: geometry histograms, radii, UMAP (when computed)."""
    figs = {"Geometry": angle_histograms_figure(report), "Radii": radius_figure(report)}
    if report.umap_embedding is not None:
        figs["UMAP"] = umap_figure(report.umap_embedding, report.umap_labels, names=report.names,
                                   title=f"UMAP of latents (ID: {report.id_source})")
    return figs


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f3f3f3}pre{background:#f8f8f8;padding:1em;overflow:auto}"""


def write_figures_page(path: str | os.PathLike, title: str, figures: Mapping[str, Any], numbers: Mapping[str, Any],
                       intro_html: str = "") -> Path:
    """One self-contained, offline HTML page: ``intro_html``, every plotly figure, and ``numbers`` as JSON.

    plotly.js is inlined once (first figure); no external script is referenced.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", intro_html]
    for k, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{html.escape(str(name))}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=k == 0, include_mathjax=False))
    parts.append("<h2>Numbers (JSON)</h2><details><summary>show</summary><pre>"
                 + html.escape(json.dumps(numbers, indent=2)) + "</pre></details>")
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def write_html_report(report: DiagnosticsReport, path: str | os.PathLike, extra_figures: Optional[Mapping[str, Any]] = None) -> Path:
    """The diagnostics report as one offline HTML file: the Table-3-style table, every figure, the JSON."""
    figs = dict(report_figures(report))
    figs.update(extra_figures or {})
    rows = table_rows(report)
    cols = list(rows[0])
    intro = "".join([
        f"<p>d = {report.d}, n_ID = {report.n_id} ({html.escape(report.id_source)}), n_OOD = {report.n_ood}, seed = {report.seed}</p>",
        "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>",
        *["<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows],
        "</table>",
        "<p>References: isotropic Gaussian N(0, s²I) with the set's fitted scale s. Noise floor: centre distance "
        "expected between two sets drawn from the same Gaussian (oodgen's addition to Lemma C.2). "
        f"SVM standardization: {html.escape(SVM_STANDARDIZATION)}.</p>",
    ])
    return write_figures_page(path, "oodgen latent diagnostics", figs, report.to_json(), intro)


# --------------------------------------------------------------------------------------------------
# ID reference from the model's own prior
# --------------------------------------------------------------------------------------------------

def gaussian_prior(
    n: int,
    shape: Sequence[int],
    alphas_cumprod: Optional[Sequence[float] | np.ndarray | torch.Tensor] = None,
    t: Optional[int] = None,
    seed: int = 0,
    push: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
) -> torch.Tensor:
    """ID reference latents [n, *shape] from the model's own prior, seeded.

    At t = T - 1 (or t None) that is the standard Gaussian N(0, I) (up to sqrt(alpha_bar_{T-1}) ~ 0.006
    of signal for the usual linear schedule, ignored). For t < T - 1 the marginal of x_t depends on
    the model's data distribution, which this module cannot know: pass ``push(x_T, t) -> x_t`` (the
    engine's DDIM denoising from T - 1 down to t) to map the prior samples; without it a ValueError
    is raised. T = len(alphas_cumprod), or 1000 when not given.
    """
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((int(n), *[int(s) for s in shape]), generator=gen, dtype=torch.float32)
    T = len(alphas_cumprod) if alphas_cumprod is not None else 1000
    if t is None or int(t) == T - 1:
        return x
    if not 0 <= int(t) < T:
        raise ValueError(f"t={t} is outside 0..{T - 1}")
    if push is None:
        raise ValueError(
            f"prior latents at t={t} < T-1={T - 1} need the model: pass push(x_T, t) (DDIM denoising from T-1 to t); "
            "only the standard Gaussian at T-1 is known without it")
    return push(x, int(t))
