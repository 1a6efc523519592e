"""The baselines: vanilla fine-tuning of a copy of the base model, and the pixel crossfade, as generated sets."""

import json

import numpy as np
import pytest
import torch

from oodgen import finetune
from oodgen.cli import main
from oodgen.ddim import Cancelled
from oodgen.models import FrozenDDPM, load_model
from oodgen.schedule import linear_alphas_cumprod
from tests.conftest import BUNDLED_MODEL, SAMPLES, require_bundled_model, tiny_unet


def _tiny_base() -> FrozenDDPM:
    unet = tiny_unet().eval().requires_grad_(False)
    return FrozenDDPM(unet=unet, alphas_cumprod=linear_alphas_cumprod(), name="tiny", resolution=8, channels=3,
                      device=torch.device("cpu"), dtype=torch.float32)


def _ood_images(n: int = 6) -> torch.Tensor:
    """Smooth seeded blobs [n, 3, 8, 8] in [-1, 1] (nothing like the random UNet's output)."""
    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    c = torch.rand(n, 2, generator=g) - 0.5
    r = ((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2)
    blob = torch.exp(-r / 0.2)[:, None]
    return (blob * torch.rand(n, 3, 1, 1, generator=g) * 2 - 1).contiguous()


def _state(unet) -> dict:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_finetuning_lowers_the_loss_on_the_ood_set_and_leaves_the_base_model_alone():
    base, x = _tiny_base(), _ood_images()
    before = _state(base.unet)
    loss0 = finetune.evaluation_loss(base.unet, base, x)
    result = finetune.finetune(base, x, finetune.FinetuneSettings(steps=40, batch_size=8, lr=2e-3, seed=1))
    loss1 = finetune.evaluation_loss(result.unet, base, x)
    assert result.steps == 40 and len(result.losses) == 40 and result.resumed_from == 0
    assert loss1 < 0.7 * loss0, (loss0, loss1)  # the same seeded (t, noise) draws before and after
    after = _state(base.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen base model is untouched
    assert not any(p.requires_grad for p in base.unet.parameters())
    assert result.unet is not base.unet and not any(p.requires_grad for p in result.unet.parameters())


def test_the_loss_is_the_ddpm_epsilon_loss_of_the_linear_schedule():
    """Known answer: a UNet that outputs the true noise exactly has zero loss; one that outputs zeros has E[eps^2] = 1."""
    class Oracle(torch.nn.Module):
        def __init__(self, noise):
            super().__init__()
            self.noise = noise

        def forward(self, x, t):
            return type("Out", (), {"sample": self.noise})()

    x0 = torch.zeros(64, 3, 8, 8)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    acp = torch.tensor(linear_alphas_cumprod(), dtype=torch.float32)
    t = torch.full((64,), 500)
    assert float(finetune.ddpm_loss(Oracle(noise), x0, t, noise, acp)) == 0.0
    assert float(finetune.ddpm_loss(Oracle(torch.zeros_like(noise)), x0, t, noise, acp)) == pytest.approx(1.0, abs=0.05)


def test_a_stopped_finetune_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(tmp_path):
    base, x = _tiny_base(), _ood_images()
    settings = finetune.FinetuneSettings(steps=6, batch_size=4, lr=1e-3, seed=3, checkpoint_every=2)
    straight = finetune.finetune(base, x, settings)

    # cancelled before step 4: a checkpoint at step 3 is written, and the same call resumes from it
    calls = []
    with pytest.raises(Cancelled):
        finetune.finetune(base, x, settings, checkpoint_dir=tmp_path / "a", cancel=lambda: calls.append(1) or len(calls) > 3)
    assert torch.load(tmp_path / "a" / finetune.CHECKPOINT, weights_only=False)["step"] == 3
    resumed = finetune.finetune(base, x, settings, checkpoint_dir=tmp_path / "a")
    assert resumed.resumed_from == 3 and resumed.steps == 6 and resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    a, b = _state(straight.unet), _state(resumed.unet)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    # a crash at step 5 (no cancel): the periodic checkpoint of step 4 is where it goes on
    def crash(done, total):
        if done == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        finetune.finetune(base, x, settings, checkpoint_dir=tmp_path / "b", progress=crash)
    resumed = finetune.finetune(base, x, settings, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from == 4
    b = _state(resumed.unet)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # a checkpoint of other settings is not resumed
    other = finetune.finetune(base, x, finetune.FinetuneSettings(steps=6, batch_size=4, lr=5e-4, seed=3), checkpoint_dir=tmp_path / "b")
    assert other.resumed_from == 0


def test_a_time_budget_stops_the_training():
    base, x = _tiny_base(), _ood_images()
    result = finetune.finetune(base, x, finetune.FinetuneSettings(steps=None, seconds=0.5, batch_size=2))
    assert result.steps >= 1 and result.seconds >= 0.5


def test_the_tuned_model_is_a_diffusers_folder_with_the_base_schedule_and_a_record(tiny_pipeline_dir, tmp_path):
    base = load_model(str(tiny_pipeline_dir), device="cpu", dtype="float32")
    x = _ood_images()
    result = finetune.finetune(base, x, finetune.FinetuneSettings(steps=3, batch_size=2))
    out = finetune.save_tuned(result, base, tmp_path / "tuned", {"data": [{"name": "a.png", "sha256": "0" * 64}]})
    tuned = load_model(str(out), device="cpu", dtype="float32")
    assert np.array_equal(tuned.alphas_cumprod, base.alphas_cumprod)
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text()) == \
        json.loads((tiny_pipeline_dir / "scheduler" / "scheduler_config.json").read_text())  # copied from the base model
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(tuned.eps(z, 400), result.unet(z, torch.full((2,), 400)).sample, atol=1e-6)
    rec = finetune.read_record(out)
    assert rec["base_model"] == str(tiny_pipeline_dir) and rec["steps"] == 3 and len(rec["loss"]) == 3 and rec["data"][0]["name"] == "a.png"
    images = finetune.sample(tuned, 3, steps=4, seed=2)
    assert images.shape == (3, 3, 8, 8) and torch.equal(images, finetune.sample(tuned, 3, steps=4, seed=2))  # seeded
    with pytest.raises(finetune.FinetuneError, match="not a fine-tuned model folder"):
        finetune.save_tuned(result, base, tiny_pipeline_dir)  # never over the base model
    with pytest.raises(ValueError, match="steps or a time budget"):
        finetune.FinetuneSettings(steps=None)


def _study_methods(home) -> set:
    from oodgen import ratings

    return {(e.source, e.method) for s in ratings.list_studies(home) for e in s.items}


def test_pixel_method_outputs_are_the_average_of_the_recorded_pair(tmp_path):
    # physical maps: the .npy [band, y, x] is the pixel mean of the two recorded sources, in MJy/sr
    out = tmp_path / "pix_dust"
    assert main(["-q", "generate", "--method", "pixel", "--input", str(SAMPLES / "radiation"), "--n", "5", "--seed", "2", "--out", str(out)]) == 0
    m = json.loads((out / "generated.json").read_text())
    assert m["method"] == "pixel" and m["generation"]["method"] == "pixel" and m["unit"] == "MJy/sr" and len(m["samples"]) == 5
    assert len({(s["i"], s["j"]) for s in m["samples"]}) > 1
    for s in m["samples"]:
        assert s["i"] != s["j"] and s["alpha"] == 0.5
        a, b = (np.load(SAMPLES / "radiation" / n.split("/")[-1]) for n in (s["source_i"], s["source_j"]))
        got = np.load(out / s["npy"])
        assert got.shape == a.shape == (3, 64, 64)
        np.testing.assert_allclose(got, 0.5 * a + 0.5 * b, rtol=1e-5, atol=1e-6)
    # images at alpha 0.3: the PNG is (1 - alpha) x_i + alpha x_j of the sources, to rounding
    from PIL import Image

    out = tmp_path / "pix_faces"
    assert main(["-q", "generate", "--method", "pixel", "--input", str(SAMPLES / "faces"), "--n", "4", "--alpha", "0.3", "--out", str(out)]) == 0
    m = json.loads((out / "generated.json").read_text())
    for s in m["samples"]:
        a, b = (np.asarray(Image.open(SAMPLES / "faces" / n.split("/")[-1]).convert("RGB"), dtype=np.float64) for n in (s["source_i"], s["source_j"]))
        got = np.asarray(Image.open(out / s["file"]).convert("RGB"), dtype=np.float64)
        assert s["alpha"] == 0.3 and np.abs(got - (0.7 * a + 0.3 * b)).max() <= 1.0
    assert main(["-q", "generate", "--method", "pixel", "--n", "2", "--out", str(tmp_path / "x")]) == 2  # no --input: one clear line


def test_finetune_and_pixel_sets_load_in_a_mos_study_and_in_evaluate(tmp_path, capsys):
    require_bundled_model()
    tuned = tmp_path / "tuned"
    assert main(["-q", "finetune", "--input", str(SAMPLES / "faces"), "--out", str(tuned), "--model", str(BUNDLED_MODEL), "--steps", "4",
                 "--batch-size", "4", "--checkpoint-every", "2"]) == 0
    rec = finetune.read_record(tuned)
    assert rec["steps"] == 4 and rec["n_images"] == 12 and len(rec["data"]) == 12 and all(len(d["sha256"]) == 64 for d in rec["data"])
    assert not finetune.checkpoint_dir_for(tuned).exists()  # checkpoints are removed once the model is saved
    sets = {"finetune": tmp_path / "gen_ft", "pixel": tmp_path / "gen_pix"}
    assert main(["-q", "generate", "--method", "finetune", "--model", str(tuned), "--n", "6", "--steps", "5", "--out", str(sets["finetune"])]) == 0
    assert main(["-q", "generate", "--method", "pixel", "--input", str(SAMPLES / "faces"), "--n", "6", "--out", str(sets["pixel"])]) == 0
    m = json.loads((sets["finetune"] / "generated.json").read_text())
    assert m["base_model"] == str(BUNDLED_MODEL) and m["ddim"]["t_end"] == 999 and len(list(sets["finetune"].glob("*.png"))) == 6
    for k, (method, folder) in enumerate(sets.items()):
        home = tmp_path / f"mos_{method}"
        assert main(["-q", "mos", "create-study", "--home", str(home), "--id", f"s{k}", "--domain", "faces", "--real", str(SAMPLES / "faces"),
                     "--generated", str(folder)]) == 0
        assert ("generated", method) in _study_methods(home)  # the study records the method from generated.json
        js = tmp_path / f"q_{method}.json"
        assert main(["-q", "evaluate", "--generated", str(folder), "--real", str(SAMPLES / "faces"), "--kind", "image", "--n-boot", "20",
                     "--workers", "1", "--json", str(js)]) == 0
        summary = json.loads(js.read_text())["summary"]
        assert [r["label"] for r in summary][1] == folder.name and summary[1]["n"] == 6


def test_pixel_with_latents_takes_the_inverted_sources_in_their_order_and_resolution(tmp_path):
    require_bundled_model()
    z = tmp_path / "faces.safetensors"
    assert main(["-q", "invert", "--input", str(SAMPLES / "faces"), "--out", str(z), "--model", str(BUNDLED_MODEL), "--steps", "3",
                 "--t-end", "300"]) == 0
    from oodgen.latents import read_metadata

    order = [s["name"] for s in read_metadata(z)["sources"]]
    out = tmp_path / "pix"
    assert main(["-q", "generate", "--method", "pixel", "--input", str(SAMPLES / "faces"), "--latents", str(z), "--n", "6", "--out", str(out)]) == 0
    m = json.loads((out / "generated.json").read_text())
    assert m["resolution"] == 32 and m["latents"] == str(z)
    assert all(order[s["i"]] == s["source_i"] and order[s["j"]] == s["source_j"] for s in m["samples"])  # i, j index the latent file
    # other images than the inverted ones: one clear error
    assert main(["-q", "generate", "--method", "pixel", "--input", str(SAMPLES / "faces_train"), "--latents", str(z), "--n", "2",
                 "--out", str(tmp_path / "bad")]) == 2
