"""ADM (guided-diffusion UNetModel) -> diffusers UNet2DModel conversion, checked against the shared fixture."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from oodgen import adm

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
ST = FIXTURES / "adm_tiny.safetensors"
PT = FIXTURES / "adm_tiny_state_dict.pt"
TOL = 1e-4

if not (ST.is_file() and PT.is_file()):
    pytest.skip(f"ADM fixture not found in {FIXTURES} (needs adm_tiny.safetensors and adm_tiny_state_dict.pt)",
                allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The fixture net is tiny: intra-op threads only add overhead (and contend with other jobs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fixture() -> dict:
    from safetensors import safe_open

    with safe_open(str(ST), "pt") as f:
        args = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {
        "args": args,
        "cfg": adm.ADMConfig.from_guided_diffusion_args(args),
        "sd": {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")},
        "x": tensors["input.x"],
        "t": tensors["input.t"],
        "out": tensors["output.model_output"],
    }


def _max_diff(unet, fx: dict) -> float:
    with torch.no_grad():
        return (unet(fx["x"], fx["t"]).sample - fx["out"]).abs().max().item()


def test_fixture_config_parsed(fixture):
    cfg = fixture["cfg"]
    assert cfg.attention_resolutions == (16,)  # constructor form: downsampling factor 2 at image_size 32
    assert cfg.attention_downsample_factors == tuple(fixture["args"]["attention_resolutions"])
    assert cfg.channel_mult == (1, 1, 2, 2) and cfg.learn_sigma and cfg.out_channels == 6


def test_pt_checkpoint_reproduces_fixture(fixture):
    unet = adm.load_adm_checkpoint(PT, fixture["args"])
    assert not unet.training
    assert not any(p.requires_grad for p in unet.parameters())
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    assert _max_diff(unet, fixture) < TOL


def test_safetensors_reproduces_fixture(fixture):
    converted = adm.convert_state_dict(fixture["sd"], fixture["cfg"])
    unet = adm.build_unet(fixture["cfg"])
    unet.load_state_dict(converted, strict=True)
    assert _max_diff(unet.eval(), fixture) < TOL
    # the file itself: weights under a "state_dict." prefix beside the input/output tensors
    assert _max_diff(adm.load_adm_checkpoint(ST, fixture["cfg"]), fixture) < TOL


@pytest.mark.parametrize("wrap", ["ema", "state_dict", "model"])
def test_wrapped_and_prefixed_checkpoints(fixture, tmp_path, wrap):
    inner = {f"module.{k}": v for k, v in fixture["sd"].items()} if wrap == "state_dict" else fixture["sd"]
    path = tmp_path / "ckpt.pth"
    torch.save({wrap: inner, "step": torch.tensor(5)}, path)
    assert _max_diff(adm.load_adm_checkpoint(path, fixture["cfg"]), fixture) < TOL


def test_missing_key_is_named(fixture):
    sd = dict(fixture["sd"])
    del sd["output_blocks.4.1.qkv.weight"]
    with pytest.raises(adm.ADMConversionError, match=r"missing ADM key 'output_blocks\.4\.1\.qkv\.weight'") as e:
        adm.convert_state_dict(sd, fixture["cfg"])
    assert adm.HINT in str(e.value)


def test_missing_key_through_file(fixture, tmp_path):
    sd = dict(fixture["sd"])
    del sd["middle_block.0.in_layers.2.bias"]
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(adm.ADMConversionError, match=r"'middle_block\.0\.in_layers\.2\.bias'"):
        adm.load_adm_checkpoint(tmp_path / "m.pt", fixture["cfg"])


def test_unexpected_key_is_named(fixture):
    sd = {**fixture["sd"], "input_blocks.1.1.qkv.weight": torch.zeros(96, 32, 1)}
    with pytest.raises(adm.ADMConversionError, match=r"unexpected ADM key 'input_blocks\.1\.1\.qkv\.weight'"):
        adm.convert_state_dict(sd, fixture["cfg"])


def test_wrong_channel_mult_names_key_and_shapes(fixture):
    wrong = dataclasses.replace(fixture["cfg"], channel_mult=(1, 1, 3, 3))  # same keys, other widths
    with pytest.raises(adm.ADMConversionError) as e:
        adm.convert_state_dict(fixture["sd"], wrong)
    msg = str(e.value)
    assert "'input_blocks.5.0.in_layers.2.weight'" in msg
    assert "(64, 32, 3, 3)" in msg and "(96, 32, 3, 3)" in msg
    assert adm.HINT in msg


def test_key_map_uses_every_adm_key_once(fixture):
    cfg, sd = fixture["cfg"], fixture["sd"]
    key_map = adm.adm_key_map(cfg)
    assert len(key_map) == len(sd) and set(key_map) == set(sd)
    targets = [t for ts in key_map.values() for t in ts]
    unet_keys = set(adm.build_unet(cfg, "meta").state_dict())
    assert len(targets) == len(set(targets)) == len(unet_keys)
    assert set(targets) == unet_keys
    n_qkv = sum(k.endswith(".qkv.weight") for k in sd)
    assert n_qkv == 4  # input level 1, middle, two decoder blocks at 16x16
    assert len(targets) == len(sd) + 2 * 2 * n_qkv  # each qkv weight and bias -> q, k, v
    assert set(adm.convert_state_dict(sd, cfg)) == unet_keys


@pytest.mark.parametrize("new_order", [False, True])
def test_qkv_split_respects_heads(new_order):
    heads, ch = 2, 3
    rows = torch.arange(3 * heads * ch, dtype=torch.float32)  # row r of the fused qkv conv
    q, k, v = adm._split_qkv(rows, heads, new_order)
    for which, part in enumerate((q, k, v)):
        for h in range(heads):
            for c in range(ch):
                src = which * heads * ch + h * ch + c if new_order else h * 3 * ch + which * ch + c
                assert part[h * ch + c] == src


def test_from_guided_diffusion_args_script_flags():
    flags = {
        "attention_resolutions": "16", "class_cond": "False", "diffusion_steps": 1000, "dropout": 0.0,
        "image_size": 256, "learn_sigma": "True", "noise_schedule": "linear", "num_channels": 128,
        "num_head_channels": 64, "num_res_blocks": 1, "resblock_updown": "True", "use_fp16": "False",
        "use_scale_shift_norm": "True", "channel_mult": "",
    }
    assert adm.ADMConfig.from_guided_diffusion_args(flags) == adm.PRESETS["afhq-dog-256-p2"]
    c = adm.ADMConfig.from_guided_diffusion_args({"image_size": 64, "num_channels": 192, "attention_resolutions": "32,16,8",
                                                  "learn_sigma": True})
    assert c.attention_resolutions == (32, 16, 8) and c.channel_mult == (1, 2, 3, 4)
    c = adm.ADMConfig.from_guided_diffusion_args({"image_size": 64, "model_channels": 192, "out_channels": 6,
                                                  "attention_resolutions": [2, 4, 8]})
    assert c.attention_resolutions == (32, 16, 8) and c.learn_sigma


def test_resolve_config(tmp_path, fixture):
    assert adm.resolve_config("afhq-dog-256-ilvr") is adm.PRESETS["afhq-dog-256-ilvr"]
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(fixture["args"]))
    assert adm.resolve_config(str(p)) == fixture["cfg"]
    with pytest.raises(adm.ADMConversionError, match="afhq-dog-256-p2"):
        adm.resolve_config("no-such-preset")


@pytest.mark.parametrize("name", sorted(adm.PRESETS))
def test_presets_build_with_p2_parameter_count(name):
    cfg = adm.PRESETS[name]
    kw = adm.unet_config(cfg)
    assert kw["block_out_channels"] == (128, 128, 256, 256, 512, 512)
    assert kw["down_block_types"][4] == "AttnDownBlock2D" and kw["attention_head_dim"] == 64
    assert kw["resnet_time_scale_shift"] == "scale_shift" and kw["out_channels"] == 6
    n = sum(p.numel() for p in adm.build_unet(cfg, "meta").parameters())
    assert abs(n - 93e6) / 93e6 < 0.01, n  # P2-weighting README: "lightweight version (93M parameter) of ADM"


def test_save_as_diffusers_roundtrip(fixture, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = adm.load_adm_checkpoint(PT, fixture["cfg"])
    out = adm.save_as_diffusers(unet, tmp_path / "pipe")
    assert (out / "model_index.json").is_file()
    reloaded = UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    assert _max_diff(reloaded, fixture) < TOL
    sched = DDPMScheduler.from_pretrained(out, subfolder="scheduler").config
    assert (sched.num_train_timesteps, sched.beta_start, sched.beta_end, sched.beta_schedule) == (1000, 1e-4, 0.02, "linear")
    assert sched.clip_sample is False and sched.variance_type == "learned_range"


def test_converted_fixture_runs_through_invert_reconstruct_and_diagnose(fixture, tmp_path, capsys):
    """The ADM model is usable everywhere a diffusers model is: --model FILE.pt --model-config JSON."""
    from oodgen.cli import main

    cfg = tmp_path / "adm_tiny.json"
    cfg.write_text(json.dumps(fixture["args"]))
    samples = Path(__file__).resolve().parents[1] / "assets" / "samples" / "galaxy"
    # float32: the comparison below is of the conversion; in bfloat16 (--dtype auto on a CPU with native bf16) the two
    # models' batch sizes are measured apart and may differ under load, and bf16 results differ with the batch (CI saw 1e-2)
    model_args = ["--model", str(PT), "--model-config", str(cfg), "--device", "cpu", "--dtype", "float32"]
    z = tmp_path / "z.safetensors"
    assert main(["-q", "invert", "--input", str(samples), "--out", str(z), "--steps", "5", *model_args]) == 0
    assert main(["-q", "reconstruct", "--input", str(samples), "--steps", "5", "--json", *model_args]) == 0
    mae = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mae"]
    assert 0 <= mae <= 1
    assert main(["-q", "diagnose", "--ood", str(z), "--id-prior", "30", "--no-umap", "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["n_ood"] == 100
    # a saved diffusers copy loads as a plain diffusers model and gives the same latents
    out = tmp_path / "converted"
    assert main(["convert-adm", str(PT), "--model-config", str(cfg), "--out", str(out)]) == 0
    z2 = tmp_path / "z2.safetensors"
    assert main(["-q", "invert", "--input", str(samples), "--out", str(z2), "--steps", "5", "--model", str(out), "--dtype", "float32"]) == 0
    from oodgen.latents import load_latents

    assert torch.allclose(load_latents(z)[0], load_latents(z2)[0], atol=1e-4)


def test_raw_checkpoint_without_config_says_what_to_pass(tmp_path, capsys):
    from oodgen.cli import main

    assert main(["-q", "invert", "--input", str(Path(__file__).resolve().parents[1] / "assets" / "samples" / "faces"),
                 "--out", str(tmp_path / "z.safetensors"), "--model", str(PT)]) == 2
    assert "--model-config" in capsys.readouterr().err
