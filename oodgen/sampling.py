"""New latents in the out-of-domain region: interpolation, a fitted Gaussian, a geometric filter.

All functions take latents as tensors of any shape [N, ...] (flattened internally to [N, d]) and
are seeded through an explicit ``torch.Generator`` or integer seed.

- ``lerp(a, b, alpha)``  = (1 - alpha) a + alpha b
- ``slerp(a, b, alpha)`` as in the authors' code: the direction moves along the great circle
  between a/|a| and b/|b|, the norm is interpolated linearly, (1 - alpha)|a| + alpha|b|.
  For equal norms this is the classic slerp; it keeps samples on the thin Gaussian annulus,
  which lerp leaves (lerp at alpha = 0.5 shrinks the norm by about 1/sqrt(2)).
- ``interpolate(a, b, alpha, method, centre)``: with a ``centre`` c (oodgen's default: the mean of
  the inverted OOD latents, the centre mu of the paper's Gaussian N(mu, sigma^2 I)), slerp runs about
  c: c + slerp(a - c, b - c, alpha). About the origin (the authors' code) slerp scales the part the
  two latents share, mu and the common image content, by 1/cos(theta/2) (about 1.4 for orthogonal
  latents), which decodes to burned cores and a black sky; about c only the independent parts are
  rotated, so the draw keeps the cloud's distribution. lerp is the same about any centre.
- ``GaussianFit``: per-dimension mean, one scalar variance (default) or per-dimension variances
  (maximum likelihood, paper Lemma D.4).
- ``geometric_filter``: the authors' acceptance test: keep a candidate only when its mean distance
  and mean origin angle to the inverted set match those within the set, within a tolerance.

After decoding (:func:`finish`, oodgen's additions, not the paper's): the noise model (``match_noise``,
``match_sky``) puts back the sources' pixel noise, and the intensity calibration (``match_quantiles``)
gives each channel of a draw from sources i and j at alpha the intensity distribution whose quantile
function is (1 - alpha) Q_i + alpha Q_j (the 1-D Wasserstein geodesic between the two sources'
distributions; a Gaussian draw takes the barycentre of all sources), keeping the decoder's pixel ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .config import GenerationSettings


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Linear interpolation between latents of equal shape (any shape)."""
    return a + (b - a) * alpha


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation of direction with a linearly interpolated norm.

    ``a``, ``b``: [..., C, H, W] or [N, C, H, W] batches (the angle is per leading item when
    ``a.ndim == 4``, else over the whole tensor). Returns the same shape.
    """
    batched = a.ndim == 4
    fa, fb = (_flat(a), _flat(b)) if batched else (a.reshape(1, -1), b.reshape(1, -1))
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    ua, ub = fa / na.clamp_min(eps), fb / nb.clamp_min(eps)
    cos = (ua * ub).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6  # (anti)parallel directions: fall back to lerp of the directions
    safe_sin = torch.where(small, torch.ones_like(sin), sin)
    w_a = torch.where(small, torch.full_like(sin, 1 - alpha), torch.sin((1 - alpha) * theta) / safe_sin)
    w_b = torch.where(small, torch.full_like(sin, alpha), torch.sin(alpha * theta) / safe_sin)
    direction = w_a * ua + w_b * ub
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(eps)
    out = direction * ((1 - alpha) * na + alpha * nb)
    return out.reshape(a.shape)


def interpolate(a: torch.Tensor, b: torch.Tensor, alpha: float, method: str = "slerp", centre: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``lerp`` or ``slerp`` by name; slerp about ``centre`` (broadcastable to ``a``, e.g. [C, H, W]) when given, else the origin."""
    if method == "lerp":
        return lerp(a, b, alpha)
    if method == "slerp":
        if centre is None:
            return slerp(a, b, alpha)
        return centre + slerp(a - centre, b - centre, alpha)
    raise ValueError(f"interpolation method {method!r} is not lerp or slerp")


def interpolation_centre(latents: torch.Tensor, centre: str) -> Optional[torch.Tensor]:
    """The point slerp turns about for ``GenerationSettings.centre``: the mean [C, H, W] of ``latents`` [N, C, H, W]
    for "cloud", None (the origin) for "origin"."""
    if centre == "origin":
        return None
    if centre == "cloud":
        return latents.double().mean(0).float()
    raise ValueError(f"centre={centre!r} is not cloud or origin")


def interpolation_strip(a: torch.Tensor, b: torch.Tensor, k: int, method: str = "slerp", centre: Optional[torch.Tensor] = None) -> torch.Tensor:
    """k latents from ``a`` to ``b`` (both [C, H, W]) at alpha = linspace(0, 1, k): [k, C, H, W] (slerp about ``centre``)."""
    if k < 2:
        raise ValueError(f"an interpolation strip needs k >= 2 points, got {k}")
    return torch.stack([interpolate(a, b, float(al), method, centre) for al in torch.linspace(0, 1, k)])


@dataclass(frozen=True)
class GaussianFit:
    """Maximum-likelihood Gaussian of a latent set: per-dimension mean, scalar or per-dimension variance."""

    mean: torch.Tensor  # [C, H, W]
    var: torch.Tensor  # [] (scalar) or [C, H, W]

    @classmethod
    def fit(cls, latents: torch.Tensor, per_dim: bool = False) -> "GaussianFit":
        """Fit to ``latents`` [N, C, H, W] (N >= 2)."""
        if latents.shape[0] < 2:
            raise ValueError("fitting a Gaussian needs at least 2 latents")
        x = latents.double()
        mean = x.mean(0)
        var = x.var(0, unbiased=True) if per_dim else ((x - mean) ** 2).sum(0).mean() / (x.shape[0] - 1)
        return cls(mean.float(), var.float())

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n draws [n, C, H, W]."""
        z = torch.randn((n, *self.mean.shape), generator=generator)
        return self.mean + z * self.var.sqrt()


def _set_geometry(latents: torch.Tensor) -> tuple[float, float]:
    """(mean pairwise distance, mean origin angle in radians) of a set [N, ...] via its Gram matrix."""
    x = _flat(latents).double()
    g = x @ x.T
    sq = g.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    cos = g / (sq.sqrt()[:, None] * sq.sqrt()[None, :])
    iu = torch.triu_indices(len(x), len(x), 1)
    return float(d2[iu[0], iu[1]].sqrt().mean()), float(torch.arccos(cos[iu[0], iu[1]].clamp(-1, 1)).mean())


def geometric_filter(
    candidates: torch.Tensor, reference: torch.Tensor, tolerance: float = 0.05, n_ref: int = 16, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Boolean mask [M] of candidates [M, ...] whose geometry matches the reference set [N, ...].

    A candidate passes when its mean distance to ``n_ref`` random reference latents is within
    ``tolerance`` (relative) of the set's mean pair distance, and its mean origin angle to them is
    within ``tolerance`` (relative) of the set's mean origin angle.
    """
    if reference.shape[0] < 3:
        raise ValueError("the geometric filter needs at least 3 reference latents")
    dist_ref, ang_ref = _set_geometry(reference)
    idx = torch.randperm(reference.shape[0], generator=generator)[: min(n_ref, reference.shape[0])]
    r = _flat(reference[idx]).double()
    c = _flat(candidates).double()
    dist = torch.cdist(c, r).mean(1)
    cos = (c @ r.T) / (c.norm(dim=1, keepdim=True) * r.norm(dim=1)[None, :])
    ang = torch.arccos(cos.clamp(-1, 1)).mean(1)
    return ((dist - dist_ref).abs() <= tolerance * dist_ref) & ((ang - ang_ref).abs() <= tolerance * ang_ref)


@dataclass(frozen=True)
class Draw:
    """Provenance of one new latent."""

    method: str  # slerp | lerp | gaussian
    i: int = -1  # first source latent (interpolation), -1 for gaussian
    j: int = -1  # second source latent
    alpha: float = math.nan  # interpolation weight


def random_pairs(n_latents: int, n: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """n random ordered pairs (i, j), i != j, from range(n_latents)."""
    if n_latents < 2:
        raise ValueError("interpolation needs at least 2 inverted latents")
    i = torch.randint(0, n_latents, (n,), generator=generator)
    j = (i + torch.randint(1, n_latents, (n,), generator=generator)) % n_latents
    return list(zip(i.tolist(), j.tolist()))


def nearest_pairs(latents: torch.Tensor, n: int, k: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """n pairs (i, j): i uniformly at random, j uniformly among the k latents nearest to i (Euclidean, j != i).

    Nearby latents decode to similar images (paper, App. E.2.3), so their interpolations stay one
    object instead of two superposed ones. ``latents`` [N, ...], N >= 2; k is capped at N - 1.
    """
    n_latents = latents.shape[0]
    if n_latents < 2:
        raise ValueError("interpolation needs at least 2 inverted latents")
    k = min(k, n_latents - 1)
    d = torch.cdist(_flat(latents).double(), _flat(latents).double())
    d.fill_diagonal_(float("inf"))
    nn = d.topk(k, dim=1, largest=False).indices  # [N, k]
    i = torch.randint(0, n_latents, (n,), generator=generator)
    j = nn[i, torch.randint(0, k, (n,), generator=generator)]
    return list(zip(i.tolist(), j.tolist()))


def kmeans(latents: torch.Tensor, k: int, generator: torch.Generator, iters: int = 25) -> torch.Tensor:
    """Cluster labels [N] of ``latents`` [N, ...] by Lloyd's k-means (k-means++ seeding, seeded)."""
    x = _flat(latents).double()
    n = len(x)
    k = min(k, n)
    centres = [x[torch.randint(0, n, (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=generator)].squeeze(0))
    c = torch.stack(centres)
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = torch.cdist(x, c).argmin(1)
        new = torch.stack([x[labels == q].mean(0) if (labels == q).any() else c[q] for q in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return labels


def _clustered_gaussian(latents: torch.Tensor, m: int, settings: GenerationSettings, g: torch.Generator) -> torch.Tensor:
    """m draws from one Gaussian per k-means cluster (clusters of fewer than 2 latents merge into the nearest draw pool)."""
    labels = kmeans(latents, settings.clusters, g)
    fits = [(int((labels == q).sum()), GaussianFit.fit(latents[labels == q], settings.per_dim_variance))
            for q in labels.unique().tolist() if int((labels == q).sum()) >= 2]
    if not fits:
        raise ValueError(f"no cluster of {settings.clusters} has 2 latents or more; lower clusters")
    weights = torch.tensor([c for c, _ in fits], dtype=torch.double)
    which = torch.multinomial(weights / weights.sum(), m, replacement=True, generator=g)
    out = torch.empty((m, *latents.shape[1:]))
    for q, (_, fit) in enumerate(fits):
        sel = (which == q).nonzero().flatten()
        if len(sel):
            out[sel] = fit.sample(len(sel), g)
    return out


def sample_latents(latents: torch.Tensor, n: int, settings: GenerationSettings, max_tries: int = 50) -> tuple[torch.Tensor, list[Draw]]:
    """n new latents [n, C, H, W] drawn from the OOD region spanned by ``latents`` [N, C, H, W].

    Interpolation picks seeded pairs (``settings.pairing``) at ``settings.alpha``, slerp turning about
    ``settings.centre`` (:func:`interpolation_centre`); ``gaussian`` draws from the
    fitted Gaussian. With ``settings.geometric_filter``, candidates are drawn in rounds until n
    pass (at most ``max_tries`` rounds, else ValueError saying how many passed).
    """
    g = torch.Generator().manual_seed(settings.seed)
    gaussian = settings.method == "gaussian"
    centre = None if gaussian else interpolation_centre(latents, settings.centre)
    fit = GaussianFit.fit(latents, settings.per_dim_variance) if gaussian and settings.clusters == 1 else None
    kept: list[torch.Tensor] = []
    draws: list[Draw] = []
    for _ in range(max_tries if settings.geometric_filter else 1):
        m = n - len(draws)
        if gaussian:
            cand = fit.sample(m, g) if fit is not None else _clustered_gaussian(latents, m, settings, g)
            cand_draws = [Draw("gaussian")] * m
        else:
            if settings.pairing == "nearest":
                pairs = nearest_pairs(latents, m, settings.neighbours, g)
            else:
                pairs = random_pairs(latents.shape[0], m, g)
            ii = torch.tensor([p[0] for p in pairs])
            jj = torch.tensor([p[1] for p in pairs])
            if settings.alpha_spread > 0:
                alphas = (settings.alpha + (torch.rand(m, generator=g, dtype=torch.double) * 2 - 1) * settings.alpha_spread).clamp(0, 1).tolist()
            else:
                alphas = [settings.alpha] * m
            cand = torch.stack([interpolate(latents[a], latents[b], al, settings.method, centre) for a, b, al in zip(ii, jj, alphas)]) if m else latents[:0]
            cand_draws = [Draw(settings.method, i, j, al) for (i, j), al in zip(pairs, alphas)]
        if settings.geometric_filter:
            mask = geometric_filter(cand, latents, settings.filter_tolerance, generator=g)
            cand = cand[mask]
            cand_draws = [d for d, ok in zip(cand_draws, mask.tolist()) if ok]
        kept.append(cand)
        draws.extend(cand_draws)
        if len(draws) >= n:
            break
    if len(draws) < n:
        raise ValueError(
            f"the geometric filter accepted only {len(draws)} of the {n} latents asked for after {max_tries} rounds; "
            f"raise filter_tolerance (now {settings.filter_tolerance}) or switch the filter off"
        )
    return torch.cat(kept)[:n], draws[:n]


def pixel_noise(x: torch.Tensor) -> torch.Tensor:
    """Robust per-image, per-channel pixel-noise sigma of images ``x`` [N, C, H, W]: [N, C].

    sigma = 1.4826 MAD(d) / sqrt(2) over the horizontal and vertical first differences d of the
    image: white noise of sigma s gives s; smooth structure (galaxy profiles, dust filaments)
    barely moves the median, so on astronomical images it measures the sky / instrument noise.
    """
    if x.ndim != 4:
        raise ValueError(f"pixel_noise needs images [N, C, H, W], got shape {tuple(x.shape)}")
    x = x.double()
    d = torch.cat([(x[..., :, 1:] - x[..., :, :-1]).flatten(2), (x[..., 1:, :] - x[..., :-1, :]).flatten(2)], dim=2)
    mad = (d - d.median(dim=2, keepdim=True).values).abs().median(dim=2).values
    return (1.4826 * mad / math.sqrt(2)).float()


def border_level(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel median of the outer frame (1/8 of the side, at least 2 px) of ``x`` [N, C, H, W]: [N, C].

    On a galaxy cutout the frame is sky, so this is the sky (background) level."""
    if x.ndim != 4:
        raise ValueError(f"border_level needs images [N, C, H, W], got shape {tuple(x.shape)}")
    b = max(2, min(x.shape[-2:]) // 8)
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[b:-b, b:-b] = False
    return x[..., mask].median(dim=-1).values


def match_sky(images: torch.Tensor, level: torch.Tensor, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image's channels so its :func:`border_level` equals ``level`` [C], then :func:`match_noise` to ``noise`` [C].

    The survey model of a galaxy cutout: sky pedestal and sky noise are properties of the
    instrument, not of the galaxy, and are put back after decoding (a decoder of natural images
    renders dark regions black and smooth)."""
    shifted = images + (level[None, :] - border_level(images))[:, :, None, None]
    return match_noise(shifted, noise, generator)


def match_noise(images: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add white Gaussian noise to ``images`` [N, C, H, W] so each image's :func:`pixel_noise` reaches ``target`` [C].

    Per image and channel the added sigma is sqrt(max(target^2 - own^2, 0)): an image already as
    noisy as the target is left alone. The generator seeds the noise (same seed, same images).
    """
    own = pixel_noise(images)  # [N, C]
    add = (target.double()[None, :] ** 2 - own.double() ** 2).clamp_min(0).sqrt().float()
    noise = torch.randn(images.shape, generator=generator)
    return images + noise * add[:, :, None, None]


QUANTILE_LEVELS = 65  # levels of each source's quantile function as oodgen records it (quantile_probs: cosine-spaced, dense in the tails)


def quantile_probs(levels: int) -> torch.Tensor:
    """The probabilities [levels] at which oodgen records quantile functions: (1 - cos(pi k / (levels - 1))) / 2,
    k = 0 .. levels - 1, from 0 (the minimum) to 1 (the maximum), dense in both tails (at 65 levels the
    two outermost steps are 6e-4 of the pixels, about 2.5 of a 64x64 image: a galaxy's core and the
    sky's lower tail keep their shape), float64."""
    if levels < 2:
        raise ValueError(f"levels={levels} must be at least 2")
    k = torch.arange(levels, dtype=torch.float64)
    return (1 - torch.cos(math.pi * k / (levels - 1))) / 2


def quantile_functions(x: torch.Tensor, levels: int = QUANTILE_LEVELS) -> torch.Tensor:
    """Per-image, per-channel quantile functions of ``x`` [N, C, H, W] at :func:`quantile_probs` (``levels``):
    [N, C, levels], float32."""
    if x.ndim != 4:
        raise ValueError(f"quantile_functions needs images [N, C, H, W], got shape {tuple(x.shape)}")
    p = quantile_probs(levels)
    return torch.quantile(x.flatten(2).double(), p, dim=2).permute(1, 2, 0).float().contiguous()


def match_quantiles(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Histogram specification: each channel of each image in ``images`` [N, C, H, W] gets the intensity
    distribution whose quantile function is ``target`` [N, C, Q] (at :func:`quantile_probs` (Q)), keeping
    its pixels' rank order (so the spatial structure stays the decoder's).

    The pixel of rank r among P gets the target quantile at probability (r + 0.5) / P, linearly
    interpolated between levels; ties are broken by position. A monotone map per channel, so images in
    physical units through a per-channel monotone stretch get the same result."""
    if images.ndim != 4 or target.ndim != 3 or target.shape[:2] != images.shape[:2]:
        raise ValueError(f"match_quantiles needs images [N, C, H, W] and target [N, C, Q], got {tuple(images.shape)} and {tuple(target.shape)}")
    n, c, h, w = images.shape
    flat = images.flatten(2)
    p_count, q = flat.shape[-1], target.shape[-1]
    probs = quantile_probs(q)
    u = (torch.arange(p_count, dtype=torch.float64) + 0.5) / p_count  # probability of each rank
    lo = (torch.searchsorted(probs, u, right=True) - 1).clamp(0, q - 2)
    frac = ((u - probs[lo]) / (probs[lo + 1] - probs[lo])).clamp(0, 1).float()
    tq = target.float()
    values = tq[..., lo] * (1 - frac) + tq[..., lo + 1] * frac  # [N, C, P] value of each rank
    order = flat.argsort(dim=-1, stable=True)
    out = torch.empty_like(flat, dtype=torch.float32)
    out.scatter_(-1, order, values)
    return out.view(n, c, h, w).to(images.dtype)


def draw_quantiles(draws: "list[Draw]", quantiles: torch.Tensor) -> torch.Tensor:
    """The target quantile functions [n, C, Q] of ``draws`` from the sources' ``quantiles`` [N, C, Q]:
    (1 - alpha) Q_i + alpha Q_j for an interpolation, the mean over all sources for a Gaussian draw."""
    q = quantiles.float()
    mean = q.mean(dim=0)
    out = [mean if d.i < 0 else (1 - d.alpha) * q[d.i] + d.alpha * q[d.j] for d in draws]
    return torch.stack(out) if out else q[:0]


@dataclass(frozen=True)
class SourceProfile:
    """What the post-processing of :func:`finish` knows of the source images (model units)."""

    noise: Optional[torch.Tensor] = None  # [C] median per-channel pixel noise (pixel_noise)
    sky: Optional[torch.Tensor] = None  # [C] median per-channel sky level (border_level)
    quantiles: Optional[torch.Tensor] = None  # [N, C, Q] each source's per-channel quantile function, rows as the latents

    @classmethod
    def from_images(cls, x: torch.Tensor, levels: int = QUANTILE_LEVELS) -> "SourceProfile":
        """The profile of source images ``x`` [N, C, H, W] in model units."""
        noise, sky = noise_targets(x)
        return cls(noise, sky, quantile_functions(x, levels))

    def subset(self, rows: "torch.Tensor | list[int]") -> "SourceProfile":
        """The profile of the sources ``rows`` (for a subset of the latents); the medians are kept."""
        q = None if self.quantiles is None else self.quantiles[torch.as_tensor(rows, dtype=torch.long)]
        return SourceProfile(self.noise, self.sky, q)


def finish(images: torch.Tensor, draws: "list[Draw]", settings: GenerationSettings,
           sources: Optional[SourceProfile]) -> tuple[torch.Tensor, list[str]]:
    """Decoded images [n, C, H, W] in [-1, 1] after the noise model and the intensity calibration of ``settings``
    (the module docstring), clamped to [-1, 1]; and the warnings for steps that could not run (the sources'
    profile lacks what they need: a latent file made before oodgen recorded it). The noise is seeded by
    ``settings.seed`` (same settings, same images)."""
    src = sources or SourceProfile()
    generator = torch.Generator().manual_seed(settings.seed * 7_919 + 17)
    warnings: list[str] = []
    if settings.noise != "none":
        if src.noise is None or (settings.noise == "sky" and src.sky is None):
            warnings.append(f"noise={settings.noise}: the sources' pixel noise/sky level is not recorded (re-invert to record it); nothing added")
        elif settings.noise == "match":
            images = match_noise(images, src.noise, generator)
        else:
            images = match_sky(images, src.sky, src.noise, generator)
    if settings.calibration == "quantiles":
        if src.quantiles is None:
            warnings.append("calibration=quantiles: the sources' intensity distributions are not recorded (re-invert to record them); not calibrated")
        else:
            images = match_quantiles(images, draw_quantiles(draws, src.quantiles).to(images.device))
    return images.clamp(-1, 1), warnings


def noise_targets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel noise [C], sky level [C]) of a set of source images ``x`` [N, C, H, W]: the per-channel medians of
    :func:`pixel_noise` and :func:`border_level`, the targets of :func:`match_noise` / :func:`match_sky`."""
    return pixel_noise(x).median(dim=0).values, border_level(x).median(dim=0).values

