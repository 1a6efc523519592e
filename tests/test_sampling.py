"""Interpolation, Gaussian fit and the geometric filter."""

import math

import pytest
import torch

from oodgen.config import GenerationSettings
from oodgen.sampling import GaussianFit, geometric_filter, interpolation_strip, lerp, random_pairs, sample_latents, slerp


def test_lerp_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    assert torch.equal(lerp(a, b, 0.0), a)
    assert torch.allclose(lerp(a, b, 1.0), b, atol=1e-6)  # a + (b - a) * 1 is b to rounding
    assert torch.allclose(lerp(a, b, 0.5), (a + b) / 2, atol=1e-6)


def test_slerp_on_orthogonal_unit_vectors_is_the_great_circle():
    a = torch.zeros(1, 2, 1, 1)
    a[0, 0] = 1
    b = torch.zeros(1, 2, 1, 1)
    b[0, 1] = 1
    mid = slerp(a, b, 0.5).flatten()
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    third = slerp(a, b, 1 / 3).flatten()
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_keeps_gaussian_norm_where_lerp_shrinks_it():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    d = 3 * 32 * 32
    ns = slerp(a, b, 0.5).flatten(1).norm(dim=1) / math.sqrt(d)
    nl = lerp(a, b, 0.5).flatten(1).norm(dim=1) / math.sqrt(d)
    assert torch.allclose(ns, torch.ones(8), atol=0.05)
    assert torch.allclose(nl, torch.full((8,), math.sqrt(0.5)), atol=0.05)
    # endpoints
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)


def test_slerp_norm_interpolates_linearly():
    a = torch.randn(1, 3, 4, 4)
    b = 3 * torch.randn(1, 3, 4, 4)
    out = slerp(a, b, 0.25)
    assert out.norm().item() == pytest.approx(0.75 * a.norm().item() + 0.25 * b.norm().item(), rel=1e-5)


def test_strip_shape_and_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    s = interpolation_strip(a, b, 5, "lerp")
    assert s.shape == (5, 3, 8, 8)
    assert torch.allclose(s[0], a, atol=1e-6) and torch.allclose(s[-1], b, atol=1e-6)  # a + (b - a) * 1 is b to rounding
    with pytest.raises(ValueError, match="k >= 2"):
        interpolation_strip(a, b, 1)


def test_gaussian_fit_recovers_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 8, 8, generator=g)
    x = mu + 2.0 * torch.randn(4000, 3, 8, 8, generator=g)
    fit = GaussianFit.fit(x)
    assert fit.var.ndim == 0 and fit.var.item() == pytest.approx(4.0, rel=0.02)
    assert (fit.mean - mu).abs().max() < 0.15
    per_dim = GaussianFit.fit(x, per_dim=True)
    assert per_dim.var.shape == (3, 8, 8)
    draws = fit.sample(2000, torch.Generator().manual_seed(1))
    assert (draws - fit.mean).std().item() == pytest.approx(2.0, rel=0.05)


def test_random_pairs_never_pair_an_item_with_itself():
    pairs = random_pairs(5, 500, torch.Generator().manual_seed(0))
    assert all(i != j and 0 <= i < 5 and 0 <= j < 5 for i, j in pairs)
    with pytest.raises(ValueError, match="at least 2"):
        random_pairs(1, 3, torch.Generator())


def test_sample_latents_is_seeded_and_records_provenance():
    x = torch.randn(10, 3, 8, 8)
    s = GenerationSettings(method="slerp", alpha=0.3, seed=7)
    z1, d1 = sample_latents(x, 6, s)
    z2, d2 = sample_latents(x, 6, s)
    assert torch.equal(z1, z2) and d1 == d2
    k = d1[0]
    m = x.mean(0)  # slerp turns about the cloud's centre by default
    assert torch.allclose(z1[0], m + slerp(x[k.i] - m, x[k.j] - m, 0.3), atol=1e-5)
    z3, _ = sample_latents(x, 6, GenerationSettings(method="slerp", alpha=0.3, seed=8))
    assert not torch.equal(z1, z3)


def test_geometric_filter_accepts_in_distribution_and_rejects_outliers():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(64, 3, 16, 16, generator=g)
    good = torch.randn(20, 3, 16, 16, generator=g)
    bad = 0.3 * torch.randn(20, 3, 16, 16, generator=g)  # far too close to the centre
    assert geometric_filter(good, ref, 0.05, generator=g).float().mean() > 0.9
    assert geometric_filter(bad, ref, 0.05, generator=g).sum() == 0
    z, draws = sample_latents(ref, 8, GenerationSettings(method="gaussian", geometric_filter=True, seed=1))
    assert z.shape == (8, 3, 16, 16) and all(d.method == "gaussian" for d in draws)


def test_filter_that_rejects_everything_says_how_to_fix_it():
    ref = torch.randn(16, 3, 8, 8)
    with pytest.raises(ValueError, match="raise filter_tolerance"):
        sample_latents(ref, 4, GenerationSettings(method="lerp", alpha=0.5, geometric_filter=True, filter_tolerance=1e-4), max_tries=2)


def test_settings_validate():
    with pytest.raises(ValueError, match="alpha"):
        GenerationSettings(alpha=1.5)
    with pytest.raises(ValueError, match="method"):
        GenerationSettings(method="cubic")


def _two_clusters(n_each: int = 20, d: int = 48, sep: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n_each, 3, 4, 4, generator=g)
    b = torch.randn(n_each, 3, 4, 4, generator=g) + sep / (d ** 0.5)
    b[:, 0] += sep
    return torch.cat([a, b]), torch.tensor([0] * n_each + [1] * n_each)


def test_nearest_pairing_stays_within_a_cluster_and_random_does_not():
    from oodgen.sampling import nearest_pairs

    z, lab = _two_clusters()
    pairs = nearest_pairs(z, 200, k=3, generator=torch.Generator().manual_seed(1))
    assert all(i != j and lab[i] == lab[j] for i, j in pairs)
    d = torch.cdist(z.flatten(1), z.flatten(1))
    for i, j in pairs[:50]:
        assert (d[i] < d[i, j]).sum() <= 3  # j is among the 3 nearest (i itself counts as 0 distance)
    _, draws = sample_latents(z, 200, GenerationSettings(seed=1, pairing="random"))
    assert any(lab[d_.i] != lab[d_.j] for d_ in draws)
    _, draws = sample_latents(z, 200, GenerationSettings(seed=1, pairing="nearest", neighbours=3))
    assert all(lab[d_.i] == lab[d_.j] for d_ in draws)


def test_alpha_spread_draws_alphas_in_range_and_records_them():
    z, _ = _two_clusters()
    lat, draws = sample_latents(z, 100, GenerationSettings(method="lerp", alpha=0.5, alpha_spread=0.1, seed=3))
    al = torch.tensor([d.alpha for d in draws])
    assert al.min() >= 0.4 - 1e-9 and al.max() <= 0.6 + 1e-9 and al.std() > 0.03
    for k in (0, 17, 99):  # each latent is the lerp of its recorded pair at its recorded alpha
        d = draws[k]
        torch.testing.assert_close(lat[k], (1 - d.alpha) * z[d.i] + d.alpha * z[d.j])


def test_clustered_gaussian_draws_near_each_cluster():
    from oodgen.sampling import kmeans

    z, lab = _two_clusters()
    found = kmeans(z, 2, torch.Generator().manual_seed(0))
    assert len(set(zip(found.tolist(), lab.tolist()))) == 2  # the same partition up to naming
    lat, _ = sample_latents(z, 200, GenerationSettings(method="gaussian", clusters=2, seed=0))
    near_b = (lat[:, 0] > 10).float().mean()
    assert 0.3 < near_b < 0.7  # both clusters drawn, in proportion
    one, _ = sample_latents(z, 200, GenerationSettings(method="gaussian", seed=0))
    # one Gaussian puts mass between the clusters, the mixture does not
    between = lambda x: ((x[:, 0].mean((1, 2)) > 5) & (x[:, 0].mean((1, 2)) < 15)).float().mean()  # noqa: E731
    assert between(lat) < 0.05 < between(one)


def test_generation_settings_reject_bad_options():
    with pytest.raises(ValueError, match="pairing"):
        GenerationSettings(pairing="closest")
    with pytest.raises(ValueError, match="alpha_spread"):
        GenerationSettings(alpha_spread=0.7)
    with pytest.raises(ValueError, match="clusters"):
        GenerationSettings(clusters=0)


def test_pixel_noise_measures_white_noise_under_smooth_structure():
    from oodgen.sampling import pixel_noise

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / 60)  # a smooth galaxy-like profile
    x = blob.expand(4, 3, 64, 64) + torch.randn(4, 3, 64, 64, generator=g) * torch.tensor([0.02, 0.05, 0.1])[None, :, None, None]
    sig = pixel_noise(x)
    torch.testing.assert_close(sig.mean(0), torch.tensor([0.02, 0.05, 0.1]), rtol=0.1, atol=0)
    assert pixel_noise(blob.expand(1, 3, 64, 64)).max() < 0.005  # structure alone reads as (almost) no noise


def test_match_noise_reaches_the_target_and_never_removes_noise():
    from oodgen.sampling import match_noise, pixel_noise

    g = torch.Generator().manual_seed(1)
    clean = torch.zeros(6, 3, 32, 32)
    noisy = torch.randn(6, 3, 32, 32, generator=g) * 0.2
    target = torch.tensor([0.05, 0.1, 0.1])
    out = match_noise(clean, target, torch.Generator().manual_seed(2))
    torch.testing.assert_close(pixel_noise(out).mean(0), target, rtol=0.1, atol=0)
    assert torch.equal(match_noise(noisy, target, torch.Generator().manual_seed(2)), noisy)  # already noisier: unchanged
    again = match_noise(clean, target, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)  # seeded


def test_match_sky_puts_back_the_sky_level_and_noise():
    from oodgen.sampling import border_level, match_sky, pixel_noise

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    galaxy = torch.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 20).expand(5, 3, 32, 32) - 1.0  # black sky (-1), bright centre
    level, sigma = torch.tensor([-0.8, -0.75, -0.7]), torch.tensor([0.03, 0.03, 0.05])
    out = match_sky(galaxy, level, sigma, torch.Generator().manual_seed(0))
    torch.testing.assert_close(border_level(out).mean(0), level, atol=0.01, rtol=0)
    torch.testing.assert_close(pixel_noise(out).mean(0), sigma, rtol=0.25, atol=0)  # the profile gradient adds a little
    centre = out[:, :, 14:18, 14:18].mean() - out[:, :, :4, :4].mean()
    assert abs(centre - (galaxy[:, :, 14:18, 14:18].mean() - galaxy[:, :, :4, :4].mean())) < 0.05  # the galaxy itself is untouched


def test_slerp_about_the_cloud_centre_keeps_the_cloud_distribution():
    """Latents from N(mu, I) with |mu| large (the paper's OOD cloud, separable from N(0, I)): slerp about mu keeps
    the draw's mean component at |mu| and its distance to mu at sqrt(d); slerp about the origin inflates the shared
    mean by 1/cos(theta/2) (the burned cores and black skies of the old default)."""
    from oodgen.sampling import interpolate, interpolation_centre

    g = torch.Generator().manual_seed(0)
    d, n = 4096, 200
    mu = torch.zeros(d)
    mu[: d // 4] = 3.0  # |mu| = 96 against sqrt(d) = 64
    z = mu + torch.randn(n, d, generator=g)
    c = interpolation_centre(z, "cloud")
    assert torch.allclose(c, z.mean(0), atol=1e-5) and interpolation_centre(z, "origin") is None
    unit = mu / mu.norm()
    a, b = z[:100], z[100:]
    about_c = torch.stack([interpolate(a[k], b[k], 0.5, "slerp", c) for k in range(100)])
    about_0 = torch.stack([interpolate(a[k], b[k], 0.5, "slerp") for k in range(100)])
    along_c, along_0 = (about_c @ unit) / mu.norm(), (about_0 @ unit) / mu.norm()
    assert abs(float(along_c.mean()) - 1.0) < 0.02
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    inflation = 1 / torch.cos(torch.arccos(cos) / 2)  # about 1.09 here, 1.41 for orthogonal latents
    assert float(inflation.mean()) > 1.05
    assert abs(float(along_0.mean()) - float(inflation.mean())) < 0.02  # origin slerp amplifies what the two latents share
    spread = (about_c - mu).norm(dim=1) / math.sqrt(d)
    assert abs(float(spread.mean()) - 1.0) < 0.03
    # the end points are the latents themselves, and lerp ignores the centre
    assert torch.allclose(interpolate(a[0], b[0], 0.0, "slerp", c), a[0], atol=1e-4)
    assert torch.allclose(interpolate(a[0], b[0], 1.0, "slerp", c), b[0], atol=1e-4)
    assert torch.equal(interpolate(a[0], b[0], 0.3, "lerp", c), interpolate(a[0], b[0], 0.3, "lerp"))


def test_sample_latents_slerps_about_the_centre_setting():
    from oodgen.sampling import interpolate

    g = torch.Generator().manual_seed(1)
    z = 2.0 + torch.randn(12, 2, 4, 4, generator=g)
    for centre in ("cloud", "origin"):
        out, draws = sample_latents(z, 5, GenerationSettings(centre=centre, pairing="random", seed=3))
        c = z.mean(0) if centre == "cloud" else None
        for k, dr in enumerate(draws):
            assert torch.allclose(out[k], interpolate(z[dr.i], z[dr.j], dr.alpha, "slerp", c), atol=1e-5)
    with pytest.raises(ValueError, match="centre"):
        GenerationSettings(centre="middle")


def _keeps_order(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Each channel of ``after`` is a non-decreasing function of ``before`` (pixel ranks kept, ties allowed)."""
    order = before.flatten(2).argsort(dim=-1, stable=True)  # ties by position, as match_quantiles breaks them
    return bool((after.flatten(2).gather(-1, order).diff(dim=-1) >= 0).all())


def test_quantile_probs_run_from_min_to_max_densest_in_the_tails():
    from oodgen.sampling import quantile_probs

    p = quantile_probs(65)
    assert p[0] == 0 and p[-1] == 1 and (p.diff() > 0).all()
    torch.testing.assert_close(p + p.flip(0), torch.ones(65, dtype=torch.float64))  # symmetric
    assert p.diff()[0] < 1e-3 < p.diff()[32]  # about 2.5 of 4,096 pixels at the ends, 1/40 in the middle
    with pytest.raises(ValueError, match="at least 2"):
        quantile_probs(1)


def test_match_quantiles_gives_the_target_distribution_and_keeps_the_ranks():
    from oodgen.sampling import match_quantiles, quantile_functions

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g)  # uniform pixels
    other = torch.randn(4, 3, 64, 64, generator=g).exp()  # a log-normal intensity distribution
    out = match_quantiles(images, quantile_functions(other, 65))
    assert _keeps_order(images, out)  # pixel order kept: the structure is the input's
    want, got = other.flatten(2).sort(-1).values, out.flatten(2).sort(-1).values
    inner = slice(41, -41)  # 1% tails: there a 65-level quantile function interpolates between a few extreme pixels
    rel = ((got - want) / want).abs()
    assert rel[..., inner].max() < 0.08 and rel.mean() < 0.01
    torch.testing.assert_close(quantile_functions(out, 65)[..., 3:-3], quantile_functions(other, 65)[..., 3:-3], atol=0.02, rtol=0.03)
    same = match_quantiles(other, quantile_functions(other, 257))  # onto its own distribution: (almost) the identity
    assert ((same - other) / other).abs().mean() < 5e-3
    with pytest.raises(ValueError, match=r"target \[N, C, Q\]"):
        match_quantiles(images, quantile_functions(other, 65)[:2])


def test_draw_quantiles_interpolate_the_two_sources_and_average_for_gaussian_draws():
    from oodgen.sampling import Draw, draw_quantiles

    q = torch.arange(3 * 2 * 5, dtype=torch.float32).view(3, 2, 5)
    out = draw_quantiles([Draw("slerp", 0, 2, 0.25), Draw("lerp", 1, 0, 1.0), Draw("gaussian")], q)
    torch.testing.assert_close(out[0], 0.75 * q[0] + 0.25 * q[2])
    torch.testing.assert_close(out[1], q[0])
    torch.testing.assert_close(out[2], q.mean(0))


def test_finish_applies_noise_then_calibration_and_warns_for_what_is_missing():
    from oodgen.sampling import Draw, SourceProfile, finish, quantile_functions

    g = torch.Generator().manual_seed(3)
    src = (torch.rand(3, 3, 32, 32, generator=g) ** 3) * 2 - 1  # dark sources with a bright tail
    decoded = torch.rand(2, 3, 32, 32, generator=g) * 0.2  # grey, flat decodes
    draws = [Draw("slerp", 0, 1, 0.5), Draw("slerp", 2, 0, 0.5)]
    prof = SourceProfile.from_images(src)
    cal, warn = finish(decoded, draws, GenerationSettings(noise="none"), prof)
    assert not warn and _keeps_order(decoded, cal)
    want = 0.5 * quantile_functions(src[[0, 2]]) + 0.5 * quantile_functions(src[[1, 0]])
    assert (quantile_functions(cal)[..., 2:-2] - want[..., 2:-2]).abs().max() < 0.03
    plain, _ = finish(decoded, draws, GenerationSettings(noise="none", calibration="none"), prof)
    assert torch.equal(plain, decoded)
    _, warn = finish(decoded, draws, GenerationSettings(), SourceProfile())
    assert len(warn) == 2 and "re-invert" in warn[0] and "calibration=quantiles" in warn[1]
    assert len(prof.subset([2, 0]).quantiles) == 2 and torch.equal(prof.subset([2, 0]).quantiles[0], prof.quantiles[2])
    with pytest.raises(ValueError, match="calibration='curves' is not one of none, quantiles"):
        GenerationSettings(calibration="curves")
