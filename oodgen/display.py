"""What the app shows, as plain values: themed plots, physical-map legends and colour bars, per-band views,
side-by-side pictures and readable tables. No gradio here (the app only lays these out).

Physical maps are shown as a composite (R = longest wavelength, per-band asinh stretch, the order of
:func:`oodgen.data.to_model_input`) or one band at a time in grey. Every shown map comes with its
colour bars: display intensity 0 ... 1 against the physical value of that band, in the data's unit
(:meth:`oodgen.data.Stretch.inverse` at the tick positions), so a viewer can read values off a picture.
"""

from __future__ import annotations

import copy
import textwrap
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from .data import Stretch

COMPOSITE = "composite"
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)  # display intensities labelled on a colour bar
_CHANNEL_COLOURS = ((230, 40, 40), (40, 190, 40), (60, 90, 240))  # R, G, B gradients of the composite's bars


# ---------------------------------------------------------------- plots
def theme_figure(fig: Any, dark: bool = False, width_chars: int = 60) -> Any:
    """A copy of plotly figure ``fig`` in the page's theme (template plotly_dark or plotly_white, transparent
    background), with a long title wrapped onto lines of about ``width_chars`` and the top margin made room for it,
    so that neither the title nor the subplot titles are cut. None stays None."""
    if fig is None:
        return None
    fig = copy.deepcopy(fig)
    fig.update_layout(template="plotly_dark" if dark else "plotly_white", paper_bgcolor="rgba(0,0,0,0)",
                      plot_bgcolor="rgba(0,0,0,0)" if dark else "white")
    title = fig.layout.title.text if fig.layout.title is not None else None
    lines = 0
    if title:
        wrapped = textwrap.wrap(str(title).replace("<br>", " "), width_chars) or [str(title)]
        lines = len(wrapped)
        fig.update_layout(title={"text": "<br>".join(wrapped), "x": 0.01, "xanchor": "left", "font": {"size": 15},
                                 "y": 1.0, "yref": "container", "yanchor": "top", "pad": {"t": 20}})
    top = fig.layout.margin.t if fig.layout.margin is not None and fig.layout.margin.t is not None else 0
    fig.update_layout(margin={"t": max(top, 50 + 22 * lines)})
    for a in fig.layout.annotations or ():  # subplot titles
        if a.text and len(str(a.text)) > width_chars:
            a.text = "<br>".join(textwrap.wrap(str(a.text), width_chars))
    return fig


# ---------------------------------------------------------------- physical maps
def stretch_of(meta: Optional[dict]) -> Optional[Stretch]:
    """The display stretch recorded in a run's or generated set's metadata (None for images)."""
    st = (meta or {}).get("stretch")
    if not st:
        return None
    try:
        return Stretch.from_json(st)
    except (TypeError, ValueError):
        return None


def band_names(stretch: Stretch) -> list[str]:
    """Band names in the data's order (increasing wavelength); "band k" where the data did not name them."""
    return list(stretch.bands) if stretch.bands else [f"band {k + 1}" for k in range(stretch.channels)]


def view_choices(stretch: Optional[Stretch]) -> list[str]:
    """The views of a physical set: the composite, then each band (none for images)."""
    if stretch is None:
        return []
    return [COMPOSITE] + [f"band: {b}" for b in band_names(stretch)]


def band_index(view: Optional[str], stretch: Optional[Stretch]) -> Optional[int]:
    """The band a view shows (0-based, the data's order), or None for the composite (and for images)."""
    if stretch is None or not view or view == COMPOSITE:
        return None
    names = [f"band: {b}" for b in band_names(stretch)]
    if view not in names:
        raise ValueError(f"view {view!r}: choose one of {', '.join([COMPOSITE] + names)}")
    return names.index(view)


def _channel_of_band(band: int, stretch: Stretch) -> int:
    """Display/model channel holding ``band``: bands are reversed (R = longest wavelength); 1 band is grey."""
    return 0 if stretch.channels == 1 else stretch.channels - 1 - band


def band_view(rgb: np.ndarray, band: Optional[int], stretch: Optional[Stretch]) -> np.ndarray:
    """The composite uint8 [..., H, W, 3] as it is (band None), or band ``band`` alone in grey (white = the stretch's hi)."""
    if band is None or stretch is None:
        return rgb
    c = _channel_of_band(int(band), stretch)
    return np.ascontiguousarray(np.repeat(rgb[..., c : c + 1], 3, axis=-1))


def tick_values(stretch: Stretch, band: int, ticks: Sequence[float] = TICKS) -> list[float]:
    """Physical values of ``band`` at display intensities ``ticks`` (0 = lo, 1 = hi of the stretch)."""
    y = np.zeros((len(ticks), stretch.channels))
    y[:, band] = ticks
    return [float(v) for v in stretch.inverse(y)[:, band]]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def legend_markdown(stretch: Optional[Stretch], view: Optional[str] = COMPOSITE) -> str:
    """One Markdown line: what the colours are (bands, unit, stretch) for the composite or one band's view."""
    if stretch is None:
        return ""
    names, unit = band_names(stretch), stretch.unit or "data units (no unit recorded)"
    band = band_index(view, stretch)
    if band is not None:
        lo, hi = tick_values(stretch, band, (0.0, 1.0))
        return (f"**{names[band]}** alone, grey: black = {_fmt(lo)}, white = {_fmt(hi)} {unit}, asinh stretch "
                "(colour bar below; the same stretch for every map shown).")
    if stretch.channels == 1:
        lo, hi = tick_values(stretch, 0, (0.0, 1.0))
        return f"**{names[0]}** in grey: black = {_fmt(lo)}, white = {_fmt(hi)} {unit}, asinh stretch."
    order = ", ".join(f"{ch} = **{names[stretch.channels - 1 - c]}**" for c, ch in enumerate("RGB"[: stretch.channels]))
    return (f"Composite: {order}, each band asinh-stretched on its own ({unit}; colour bars below). "
            "Pick a band to see it alone.")


def colorbar_image(stretch: Optional[Stretch], view: Optional[str] = COMPOSITE, width: int = 360) -> Optional[np.ndarray]:
    """uint8 picture of the colour bar(s) of ``view``: per bar a gradient from display 0 to 1, ticked with the band's
    physical values (:func:`tick_values`) and titled with the band's name, its colour and the unit. None for images."""
    if stretch is None:
        return None
    from PIL import Image, ImageDraw, ImageFont

    band = band_index(view, stretch)
    names, unit = band_names(stretch), stretch.unit or "data units"
    if band is not None or stretch.channels == 1:
        bars = [(band or 0, (255, 255, 255), "grey")]
    else:  # R, G, B = bands reversed
        bars = [(stretch.channels - 1 - c, _CHANNEL_COLOURS[c], "RGB"[c]) for c in range(stretch.channels)]
    font = ImageFont.load_default(size=13)
    pad, bar_h, row_h = 14, 14, 58
    img = Image.new("RGB", (width + 2 * pad, row_h * len(bars) + 4), (255, 255, 255))
    d = ImageDraw.Draw(img)
    ramp = np.linspace(0.0, 1.0, width)
    for r, (b, colour, ch) in enumerate(bars):
        y0 = r * row_h + 2
        d.text((pad, y0), f"{ch}: {names[b]} [{unit}]" if ch in "RGB" else f"{names[b]} [{unit}]", fill=(0, 0, 0), font=font)
        grad = (ramp[None, :, None] * np.array(colour, float)[None, None, :]).round().astype(np.uint8)
        img.paste(Image.fromarray(np.repeat(grad, bar_h, axis=0)), (pad, y0 + 17))
        d.rectangle((pad - 1, y0 + 16, pad + width, y0 + 17 + bar_h), outline=(0, 0, 0))
        for t, v in zip(TICKS, tick_values(stretch, b)):
            x = pad + int(round(t * (width - 1)))
            d.line((x, y0 + 17 + bar_h, x, y0 + 21 + bar_h), fill=(0, 0, 0))
            label = _fmt(v)
            tw = d.textlength(label, font=font)
            d.text((min(max(0, x - tw / 2), width + 2 * pad - tw), y0 + 22 + bar_h), label, fill=(0, 0, 0), font=font)
    return np.asarray(img)


# ---------------------------------------------------------------- pictures
def labelled_row(images: Sequence[np.ndarray], labels: Sequence[str], side: int = 192, pad: int = 6) -> np.ndarray:
    """uint8 images side by side, each upscaled to about ``side`` px by pixel repetition, with its label above."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    tiles = []
    for im in images:
        im = np.asarray(im)
        if im.ndim == 2 or im.shape[-1] == 1:  # grey models (oodgen-faces-32): [H, W] or [H, W, 1] shown as RGB
            im = np.repeat(im.reshape(im.shape[0], im.shape[1], 1), 3, axis=-1)
        k = max(1, side // max(im.shape[:2]))
        tiles.append(np.repeat(np.repeat(im, k, axis=0), k, axis=1))
    h = max(t.shape[0] for t in tiles)
    top = 22
    out = Image.new("RGB", (sum(t.shape[1] for t in tiles) + pad * (len(tiles) + 1), h + top + pad), (255, 255, 255))
    d = ImageDraw.Draw(out)
    x = pad
    for t, lab in zip(tiles, labels):
        out.paste(Image.fromarray(np.ascontiguousarray(t)), (x, top))
        d.text((x, 3), str(lab), fill=(0, 0, 0), font=font)
        x += t.shape[1] + pad
    return np.asarray(out)


def recon_pairs(original: np.ndarray, reconstruction: np.ndarray, mae: np.ndarray, names: Sequence[str],
                side: int = 128) -> list[tuple[np.ndarray, str]]:
    """One picture per original-versus-reconstruction pair (the two side by side, whole, with the MAE written above them)
    and its caption: [(uint8 picture, "name: MAE 0.0123")]."""
    out = []
    for o, r, m, n in zip(original, reconstruction, mae, names):
        pic = labelled_row([o, r], [f"original {str(n)[:16]}", f"reconstruction, MAE {float(m):.4f}"], side=side)
        out.append((pic, f"{n}: MAE {float(m):.4f}"))
    return out


def recon_table(mae: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """The reconstruction pairs' MAE as a table (on the [0, 1] scale), with their mean."""
    rows = [{"image": str(n), "MAE ([0, 1] scale)": round(float(m), 4)} for n, m in zip(names, mae)]
    if len(rows):
        rows.append({"image": "mean", "MAE ([0, 1] scale)": round(float(np.mean(mae)), 4)})
    return pd.DataFrame(rows, columns=["image", "MAE ([0, 1] scale)"])


def side_by_side(real: np.ndarray, generated: np.ndarray, k: int = 8, seed: int = 0, side: int = 64) -> Optional[np.ndarray]:
    """Real versus generated: a row of up to ``k`` real images (seeded draw) over a row of ``k`` generated ones, all at the
    same display size (each upscaled to about ``side`` px), labelled; uint8 picture, None when either set is empty."""
    from .quality import montage

    if not len(real) or not len(generated):
        return None
    rng = np.random.default_rng(seed)
    rows = []
    for s in (real, generated):
        idx = np.sort(rng.choice(len(s), size=min(k, len(s)), replace=False))
        rows.append(np.stack([_resize_to(s[q], side) for q in idx]))
    return montage(rows, ["real", "generated"], scale=1)


def _resize_to(im: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if im.shape[0] == side and im.shape[1] == side:
        return im
    return np.asarray(Image.fromarray(np.ascontiguousarray(im)).resize((side, side), Image.NEAREST))


# ---------------------------------------------------------------- tables
SWEEP_COLUMNS = {
    "t_end": "t_end",
    "svm_test_accuracy": "SVM accuracy (0.5 = not separable)",
    "center_distance": "centre distance",
    "d_quarter": "d^¼ threshold",
    "noise_floor": "noise floor",
    "pair_angle_deg": "pair angle (deg)",
    "origin_angle_deg": "origin angle (deg)",
    "norm_ratio": "norm / √d",
    "radius_gaussian_like": "radii Gaussian-like",
}


def sweep_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The t sweep as people read it: named columns, t_end ascending, numbers to 3 decimals (2 for distances and angles),
    plus whether the centre distance clears d^¼ ("separable")."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return df
    df = df.sort_values("t_end")
    if {"center_distance", "d_quarter"} <= set(df.columns):
        df["separable"] = np.where(df["center_distance"] > df["d_quarter"], "yes", "no")
    digits = {"svm_test_accuracy": 3, "norm_ratio": 3, "center_distance": 2, "d_quarter": 2, "noise_floor": 2,
              "pair_angle_deg": 1, "origin_angle_deg": 1}
    for c, k in digits.items():
        if c in df.columns:
            df[c] = df[c].astype(float).round(k)
    if "radius_gaussian_like" in df.columns:
        df["radius_gaussian_like"] = df["radius_gaussian_like"].map(lambda v: "yes" if v else "no")
    return df.rename(columns=SWEEP_COLUMNS).reset_index(drop=True)


def job_time(iso: Optional[str]) -> str:
    """'18:47 UTC' (today) or '2026-12-01 18:47 UTC' from a job's ISO time; '' when missing."""
    from datetime import datetime, timezone

    if not iso:
        return ""
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return str(iso)
    today = datetime.now(timezone.utc).date()
    return t.strftime("%H:%M UTC") if t.date() == today else t.strftime("%Y-%m-%d %H:%M UTC")
