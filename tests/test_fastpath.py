"""The opt-in fast path: torch.compile of the UNet, its fallbacks, and the --compile flag.

The compiled runs use ``backend="aot_eager"`` (dynamo tracing + AOT autograd, no code generation):
inductor compiles the tiny UNet in about 26 s with a cold cache on 2 CPU cores, too slow for the
suite; ``benchmarks/bench_inversion.py`` measures inductor itself.
"""

import logging

import pytest
import torch

from oodgen import engine, models
from oodgen.cli import build_parser, main
from oodgen.config import DDIMSettings
from oodgen.latents import load_latents
from oodgen.models import compile_unavailable, load_model

X = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("OODGEN_NO_COMPILE", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _counter():
    from torch._dynamo.testing import CompileCounterWithBackend

    return CompileCounterWithBackend("aot_eager")


def test_compiled_tiny_model_gives_the_plain_latents(tiny_pipeline_dir):
    plain = load_model(str(tiny_pipeline_dir), device="cpu")
    counter = _counter()
    fast = load_model(str(tiny_pipeline_dir), device="cpu").compile(backend=counter)
    assert fast.is_compiled and fast.info()["compiled"] and not plain.info()["compiled"]
    # batch shapes 3 and 2: two graphs (aot_eager in torch 2.13 fails on this UNet at batch size 1, a
    # stride check in group norm; inductor does not, and oodgen would fall back to plain with a warning)
    s = DDIMSettings(t_end=900, steps=6, batch_size=3)
    z_plain, z_fast = engine.invert(plain, X, s), engine.invert(fast, X, s)
    assert counter.frame_count == 2  # the compiled forward really ran, once traced per batch shape
    assert fast.is_compiled  # no fallback happened
    assert (z_fast - z_plain).abs().max() < 1e-4
    back_plain, back_fast = engine.denoise(plain, z_plain, s), engine.denoise(fast, z_plain, s)
    assert (back_fast - back_plain).abs().max() < 1e-4
    assert counter.frame_count == 2  # timesteps are tensor inputs: no recompilation per t


@pytest.mark.parametrize("env,value,why", [("OODGEN_NO_COMPILE", "1", "OODGEN_NO_COMPILE"), ("SPACES_ZERO_GPU", "true", "ZeroGPU")])
def test_disabled_compile_gives_the_plain_forward_and_a_warning(tiny_pipeline_dir, monkeypatch, caplog, env, value, why):
    monkeypatch.setenv(env, value)
    counter = _counter()
    with caplog.at_level(logging.WARNING, logger="oodgen.models"):
        m = load_model(str(tiny_pipeline_dir), device="cpu").compile(backend=counter)
    assert not m.is_compiled
    assert any("torch.compile not used" in r.message and why in r.message for r in caplog.records), caplog.text
    plain = load_model(str(tiny_pipeline_dir), device="cpu")
    assert torch.equal(m.eps(X, 500), plain.eps(X, 500))
    assert counter.frame_count == 0


def test_compile_unavailable_reasons(monkeypatch):
    assert compile_unavailable(CPU, "aot_eager") is None
    for off in ("0", "false", "", "no"):
        monkeypatch.setenv("OODGEN_NO_COMPILE", off)
        assert compile_unavailable(CPU, "aot_eager") is None
    monkeypatch.setenv("OODGEN_NO_COMPILE", "1")
    assert "OODGEN_NO_COMPILE" in compile_unavailable(CPU)
    monkeypatch.delenv("OODGEN_NO_COMPILE")
    monkeypatch.setattr(models.shutil, "which", lambda name: None)  # a machine without a C++ compiler
    assert "C++ compiler" in compile_unavailable(CPU, "inductor")
    assert compile_unavailable(CPU, "aot_eager") is None  # only inductor generates C++


def test_a_compiler_failure_at_the_first_call_falls_back_to_plain(tiny_pipeline_dir, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no working toolchain")

    plain = load_model(str(tiny_pipeline_dir), device="cpu")
    m = load_model(str(tiny_pipeline_dir), device="cpu").compile(backend=broken_backend)
    assert m.is_compiled  # compile itself is lazy: the failure shows at the first call
    with caplog.at_level(logging.WARNING, logger="oodgen.models"):
        e = m.eps(X, 300)
    assert not m.is_compiled
    assert any("falling back to the plain forward" in r.message for r in caplog.records), caplog.text
    assert torch.equal(e, plain.eps(X, 300))


def test_out_of_memory_in_the_compiled_forward_is_not_a_fallback(tiny_pipeline_dir):
    def oom_backend(gm, example_inputs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    m = load_model(str(tiny_pipeline_dir), device="cpu").compile(backend=oom_backend)
    with pytest.raises(Exception, match="out of memory"):
        m.eps(X, 300)
    assert m.is_compiled  # the engine halves the batch and tries again, compiled


def test_models_default_to_the_plain_forward():
    import inspect

    from oodgen.cli import build_parser

    assert inspect.signature(load_model).parameters["compile"].default is False
    assert build_parser().parse_args(["invert", "--input", "x", "--out", "y"]).compile is False


def test_cli_compile_flag_reaches_the_model(tiny_pipeline_dir, tmp_path, monkeypatch, caplog):
    """--compile asks for torch.compile (here refused by OODGEN_NO_COMPILE, so fast) and changes no result."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(src / f"{k}.png")
    common = ["--input", str(src), "--model", str(tiny_pipeline_dir), "--steps", "4", "--device", "cpu"]
    assert main(["-q", "invert", *common, "--out", str(tmp_path / "a.safetensors")]) == 0
    monkeypatch.setenv("OODGEN_NO_COMPILE", "1")
    with caplog.at_level(logging.WARNING, logger="oodgen.models"):
        assert main(["-q", "invert", *common, "--out", str(tmp_path / "b.safetensors"), "--compile"]) == 0
    assert "torch.compile not used (OODGEN_NO_COMPILE is set)" in caplog.text
    assert torch.equal(load_latents(tmp_path / "a.safetensors")[0], load_latents(tmp_path / "b.safetensors")[0])
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for cmd in ("invert", "reconstruct", "generate", "sweep", "diagnose"):  # every command that may run the model
        assert "--compile" in sub.choices[cmd].format_help(), cmd
