"""oodgen web app: pick data, invert it with a frozen DDPM, explore and generate in the OOD latent space.

UI only: every event calls a plain-value function of :mod:`oodgen.service`. Run ``python app.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402

from oodgen import service  # noqa: E402
from oodgen.bundled import SAMPLE_SETS  # noqa: E402
from oodgen.config import METHODS, DDIMSettings, GenerationSettings  # noqa: E402
from oodgen.models import DEFAULT_MODEL, REGISTRY  # noqa: E402

DDIM = DDIMSettings()
GEN = GenerationSettings()
CSS = ".pixelated img { image-rendering: pixelated; }"


def on_model(name: str) -> str:
    try:
        return service.model_summary(service.get_model(name))
    except Exception as e:  # shown to the user as is: loading errors are written for people
        return f"**Cannot load {name}**: {e}"


def on_load_data(bundled: str | None, uploads: list[str] | None):
    try:
        report = service.load_dataset(bundled or None, uploads or [])
    except ValueError as e:
        return [], f"**{e}**", []
    return service.gallery(report.samples), service.errors_markdown(report), report.samples


def on_invert(model_name: str, samples, t_end: int, steps: int, batch_size: int, progress=gr.Progress()):
    if not samples:
        raise gr.Error("Load a dataset first (Data tab).")
    try:
        settings = DDIMSettings(t_end=int(t_end), steps=int(steps), batch_size=int(batch_size))
        model = service.get_model(model_name)
    except Exception as e:
        raise gr.Error(str(e)) from None
    progress(0, desc="inverting")
    inv = service.invert_dataset(model, samples, settings, progress=lambda d, t: progress(d / t, desc=f"inverting: {d}/{t} image-steps"))
    n = len(inv.names)
    status = f"Inverted **{n}** samples to t = {settings.t_end} ({settings.steps} DDIM steps) with {model.name}."
    slider = gr.Slider(minimum=0, maximum=n - 1, step=1)
    return inv, status, slider, gr.Slider(minimum=0, maximum=n - 1, step=1, value=min(1, n - 1))


def on_decode(model_name: str, inv, i: int, j: int, alpha: float, method: str, eta: float, seed: int):
    if inv is None:
        raise gr.Error("Run an inversion first.")
    model = service.get_model(model_name)
    return service.decode_pair(model, inv, int(i), int(j), float(alpha), method, float(eta), int(seed))


def on_strip(model_name: str, inv, i: int, j: int, method: str):
    if inv is None:
        raise gr.Error("Run an inversion first.")
    return service.decode_strip(service.get_model(model_name), inv, int(i), int(j), 7, method)


def build() -> gr.Blocks:
    with gr.Blocks(title="oodgen") as demo:
        gr.Markdown("# oodgen\nNew images of domains a diffusion model never saw: DDIM-invert your images with a frozen DDPM, then sample in its latent space.")
        samples = gr.State(None)
        inverted = gr.State(None)
        with gr.Row():
            model = gr.Dropdown(list(REGISTRY), value=DEFAULT_MODEL, label="Base model", allow_custom_value=True, scale=2)
            model_info = gr.Markdown()
        with gr.Tab("Data"):
            with gr.Row():
                bundled = gr.Radio(list(SAMPLE_SETS), value="galaxy", label="Bundled sample set",
                                   info="; ".join(f"{k}: {s.description}" for k, s in SAMPLE_SETS.items()))
                uploads = gr.File(file_count="multiple", type="filepath", label="Or upload images, FITS, .npy/.npz or a zip")
            load_btn = gr.Button("Load data", variant="primary")
            data_report = gr.Markdown(elem_id="data_report")
            preview = gr.Gallery(label="Preview", columns=10, height=360, elem_classes="pixelated", elem_id="preview")
        with gr.Tab("Invert"):
            with gr.Row():
                t_end = gr.Slider(100, 999, value=DDIM.t_end, step=1, label="t_end (operating timestep)", elem_id="t_end")
                steps = gr.Slider(5, 200, value=DDIM.steps, step=1, label="DDIM steps", elem_id="steps")
                batch = gr.Slider(1, 256, value=DDIM.batch_size, step=1, label="Batch size", elem_id="batch")
            invert_btn = gr.Button("Invert", variant="primary")
            invert_status = gr.Markdown(elem_id="invert_status")
        with gr.Tab("Generate"):
            with gr.Row():
                i = gr.Slider(0, 1, value=0, step=1, label="Sample i")
                j = gr.Slider(0, 1, value=1, step=1, label="Sample j")
            with gr.Row():
                alpha = gr.Slider(0, 1, value=GEN.alpha, step=0.05, label="alpha", elem_id="alpha")
                method = gr.Radio([m for m in METHODS if m != "gaussian"], value="slerp", label="Interpolation")
                eta = gr.Slider(0, 1, value=GEN.eta, step=0.05, label="eta")
                seed = gr.Number(value=GEN.seed, precision=0, label="Seed")
            image = gr.Image(label="Decoded Interp(x_i, x_j)", height=256, elem_classes="pixelated", elem_id="decoded")
            strip_btn = gr.Button("Interpolation strip i -> j")
            strip = gr.Gallery(label="Strip", columns=7, height=180, elem_classes="pixelated", elem_id="strip")
        with gr.Tab("Rate"):
            gr.Markdown("Expert Mean Opinion Score sessions arrive with the MOS feature.")
        with gr.Tab("Results"):
            gr.Markdown("MOS summaries arrive with the MOS feature.")

        demo.load(on_model, model, model_info)
        model.change(on_model, model, model_info)
        load_btn.click(on_load_data, [bundled, uploads], [preview, data_report, samples])
        invert_btn.click(on_invert, [model, samples, t_end, steps, batch], [inverted, invert_status, i, j])
        decode_inputs = [model, inverted, i, j, alpha, method, eta, seed]
        for control in (alpha, i, j, eta, method):  # "always_last": a drag decodes its latest position
            control.change(on_decode, decode_inputs, image)
        strip_btn.click(on_strip, [model, inverted, i, j, method], strip)
    return demo


demo = build()

if __name__ == "__main__":
    demo.launch(css=CSS, max_file_size="200mb")
