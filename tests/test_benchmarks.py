"""The benchmark scripts run and print what they claim (their figures are measured, never asserted here)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_unet  # noqa: E402


def test_operator_classes():
    assert profile_unet.op_class("aten::mkldnn_convolution") == "convolution"
    assert profile_unet.op_class("aten::native_group_norm") == "group norm"
    assert profile_unet.op_class("aten::silu") == "activation (SiLU)"
    assert profile_unet.op_class("aten::cat") == "elementwise, concat, copies"
    assert profile_unet.op_class("aten::bmm") == "attention and linear"
    assert profile_unet.op_class("aten::something_new") == "other"


def test_profile_of_a_tiny_unet_adds_up(tiny_pipeline_dir, capsys):
    assert profile_unet.main(["--model", str(tiny_pipeline_dir), "--dtype", "float32", "--batch", "2",
                              "--repeats", "1", "--peak-sizes", "128"]) == 0
    out = capsys.readouterr().out
    shares = [int(s) for s in re.findall(r"^\S.*?\s+[0-9.]+\s+([0-9]+)%$", out, flags=re.M)]
    assert "convolution" in out and len(shares) >= 3
    assert 97 <= sum(shares) <= 103  # rounded shares of the whole forward
    assert re.search(r"convolutions: [0-9]+ GFLOP/s = [0-9]+% of the measured torch.float32 matrix-product peak", out)
