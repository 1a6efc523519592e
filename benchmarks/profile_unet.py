"""Where one UNet forward spends its time, by kind of operator, against the measured matrix-product peak.

    python benchmarks/profile_unet.py [--model oodgen-photos-64-smooth] [--dtype auto] [--batch 0] [--repeats 3]

Runs ``FrozenDDPM.eps`` as oodgen does (``--dtype auto``, channels_last on CPU, ``--batch`` 0 = the measured
CPU batch) under torch.profiler and prints the self time of each operator class (convolutions, group norms,
activations, elementwise and copies, attention and linear layers), its share, and for the convolutions their
rate in GFLOP/s (FLOPs from torch's FlopCounterMode) against the best matrix product measured here in the same
precision (``bench_inversion.matmul_peak_gflops``). This says how far the roofline can still be approached: the
matrix work near its peak leaves only the memory-bound rest to win. Runs in the environment the user has.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench_inversion import matmul_peak_gflops  # noqa: E402
from oodgen.engine import cpu_batch_size  # noqa: E402
from oodgen.models import load_model  # noqa: E402

# operator name (aten::...) -> class; anything else is "other"
CLASSES = {
    "convolution": ("convolution", "conv2d", "mkldnn_convolution"),
    "group norm": ("group_norm", "native_group_norm"),
    "activation (SiLU)": ("silu", "silu_"),
    "elementwise, concat, copies": ("add", "add_", "mul", "div", "cat", "copy_", "_to_copy", "upsample_nearest2d", "clone"),
    "attention and linear": ("addmm", "bmm", "matmul", "linear", "_scaled_dot_product_flash_attention_for_cpu", "softmax", "baddbmm"),
}


def op_class(name: str) -> str:
    op = name.split("::")[-1]
    return next((c for c, ops in CLASSES.items() if op in ops), "other")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="oodgen-photos-64-smooth")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch", type=int, default=0, help="0: the CPU batch oodgen measures and caches")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="matrix sizes of the peak measurement")
    a = p.parse_args(argv)
    m = load_model(a.model, device="cpu", dtype=a.dtype)
    b = a.batch or cpu_batch_size(m)
    x = torch.randn(b, m.channels, m.resolution, m.resolution, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(2):
            m.eps(x, 500)
        with FlopCounterMode(display=False) as fc:
            m.eps(x, 500)
        conv_flops = sum(v for k, v in fc.get_flop_counts()["Global"].items() if "convolution" in str(k))
        all_flops = fc.get_total_flops()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.repeats):
                m.eps(x, 500)
        wall = (time.perf_counter() - t0) / a.repeats
    self_us: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            self_us[op_class(ev.key)] += ev.self_cpu_time_total
    total = sum(self_us.values())
    peak = matmul_peak_gflops(m.device, m.dtype, sizes=tuple(a.peak_sizes))
    print(f"{a.model} ({m.resolution}x{m.resolution}), {m.dtype}, channels_last, batch {b}: "
          f"{all_flops / b / 1e9:.2f} GFLOP per image, {b / wall:.1f} images/s under the profiler; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'operator class':<30} {'ms/forward':>10} {'share':>6}")
    for c, us in sorted(self_us.items(), key=lambda kv: -kv[1]):
        print(f"{c:<30} {us / 1e3 / a.repeats:>10.1f} {us / total:>6.0%}")
    conv_s = self_us["convolution"] / 1e6 / a.repeats
    print(f"convolutions: {conv_flops / conv_s / 1e9:.0f} GFLOP/s = {conv_flops / conv_s / 1e9 / peak:.0%} of the measured "
          f"{m.dtype} matrix-product peak ({peak:.0f} GFLOP/s); the rest of the forward is "
          f"{1 - self_us['convolution'] / total:.0%} of its time, and removing all of it would make a forward "
          f"{total / self_us['convolution']:.2f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
