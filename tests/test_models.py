"""Model loading: layouts, schedules, eps conventions, registry and offline errors."""

import json

import numpy as np
import pytest
import torch

from oodgen.models import DEFAULT_MODEL, REGISTRY, FrozenDDPM, ModelLoadError, find_layout, load_model, resolve_device
from oodgen.schedule import alphas_cumprod_from_config, betas_from_config, linear_alphas_cumprod
from tests.conftest import tiny_unet


def test_pipeline_layout_loads_frozen_with_float64_schedule(tiny_pipeline_dir):
    m = load_model(str(tiny_pipeline_dir), device="cpu")
    assert find_layout(tiny_pipeline_dir)[0] == "pipeline"
    assert m.resolution == 8 and m.channels == 3
    assert m.alphas_cumprod.dtype == np.float64 and len(m.alphas_cumprod) == 1000
    assert np.allclose(m.alphas_cumprod, linear_alphas_cumprod(), rtol=0, atol=1e-15)
    assert not m.unet.training
    assert not any(p.requires_grad for p in m.unet.parameters())
    x = torch.randn(2, 3, 8, 8)
    assert m.eps(x, 10).shape == (2, 3, 8, 8)


def test_flat_layout_loads_like_google_ddpm_models(tiny_flat_dir, tiny_pipeline_dir):
    assert find_layout(tiny_flat_dir)[0] == "flat"
    a = load_model(str(tiny_flat_dir), device="cpu")
    b = load_model(str(tiny_pipeline_dir), device="cpu")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a.eps(x, 500), b.eps(x, 500))


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_model(str(tmp_path), device="cpu")


def test_hub_model_offline_says_how_to_use_a_local_copy():
    with pytest.raises(ModelLoadError) as e:
        load_model("google/ddpm-ema-church-256", device="cpu")
    msg = str(e.value)
    assert "google/ddpm-ema-church-256" in msg and "--model DIR" in msg and "huggingface-cli download" in msg


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="registry name"):
        load_model("./no/such/folder", device="cpu")


def test_registry_has_the_bundled_default_and_google_models():
    assert DEFAULT_MODEL in REGISTRY and REGISTRY[DEFAULT_MODEL].bundled
    for k in ("google/ddpm-ema-church-256", "google/ddpm-ema-celebahq-256", "google/ddpm-ema-bedroom-256"):
        assert REGISTRY[k].resolution == 256


def test_learned_sigma_output_keeps_first_half_as_eps():
    unet = tiny_unet(out_channels=6).eval()
    m = FrozenDDPM(unet, linear_alphas_cumprod(), "t", 8, 3, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 3, 8, 8)
    full = unet(x, torch.full((2,), 7)).sample
    assert torch.equal(m.eps(x, 7), full[:, :3])


def test_v_prediction_is_converted_to_eps():
    unet = tiny_unet().eval()
    ab = linear_alphas_cumprod()
    m = FrozenDDPM(unet, ab, "t", 8, 3, torch.device("cpu"), torch.float32, prediction_type="v_prediction")
    x = torch.randn(2, 3, 8, 8)
    v = unet(x, torch.full((2,), 300)).sample
    a = ab[300]
    assert torch.allclose(m.eps(x, 300), np.sqrt(a) * v + np.sqrt(1 - a) * x, atol=1e-6)


def test_bfloat16_model_returns_float32_eps(tiny_pipeline_dir):
    m = load_model(str(tiny_pipeline_dir), device="cpu", dtype="bfloat16")
    e = m.eps(torch.randn(1, 3, 8, 8), 100)
    assert e.dtype == torch.float32
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(str(tiny_pipeline_dir), device="cpu", dtype="int8")


def test_auto_dtype_is_bf16_only_on_cpus_with_native_bf16(tiny_pipeline_dir, monkeypatch):
    from oodgen import models

    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "native_bf16", lambda native=native: native)
        assert load_model(str(tiny_pipeline_dir), device="cpu").dtype == want  # the default is auto
        assert load_model(str(tiny_pipeline_dir), device="cpu", dtype="float32").dtype == torch.float32  # opt out
    assert models.resolve_dtype("auto", torch.device("cuda")) == "float32"  # GPUs: float32 unless asked
    assert models.resolve_dtype("auto", torch.device("mps")) == "float32"
    with pytest.raises(ModelLoadError, match="not one of auto, float32, bfloat16, float16"):
        models.resolve_dtype("bf16", torch.device("cpu"))


def test_cpu_models_run_channels_last_and_eps_is_unchanged_and_contiguous(tiny_pipeline_dir):
    m = load_model(str(tiny_pipeline_dir), device="cpu", dtype="float32")
    assert m._channels_last and m.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    plain = load_model(str(tiny_pipeline_dir), device="cpu", dtype="float32")
    plain.unet.to(memory_format=torch.contiguous_format)
    plain._channels_last = False
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    e = m.eps(x, 300)
    assert e.is_contiguous() and e.dtype == torch.float32
    assert torch.allclose(e, plain.eps(x, 300), atol=1e-5)


def test_native_bf16_reads_the_cpu_capabilities(monkeypatch):
    from oodgen import models

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True}, raising=False)
    assert models.native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False, "avx2": True}, raising=False)
    assert not models.native_bf16()


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            resolve_device("cuda")


def test_schedules_from_config():
    lin = betas_from_config({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000})
    assert lin.dtype == np.float64 and lin[0] == 1e-4 and lin[-1] == 0.02
    sl = betas_from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    assert sl[0] == pytest.approx(0.00085) and sl[-1] == pytest.approx(0.012)
    cos = alphas_cumprod_from_config({"beta_schedule": "squaredcos_cap_v2"})
    assert np.all(np.diff(cos) < 0)
    with pytest.raises(ValueError, match="unsupported beta_schedule"):
        betas_from_config({"beta_schedule": "sigmoid"})


def test_schedule_matches_diffusers_within_float32():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(beta_schedule="linear")
    ours = alphas_cumprod_from_config(json.loads(json.dumps(dict(s.config))))
    assert np.allclose(ours, s.alphas_cumprod.numpy(), atol=1e-6)


def test_bundled_model_loads():
    from tests.conftest import require_bundled_model

    require_bundled_model()
    m = load_model(device="cpu")
    assert m.resolution == 64 and m.channels == 3  # the native resolution of the bundled galaxy and dust sets
    assert m.num_parameters < 40e6 / 4  # weights at most 40 MB in float32
    prev = load_model("oodgen-photos-64", device="cpu")  # the previous default: same architecture, other weights, still by name
    assert (prev.resolution, prev.channels, prev.num_parameters) == (64, 3, m.num_parameters)
    assert not torch.equal(next(prev.unet.parameters()), next(m.unet.parameters()))
    old = load_model("oodgen-faces-32", device="cpu")  # the first default stays available by name
    assert old.resolution == 32 and old.num_parameters < 10e6 / 4
    info = m.info()
    assert info["name"] == DEFAULT_MODEL and info["device"] == "cpu"
