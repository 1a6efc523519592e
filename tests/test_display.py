"""oodgen.display and oodgen.fallback: what the app shows, without a browser."""

import numpy as np
import plotly.graph_objects as go

from oodgen import display, fallback
from oodgen.data import Stretch, load_paths, preview
from tests.conftest import SAMPLES

ST = Stretch((0.0, 1.0, 10.0), (100.0, 50.0, 1000.0), (5.0, 2.0, 50.0), "MJy/sr", ("IRAC 4.5", "MIPS 24", "SPIRE 250"))


def test_colour_bar_ticks_are_the_physical_values_of_the_stretch():
    assert display.tick_values(ST, 2, (0.0, 1.0)) == [10.0, 1000.0]  # lo and hi of the band
    mid = display.tick_values(ST, 0, (0.5,))[0]
    assert abs(ST.forward(np.array([[mid, 1.0, 10.0]]))[0, 0] - 0.5) < 1e-5  # the inverse of what the display does
    bar = display.colorbar_image(ST)
    assert bar.ndim == 3 and bar.shape[0] > 3 * 40  # three bars, one per band
    assert display.colorbar_image(ST, "band: MIPS 24").shape[0] < bar.shape[0]
    assert display.colorbar_image(None) is None


def test_legend_names_bands_unit_and_the_composite_order():
    text = display.legend_markdown(ST)
    assert "R = **SPIRE 250**" in text and "B = **IRAC 4.5**" in text and "MJy/sr" in text
    assert "MIPS 24** alone" in display.legend_markdown(ST, "band: MIPS 24")
    assert display.view_choices(ST) == ["composite", "band: IRAC 4.5", "band: MIPS 24", "band: SPIRE 250"]
    assert display.view_choices(None) == [] and display.legend_markdown(None) == ""


def test_band_view_is_the_band_in_grey_and_the_composite_is_unchanged():
    s = load_paths([SAMPLES / "radiation"]).samples[0]
    rgb = preview(s, None)
    assert display.band_view(rgb, None, ST) is rgb
    for band in range(3):
        grey = display.band_view(rgb, band, ST)
        assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
        assert (grey[..., 0] == rgb[..., 2 - band]).all()  # band k is display channel 2 - k (R = longest wavelength)


def test_theme_and_wrapped_titles():
    fig = go.Figure(layout={"title": "UMAP of latents (ID: the model's own prior N(0, I), pushed to t_end by DDIM, 100 draws)"})
    dark, light = display.theme_figure(fig, True), display.theme_figure(fig, False)
    assert dark.layout.template.layout.paper_bgcolor != light.layout.template.layout.paper_bgcolor
    assert dark.layout.paper_bgcolor == "rgba(0,0,0,0)"
    assert "<br>" in dark.layout.title.text and dark.layout.margin.t >= 40 + 22 * 2
    assert fig.layout.template.layout.paper_bgcolor is None or fig is not dark  # the input is not changed
    assert display.theme_figure(None, True) is None


def test_sweep_table_names_and_rounding():
    rows = [{"t_end": 600, "svm_test_accuracy": 0.91234, "center_distance": 12.3456, "d_quarter": 7.4, "noise_floor": 3.21,
             "pair_angle_deg": 59.87, "origin_angle_deg": 88.01, "norm_ratio": 1.0234, "radius_gaussian_like": True},
            {"t_end": 200, "svm_test_accuracy": 1.0, "center_distance": 5.0, "d_quarter": 7.4, "noise_floor": 3.2,
             "pair_angle_deg": 50.0, "origin_angle_deg": 80.0, "norm_ratio": 0.5, "radius_gaussian_like": False}]
    df = display.sweep_table(rows)
    assert list(df["t_end"]) == [200, 600]
    assert df.loc[1, "SVM accuracy (0.5 = not separable)"] == 0.912 and df.loc[1, "centre distance"] == 12.35
    assert list(df["separable"]) == ["no", "yes"] and list(df["radii Gaussian-like"]) == ["no", "yes"]
    assert not any("_" in c and c != "t_end" for c in df.columns)


def test_recon_pairs_are_whole_with_their_mae():
    o = np.zeros((2, 32, 32, 3), np.uint8)
    pics = display.recon_pairs(o, o + 40, np.array([0.01234, 0.2]), ["a.png", "b.png"])
    assert [c for _, c in pics] == ["a.png: MAE 0.0123", "b.png: MAE 0.2000"]
    assert pics[0][0].shape[1] > 2 * 128  # both images, side by side
    t = display.recon_table(np.array([0.01, 0.03]), ["a", "b"])
    assert list(t["image"]) == ["a", "b", "mean"] and t.iloc[-1, 1] == 0.02


def test_domain_check_tells_the_model_domain_from_the_run_data():
    """Known answers: with faces as the model's own images and galaxies as the run's, held-out faces are flagged and
    held-out galaxies are not."""
    faces = np.stack([preview(s) for s in load_paths([SAMPLES / "faces_train"]).samples])
    gal = [s for s in load_paths([SAMPLES / "galaxy"]).samples if s.data.shape[0] == 64]
    gals = np.stack([preview(s) for s in gal])
    held_faces = np.stack([preview(s) for s in load_paths([SAMPLES / "faces"]).samples])
    ood, held_gal = gals[:60], gals[60:72]
    flagged_faces = [fallback.check(f, ood, faces[:40]).in_domain for f in held_faces]
    flagged_gal = [fallback.check(g, ood, faces[:40]).in_domain for g in held_gal]
    assert sum(flagged_faces) >= 10 and sum(flagged_gal) == 0, (flagged_faces, flagged_gal)
    r = fallback.check(held_faces[0], ood, faces[:40])
    assert "model's own domain" in r.message() and r.n_ref == 40


def test_view_in_force_is_always_one_of_the_choices():
    """An image set has no views and its view is None; a view radio given (choices [], value "composite") is refused
    by Gradio on the next event that reads it, which left the Generate tab without a decoded image for image runs."""
    from oodgen import views

    for asked in (None, "composite", "band: MIPS 24"):
        legend, bar, choices, view = views._physical_legend(None, asked)
        assert (legend, bar, choices, view) == ("", None, [], None)
        _, _, choices, view = views._physical_legend(ST, asked)
        assert view in choices
    assert views._physical_legend(ST, "band: MIPS 24")[3] == "band: MIPS 24"
    assert display.band_index(None, ST) is None and display.band_index(None, None) is None
