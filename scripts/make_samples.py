"""Make oodgen's bundled sample sets under ``assets/samples/`` (offline, seeded, deterministic).

    python scripts/make_samples.py [--out assets/samples] [--seed 0]

It writes three folders:

``galaxy/``
    70 GalSim galaxies (14 each of ``elliptical``, ``disk``, ``edge_on``, ``clumpy``, ``merger``)
    rendered in g, r, i at a DECaLS-like 0.262"/px, convolved with a Moffat PSF, with sky noise and
    faint background sources, combined into 64x64 RGB PNGs with ``make_lupton_rgb``; plus 30 real
    galaxy cutouts from the Hubble (eXtreme) Deep Field image bundled with scikit-image, resized to
    64x64. ``labels.csv`` (file, class, source, seed) and a README describe them.
``radiation/``
    64 synthetic three-band dust-emission maps (4.5, 24, 250 micron; MJy/sr; float32
    ``[3, 64, 64]`` ``.npy``): a lognormal power-law column density with feedback bubbles carved
    in, young stars heating the dust, a stellar point-source background, per-band beams and noise.
    ``manifest.json`` lists the bands and each map's parameters; ``preview.png`` shows 16 of them
    as RGB = (250, 24, 4.5) micron.
``faces/``, ``faces_train/``
    The 12 LFW faces held out from training of the bundled model, and its 88 training faces (32x32 RGB PNGs).

Every random item is generated from its own integer seed (recorded in labels.csv / manifest.json),
derived from ``--seed``, so any single item can be regenerated with ``render_galaxy`` / ``dust_map``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

log = logging.getLogger("make_samples")

STAMP = 64  # output image side, pixels

# ----------------------------------------------------------------------------------------------
# seeds
# ----------------------------------------------------------------------------------------------

_KIND_OFFSET = {"galaxy": 10_000, "dust": 20_000}


def item_seed(base_seed: int, kind: str, index: int) -> int:
    """Positive per-item seed (GalSim treats seed 0 as 'seed from the clock', so never 0)."""
    return base_seed * 100_000 + _KIND_OFFSET[kind] + index


# ----------------------------------------------------------------------------------------------
# 1. galaxies (GalSim)
# ----------------------------------------------------------------------------------------------

GALAXY_CLASSES = ("elliptical", "disk", "edge_on", "clumpy", "merger")
PIXEL_SCALE = 0.262  # arcsec / pixel, as in DECaLS / Legacy Survey cutouts
BANDS = ("g", "r", "i")
SKY_SIGMA = np.array([0.9, 1.0, 1.3])  # per-band sky noise per pixel, flux units (r-band sigma = 1)
# per-band flux ratios relative to r (before per-galaxy jitter): old stars red, young stars blue
COLOUR = {
    "bulge": np.array([0.40, 1.0, 1.40]),
    "disk": np.array([0.75, 1.0, 1.10]),
    "arms": np.array([1.10, 1.0, 0.85]),
    "knots": np.array([1.25, 1.0, 0.88]),
    "tail": np.array([0.85, 1.0, 1.00]),
}
LUPTON_STRETCH = 10.0  # in units of the r-band sky sigma
LUPTON_Q = 9.0
_GSP = None  # GalSim GSParams, created lazily (import galsim only when needed)


def _gsparams():
    global _GSP
    if _GSP is None:
        import galsim

        _GSP = galsim.GSParams(maximum_fft_size=8192, folding_threshold=1e-2)
    return _GSP


def _jitter(colour: np.ndarray, rng: np.random.Generator, scale: float = 0.08) -> np.ndarray:
    return colour * np.exp(rng.normal(0.0, scale, size=3))


def inclined_q(inclination_deg: float, q0: float = 0.15) -> float:
    """Projected axis ratio of a thick disk (intrinsic thickness q0) at the given inclination."""
    c = math.cos(math.radians(inclination_deg))
    return math.sqrt(c * c + q0 * q0 * (1.0 - c * c))


def spiral_arms(hlr: float, flux: float, rng: np.random.Generator, n_arms: int = 2):
    """Face-on logarithmic spiral arms built from small Gaussian clumps (flux follows an exp disk)."""
    import galsim

    pitch = math.radians(rng.uniform(12.0, 28.0))
    b = math.tan(pitch)
    r0 = rng.uniform(0.35, 0.6) * hlr
    phase0 = rng.uniform(0.0, 2.0 * math.pi)
    theta = np.linspace(0.0, rng.uniform(1.4, 2.2) * math.pi, 32)
    r = r0 * np.exp(b * theta)
    weights = np.exp(-r / (hlr / 1.678))
    weights /= weights.sum() * n_arms
    clumps = []
    for arm in range(n_arms):
        phase = phase0 + 2.0 * math.pi * arm / n_arms
        for ri, ti, wi in zip(r, theta, weights):
            sigma = 0.12 * hlr * (0.6 + 0.4 * ri / r.max()) * rng.uniform(0.8, 1.2)
            x, y = ri * math.cos(ti + phase), ri * math.sin(ti + phase)
            clumps.append(galsim.Gaussian(sigma=sigma, flux=flux * wi * rng.uniform(0.6, 1.4)).shift(x, y))
    return galsim.Sum(clumps)


def _components(cls: str, rng: np.random.Generator, grng) -> list:
    """(galsim profile in arcsec, per-band colour) pairs for one galaxy of class ``cls``, centred."""
    import galsim

    gsp = _gsparams()
    flux = 10 ** rng.uniform(3.6, 4.6)  # total r-band flux in sky-sigma units
    pa = rng.uniform(0.0, 180.0) * galsim.degrees
    comps = []
    if cls == "elliptical":
        hlr = rng.uniform(1.0, 3.0)
        prof = galsim.Sersic(n=rng.uniform(3.2, 4.8), half_light_radius=hlr, flux=flux, trunc=8 * hlr, gsparams=gsp)
        prof = prof.shear(q=rng.uniform(0.55, 1.0), beta=pa)
        comps.append((prof, _jitter(COLOUR["bulge"], rng, 0.05)))
    elif cls == "disk":
        hlr = rng.uniform(1.3, 2.8)
        bf = rng.uniform(0.08, 0.35)
        q = inclined_q(rng.uniform(0.0, 65.0))
        af = rng.uniform(0.35, 0.6)  # fraction of the disk light in the arms
        disk = galsim.Exponential(half_light_radius=hlr, flux=flux * (1 - bf) * (1 - af), gsparams=gsp)
        arms = spiral_arms(hlr, flux * (1 - bf) * af, rng, n_arms=int(rng.choice([2, 2, 3])))
        bulge = galsim.Sersic(n=rng.uniform(2.0, 4.0), half_light_radius=rng.uniform(0.25, 0.6), flux=flux * bf, trunc=5.0, gsparams=gsp)
        comps.append((disk.shear(q=q, beta=pa), _jitter(COLOUR["disk"], rng)))
        comps.append((arms.shear(q=q, beta=pa), _jitter(COLOUR["arms"], rng)))
        comps.append((bulge.shear(q=min(1.0, q * 1.6), beta=pa), _jitter(COLOUR["bulge"], rng, 0.05)))
    elif cls == "edge_on":
        hlr = rng.uniform(1.0, 2.1)
        bf = rng.choice([0.0, rng.uniform(0.1, 0.35)])
        disk = galsim.InclinedExponential(
            inclination=rng.uniform(84.0, 90.0) * galsim.degrees,
            half_light_radius=hlr,
            scale_h_over_r=rng.uniform(0.1, 0.22),
            flux=flux * (1 - bf),
            gsparams=gsp,
        ).rotate(pa)
        comps.append((disk, _jitter(COLOUR["disk"], rng)))
        if bf > 0:
            bulge = galsim.Sersic(n=rng.uniform(1.5, 4.0), half_light_radius=rng.uniform(0.35, 0.8), flux=flux * bf, trunc=6.0, gsparams=gsp)
            comps.append((bulge.shear(q=rng.uniform(0.55, 0.85), beta=pa), _jitter(COLOUR["bulge"], rng, 0.05)))
    elif cls == "clumpy":
        hlr = rng.uniform(1.3, 3.0)
        kf = rng.uniform(0.25, 0.5)
        q = inclined_q(rng.uniform(0.0, 60.0))
        disk = galsim.Exponential(half_light_radius=hlr, flux=flux * (1 - kf), gsparams=gsp)
        # a few giant star-forming clumps plus many fainter ones, with a small physical size
        n_big, n_small = int(rng.integers(3, 9)), int(rng.integers(10, 35))
        big_share = rng.uniform(0.45, 0.7)
        knots = galsim.Sum(
            galsim.RandomKnots(n_big, half_light_radius=hlr * rng.uniform(0.7, 1.1), flux=flux * kf * big_share, rng=grng, gsparams=gsp),
            galsim.RandomKnots(n_small, half_light_radius=hlr * rng.uniform(0.9, 1.3), flux=flux * kf * (1 - big_share), rng=grng, gsparams=gsp),
        )
        knots = galsim.Convolve(knots, galsim.Gaussian(sigma=rng.uniform(0.12, 0.25)))
        dx, dy = rng.normal(0.0, 0.15 * hlr, size=2)  # star formation off-centre: lopsided look
        comps.append((disk.shear(q=q, beta=pa), _jitter(COLOUR["disk"] * np.array([1.1, 1.0, 0.92]), rng)))
        comps.append((knots.shear(q=q, beta=pa).shift(dx, dy), _jitter(COLOUR["knots"], rng)))
    elif cls == "merger":
        sep = rng.uniform(1.6, 3.6)  # arcsec between nuclei
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ratio = rng.uniform(0.35, 1.0)  # flux ratio secondary / primary
        # nuclei placed so that the light-weighted centre is at the origin
        offsets = (-ratio / (1 + ratio), 1.0 / (1 + ratio))
        for f, share, off in zip((1.0 / (1 + ratio), ratio / (1 + ratio)), (1.0, ratio), offsets):
            x, y = off * sep * math.cos(angle), off * sep * math.sin(angle)
            hlr = rng.uniform(0.9, 2.0) * math.sqrt(share)
            bf = rng.uniform(0.2, 0.7)
            g = rng.uniform(0.15, 0.5)  # tidal distortion
            beta = rng.uniform(0.0, 180.0) * galsim.degrees
            disk = galsim.Exponential(half_light_radius=hlr, flux=flux * f * (1 - bf), gsparams=gsp).shear(g=g, beta=beta)
            bulge = galsim.Sersic(n=3.0, half_light_radius=0.3 * hlr, flux=flux * f * bf, trunc=4 * hlr, gsparams=gsp).shear(g=0.5 * g, beta=beta)
            comps.append((disk.shift(x, y), _jitter(COLOUR["disk"], rng)))
            comps.append((bulge.shift(x, y), _jitter(COLOUR["bulge"], rng, 0.05)))
        # tidal tails: faint arcs of clumps leaving the pair in opposite directions
        for sign in (-1.0, 1.0):
            t = np.linspace(0.0, 1.0, 24)
            length = rng.uniform(3.0, 6.0)
            curl = rng.uniform(0.6, 1.4) * sign
            phi = angle + (0.0 if sign > 0 else math.pi) + curl * t
            rr = 0.5 * sep + length * t
            tail_flux = flux * rng.uniform(0.1, 0.22)
            clumps = [
                galsim.Gaussian(sigma=0.3 + 0.3 * ti, flux=tail_flux / len(t) * (1.3 - ti) * rng.uniform(0.6, 1.4)).shift(ri * math.cos(p), ri * math.sin(p))
                for ti, ri, p in zip(t, rr, phi)
            ]
            comps.append((galsim.Sum(clumps), _jitter(COLOUR["tail"], rng)))
    else:
        raise ValueError(f"unknown galaxy class {cls!r}")
    return comps


def _background_sources(rng: np.random.Generator) -> list:
    """A few faint, small background galaxies and field stars anywhere in the stamp."""
    import galsim

    half = STAMP * PIXEL_SCALE / 2
    comps = []
    for _ in range(rng.poisson(2.5)):
        x, y = rng.uniform(-half, half, size=2)
        prof = galsim.Exponential(half_light_radius=rng.uniform(0.25, 0.8), flux=10 ** rng.uniform(1.3, 2.6))
        prof = prof.shear(g=rng.uniform(0.0, 0.5), beta=rng.uniform(0, 180) * galsim.degrees).shift(x, y)
        colour = np.array([rng.uniform(0.3, 1.2), 1.0, rng.uniform(0.8, 1.8)])
        comps.append((prof, colour))
    for _ in range(rng.poisson(0.7)):
        x, y = rng.uniform(-half, half, size=2)
        prof = galsim.DeltaFunction(flux=10 ** rng.uniform(1.6, 3.3)).shift(x, y)
        comps.append((prof, np.array([rng.uniform(0.5, 1.2), 1.0, rng.uniform(0.9, 1.4)])))
    return comps


def render_galaxy(cls: str, seed: int) -> np.ndarray:
    """One galaxy of class ``cls``: noisy g, r, i images, float32 [3, 64, 64] (sky sigma ~1)."""
    import galsim

    rng = np.random.default_rng(seed)
    grng = galsim.BaseDeviate(seed)
    comps = _components(cls, rng, grng)
    # small random offset of the centre, like an imperfect catalogue position
    dx, dy = rng.normal(0.0, 0.4, size=2)
    comps = [(p.shift(dx, dy), c) for p, c in comps] + _background_sources(rng)
    # Galaxy Zoo DECaLS-style cutouts are resampled so the galaxy fills the frame: a stamp pixel
    # spans ``zoom`` native 0.262" pixels, so the seeing disc is smaller in stamp pixels.
    zoom = rng.uniform(1.3, 2.2)
    fwhm = rng.uniform(0.95, 1.5) / zoom  # native seeing (arcsec, r band) in stamp units
    beta = rng.uniform(2.8, 4.5)
    bands = []
    for b, fwhm_scale in enumerate((1.08, 1.0, 0.95)):  # seeing is worse in the blue
        psf = galsim.Moffat(beta=beta, fwhm=fwhm * fwhm_scale, gsparams=_gsparams())
        gal = galsim.Sum([p * float(c[b]) for p, c in comps])
        img = galsim.Convolve(gal, psf).drawImage(nx=STAMP, ny=STAMP, scale=PIXEL_SCALE).array
        img = img + rng.normal(0.0, SKY_SIGMA[b], size=img.shape)
        bands.append(img)
    return np.stack(bands).astype(np.float32)


def galaxy_rgb(gri: np.ndarray) -> np.ndarray:
    """Lupton et al. (2004) asinh colour composite: R=i, G=r, B=g. uint8 [64, 64, 3]."""
    from astropy.visualization import make_lupton_rgb

    g, r, i = gri
    return make_lupton_rgb(i, r, g * 1.25, minimum=0.0, stretch=LUPTON_STRETCH, Q=LUPTON_Q)


# ---- real galaxies: Hubble (eXtreme) Deep Field image bundled with scikit-image ----------------


def hubble_cutouts(n: int, min_size: int = 24) -> list[tuple[np.ndarray, dict]]:
    """The ``n`` brightest extended sources of ``skimage.data.hubble_deep_field()``, cropped square.

    Luminance is smoothed (sigma 1.5 px) and thresholded; connected regions are ranked by summed
    luminance; a source is kept if its crop (side 2.5x its bounding-box extent, at least ``min_size``)
    lies inside the image and overlaps no crop kept before. The three bright foreground stars
    (``HDF_STARS``) are skipped. Returns a list of (uint8 64x64x3, info).
    """
    from scipy import ndimage
    from skimage.data import hubble_deep_field
    from skimage.measure import label, regionprops

    img = hubble_deep_field()
    lum = img.astype(np.float32).mean(axis=2)
    smooth = ndimage.gaussian_filter(lum, 1.5)
    bg = np.median(smooth)
    mad = np.median(np.abs(smooth - bg)) * 1.4826
    mask = smooth > bg + max(30.0, 10.0 * mad)  # high enough to split neighbours and skip faint halos
    regions = regionprops(label(mask), intensity_image=lum)
    regions.sort(key=lambda r: -float(r.image_intensity[r.image].sum()))
    taken: list[tuple[int, int, int, int]] = []
    out = []
    H, W = lum.shape
    for reg in regions:
        if len(out) >= n:
            break
        r0, c0, r1, c1 = reg.bbox
        extent = max(r1 - r0, c1 - c0)
        if extent < 6:
            continue
        side = int(max(min_size, round(2.5 * extent)))
        cy, cx = reg.centroid_weighted if hasattr(reg, "centroid_weighted") else reg.weighted_centroid
        y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
        y1, x1 = y0 + side, x0 + side
        if y0 < 0 or x0 < 0 or y1 > H or x1 > W:
            continue
        if any(not (x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0) for b0, a0, b1, a1 in taken):
            continue
        if _is_known_star(cx, cy):
            continue
        taken.append((y0, x0, y1, x1))
        crop = Image.fromarray(img[y0:y1, x0:x1]).resize((STAMP, STAMP), Image.LANCZOS)
        out.append((np.asarray(crop), {"x": int(round(cx)), "y": int(round(cy)), "crop": side}))
    return out


# Foreground stars of the image (diffraction spikes), found by eye; (x, y) pixel positions.
HDF_STARS = ((754, 577), (253, 166), (148, 216))


def _is_known_star(cx: float, cy: float, tol: float = 15.0) -> bool:
    return any(math.hypot(cx - x, cy - y) < tol for x, y in HDF_STARS)


# ----------------------------------------------------------------------------------------------
# 2. dust-emission maps
# ----------------------------------------------------------------------------------------------

DUST_BANDS = (
    {"name": "IRAC 4.5", "wavelength_um": 4.5, "unit": "MJy/sr"},
    {"name": "MIPS 24", "wavelength_um": 24.0, "unit": "MJy/sr"},
    {"name": "SPIRE 250", "wavelength_um": 250.0, "unit": "MJy/sr"},
)
DUST_PIXEL_ARCSEC = 6.0  # nominal pixel size; sets the beams below
BEAM_SIGMA_PX = {"4.5": 0.6, "24": 0.7, "250": 1.3}  # FWHM ~1.7", 6", 18" at 6"/px (floored at ~1 px FWHM)
T_COLD = 17.0  # K, dust temperature in the unheated ISM
HC_OVER_K_250 = 14387.77 / 250.0  # h c / (lambda k) at 250 um, in K


def power_law_field(n: int, beta: float, rng: np.random.Generator, anisotropy: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Periodic Gaussian random field on an n x n grid with P(k) ~ k^-beta, zero mean, unit std.

    ``anisotropy`` > 1 stretches structures along ``angle`` (radians), as magnetised turbulence
    elongates them along the mean field, which gives the column density its filamentary look.
    """
    f = np.fft.fftfreq(n)
    ky, kx = np.meshgrid(f, f, indexing="ij")
    k_par = kx * math.cos(angle) + ky * math.sin(angle)
    k_perp = -kx * math.sin(angle) + ky * math.cos(angle)
    k = np.hypot(k_par * anisotropy, k_perp / anisotropy)
    k[0, 0] = np.inf  # no DC power
    amp = k ** (-beta / 2.0)
    noise = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    field = np.fft.ifft2(noise * amp).real
    return (field - field.mean()) / field.std()


def lognormal_column(size: int, beta: float, sigma_ln: float, rng: np.random.Generator) -> np.ndarray:
    """Lognormal column density exp(sigma_ln * g) from a 2x larger periodic field, cropped (not periodic)."""
    big = power_law_field(2 * size, beta, rng, anisotropy=rng.uniform(1.0, 1.7), angle=rng.uniform(0, math.pi))
    y0, x0 = rng.integers(0, size, size=2)
    g = big[y0 : y0 + size, x0 : x0 + size]
    g = (g - g.mean()) / g.std()
    return np.exp(sigma_ln * g)


def bubble_profile(r: np.ndarray, theta: np.ndarray, radius: float, clumps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative density change of a feedback bubble: depleted cavity, compressed clumpy shell.

    Inside the (irregular) radius R(theta) the density drops to a floor; swept-up material piles
    into a shell of width ~0.1-0.2 R at R, clumpy (``clumps``: a lognormal field) and with azimuthal
    gaps; some bubbles are open on one side (champagne flow).
    """
    wobble = sum(rng.normal(0.0, 0.1 / m) * np.cos(m * theta + rng.uniform(0, 2 * np.pi)) for m in range(2, 7))
    x = r / (radius * (1.0 + wobble))
    floor = rng.uniform(0.05, 0.3)
    cavity = floor + (1.0 - floor) / (1.0 + np.exp(-(x - 0.92) / 0.06))
    width = rng.uniform(0.1, 0.2)
    azimuth = 1.0 + 0.5 * np.cos(int(rng.integers(1, 4)) * theta + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.4:  # open on one side
        azimuth *= 0.5 * (1.0 + np.cos(theta - rng.uniform(0, 2 * np.pi)))
    shell = rng.uniform(0.8, 2.0) * np.exp(-0.5 * ((x - 1.0) / width) ** 2) * np.clip(azimuth, 0.05, None) * clumps
    return cavity + shell


def point_sources(shape: tuple[int, int], xs, ys, peaks, sigma: float) -> np.ndarray:
    """Sum of circular Gaussian PSFs with given peak values at (x, y)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for x, y, p in zip(xs, ys, peaks):
        out += p * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2)
    return out


def planck_ratio_250(t: np.ndarray) -> np.ndarray:
    """B_nu(250 um, T) / B_nu(250 um, T_COLD)."""
    return np.expm1(HC_OVER_K_250 / T_COLD) / np.expm1(HC_OVER_K_250 / t)


def dust_map(seed: int, size: int = STAMP) -> tuple[np.ndarray, dict]:
    """One synthetic star-forming-region map, float32 [3, size, size] in MJy/sr (4.5, 24, 250 um).

    Column density N: lognormal power-law field (P(k) ~ k^-beta) on a background floor, with
    feedback bubbles carved around the more luminous young stars. Radiation field (ambient 1)
    G = 1 + sum_i L_i / (1 + r_i^2). 250 um: big grains in equilibrium, I ~ N * B_nu(T) with
    T = 17 K * G^(1/6). 24 um: stochastically heated small grains, I ~ N * G, plus compact hot
    dust at each young star. 4.5 um: faint diffuse (PAH/scattered light ~ N * G^0.7, zodi and
    unresolved stars) plus point sources: a field-star population and the young clusters.
    Returns (maps, info) with info = seed, beta, sigma_ln, n_stars, n_bubbles.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    beta = float(rng.uniform(3.0, 4.0))
    sigma_ln = float(rng.uniform(0.8, 1.5))
    column = 0.15 + lognormal_column(size, beta, sigma_ln, rng)
    column /= np.median(column)

    # young stars / clusters, preferably where there is gas
    n_stars = int(np.clip(rng.poisson(3.0), 1, 6))
    clumps = np.exp(0.5 * power_law_field(size, 2.5, rng) - 0.125)  # small-scale clumping of shells
    weights = ndimage.gaussian_filter(column, 3.0).ravel() ** 1.5
    idx = rng.choice(column.size, size=n_stars, replace=False, p=weights / weights.sum())
    sy, sx = np.unravel_index(idx, column.shape)
    sx = sx + rng.uniform(-0.5, 0.5, n_stars)
    sy = sy + rng.uniform(-0.5, 0.5, n_stars)
    lum = 10 ** rng.uniform(1.3, 3.0, n_stars)  # heating: G = L at 1 px from the star (ambient G = 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    # feedback bubbles around the luminous ones (at least the brightest star drives one)
    drives = (lum > 150.0) | (np.arange(n_stars) == np.argmax(lum))
    n_bubbles = int(drives.sum())
    for x, y, L in zip(sx[drives], sy[drives], lum[drives]):
        radius = float(np.clip(1.5 * L ** (1 / 3) * rng.uniform(0.8, 1.25), 4.0, 14.0))  # Stromgren-like R ~ L^(1/3)
        cx, cy = x + rng.normal(0, 0.1 * radius), y + rng.normal(0, 0.1 * radius)
        r, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
        column = column * bubble_profile(r, theta, radius, clumps, rng)

    # radiation field heating the dust: ambient 1 + geometric dilution ~ L / r^2 around each star
    r_core = 1.0
    field = np.ones_like(column)
    for x, y, L in zip(sx, sy, lum):
        field += L / (1.0 + ((xx - x) ** 2 + (yy - y) ** 2) / r_core**2)

    # 250 um: cold big grains (modified black body at T ~ G^(1/6))
    temperature = T_COLD * field ** (1 / 6)
    s250 = 10 ** rng.uniform(1.6, 2.1)  # MJy/sr at median column, T_COLD
    i250 = s250 * column * planck_ratio_250(temperature)
    i250 = ndimage.gaussian_filter(i250, BEAM_SIGMA_PX["250"], mode="reflect")

    # 24 um: stochastically heated small grains ~ N * G (bright on bubble rims and near stars),
    # plus compact hot dust around each young star
    s24 = 10 ** rng.uniform(0.0, 0.5)
    i24 = s24 * column * field
    i24 = ndimage.gaussian_filter(i24, BEAM_SIGMA_PX["24"], mode="reflect")
    i24 += point_sources(column.shape, sx, sy, s24 * lum**0.8 * rng.uniform(0.05, 0.2, n_stars), 0.8)

    # 4.5 um: faint diffuse emission + field stars + young stars
    diffuse45 = rng.uniform(0.1, 0.4) + rng.uniform(0.02, 0.08) * column * field ** 0.7
    diffuse45 = ndimage.gaussian_filter(diffuse45, BEAM_SIGMA_PX["4.5"], mode="reflect")
    n_field = int(rng.integers(40, 160))
    fx, fy = rng.uniform(0, size, n_field), rng.uniform(0, size, n_field)
    fpeak = 0.3 * (1.0 - rng.random(n_field)) ** (-1.0 / 1.3)  # power-law (Pareto) stellar fluxes
    fpeak = np.minimum(fpeak, 300.0)
    i45 = diffuse45 + point_sources(column.shape, fx, fy, fpeak, BEAM_SIGMA_PX["4.5"])
    for x, y, L in zip(sx, sy, lum):  # each young star is a small cluster of 1-6 bright members
        k = int(rng.integers(1, 7))
        peaks = 3.0 * L**0.7 * rng.uniform(0.5, 2.0) * rng.dirichlet(np.ones(k)) ** 0.5
        i45 += point_sources(column.shape, x + rng.normal(0, 1.0, k), y + rng.normal(0, 1.0, k), peaks, BEAM_SIGMA_PX["4.5"])

    noise = (rng.uniform(0.01, 0.03), rng.uniform(0.05, 0.15), rng.uniform(0.4, 1.2))
    maps = np.stack([i45, i24, i250])
    maps = maps + rng.normal(size=maps.shape) * np.array(noise)[:, None, None]
    info = {"seed": seed, "beta": round(beta, 4), "sigma_ln": round(sigma_ln, 4), "n_stars": n_stars, "n_bubbles": n_bubbles}
    return maps.astype(np.float32), info


def dust_rgb(maps: np.ndarray) -> np.ndarray:
    """Display RGB = (250, 24, 4.5) micron, each band asinh-stretched over its 99.5% interval."""
    from astropy.visualization import AsinhStretch, PercentileInterval

    chans = []
    for band in (2, 1, 0):
        x = PercentileInterval(99.5)(maps[band])
        chans.append(AsinhStretch(a=0.1)(np.clip(x, 0, 1)))
    return (np.stack(chans, axis=-1) * 255).round().astype(np.uint8)


def grid(images: list[np.ndarray], ncol: int, gap: int = 2, scale: int = 1) -> np.ndarray:
    """Tile HxWx3 uint8 images into a grid (nearest-neighbour upscaled by ``scale``)."""
    images = [np.kron(im, np.ones((scale, scale, 1), dtype=np.uint8)) for im in images]
    h, w = images[0].shape[:2]
    nrow = math.ceil(len(images) / ncol)
    out = np.zeros((nrow * (h + gap) + gap, ncol * (w + gap) + gap, 3), dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, ncol)
        out[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = im
    return out


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------


def make_galaxies(out: Path, seed: int, per_class: int, n_hdf: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    k = 0
    for j in range(per_class):
        for cls in GALAXY_CLASSES:  # interleaved, so any prefix of the set is balanced
            k += 1
            s = item_seed(seed, "galaxy", k)
            name = f"galsim_{k:04d}_{cls}.png"
            Image.fromarray(galaxy_rgb(render_galaxy(cls, s))).save(out / name, optimize=True)
            rows.append({"file": name, "class": cls, "source": "galsim", "seed": s})
    log.info("galaxy: %d GalSim galaxies", k)
    cutouts = hubble_cutouts(n_hdf)
    for k, (rgb, info) in enumerate(cutouts, 1):
        name = f"hdf_{k:04d}.png"
        Image.fromarray(rgb).save(out / name, optimize=True)
        rows.append({"file": name, "class": "hdf_unlabelled", "source": "hubble_deep_field", "seed": ""})
    log.info("galaxy: %d Hubble Deep Field cutouts", len(cutouts))
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "class", "source", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "README.md").write_text(GALAXY_README.format(n=per_class * len(GALAXY_CLASSES), per_class=per_class, n_hdf=len(cutouts)))


def make_radiation(out: Path, seed: int, n_maps: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    entries, previews = [], []
    for k in range(1, n_maps + 1):
        maps, info = dust_map(item_seed(seed, "dust", k))
        name = f"dust_{k:04d}.npy"
        np.save(out / name, maps)
        entries.append({"file": name, **info})
        if len(previews) < 16:
            previews.append(dust_rgb(maps))
    Image.fromarray(grid(previews, 4, gap=2, scale=2)).save(out / "preview.png", optimize=True)
    manifest = {
        "bands": list(DUST_BANDS),
        "layout": "[band, y, x]",
        "dtype": "float32",
        "pixel_arcsec": DUST_PIXEL_ARCSEC,
        "display": "RGB = (250, 24, 4.5) micron, each band asinh-stretched",
        "maps": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(RADIATION_README.format(n=n_maps))
    log.info("radiation: %d maps", n_maps)


def _save_faces(out: Path, faces: np.ndarray, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for k, face in enumerate(faces, 1):
        grey = (np.clip(face, 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(out / f"{stem}_{k:02d}.png")


def make_faces(out: Path, out_train: Path) -> None:
    """The bundled model's in-domain sets: its 12 held-out faces, and its 88 training faces."""
    from asset_sources import N_HELD_OUT, train_and_held_out_faces

    train, held_out = train_and_held_out_faces()
    _save_faces(out, held_out, "lfw_heldout")
    (out / "README.md").write_text(FACES_README.format(n=N_HELD_OUT))
    _save_faces(out_train, train, "lfw_train")
    (out_train / "README.md").write_text(FACES_TRAIN_README.format(n=len(train)))
    log.info("faces: %d held-out and %d training faces", len(held_out), len(train))


GALAXY_README = """\
# Galaxy samples (out-of-domain set)

Made by `scripts/make_samples.py` (seeded; re-run to regenerate). `labels.csv` gives
`file,class,source,seed` for every PNG (seed is empty for the Hubble cutouts, which involve no
randomness).

## `galsim_*.png`: {n} synthetic survey cutouts ({per_class} per class)

64x64 RGB, uint8, rendered with GalSim in g, r, i, in the style of Galaxy Zoo DECaLS cutouts
(Legacy Survey 0.262"/px imaging resampled so the galaxy fills the frame: a stamp pixel spans
1.3-2.2 native pixels, which shrinks the seeing disc in stamp pixels accordingly). Sizes below
are in stamp units of 0.262".

- `elliptical`: Sersic n = 3.2-4.8, half-light radius 1-3", axis ratio 0.55-1, red.
- `disk`: exponential disk (hlr 1.3-2.8") whose light is 35-60 % in 2-3 logarithmic spiral arms
  made of Gaussian clumps (pitch 12-28 deg), plus a small Sersic bulge (8-35 % of the light);
  inclination 0-65 deg (thick disk, intrinsic q0 = 0.15).
- `edge_on`: `galsim.InclinedExponential` at 84-90 deg (hlr 1-2.1", h/r 0.1-0.22), half of them
  with a Sersic bulge (10-35 %).
- `clumpy`: exponential disk (hlr 1.3-3") + two `galsim.RandomKnots` sets (3-8 giant and 10-34
  small star-forming clumps, 25-50 % of the light, blue), slightly off-centre.
- `merger`: two sheared (g = 0.15-0.5) bulge+disk galaxies 1.6-3.6" apart (flux ratio 0.35-1)
  with two faint curved tidal tails of clumps.

Colours come from per-component g:r:i flux ratios (bulges 0.40:1:1.40, disks 0.75:1:1.10, arms
1.10:1:0.85, clumps 1.25:1:0.88, tails 0.85:1:1.00, each jittered by 5-8 %). Each galaxy is
shifted by ~0.4" and joined by ~2.5 faint background galaxies and ~0.7 field stars (Poisson).
PSF: Moffat, beta 2.8-4.5, native FWHM 0.95-1.5" in r (x1.08 in g, x0.95 in i). Total r flux
10^3.6-10^4.6 in units of the r-band sky noise; Gaussian sky noise sigma = 0.9, 1.0, 1.3 (g, r, i).
RGB = (i, r, 1.25 g) through `astropy.visualization.make_lupton_rgb` (minimum 0, stretch 10, Q 9).

## `hdf_*.png`: {n_hdf} real galaxies (class `hdf_unlabelled`)

Cutouts of the Hubble eXtreme Deep Field colour image bundled with scikit-image
(`skimage.data.hubble_deep_field()`, 872x1000; image credit NASA, ESA, G. Illingworth et al.):
luminance smoothed (sigma 1.5 px) and thresholded 30 levels above the median sky, sources ranked
by summed luminance, square crops of 2.5x the source's bounding-box extent (>= 24 px) that stay
inside the image and overlap no other crop, the three bright foreground stars skipped, resized
to 64x64 with Lanczos. Neighbouring faint galaxies remain in the frames.
"""

RADIATION_README = """\
# Dust-emission samples (out-of-domain set)

{n} synthetic star-forming-region maps made by `scripts/make_samples.py` (seeded). Each
`dust_*.npy` is float32 `[3, 64, 64]` = `[band, y, x]`, bands 4.5, 24, 250 micron (IRAC 4.5,
MIPS 24, SPIRE 250 -like), surface brightness in MJy/sr, nominal pixel 6". `manifest.json` lists
the bands and each map's seed and parameters; `preview.png` shows the first 16 (2x enlarged) as
RGB = (250, 24, 4.5) micron, each band asinh-stretched (a = 0.1) over its 99.5 % interval.

Generator (`dust_map`):

- Column density N: Gaussian random field with P(k) ~ k^-beta, beta in [3, 4], mildly
  anisotropic (structures stretched 1-1.7x along a random direction, as in magnetised
  turbulence), exponentiated to a lognormal (sigma_ln 0.8-1.5) plus a small floor, median 1.
  Drawn on a 128^2 periodic grid and cropped to 64^2, so the map is not periodic.
- 1-6 young stars / clusters (Poisson, mean 3) placed preferentially in dense gas, heating
  L = 10^1.3-10^3 (the radiation field G 1 px away, ambient G = 1). The ones with L > 150 (and
  always the brightest) blow feedback bubbles: radius ~ 1.5 L^(1/3) px (4-14 px), irregular,
  density depleted to 5-30 % inside, swept-up material in a clumpy, often broken or one-sided
  compressed shell at R. Bubbles are carved into N before any band is computed.
- Radiation field G = 1 + sum_i L_i / (1 + (r_i / 1 px)^2) (geometric dilution).
- 250 um: big grains in equilibrium, I = S250 N B_nu(T) / B_nu(17 K), T = 17 K G^(1/6),
  S250 = 40-125 MJy/sr; SPIRE-like beam (Gaussian sigma 1.3 px).
- 24 um: stochastically heated small grains, I = S24 N G (S24 = 1-3 MJy/sr): warm rims on the
  bubble shells and heated dust near the stars; plus compact hot dust at each young star.
- 4.5 um: faint diffuse emission (0.1-0.4 MJy/sr + PAH/scattered light ~ N G^0.7), a field-star
  population (40-160 stars, Pareto fluxes, PSF sigma 0.6 px) and each young star as a small
  cluster of 1-6 bright point sources.
- Gaussian noise per band (0.01-0.03, 0.05-0.15, 0.4-1.2 MJy/sr); values are not clipped, so
  a few noise pixels in the faintest 24 um cavities can be slightly negative.

Typical levels over the set: 4.5 um median 0.15-0.5 MJy/sr with point sources up to a few
hundred; 24 um median 1-10 with rims of tens and hot spots of hundreds to thousands;
250 um median 50-230 (1-95 % range ~ 12-750) with dense cores above 1000.
"""

FACES_README = """\
# In-domain face samples

The {n} held-out faces of the bundled model `assets/models/oodgen-faces-32`: the last {n} face
crops of scikit-image's `lfw_subset` (Labeled Faces in the Wild), resized to 32x32 (bicubic), grey
replicated to RGB. They were never used in training (see `scripts/asset_sources.py`).
Made by `scripts/make_samples.py`.
"""


FACES_TRAIN_README = """\
# In-domain face samples (training set)

The {n} faces the bundled model `assets/models/oodgen-faces-32` was trained on: the first {n} face
crops of scikit-image's `lfw_subset`, resized to 32x32 (bicubic), grey replicated to RGB. With
`faces/` (held out) they give 100 in-domain images, the ID reference of the diagnostics.
Made by `scripts/make_samples.py`.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assets/samples"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=14, help="GalSim galaxies per class")
    parser.add_argument("--n-hdf", type=int, default=30, help="Hubble Deep Field cutouts")
    parser.add_argument("--n-dust", type=int, default=64, help="dust-emission maps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.time()
    make_galaxies(args.out / "galaxy", args.seed, args.per_class, args.n_hdf)
    make_radiation(args.out / "radiation", args.seed, args.n_dust)
    make_faces(args.out / "faces", args.out / "faces_train")
    log.info("done in %.1f s -> %s", time.time() - t0, args.out)


if __name__ == "__main__":
    main()
