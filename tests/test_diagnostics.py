"""Known-answer tests for oodgen.diagnostics: Gaussian geometry, separability, Gaussianity, UMAP, report."""

import json
import math
import re

import numpy as np
import pytest
import torch

from oodgen import diagnostics as D


def gauss(n, d, seed, scale=1.0, shift=None):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale
    if shift is not None:
        x += shift
    return x


def unit_direction(d, seed):
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


@pytest.fixture(scope="module")
def big_gauss():
    """200 samples of N(0, I) at the paper's d = 3 x 256 x 256 (157 MB float32)."""
    return gauss(200, 196_608, seed=11)


@pytest.fixture(scope="module")
def astronaut_patches():
    """Natural-image pixels: 256 non-overlapping 32x32 RGB patches of skimage's astronaut in [-1, 1]."""
    from skimage import data

    img = data.astronaut().astype(np.float32) / 127.5 - 1.0  # [512, 512, 3]
    p = img.reshape(16, 32, 16, 32, 3).transpose(0, 2, 4, 1, 3).reshape(256, 3, 32, 32)
    return np.ascontiguousarray(p)


# ---------------------------------------------------------------------------------------------- gram


def test_gram_matches_float64_product_across_blocks():
    a, b = gauss(23, 301, 0), gauss(17, 301, 1, shift=0.5)
    g = D.gram(a, b, col_chunk=64, row_block=7)  # many row blocks, ragged column chunks
    x = torch.cat([a, b]).double()
    np.testing.assert_allclose(g, (x @ x.T).numpy(), rtol=1e-5, atol=1e-3)
    assert np.array_equal(g, g.T)


def test_as_matrix_flattens_without_copying_float32():
    a = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    m = D.as_matrix(a)
    assert m.shape == (5, 48) and m.dtype == torch.float32
    assert np.shares_memory(m.numpy(), a)
    assert D.as_matrix(a.astype(np.float64)).dtype == torch.float32


# ---------------------------------------------------------------------------------------------- geometry


def check_gaussian_geometry(g, d):
    assert abs(g.pair_angle_deg.mean - 60) < 0.5
    assert abs(g.origin_angle_deg.mean - 90) < 0.5
    assert g.pair_distance.mean == pytest.approx(math.sqrt(2 * d), rel=0.01)
    assert g.norm.mean == pytest.approx(math.sqrt(d), rel=0.01)
    assert g.pair_distance.unit_reference == pytest.approx(math.sqrt(2 * d))
    assert g.scale == pytest.approx(1.0, abs=0.01)
    # spreads match the isotropic Gaussian's (these are what carry information)
    assert g.pair_angle_deg.std == pytest.approx(g.pair_angle_deg.reference_std, rel=0.1)
    assert g.origin_angle_deg.std == pytest.approx(g.origin_angle_deg.reference_std, rel=0.1)
    assert g.pair_distance.std == pytest.approx(g.pair_distance.reference_std, rel=0.1)


def test_geometry_gaussian_d3072():
    g = D.geometry(gauss(300, 3072, 0))
    assert g.method == "exact" and g.n == 300 and g.d == 3072 and g.n_pairs == 300 * 299 // 2
    check_gaussian_geometry(g, 3072)


def test_geometry_gaussian_d196608(big_gauss):
    g = D.geometry(big_gauss)
    assert g.method == "exact" and g.d == 196_608
    check_gaussian_geometry(g, 196_608)
    assert g.origin_angle_deg.std < 0.2  # concentrates like 1/sqrt(d)


def test_geometry_matches_brute_force():
    x = (gauss(25, 40, 40, shift=0.7) * torch.linspace(0.5, 2.0, 40)).double().numpy()  # offset, anisotropic
    g = D.geometry(x)
    assert g.triplets_exhaustive and g.n_triplets == 25 * 24 * 23 // 2
    i, j = np.triu_indices(25, 1)
    dist = np.linalg.norm(x[i] - x[j], axis=1)
    nrm = np.linalg.norm(x, axis=1)
    origin = np.degrees(np.arccos(np.sum(x[i] * x[j], 1) / (nrm[i] * nrm[j])))
    pair = []
    for k in range(25):
        for a, b in zip(i, j):
            if k not in (a, b):
                u, v = x[a] - x[k], x[b] - x[k]
                pair.append(np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))))
    for st, ref in ((g.pair_distance, dist), (g.norm, nrm), (g.origin_angle_deg, origin), (g.pair_angle_deg, pair)):
        assert st.mean == pytest.approx(np.mean(ref), rel=1e-5)
        assert st.std == pytest.approx(np.std(ref, ddof=1), rel=1e-4)
    assert g.scale == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-6)
    assert g.mean_norm == pytest.approx(np.linalg.norm(x.mean(0)), rel=1e-5)
    assert g.centered_scale == pytest.approx(np.sqrt(x.var(0, ddof=1).mean()), rel=1e-5)


def test_exact_and_sampled_geometry_agree():
    x = gauss(400, 3072, 1)
    e = D.geometry(x, max_exact=2048)
    s = D.geometry(x, max_exact=100, n_triplets=20000, seed=3)
    assert e.method == "exact" and s.method == "sampled" and s.n_triplets == 20000
    assert s.n_pairs < e.n_pairs
    assert abs(e.pair_angle_deg.mean - s.pair_angle_deg.mean) < 0.1
    assert abs(e.origin_angle_deg.mean - s.origin_angle_deg.mean) < 0.1
    assert s.pair_distance.mean == pytest.approx(e.pair_distance.mean, rel=2e-3)
    assert s.pair_angle_deg.std == pytest.approx(e.pair_angle_deg.std, rel=0.05)
    assert s.norm.mean == pytest.approx(e.norm.mean, rel=1e-6)  # all norms are exact in both
    assert s.scale == pytest.approx(e.scale, rel=1e-6)
    assert s.mean_norm == pytest.approx(e.mean_norm, rel=1e-4)


def test_references_follow_the_fitted_scale():
    d = 3072
    g = D.geometry(gauss(200, d, 2, scale=2.0))
    assert g.scale == pytest.approx(2.0, rel=0.01)
    assert g.pair_distance.reference == pytest.approx(2 * math.sqrt(2 * d), rel=0.01)
    assert g.norm.reference == pytest.approx(2 * math.sqrt(d), rel=0.01)
    assert g.pair_distance.unit_reference == pytest.approx(math.sqrt(2 * d))
    assert g.pair_distance.mean == pytest.approx(g.pair_distance.reference, rel=0.01)


def test_geometry_flags_an_offset_and_anisotropy():
    d = 3072
    off = D.geometry(gauss(200, d, 3, shift=1.0))  # mean 1 per coordinate: |mu|^2 = d
    assert off.origin_angle_deg.mean < 65  # cos = 1/2 -> 60 deg, far from 90
    assert off.pair_distance.mean < 0.8 * off.pair_distance.reference  # s includes the mean
    assert off.mean_norm == pytest.approx(math.sqrt(d), rel=0.02)
    assert off.centered_scale == pytest.approx(1.0, abs=0.02)
    low_rank = gauss(200, 8, 4) @ torch.randn(8, d, generator=torch.Generator().manual_seed(5)) / math.sqrt(8)
    lr = D.geometry(low_rank)
    assert lr.pair_angle_deg.std > 5 * lr.pair_angle_deg.reference_std
    assert abs(lr.pair_angle_deg.mean - 60) < 1  # the mean alone cannot tell


def test_pair_angle_mean_is_60_for_any_point_set(astronaut_patches):
    # all-vertex triplets: the three angles of every triangle sum to 180 deg
    g = D.geometry(astronaut_patches[:100])
    assert g.triplets_exhaustive
    assert g.pair_angle_deg.mean == pytest.approx(60.0, abs=1e-9)
    assert abs(g.origin_angle_deg.mean - 90) > 10  # the origin angle does see the image statistics


# ---------------------------------------------------------------------------------------------- separation


def test_center_distance_via_gram_matches_direct():
    a, b = gauss(50, 500, 6), gauss(40, 500, 7, shift=0.3)
    direct = D.center_distance(a, b)
    expect = float((a.double().mean(0) - b.double().mean(0)).norm())
    assert direct == pytest.approx(expect, rel=1e-9)
    via_gram = D._criterion_from_gram(D.gram(a, b), 50, 500)["center_distance"]
    assert via_gram == pytest.approx(expect, rel=1e-6)


def test_separation_criterion_and_noise_floor():
    d = 3072
    dq = d**0.25
    a = gauss(200, d, 8)
    same = D.separation_criterion(a, gauss(200, d, 9))
    assert same["d_quarter"] == pytest.approx(dq)
    assert not same["separable"]
    assert same["center_distance"] == pytest.approx(same["noise_floor"], rel=0.1)  # pure sampling noise
    assert same["noise_floor"] == pytest.approx(math.sqrt(d / 200 + d / 200))
    far = D.separation_criterion(a, gauss(200, d, 10, shift=3 * dq * unit_direction(d, 1)))
    assert far["separable"] and far["exceeds_noise_floor"] and far["exceeds_noise_floor_fitted"]
    assert far["ratio"] == pytest.approx(far["center_distance"] / dq)
    assert far["center_distance_debiased"] == pytest.approx(3 * dq, rel=0.1)
    # the paper's test alone is fooled by small samples: same Gaussian, 50 + 50 points
    small = D.separation_criterion(gauss(50, d, 12), gauss(50, d, 13))
    assert small["separable"] and not small["exceeds_noise_floor_fitted"]


def test_svm_equal_centres_is_chance():
    d = 3072
    r = D.svm_separability(gauss(200, d, 14), gauss(200, d, 15), seed=0)
    assert abs(r["test_accuracy"] - 0.5) <= 0.15
    assert abs(r["cv_mean"] - 0.5) <= 0.15
    assert r["n_train"] == 280 and r["n_test"] == 120
    assert r["cv_ci95_low"] <= r["cv_mean"] <= r["cv_ci95_high"]
    assert len(r["cv_fold_accuracies"]) == 5


def test_svm_separated_centres():
    d = 3072
    shift = 3 * d**0.25 * unit_direction(d, 2)
    r = D.svm_separability(gauss(200, d, 16), gauss(200, d, 17, shift=shift), seed=0)
    assert r["test_accuracy"] >= 0.95 and r["cv_mean"] >= 0.95


# ---------------------------------------------------------------------------------------------- Gaussianity


@pytest.mark.parametrize("seed,scale", [(20, 1.0), (21, 0.8), (22, 1.3)])
def test_radius_test_accepts_gaussians(seed, scale):
    r = D.radius_test(gauss(256, 3072, seed, scale=scale))
    assert r["gaussian_like"], r
    assert r["scale"] == pytest.approx(scale, rel=0.01)
    assert r["annulus_fraction"] == 1.0


def test_radius_test_accepts_big_gaussian(big_gauss):
    r = D.radius_test(big_gauss, scale=1.0)
    assert r["gaussian_like"] and r["ks_pvalue"] > 0.01


def test_radius_test_rejects_image_pixels(astronaut_patches):
    r = D.radius_test(astronaut_patches)
    assert not r["gaussian_like"]
    assert r["ks_pvalue"] < 1e-3 and r["annulus_fraction"] < r["annulus_bound"]


def test_radius_test_rejects_uniform_and_offset_data():
    u = torch.rand(256, 3072, generator=torch.Generator().manual_seed(23)) * 2 - 1
    ru = D.radius_test(u)
    assert not ru["gaussian_like"] and ru["spread_ratio"] < 0.75
    ro = D.radius_test(gauss(256, 3072, 24, shift=1.0))  # Gaussian pixels with a non-zero mean
    assert not ro["gaussian_like"]


def test_coordinate_normality(astronaut_patches):
    g = D.coordinate_normality(gauss(300, 3072, 25), n_coords=256, seed=0)
    assert g["consistent_with_gaussian"] and 0.9 <= g["fraction_passing"] <= 1.0
    assert g["coord_std_mean"] == pytest.approx(1.0, abs=0.02)
    im = D.coordinate_normality(astronaut_patches, n_coords=256, seed=0)
    assert not im["consistent_with_gaussian"] and im["fraction_passing"] < 0.5


# ---------------------------------------------------------------------------------------------- UMAP, figures


def test_umap_embedding_and_figure():
    d = 768
    sets = {"ID": gauss(60, d, 30), "OOD": gauss(40, d, 31, shift=2.0 * unit_direction(d, 3) * d**0.25)}
    names = {"ID": [f"prior_{i}" for i in range(60)], "OOD": [f"galaxy_{i}.png" for i in range(40)]}
    emb, labels = D.umap_embedding(sets, names, n_pca=50, seed=0)
    assert emb.shape == (100, 2) and np.isfinite(emb).all()
    assert list(labels[:60]) == ["ID"] * 60 and list(labels[60:]) == ["OOD"] * 40
    emb2, _ = D.umap_embedding(sets, names, n_pca=50, seed=0)
    np.testing.assert_allclose(emb, emb2)  # seeded
    fig = D.umap_figure(emb, labels, names)
    assert [t.name for t in fig.data] == ["ID", "OOD"]
    assert list(fig.data[1].hovertext) == names["OOD"]
    assert len(fig.data[0].x) == 60


def test_t_sweep_figure_orders_by_t():
    rows = [dict(t_end=t, svm_test_accuracy=0.5 + t / 2000, center_distance=t / 20, d_quarter=7.4,
                 pair_angle_deg=60.0, origin_angle_deg=89 + t / 1000, norm_ratio=1.0) for t in (900, 200, 500)]
    fig = D.t_sweep_figure(rows)
    acc = next(t for t in fig.data if t.name == "SVM test accuracy")
    assert list(acc.x) == [200, 500, 900]
    assert {t.name for t in fig.data} >= {"centre distance", "d^¼ (Lemma C.2)", "pair angle", "origin angle", "norm ratio"}


REQUIRED = ["d", "d_quarter", "n_id", "n_ood", "id_source", "pair_angle_deg", "origin_angle_deg", "pair_distance",
            "norm", "id", "center_distance", "noise_floor", "separable_by_criterion", "svm_test_accuracy", "svm_cv",
            "radius_test", "coordinate_normality"]


def test_diagnose_json_and_html(tmp_path):
    d = 3 * 16 * 16
    x_id = D.gaussian_prior(50, (3, 16, 16), seed=1)
    x_ood = gauss(40, d, 32, scale=1.1, shift=3 * d**0.25 * unit_direction(d, 4)).reshape(40, 3, 16, 16).numpy()
    seen = []
    rep = D.diagnose(x_ood, x_id, "prior N(0, I)", names_ood=[f"gal_{i}" for i in range(40)], seed=0,
                     progress=lambda stage, f: seen.append((stage, f)))
    fr = [f for _, f in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0 and {"gram", "svm", "umap"} <= {s for s, _ in seen}
    js = rep.to_json()
    for k in REQUIRED:
        assert k in js, k
    for k in ("pair_angle_deg", "origin_angle_deg", "pair_distance", "norm"):
        assert set(js[k]) >= {"mean", "std", "reference"} and set(js["id"][k]) >= {"mean", "std", "reference"}
    assert js["n_id"] == 50 and js["n_ood"] == 40 and js["d"] == d
    assert js["separable_by_criterion"] and js["svm_test_accuracy"] >= 0.9
    # fitted s^2 = mean of x^2 = 1.1^2 + |shift|^2 / d, so the norm reference is sqrt(1.21 d + 9 sqrt(d))
    assert js["norm"]["reference"] == pytest.approx(math.sqrt(1.21 * d + 9 * math.sqrt(d)), rel=0.02)
    assert js["centered_scale"] == pytest.approx(1.1, rel=0.02)
    assert js["id"]["norm"]["mean"] == pytest.approx(math.sqrt(d), rel=0.02)
    assert set(js["svm_cv"]) >= {"mean", "std", "ci95"} and len(js["svm_cv"]["ci95"]) == 2
    assert set(js["radius_test"]) == {"id", "ood"} and set(js["coordinate_normality"]) == {"id", "ood"}
    json.dumps(js, allow_nan=False)
    # the report's Gram-based numbers agree with the standalone functions
    assert js["center_distance"] == pytest.approx(D.center_distance(x_id, x_ood), rel=1e-6)
    assert js["id"]["origin_angle_deg"]["mean"] == pytest.approx(D.geometry(x_id).origin_angle_deg.mean, rel=1e-9)

    rows = D.table_rows(rep)
    assert all(set(r) == {"quantity", "ID", "OOD", "isotropic Gaussian reference"} for r in rows)
    sweep = D.t_sweep_figure([dict(t_end=900, svm_test_accuracy=1.0, center_distance=30, d_quarter=5.9,
                                   pair_angle_deg=60, origin_angle_deg=89.5, norm_ratio=1.0)])
    path = D.write_html_report(rep, tmp_path / "report.html", extra_figures={"Timestep sweep": sweep})
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", text, re.I)  # offline
    assert text.count("plotly.js v") >= 1 and len(text) > 1_000_000  # plotly.js inlined
    assert text.count('class="plotly-graph-div"') == 4  # geometry, radii, UMAP, sweep
    for title in ("Geometry", "Radii", "UMAP", "Timestep sweep", "Centre distance", "gal_3"):
        assert title in text


def test_gaussian_prior():
    a = D.gaussian_prior(64, (3, 8, 8), seed=5)
    assert a.shape == (64, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, D.gaussian_prior(64, (3, 8, 8), seed=5))
    assert not torch.equal(a, D.gaussian_prior(64, (3, 8, 8), seed=6))
    assert abs(float(a.mean())) < 0.05 and float(a.std()) == pytest.approx(1.0, abs=0.05)
    ac = np.linspace(0.999, 0.001, 1000)
    assert torch.equal(D.gaussian_prior(4, (2,), ac, t=999, seed=1), D.gaussian_prior(4, (2,), seed=1))
    with pytest.raises(ValueError, match="push"):
        D.gaussian_prior(4, (2,), ac, t=500)
    out = D.gaussian_prior(4, (2,), ac, t=500, push=lambda x, t: x * 0 + t)
    assert float(out[0, 0]) == 500.0
