"""Sample quality: physics-aware statistics of image sets, and generated-vs-real comparisons with floors.

Pure functions: arrays in, numbers and plotly figures out (no files; ``oodgen.pipeline`` writes reports).

Notation
- ``x`` [N, H, W, C] float arrays. kind ``image`` / ``galaxy``: display values in [0, 1]; kind
  ``physical``: surface brightness in the data's units (MJy/sr for the bundled dust maps), bands in
  increasing wavelength.
- A *statistic* is one number per image (Gini, power-spectrum slope of band 2, ...); a set of images
  gives a :class:`StatTable` [N, S], NaN where a statistic could not be measured (flagged per image).
- The real set R is split once (seeded) into two disjoint halves R_A and R_B. R_B is the reference;
  every candidate set G (generated, the pixel crossfade baseline, any other set) is subsampled to
  |R_A| and compared with R_B exactly as R_A is: the R_A-vs-R_B numbers are the *floor* (what two
  samples of the same distribution give at this size), printed beside every number.
- ``W1``: 1-D Wasserstein distance of a statistic between two equal-size sets, divided by the
  statistic's standard deviation in R_B; bootstrap 95% CI (percentile).
- ``C2ST``: cross-validated accuracy of a classifier telling the two sets apart (0.5 =
  indistinguishable; Lopez-Paz & Oquab 2016), on the statistics (gradient-boosted trees) and on
  pixels (logistic regression on 16x16 thumbnails); Wilson 95% CI.
- ``FD``: Frechet distance between Gaussians fitted to the standardized statistics vectors.
- Memorization: each generated image's RMS distance to its nearest real image (minimum over shifts
  of up to ``max_shift`` px), against the real-to-real nearest-neighbour distances (leave one out);
  a *near-copy* is closer to a real image than ``copy_ratio`` x the real-to-real median.
"""

from __future__ import annotations

import logging
import math
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from .config import JSONSettings

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("galaxy", "physical", "image")
Progress = Callable[[str, float], None]  # (stage, fraction done in [0, 1])

__all__ = [
    "KINDS", "QualitySettings", "StatTable", "PhysicalReference", "power_spectrum", "spectrum_slope",
    "image_statistics", "galaxy_statistics", "physical_statistics", "compute_statistics", "crossfade",
    "wasserstein_equal", "c2st", "frechet_distance", "nearest_real", "evaluate", "QualityReport", "detect_kind",
]


@dataclass(frozen=True)
class QualitySettings(JSONSettings):
    """How a generated set is compared with a real one (the CLI and the app read the same fields)."""

    kind: str = "auto"  # galaxy | physical | image | auto (physical when a unit is known, else image)
    n_boot: int = 200  # bootstrap resamples for each distance's 95% CI
    morph_max: int = 200  # statmorph runs on at most this many images per set (seeded subset; ~0.2 s each)
    workers: int = 2  # processes for statmorph
    seed: int = 0  # seeds the R_A/R_B split, subsampling, bootstrap, classifiers, crossfade pairs
    c2st_folds: int = 5  # cross-validation folds of the classifier two-sample tests
    copy_ratio: float = 0.5  # near-copy: NN distance below this fraction of the real-to-real median
    max_shift: int = 2  # memorization: minimum over shifts of up to this many pixels
    verdict_factor: float = 2.0  # a statistic is "ok" when its distance is within this many floors

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "auto"):
            raise ValueError(f"kind={self.kind!r} is not one of {', '.join(KINDS)} or auto")
        if self.n_boot < 10 or self.c2st_folds < 2 or self.morph_max < 4 or self.workers < 1:
            raise ValueError("need n_boot >= 10, c2st_folds >= 2, morph_max >= 4 and workers >= 1")


@dataclass(frozen=True)
class StatTable:
    """Per-image statistics: ``values`` [N, S] (NaN = not measured), ``flags`` per image ('' = fine)."""

    names: tuple[str, ...]
    values: np.ndarray
    flags: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.flags), len(self.names)):
            raise ValueError(f"values {self.values.shape} do not match {len(self.flags)} images x {len(self.names)} statistics")

    def take(self, idx: np.ndarray) -> "StatTable":
        return StatTable(self.names, self.values[idx], tuple(self.flags[i] for i in idx))


def _check_set(x: np.ndarray, name: str = "images") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] not in (1, 2, 3, 4) or x.shape[1] < 8 or x.shape[2] < 8:
        raise ValueError(f"{name} must be an array [N, H, W, C] with C <= 4 and H, W >= 8, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x.astype(np.float64, copy=False)


# ------------------------------------------------------------------------------------------------
# power spectra
# ------------------------------------------------------------------------------------------------


def power_spectrum(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a square [H, W] map (mean removed).

    Returns (k, P): integer wavenumbers 1..H//2 (cycles per image) and the mean |FFT|^2 in each
    annulus k - 0.5 <= |k| < k + 0.5, normalized by the pixel count.
    """
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    f = np.fft.fft2(img - img.mean())
    p = (np.abs(f) ** 2) / (h * w)
    ky, kx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    kr = np.rint(np.hypot(ky, kx)).astype(int)
    kmax = min(h, w) // 2
    sums = np.bincount(kr.ravel(), weights=p.ravel(), minlength=kmax + 1)
    counts = np.bincount(kr.ravel(), minlength=kmax + 1)
    k = np.arange(1, kmax + 1)
    return k.astype(np.float64), sums[1 : kmax + 1] / np.maximum(counts[1 : kmax + 1], 1)


def spectrum_slope(img: np.ndarray, k_min: float = 2.0, k_max: Optional[float] = None) -> float:
    """Least-squares slope of log P(k) against log k over k_min <= k <= k_max (default H/4).

    A Gaussian random field with P(k) ~ k^beta gives ``beta``. The default range stays clear of the
    largest modes (few samples) and of the pixel scale (aliasing, PSF, noise).
    """
    k, p = power_spectrum(img)
    k_max = k_max if k_max is not None else img.shape[0] / 4
    m = (k >= k_min) & (k <= k_max) & (p > 0)
    if m.sum() < 3:
        return math.nan
    return float(np.polyfit(np.log(k[m]), np.log(p[m]), 1)[0])


def _band_power(img: np.ndarray) -> tuple[float, float]:
    """(log10 power at low k (1..H/8), fraction of power at high k (> H/4)) of a [H, W] map."""
    k, p = power_spectrum(img)
    h = img.shape[0]
    total = p.sum()
    low = p[k <= max(1, h // 8)].mean()
    return float(np.log10(low + 1e-30)), float(p[k > h / 4].sum() / total) if total > 0 else math.nan


# ------------------------------------------------------------------------------------------------
# per-image statistics
# ------------------------------------------------------------------------------------------------


def _channel_names(c: int, bands: Optional[Sequence[str]]) -> list[str]:
    if bands is not None and len(bands) == c:
        return [str(b) for b in bands]
    return ["grey"] if c == 1 else ["R", "G", "B", "A"][:c]


def image_statistics(x: np.ndarray, bands: Optional[Sequence[str]] = None) -> StatTable:
    """Statistics for any image set ``x`` [N, H, W, C] in [0, 1].

    Per channel: mean, standard deviation, 5/50/95th percentiles of intensity, power-spectrum slope,
    low-k power and high-k power fraction. Across channels: Pearson correlation of each pair and the
    mean-intensity difference of each pair (colour).
    """
    x = _check_set(x)
    n, _, _, c = x.shape
    ch = _channel_names(c, bands)
    names: list[str] = []
    for b in ch:
        names += [f"{b} mean", f"{b} std", f"{b} p05", f"{b} p50", f"{b} p95", f"{b} PS slope", f"{b} PS low-k", f"{b} PS high-k frac"]
    pairs = [(a, b) for a in range(c) for b in range(a + 1, c)]
    names += [f"corr {ch[a]}-{ch[b]}" for a, b in pairs] + [f"colour {ch[a]}-{ch[b]}" for a, b in pairs]
    vals = np.full((n, len(names)), np.nan)
    for i in range(n):
        row: list[float] = []
        for b in range(c):
            img = x[i, :, :, b]
            p05, p50, p95 = np.percentile(img, [5, 50, 95])
            low, high = _band_power(img)
            row += [img.mean(), img.std(), p05, p50, p95, spectrum_slope(img), low, high]
        for a, b in pairs:
            row.append(_corr(x[i, :, :, a], x[i, :, :, b]))
        for a, b in pairs:
            row.append(x[i, :, :, a].mean() - x[i, :, :, b].mean())
        vals[i] = row
    return StatTable(tuple(names), vals, ("",) * n)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


WARN_FLAG = "statmorph warning (flag 2), values kept"
MORPH_NAMES = ("Gini", "M20", "concentration", "asymmetry", "smoothness", "Sersic n", "ellipticity", "r50 (px)")
# the statmorph properties behind MORPH_NAMES, in order
MORPH_PROPERTIES = ("gini", "m20", "concentration", "asymmetry", "smoothness", "sersic_n", "ellipticity_asymmetry", "r50")


def _lean_morphology_class():
    """statmorph.SourceMorphology that evaluates only the properties oodgen reports (:data:`MORPH_PROPERTIES`, and
    what they depend on) instead of all of them: the same values, about a quarter less time (no MID statistics,
    multimode, deviation, outer and shape asymmetry, ellipse Petrosian radii, or Gini/MID segmap comparison, whose
    only effect is a flag of 1 that oodgen does not read). Its ``flag`` is that of the reported properties."""
    import statmorph

    class LeanMorphology(statmorph.SourceMorphology):
        def _calculate_morphology(self) -> None:
            for q in MORPH_PROPERTIES:
                _ = self[q]

        def _check_segmaps(self) -> None:
            pass

    return LeanMorphology


def _morphology_one(lum: np.ndarray) -> tuple[list[float], str]:
    """statmorph on one luminance image [H, W] (sky-subtracted inside): (8 values, flag)."""
    from astropy.stats import sigma_clipped_stats
    from photutils.segmentation import detect_sources

    logging.getLogger("statmorph").setLevel(logging.CRITICAL)
    nan = [math.nan] * len(MORPH_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, med, std = sigma_clipped_stats(lum, sigma=3.0)
        img = lum - med
        if not std > 0:
            return nan, "flat image (no sky noise)"
        seg = detect_sources(img, 1.5 * std, npixels=5)
        if seg is None:
            return nan, "no source detected"
        h, w = img.shape
        label = int(seg.data[h // 2, w // 2]) or int(seg.labels[np.argmax(seg.areas)])
        try:
            m = _lean_morphology_class()(img, seg.data, label, gain=1000.0, sersic_maxiter=400)
            vals = [getattr(m, q) for q in MORPH_PROPERTIES]
        except Exception as e:  # statmorph raises on degenerate segments; a flag, not a crash
            return nan, f"statmorph failed: {type(e).__name__}"
    vals = [float(v) if v is not None and np.isfinite(v) else math.nan for v in vals]
    if m.flag_sersic >= 2:
        vals[5] = math.nan
    if all(math.isnan(v) for v in vals):
        return nan, "statmorph failed: no finite measurement"
    missing = [k for k, v in zip(MORPH_NAMES, vals) if math.isnan(v)]
    return vals, ("statmorph: no " + ", ".join(missing)) if missing else (WARN_FLAG if m.flag >= 2 else "")


def _sky(imgs: np.ndarray) -> np.ndarray:
    """(sky level, sky noise) [N, 2] of images ``imgs`` [N, H, W]: sigma-clipped median and std of each image's
    border pixels (outer frame of 1/8 of the side), clipped per image."""
    from astropy.stats import sigma_clipped_stats

    b = max(2, min(imgs.shape[1:3]) // 8)
    mask = np.ones(imgs.shape[1:3], bool)
    mask[b:-b, b:-b] = False
    _, med, std = sigma_clipped_stats(imgs[:, mask], sigma=3.0, axis=1)
    return np.stack([np.asarray(med, float), np.asarray(std, float)], axis=1)


def _morphology_chunk(lums: Sequence[np.ndarray]) -> list[tuple[list[float], str]]:
    return [_morphology_one(lum) for lum in lums]


class MorphologyPool:
    """statmorph of the luminance images of several sets in one process pool, running while the caller
    computes everything else (:func:`evaluate` submits every set at once, then waits).

    ``submit(key, lum)`` with ``lum`` [M, H, W] starts the work; ``result(key)`` waits for it and
    returns the M (values, flag) pairs in order. ``workers == 1`` computes in the caller, at ``result``.
    """

    def __init__(self, workers: int, chunk: int = 4, progress: Optional[Progress] = None):
        self.workers, self.chunk, self.progress = workers, chunk, progress
        self._ex = ProcessPoolExecutor(workers) if workers > 1 else None
        self._jobs: dict[str, list] = {}
        self._total = self._done = 0

    def submit(self, key: str, lum: np.ndarray) -> None:
        parts = [lum[k : k + self.chunk] for k in range(0, len(lum), self.chunk)]
        self._total += len(lum)
        self._jobs[key] = [self._ex.submit(_morphology_chunk, list(p)) for p in parts] if self._ex else parts

    def result(self, key: str) -> list[tuple[list[float], str]]:
        out: list[tuple[list[float], str]] = []
        for part in self._jobs.pop(key):
            res = part.result() if self._ex else _morphology_chunk(list(part))
            out += res
            self._done += len(res)
            if self.progress:
                self.progress("morphology", self._done / max(1, self._total))
        return out

    def close(self) -> None:
        if self._ex:
            self._ex.shutdown(cancel_futures=True)

    def __enter__(self) -> "MorphologyPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def galaxy_statistics(x: np.ndarray, morph_idx: Optional[np.ndarray] = None, workers: int = 1,
                      progress: Optional[Progress] = None, bands: Optional[Sequence[str]] = None,
                      morphology: Optional[Sequence[tuple[list[float], str]]] = None) -> StatTable:
    """Galaxy statistics for ``x`` [N, H, W, C] in [0, 1]: :func:`image_statistics` plus

    - non-parametric morphology of the central source with statmorph (photutils segmentation at
      1.5 sigma above the sigma-clipped sky of the luminance image): Gini, M20, concentration,
      asymmetry, smoothness, Sersic index, ellipticity, half-light radius r50 (only for images in
      ``morph_idx``, default all; NaN and a flag where statmorph fails);
    - sky level and sky noise (border frame) of the luminance image;
    - integrated colours of adjacent channels, -2.5 log10(F_a / F_b), within the central 3 x r50.

    ``morphology``: the statmorph results of the images in ``morph_idx`` when already computed (a
    :class:`MorphologyPool`), else they are computed here with ``workers`` processes.
    """
    x = _check_set(x)
    base = image_statistics(x, bands)
    n, h, w, c = x.shape
    lum = x.mean(axis=-1)
    idx = np.arange(n) if morph_idx is None else np.asarray(morph_idx, int)
    morph = np.full((n, len(MORPH_NAMES)), np.nan)
    flags = ["not measured (subset)"] * n
    for i in idx:
        flags[i] = ""
    if morphology is None and len(idx):
        with MorphologyPool(workers if len(idx) > 8 else 1, progress=progress) as pool:
            pool.submit("x", lum[idx])
            morphology = pool.result("x")
    if morphology is not None:
        if len(morphology) != len(idx):
            raise ValueError(f"{len(morphology)} morphology results for {len(idx)} images")
        for i, (vals, flag) in zip(idx, morphology):
            morph[i], flags[i] = vals, flag
    sky = _sky(lum)
    band_sky = np.stack([_sky(x[..., b])[:, 0] for b in range(c)], axis=1)  # [N, C]
    ch = _channel_names(c, bands)
    colour_names = [f"colour mag {ch[a]}-{ch[a + 1]}" for a in range(c - 1)]
    colours = np.full((n, c - 1), np.nan)
    yy, xx = np.mgrid[:h, :w]
    rr = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    for i in range(n):
        r50 = morph[i, -1] if np.isfinite(morph[i, -1]) else h / 8
        ap = rr <= max(2.0, 3 * r50)
        f = np.array([(x[i, :, :, b] - band_sky[i, b])[ap].sum() for b in range(c)])
        for a in range(c - 1):
            if f[a] > 0 and f[a + 1] > 0:
                colours[i, a] = -2.5 * math.log10(f[a] / f[a + 1])
    names = base.names + MORPH_NAMES + ("sky level", "sky noise") + tuple(colour_names)
    return StatTable(names, np.hstack([base.values, morph, sky, colours]), tuple(flags))


@dataclass(frozen=True)
class PhysicalReference:
    """Per-band constants that make physical statistics comparable across sets (taken from the real set).

    ``floor`` [C]: intensities below it are set to it before the log (0.5th percentile of the real
    set's positive values); ``thresholds`` [C, T]: log10 intensity levels of the Minkowski
    functionals and peak counts (quantiles of the real set's pooled log intensity).
    """

    floor: tuple[float, ...]
    thresholds: tuple[tuple[float, ...], ...]
    quantiles: tuple[float, ...] = (0.5, 0.75, 0.9)

    @classmethod
    def from_real(cls, x: np.ndarray, quantiles: Sequence[float] = (0.5, 0.75, 0.9)) -> "PhysicalReference":
        x = _check_set(x, "real maps")
        floors, thr = [], []
        for b in range(x.shape[-1]):
            v = x[..., b].ravel()
            pos = v[v > 0]
            if len(pos) == 0:
                raise ValueError(f"band {b} of the real maps has no positive value: physical statistics need intensities > 0")
            fl = float(np.percentile(pos, 0.5))
            floors.append(fl)
            thr.append(tuple(float(t) for t in np.quantile(np.log10(np.maximum(v, fl)), quantiles)))
        return cls(tuple(floors), tuple(thr), tuple(float(q) for q in quantiles))


def minkowski_functionals(mask: np.ndarray) -> tuple[float, float, float]:
    """(area fraction V0, boundary length per pixel V1, Euler characteristic V2) of a boolean [H, W] mask."""
    from skimage.measure import euler_number, perimeter

    if not mask.any():
        return 0.0, 0.0, 0.0
    n = mask.size
    return float(mask.mean()), float(perimeter(mask, neighborhood=4)) / n, float(euler_number(mask, connectivity=2))


def _peaks(img: np.ndarray, level: float) -> int:
    """Number of local maxima (3x3) above ``level``."""
    from scipy.ndimage import maximum_filter

    return int(((img == maximum_filter(img, size=3, mode="nearest")) & (img > level)).sum())


def physical_statistics(x: np.ndarray, ref: PhysicalReference, bands: Optional[Sequence[str]] = None) -> StatTable:
    """Statistics of physical maps ``x`` [N, H, W, C] in their units (the real set's ``ref``).

    Per band b, on L = log10(max(I, floor_b)): mean, std, skewness, kurtosis of L (the pixel PDF),
    power-spectrum slope and low-k power of L, Minkowski functionals (V0, V1, V2) of L > thr at
    each threshold, peak count above the highest threshold. Across bands: Pearson correlation of
    L_a and L_b (the physical coupling) and the median log flux ratio log10(I_a / I_b) per pixel.
    """
    from scipy.stats import kurtosis, skew

    x = _check_set(x, "maps")
    n, h, w, c = x.shape
    if len(ref.floor) != c:
        raise ValueError(f"the physical reference has {len(ref.floor)} bands but the maps have {c}")
    ch = _channel_names(c, bands)
    names: list[str] = []
    for b in range(c):
        names += [f"{ch[b]} logI mean", f"{ch[b]} logI std", f"{ch[b]} logI skew", f"{ch[b]} logI kurt",
                  f"{ch[b]} PS slope", f"{ch[b]} PS low-k"]
        for q in ref.quantiles:
            names += [f"{ch[b]} V0@q{q:g}", f"{ch[b]} V1@q{q:g}", f"{ch[b]} V2@q{q:g}"]
        names.append(f"{ch[b]} peaks@q{ref.quantiles[-1]:g}")
    pairs = [(a, b) for a in range(c) for b in range(a + 1, c)]
    names += [f"corr logI {ch[a]}-{ch[b]}" for a, b in pairs] + [f"log ratio {ch[a]}/{ch[b]}" for a, b in pairs]
    vals = np.full((n, len(names)), np.nan)
    for i in range(n):
        logs = [np.log10(np.maximum(x[i, :, :, b], ref.floor[b])) for b in range(c)]
        row: list[float] = []
        for b, L in enumerate(logs):
            row += [L.mean(), L.std(), float(skew(L.ravel())), float(kurtosis(L.ravel())), spectrum_slope(L), _band_power(L)[0]]
            for t in ref.thresholds[b]:
                row += list(minkowski_functionals(L > t))
            row.append(_peaks(L, ref.thresholds[b][-1]))
        for a, b in pairs:
            row.append(_corr(logs[a], logs[b]))
        for a, b in pairs:
            row.append(float(np.median(logs[a] - logs[b])))
        vals[i] = row
    return StatTable(tuple(names), vals, ("",) * n)


def detect_kind(unit: Optional[str], channels: int, hint: Optional[str] = None) -> str:
    """The statistics family for a set: physical when it has a unit, galaxy when named so, else image."""
    if unit:
        return "physical"
    if hint and "galax" in hint.lower():
        return "galaxy"
    return "image"


def compute_statistics(x: np.ndarray, kind: str, *, physical_ref: Optional[PhysicalReference] = None,
                       morph_idx: Optional[np.ndarray] = None, workers: int = 1, progress: Optional[Progress] = None,
                       bands: Optional[Sequence[str]] = None) -> StatTable:
    """The statistics of ``kind`` (galaxy | physical | image) for ``x`` [N, H, W, C]."""
    if kind == "galaxy":
        return galaxy_statistics(x, morph_idx, workers, progress, bands)
    if kind == "physical":
        if physical_ref is None:
            raise ValueError("physical statistics need a PhysicalReference taken from the real maps")
        return physical_statistics(x, physical_ref, bands)
    if kind == "image":
        return image_statistics(x, bands)
    raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")


# ------------------------------------------------------------------------------------------------
# baselines
# ------------------------------------------------------------------------------------------------


def crossfade_pairs(n_real: int, n: int, seed: int) -> np.ndarray:
    """n seeded random pairs (i, j), i != j, of real images: [n, 2] int."""
    if n_real < 2:
        raise ValueError("the crossfade baseline needs at least 2 real images")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_real, n)
    j = (i + rng.integers(1, n_real, n)) % n_real
    return np.stack([i, j], 1)


def crossfade(x: np.ndarray, pairs: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The pixel-space baseline: (1 - alpha) x[i] + alpha x[j] for each pair, [len(pairs), H, W, C]."""
    x = np.asarray(x)
    return ((1 - alpha) * x[pairs[:, 0]].astype(np.float64) + alpha * x[pairs[:, 1]]).astype(x.dtype)


# ------------------------------------------------------------------------------------------------
# two-sample comparisons
# ------------------------------------------------------------------------------------------------


def wasserstein_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1-D Wasserstein distance per column of two equal-size samples [n, S] (NaN rows ignored per column).

    For equal sizes W1 = mean |sort(a) - sort(b)|; columns with unequal valid counts are compared on
    their quantile functions at common levels.
    """
    a, b = np.atleast_2d(a.T).T, np.atleast_2d(b.T).T
    out = np.full(a.shape[1], np.nan)
    for s in range(a.shape[1]):
        u, v = np.sort(a[:, s][np.isfinite(a[:, s])]), np.sort(b[:, s][np.isfinite(b[:, s])])
        if len(u) < 2 or len(v) < 2:
            continue
        if len(u) != len(v):
            q = (np.arange(max(len(u), len(v))) + 0.5) / max(len(u), len(v))
            u, v = np.quantile(u, q), np.quantile(v, q)
        out[s] = np.abs(u - v).mean()
    return out


def _scale(ref: np.ndarray) -> np.ndarray:
    sd = np.nanstd(ref, axis=0)
    return np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)


def distances_with_ci(a: np.ndarray, b: np.ndarray, scale: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardized W1 per statistic of sets a [n, S] and b [m, S], with bootstrap 95% CI: (d, lo, hi)."""
    d = wasserstein_equal(a, b) / scale
    boots = np.empty((n_boot, a.shape[1]))
    for k in range(n_boot):
        boots[k] = wasserstein_equal(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) / scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    return d, lo, hi


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a proportion k / n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return c - h, c + h


def c2st(a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0, model: str = "trees") -> dict:
    """Classifier two-sample test of feature sets a [n, F] and b [m, F] (sizes equalized by subsampling).

    ``model``: ``trees`` (histogram gradient boosting, NaN-aware) or ``linear`` (standardized
    logistic regression). Returns accuracy (out-of-fold), its Wilson 95% CI and n.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"C2ST needs at least {folds} items per set, got {len(a)} and {len(b)}")
    a, b = a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]
    xx = np.vstack([a, b]).astype(np.float64)
    y = np.r_[np.zeros(n), np.ones(n)]
    if model == "trees":
        leaf = int(np.clip(2 * n * (folds - 1) / folds // 20, 3, 20))  # small sets: leaves small enough to split at all
        clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=leaf, random_state=seed)
    elif model == "linear":
        xx = np.nan_to_num(xx)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    else:
        raise ValueError(f"model={model!r} is not trees or linear")
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: on a busy 2-core machine the tree learner's thread pool spins 100x slower
    with threadpool_limits(1, user_api="openmp"):
        pred = cross_val_predict(clf, xx, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    k = int((pred == y).sum())
    lo, hi = wilson(k, 2 * n)
    return {"accuracy": k / (2 * n), "ci": [lo, hi], "n_per_set": n}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to a [n, F] and b [m, F] (rows with NaN imputed by column medians)."""
    from scipy.linalg import sqrtm

    a, b = _impute(a), _impute(b)
    mu1, mu2 = a.mean(0), b.mean(0)
    eye = 1e-6 * np.eye(a.shape[1])  # constant statistics make the covariances singular
    s1, s2 = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    covmean = sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _impute(v: np.ndarray) -> np.ndarray:
    v = np.array(v, dtype=np.float64)
    med = np.nanmedian(v, axis=0) if np.isfinite(v).any() else np.zeros(v.shape[1])
    med = np.where(np.isfinite(med), med, 0.0)
    bad = ~np.isfinite(v)
    v[bad] = np.take(med, np.nonzero(bad)[1])
    return v


def thumbnails(x: np.ndarray, side: int = 16) -> np.ndarray:
    """Block-averaged thumbnails [N, side*side*C] of ``x`` [N, H, W, C] (H, W multiples of side, else cropped)."""
    n, h, w, c = x.shape
    fh, fw = max(1, h // side), max(1, w // side)
    x = x[:, : fh * side, : fw * side]
    return x.reshape(n, side, fh, side, fw, c).mean(axis=(2, 4)).reshape(n, -1)


# ------------------------------------------------------------------------------------------------
# memorization and diversity
# ------------------------------------------------------------------------------------------------


def _flat_for_nn(x: np.ndarray, side: int = 32) -> np.ndarray:
    n, h, w, c = x.shape
    return thumbnails(x, side).reshape(n, side, side, c) if h > side else x


def nearest_real(gen: np.ndarray, real: np.ndarray, max_shift: int = 2, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each image of ``gen`` [M, H, W, C]: RMS distance to its nearest ``real`` [N, H, W, C] image and its index.

    The distance is the minimum over integer shifts of up to ``max_shift`` px (at 32x32 working
    resolution, scaled from the input side) of the RMS difference over the overlapping window.
    ``exclude_self`` (gen is real) skips the identical index, giving leave-one-out distances.
    """
    import torch

    side = min(32, gen.shape[1])
    s = max(1, round(max_shift * side / gen.shape[1]))
    g = torch.from_numpy(np.ascontiguousarray(_flat_for_nn(gen, side))).double()
    r = torch.from_numpy(np.ascontiguousarray(_flat_for_nn(real, side))).double()
    best = torch.full((len(g), len(r)), float("inf"), dtype=torch.float64)
    gc = g[:, s : side - s, s : side - s].reshape(len(g), -1)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            rc = r[:, s + dy : side - s + dy, s + dx : side - s + dx].reshape(len(r), -1)
            d2 = (gc ** 2).sum(1)[:, None] + (rc ** 2).sum(1)[None, :] - 2 * gc @ rc.T
            best = torch.minimum(best, d2.clamp_min(0) / gc.shape[1])
    if exclude_self:
        best.fill_diagonal_(float("inf"))
    d, idx = best.min(1)
    return d.sqrt().numpy(), idx.numpy()


def mean_pairwise_distance(x: np.ndarray, max_pairs: int = 20000, seed: int = 0) -> float:
    """Mean RMS distance between distinct images of ``x`` [N, H, W, C] (a random subset of pairs when many)."""
    f = thumbnails(x, min(32, x.shape[1])) if x.shape[1] > 32 else x.reshape(len(x), -1)
    n = len(f)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, max_pairs)
    j = (i + rng.integers(1, n, max_pairs)) % n
    return float(np.sqrt(((f[i] - f[j]) ** 2).mean(1)).mean())


# ------------------------------------------------------------------------------------------------
# the whole comparison
# ------------------------------------------------------------------------------------------------


@dataclass
class SetComparison:
    """One candidate set against the reference half R_B (or R_A against R_B: the floor)."""

    label: str
    n: int  # images in the candidate set
    distance: np.ndarray  # [S] standardized W1
    ci_low: np.ndarray
    ci_high: np.ndarray
    c2st_stats: dict
    c2st_pixels: dict
    frechet: float
    failures: float  # fraction of images with a statistics flag
    memorization: dict = field(default_factory=dict)

    def summary(self, floor: "SetComparison", factor: float) -> dict:
        ok = self.distance <= factor * np.maximum(floor.distance, 1e-12)
        valid = np.isfinite(self.distance)
        return {
            "label": self.label, "n": self.n,
            "c2st_stats": round(self.c2st_stats["accuracy"], 3), "c2st_stats_ci": [round(v, 3) for v in self.c2st_stats["ci"]],
            "c2st_pixels": round(self.c2st_pixels["accuracy"], 3), "c2st_pixels_ci": [round(v, 3) for v in self.c2st_pixels["ci"]],
            "frechet": round(self.frechet, 3),
            "within_floor_frac": round(float(ok[valid].mean()), 3) if valid.any() else math.nan,
            "median_distance": round(float(np.nanmedian(self.distance)), 3),
            "failures": round(self.failures, 3),
            **{k: v for k, v in self.memorization.items() if not isinstance(v, list)},
        }


@dataclass
class QualityReport:
    """Everything :func:`evaluate` measured: statistics tables, comparisons, the floor, settings."""

    kind: str
    names: tuple[str, ...]
    settings: QualitySettings
    n_real: int
    floor: SetComparison
    sets: list[SetComparison]
    tables: dict[str, StatTable]  # "real A", "real B", and each candidate (subsampled) by label
    real_nn: np.ndarray  # [n_real] leave-one-out real-to-real NN distances

    def rows(self) -> list[dict]:
        """One row per statistic: distance of each set with CI, the floor, a verdict per set."""
        f = self.settings.verdict_factor
        out = []
        for s, name in enumerate(self.names):
            row = {"statistic": name, "floor": _r(self.floor.distance[s]), "floor_ci": [_r(self.floor.ci_low[s]), _r(self.floor.ci_high[s])]}
            for c in self.sets:
                row[c.label] = _r(c.distance[s])
                row[f"{c.label} ci"] = [_r(c.ci_low[s]), _r(c.ci_high[s])]
                d, fl = c.distance[s], max(self.floor.distance[s], 1e-12)
                row[f"{c.label} verdict"] = "n/a" if not np.isfinite(d) else ("ok" if d <= f * fl else f"off x{d / fl:.1f}")
            out.append(row)
        return out

    def summary(self) -> list[dict]:
        """One row per set (the floor first): C2ST on statistics and pixels, FD, share within the floor, memorization."""
        return [self.floor.summary(self.floor, self.settings.verdict_factor)] + [c.summary(self.floor, self.settings.verdict_factor) for c in self.sets]

    def worst(self, label: str, k: int = 6) -> list[str]:
        """The k statistics of set ``label`` farthest above their floor."""
        c = next(s for s in self.sets if s.label == label)
        ratio = c.distance / np.maximum(self.floor.distance, 1e-12)
        order = np.argsort(-np.nan_to_num(ratio, nan=-1))
        return [self.names[i] for i in order[:k]]

    def to_json(self) -> dict:
        return {"kind": self.kind, "settings": self.settings.to_json(), "n_real": self.n_real, "summary": self.summary(),
                "statistics": self.rows(), "real_nn_median": _r(float(np.median(self.real_nn)))}


def _r(v: float, digits: int = 4) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else round(float(v), digits)


def _failed(flag: str) -> bool:
    """True for a flag that means a statistic could not be measured (not a warning or the subset note)."""
    return flag not in ("", "not measured (subset)", WARN_FLAG)


def _compare_all(items: Sequence[tuple[str, StatTable, np.ndarray]], ref: StatTable, ref_px: np.ndarray, scale: np.ndarray,
                 st: QualitySettings, rng: np.random.Generator) -> list[SetComparison]:
    """Each (label, statistics, thumbnails) of ``items`` against the reference half: distances with bootstrap CIs
    (drawn from ``rng`` in order), both C2STs (their own seeds; run ``st.workers`` at a time, one thread each)
    and the Frechet distance."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    dists = [distances_with_ci(c.values, ref.values, scale, st.n_boot, rng) for _, c, _ in items]
    feats_r = ref.values / scale
    with threadpool_limits(1), ThreadPoolExecutor(st.workers) as ex:
        tests = [(ex.submit(c2st, c.values / scale, feats_r, st.c2st_folds, st.seed, "trees"),
                  ex.submit(c2st, c_px, ref_px, st.c2st_folds, st.seed, "linear")) for _, c, c_px in items]
        return [SetComparison(label, len(c.flags), *d, t_stats.result(), t_px.result(),
                              frechet_distance(_impute(c.values / scale), _impute(feats_r)),
                              float(np.mean([_failed(f) for f in c.flags])))
                for (label, c, _), d, (t_stats, t_px) in zip(items, dists, tests)]


def pixel_view(x: np.ndarray, phys: Optional[PhysicalReference]) -> np.ndarray:
    """What pixel-level comparisons (C2ST on pixels, memorization, diversity) see: images as they are;
    physical maps as log10(max(I, floor_b)) per band, so a bright band does not outweigh the others."""
    if phys is None:
        return x
    return np.stack([np.log10(np.maximum(x[..., b], phys.floor[b])) for b in range(x.shape[-1])], -1)


def evaluate(real: np.ndarray, candidates: Mapping[str, np.ndarray], kind: str, settings: QualitySettings = QualitySettings(), *,
             with_crossfade: bool = True, bands: Optional[Sequence[str]] = None, progress: Optional[Progress] = None,
             memorization_of: Optional[Sequence[str]] = None) -> QualityReport:
    """Compare each candidate set [M, H, W, C] with the ``real`` set [N, H, W, C] (N >= 10), with the floor.

    ``candidates``: label -> images (generated sets, other methods); the pixel crossfade baseline of
    the real set is added as ``crossfade`` unless ``with_crossfade`` is False. Memorization and
    diversity are measured for the sets in ``memorization_of`` (default: all candidates) against
    the whole real set (the generator's sources).
    """
    st = settings
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    real = _check_set(real, "real images")
    if len(real) < 10:
        raise ValueError(f"the real set has {len(real)} images; the floor needs at least 10 (two halves of 5)")
    sets = {k: _check_set(v, f"set {k!r}") for k, v in candidates.items()}
    for k, v in sets.items():
        if v.shape[1:] != real.shape[1:]:
            raise ValueError(f"set {k!r} has images of shape {v.shape[1:]} but the real images are {real.shape[1:]}: "
                             "compare sets at the same resolution and band count")
    rng = np.random.default_rng(st.seed)
    if with_crossfade:
        sets = {**sets, "crossfade": crossfade(real, crossfade_pairs(len(real), max(len(real), max((len(v) for v in sets.values()), default=0)), st.seed))}
    report = progress or (lambda stage, frac: None)
    perm = rng.permutation(len(real))
    half = len(real) // 2
    ia, ib = perm[:half], perm[half : 2 * half]
    phys = PhysicalReference.from_real(real) if kind == "physical" else None
    # each candidate is subsampled to |R_A| so every comparison is at the same size as the floor
    picked = {k: v[rng.permutation(len(v))[:half]] if len(v) >= half else v for k, v in sets.items()}
    morph_n = min(half, st.morph_max)

    groups = [("real A", real[ia]), ("real B", real[ib]), *picked.items()]
    subs = {label: np.sort(rng.permutation(len(x))[:morph_n]) for label, x in groups}  # statmorph subsets
    view = lambda x: pixel_view(x, phys)  # noqa: E731
    n_steps = len(groups) + 3
    tables: dict[str, StatTable] = {}
    # galaxies: statmorph (most of the time) runs for every set at once in the pool while this process
    # measures memorization and the other statistics; each set's table is finished when its morphology is in
    with MorphologyPool(st.workers if kind == "galaxy" else 1, progress=lambda s, f: report(f"statistics: {s}", f)) as pool:
        if kind == "galaxy":
            for label, x in groups:
                pool.submit(label, _check_set(x).mean(axis=-1)[subs[label]])
        report("memorization", 0.0)
        real_v = view(real)
        real_nn, _ = nearest_real(real_v, real_v, st.max_shift, exclude_self=True)
        med = float(np.median(real_nn))
        real_div = mean_pairwise_distance(real_v, seed=st.seed)
        memo: dict[str, dict] = {}
        for label in picked:
            if memorization_of is not None and label not in memorization_of:
                continue
            cand_v = view(sets[label])
            nn, idx = nearest_real(cand_v, real_v, st.max_shift)
            memo[label] = {"nn_median": _r(float(np.median(nn))), "near_copies": _r(float((nn < st.copy_ratio * med).mean())),
                           "diversity_ratio": _r(mean_pairwise_distance(cand_v, seed=st.seed) / real_div),
                           "nn_distances": nn.tolist(), "nn_index": idx.tolist()}
        px = {label: thumbnails(view(x)) for label, x in groups}
        for k, (label, x) in enumerate(groups):
            report(f"statistics of {label}", (k + 1) / n_steps)
            if kind == "galaxy":
                tables[label] = galaxy_statistics(x, subs[label], bands=bands, morphology=pool.result(label))
            else:
                tables[label] = compute_statistics(x, kind, physical_ref=phys, morph_idx=subs[label], bands=bands)
    ref = tables["real B"]
    scale = _scale(ref.values)
    report("comparisons", (len(groups) + 1) / n_steps)
    floor, *comps = _compare_all([("floor (real A vs B)", tables["real A"], px["real A"]),
                                  *((label, tables[label], px[label]) for label in picked)], ref, px["real B"], scale, st, rng)
    floor.memorization = {"nn_median": _r(med), "near_copies": _r(float((real_nn < st.copy_ratio * med).mean())),
                          "diversity_ratio": 1.0}
    for c in comps:
        if c.label in memo:
            c.memorization = memo[c.label]
    report("done", 1.0)
    return QualityReport(kind, ref.names, st, len(real), floor, comps, tables, real_nn)


# ------------------------------------------------------------------------------------------------
# figures (plotly) and montages (uint8 arrays)
# ------------------------------------------------------------------------------------------------

SET_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def distance_figure(report: QualityReport, top: int = 40):
    """Standardized W1 per statistic (95% CI) for each set, the floor as grey bars; the ``top`` worst first."""
    import plotly.graph_objects as go

    main = report.sets[0]
    ratio = main.distance / np.maximum(report.floor.distance, 1e-12)
    order = np.argsort(-np.nan_to_num(ratio, nan=-1))[:top][::-1]
    names = [report.names[i] for i in order]
    fig = go.Figure()
    fig.add_bar(y=names, x=report.floor.distance[order], orientation="h", name="floor (real A vs B)", marker_color="#bbbbbb")
    for k, c in enumerate(report.sets):
        err = np.nan_to_num(c.ci_high[order] - c.distance[order])
        err_lo = np.nan_to_num(c.distance[order] - c.ci_low[order])
        fig.add_bar(y=names, x=c.distance[order], orientation="h", name=c.label, marker_color=SET_COLOURS[k % len(SET_COLOURS)],
                    error_x=dict(type="data", array=err, arrayminus=err_lo, thickness=1))
    fig.update_layout(barmode="group", height=max(400, 22 * len(names) * (1 + len(report.sets)) // 2),
                      xaxis_title="Wasserstein-1 / std of the real set (lower is closer)", title="Distance to the real set, per statistic",
                      legend=dict(orientation="h"), margin=dict(l=10, r=10, t=60, b=40))
    return fig


def histograms_figure(report: QualityReport, names: Optional[Sequence[str]] = None, cols: int = 3):
    """Overlaid histograms of real (half B) and each set for ``names`` (default: the 6 worst of the first set)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(names or report.worst(report.sets[0].label, 6))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names)
    groups = [("real", report.tables["real B"])] + [(c.label, report.tables[c.label]) for c in report.sets]
    for k, name in enumerate(names):
        s = report.names.index(name)
        for g, (label, tab) in enumerate(groups):
            v = tab.values[:, s]
            fig.add_trace(go.Histogram(x=v[np.isfinite(v)], name=label, legendgroup=label, showlegend=k == 0, opacity=0.55,
                                       histnorm="probability density", nbinsx=25,
                                       marker_color="#444444" if g == 0 else SET_COLOURS[(g - 1) % len(SET_COLOURS)]),
                          row=k // cols + 1, col=k % cols + 1)
    fig.update_layout(barmode="overlay", height=280 * rows, title="Real vs generated: the statistics farthest from the floor")
    return fig


def spectra_figure(sets: Mapping[str, np.ndarray], bands: Optional[Sequence[str]] = None, log_intensity: bool = False):
    """Mean radially averaged power spectrum per band of each set [N, H, W, C] (16-84% band for the first)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    first = next(iter(sets.values()))
    c = first.shape[-1]
    ch = _channel_names(c, bands)
    fig = make_subplots(rows=1, cols=c, subplot_titles=[f"{b}" for b in ch])
    for g, (label, x) in enumerate(sets.items()):
        colour = "#444444" if g == 0 else SET_COLOURS[(g - 1) % len(SET_COLOURS)]
        for b in range(c):
            maps = np.log10(np.maximum(x[..., b], 1e-30)) if log_intensity else x[..., b]
            ps = np.array([power_spectrum(m)[1] for m in maps])
            k = power_spectrum(maps[0])[0]
            lp = np.log10(np.maximum(ps, 1e-30))
            fig.add_scatter(x=k, y=lp.mean(0), name=label, legendgroup=label, showlegend=b == 0, line_color=colour, row=1, col=b + 1)
            if g == 0:
                lo, hi = np.percentile(lp, [16, 84], axis=0)
                fig.add_scatter(x=np.r_[k, k[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", line_width=0, fillcolor="rgba(68,68,68,0.15)",
                                showlegend=False, hoverinfo="skip", row=1, col=b + 1)
        fig.update_xaxes(type="log", title_text="k (cycles per image)", row=1, col=b + 1)
    fig.update_yaxes(title_text="log10 P(k)" + (" of log10 I" if log_intensity else ""), row=1, col=1)
    fig.update_layout(height=360, title="Power spectra (mean; grey band: 16-84% of the real maps)")
    return fig


def memorization_figure(report: QualityReport):
    """Histogram of each set's nearest-real-image distance against the real-to-real ones, with the near-copy line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_histogram(x=report.real_nn, name="real to nearest other real", opacity=0.6, marker_color="#444444", histnorm="probability density")
    for k, c in enumerate(report.sets):
        if "nn_distances" in c.memorization:
            fig.add_histogram(x=c.memorization["nn_distances"], name=f"{c.label} to nearest real", opacity=0.6,
                              marker_color=SET_COLOURS[k % len(SET_COLOURS)], histnorm="probability density")
    thr = report.settings.copy_ratio * float(np.median(report.real_nn))
    fig.add_vline(x=thr, line_dash="dash", annotation_text="near-copy threshold")
    fig.update_layout(barmode="overlay", xaxis_title="RMS distance (min over shifts)", height=360,
                      title="Memorization: distance to the nearest real image")
    return fig


def montage(rows: Sequence[np.ndarray], labels: Optional[Sequence[str]] = None, pad: int = 2, scale: int = 2) -> np.ndarray:
    """Rows of uint8 images [k, H, W, 3] stacked into one uint8 picture (white gaps), upscaled by ``scale``.

    Text labels are drawn at the left of each row when ``labels`` is given.
    """
    from PIL import Image, ImageDraw

    k = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    lab_w = 90 if labels else 0
    out = np.full((len(rows) * (h + pad) + pad, lab_w + k * (w + pad) + pad, 3), 255, np.uint8)
    for r, imgs in enumerate(rows):
        for q, im in enumerate(imgs):
            y, x = pad + r * (h + pad), lab_w + pad + q * (w + pad)
            out[y : y + h, x : x + w] = im
    img = Image.fromarray(out).resize((out.shape[1] * scale, out.shape[0] * scale), Image.NEAREST)
    if labels:
        d = ImageDraw.Draw(img)
        for r, t in enumerate(labels):
            d.text((4, (pad + r * (h + pad) + h // 2) * scale - 6), str(t)[:24], fill="black")
    return np.asarray(img)
