"""Shared test setup: offline, quiet, and tiny models with known structure."""

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub / gradio: never touch the network, never read a user cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="oodgen-test-hf-"))
os.environ.setdefault("OODGEN_CACHE_DIR", tempfile.mkdtemp(prefix="oodgen-test-cache-"))  # measured batch sizes
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "oodgen-numba-cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
BUNDLED_MODEL = REPO / "assets" / "models" / "oodgen-faces-32"
SAMPLES = REPO / "assets" / "samples"


def tiny_unet(out_channels: int = 3, sample_size: int = 8):
    """A small random UNet2DModel (fast on CPU)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )


def tiny_scheduler(**kw):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kw)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A DDPMPipeline-layout folder (model_index.json, unet/, scheduler/) with a tiny random UNet."""
    from diffusers import DDPMPipeline

    d = tmp_path_factory.mktemp("tiny_pipeline")
    DDPMPipeline(unet=tiny_unet(), scheduler=tiny_scheduler(clip_sample=True)).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_flat_dir(tmp_path_factory) -> Path:
    """The older flat layout of google/ddpm-ema-*: config.json + weights + scheduler_config.json side by side."""
    d = tmp_path_factory.mktemp("tiny_flat")
    tiny_unet().save_pretrained(d)
    tiny_scheduler().save_pretrained(d)
    return d


def require_bundled_model():
    if not (BUNDLED_MODEL / "unet" / "config.json").is_file():
        pytest.fail(f"the bundled model is missing at {BUNDLED_MODEL}; run scripts/train_default_model.py")


def _service_backend(home, monkeypatch):
    from oodgen import service

    monkeypatch.setenv("OODGEN_HOME", str(home))
    monkeypatch.setattr(service, "_BACKEND", None)
    b = service.backend()
    yield b
    b.jobs.close()
    monkeypatch.setattr(service, "_BACKEND", None)


@pytest.fixture
def service_backend(tmp_path, monkeypatch):
    """The app's service backend (workspace + job queue) on a fresh OODGEN_HOME in tmp_path; its worker is closed afterwards."""
    yield from _service_backend(tmp_path, monkeypatch)


@pytest.fixture
def service_backend_home(tmp_path, monkeypatch):
    """As :func:`service_backend` with OODGEN_HOME in tmp_path/home, so tmp_path can hold files outside the workspace."""
    yield from _service_backend(tmp_path / "home", monkeypatch)
