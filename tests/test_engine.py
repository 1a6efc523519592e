"""Batched inversion/denoising, reconstruction MAE, generation and out-of-memory back-off."""

import json
from types import SimpleNamespace

import pytest
import torch

from oodgen import ddim, engine
from oodgen.config import DDIMSettings, GenerationSettings
from oodgen.models import FrozenDDPM, load_model
from oodgen.schedule import linear_alphas_cumprod


class Linear(torch.nn.Module):
    """eps = 0.3 x + 0.01 t/1000: cheap, deterministic, batch-independent."""

    def __init__(self, max_batch: int | None = None) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.calls: list[int] = []

    def forward(self, x, t):
        self.calls.append(x.shape[0])
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace(sample=0.3 * x + 0.01 * t.view(-1, 1, 1, 1).float() / 1000)


def model(unet=None) -> FrozenDDPM:
    return FrozenDDPM(unet or Linear(), linear_alphas_cumprod(), "linear", 8, 3, torch.device("cpu"), torch.float32)


X = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_batched_inversion_equals_one_batch():
    m = model()
    s1 = DDIMSettings(t_end=900, steps=12, batch_size=3)
    s2 = DDIMSettings(t_end=900, steps=12, batch_size=64)
    a, b = engine.invert(m, X, s1), engine.invert(m, X, s2)
    assert torch.allclose(a, b, atol=1e-6)
    direct = ddim.invert(m.eps, X, m.alphas_cumprod, 900, 12)
    assert torch.allclose(a, direct, atol=1e-6)


def test_progress_counts_image_steps_to_the_total():
    seen = []
    engine.invert(model(), X, DDIMSettings(t_end=500, steps=4, batch_size=4), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (40, 40)
    assert all(b[0] > a[0] for a, b in zip(seen, seen[1:]))


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    unet = Linear(max_batch=2)
    got = engine.invert(model(unet), X, DDIMSettings(t_end=900, steps=5, batch_size=8))
    want = engine.invert(model(), X, DDIMSettings(t_end=900, steps=5, batch_size=8))
    assert torch.allclose(got, want, atol=1e-6)
    assert max(unet.calls[-5:]) <= 2


def test_non_memory_errors_propagate():
    class Broken(torch.nn.Module):
        def forward(self, x, t):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.invert(model(Broken()), X, DDIMSettings(t_end=900, steps=2))


def test_wrong_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"expected a batch \[N, 3, 8, 8\]"):
        engine.invert(model(), torch.zeros(2, 3, 16, 16), DDIMSettings(t_end=900, steps=2))


def test_reconstruct_reports_mae_on_unit_scale():
    m = model()
    s = DDIMSettings(t_end=300, steps=10)
    rec = engine.reconstruct(m, X, s)
    z = engine.invert(m, X, s)
    back = engine.denoise(m, z, s).clamp(-1, 1)
    want = ((back - X).abs() / 2).mean(dim=(1, 2, 3))
    assert torch.allclose(rec.mae, want, atol=1e-7)
    assert rec.summary()["n"] == 10 and 0 <= rec.summary()["mae"] < 1


def test_generate_is_seeded_and_eta_changes_it():
    m = model()
    z = torch.randn(6, 3, 8, 8)
    s = DDIMSettings(t_end=900, steps=5)
    a = engine.generate(m, z, 4, s, GenerationSettings(seed=3))
    b = engine.generate(m, z, 4, s, GenerationSettings(seed=3))
    c = engine.generate(m, z, 4, s, GenerationSettings(seed=3, eta=0.5))
    assert torch.equal(a.images, b.images) and a.images.shape == (4, 3, 8, 8)
    assert a.images.abs().max() <= 1
    assert not torch.equal(a.images, c.images)
    assert len(a.draws) == 4 and a.latents.shape == (4, 3, 8, 8)


def test_cancel_stops_the_job():
    with pytest.raises(ddim.Cancelled):
        engine.invert(model(), X, DDIMSettings(t_end=900, steps=5), cancel=lambda: True)


def test_bundled_model_reconstructs_faces_well():
    from tests.conftest import SAMPLES, require_bundled_model

    require_bundled_model()
    from oodgen.data import load_paths, to_model_input

    m = load_model(device="cpu")
    x, _ = to_model_input(load_paths([SAMPLES / "faces"]).samples, m.resolution, m.channels)
    rec = engine.reconstruct(m, x, DDIMSettings(steps=20))  # 20 steps, not 50: the default model's round trip, cheaper
    assert rec.summary()["mae"] < 0.05


def test_snapshots_match_separate_inversions_at_each_t():
    m = model()
    snaps = engine.invert_snapshots(m, X, [300, 900], steps=12, batch_size=4)
    grid = ddim.grid_through([300, 900], 12)
    for t in (300, 900):
        direct = ddim.invert(m.eps, X, m.alphas_cumprod, 0, 0, grid=[g for g in grid if g <= t])
        assert torch.allclose(snaps[t], direct, atol=1e-6)


def test_prior_latents_are_standard_gaussian_at_T_and_pushed_down_below():
    m = model()
    prior = engine.prior_latents(m, 6, [999, 500], steps=10, seed=1)
    assert prior[999].shape == (6, 3, 8, 8)
    assert torch.equal(prior[999], torch.randn((6, 3, 8, 8), generator=torch.Generator().manual_seed(1)))
    grid = [0] + [g for g in ddim.grid_through([500, 999], 10) if g >= 500]
    seen = {}
    ddim.denoise(m.eps, prior[999], m.alphas_cumprod, 0, 0, grid=grid, callback=lambda i: seen.__setitem__(i["t"], i["x"]))
    assert torch.allclose(prior[500], seen[500], atol=1e-6)


def _bundled_set(name: str, every: int, m: FrozenDDPM) -> torch.Tensor:
    from oodgen.data import load_paths, to_model_input
    from tests.conftest import SAMPLES

    x, _ = to_model_input(load_paths([SAMPLES / name]).samples[::every], m.resolution, m.channels)
    return x


@pytest.mark.parametrize("name", ["galaxy", "radiation"])
def test_bfloat16_reconstruction_matches_float32_within_0_005(name):
    """Reduced precision keeps the schedule math exact: only the UNet runs in bf16 (CPU here, GPU in production)."""
    from tests.conftest import require_bundled_model

    require_bundled_model()
    s = DDIMSettings(t_end=900, steps=10, batch_size=16)
    maes = {}
    for dtype in ("float32", "bfloat16"):
        m = load_model(device="cpu", dtype=dtype)
        maes[dtype] = engine.reconstruct(m, _bundled_set(name, 10, m), s).summary()["mae"]
    assert abs(maes["bfloat16"] - maes["float32"]) < 0.005, maes


def test_float16_reconstruction_matches_float32_within_0_005_on_both_sets():
    """float16 runs on CPU in torch 2.13 but through the reference convolution (about 1 s a forward of the
    bundled model on 2 cores, 30x float32), so here: 2 images of each set in one batch, 2 steps.
    benchmarks/report.py checks whole sets at 50 steps on a GPU."""
    from tests.conftest import require_bundled_model

    require_bundled_model()
    s = DDIMSettings(t_end=900, steps=2, batch_size=4)
    mae = {}
    for dtype in ("float32", "float16"):
        m = load_model(device="cpu", dtype=dtype)
        x = torch.cat([_bundled_set(name, 50, m)[:2] for name in ("galaxy", "radiation")])
        mae[dtype] = engine.reconstruct(m, x, s).mae
    for part in (slice(0, 2), slice(2, 4)):  # galaxy, radiation
        a, b = float(mae["float16"][part].mean()), float(mae["float32"][part].mean())
        assert abs(a - b) < 0.005, (part, a, b)


def test_batch_for_memory_known_answers():
    MiB, GiB = 2**20, 2**30
    # 0.8 * 10 GiB - 1 GiB = 7168 MiB -> 71.68 images of 100 MiB -> 71 -> multiple of 8
    assert engine.batch_for_memory(10 * GiB, 100 * MiB, 1 * GiB) == 64
    assert engine.batch_for_memory(10 * GiB, 100 * MiB, 1 * GiB, fraction=0.5) == 40  # 4096 MiB -> 40.96
    assert engine.batch_for_memory(80 * GiB, 100 * MiB) == 256  # 655 fit: the cap
    assert engine.batch_for_memory(80 * GiB, 100 * MiB, cap=100) == 100  # the cap itself, not rounded down
    assert engine.batch_for_memory(80 * GiB, 100 * MiB, n=10) == 10
    assert engine.batch_for_memory(80 * GiB, 0) == 256  # no per-image cost measured
    assert engine.batch_for_memory(1000, 180, fraction=1.0) == 4  # 5 fit: powers of two below 8
    assert engine.batch_for_memory(1000, 300, fraction=1.0) == 2
    assert engine.batch_for_memory(1000, 600, fraction=1.0) == 1
    assert engine.batch_for_memory(1000, 100, overhead_bytes=2000) == 1  # nothing fits: 1, the back-off decides
    assert engine.batch_for_memory(1000, 100, n=0) == 1
    with pytest.raises(ValueError, match="fraction"):
        engine.batch_for_memory(1000, 100, fraction=0)
    with pytest.raises(ValueError, match="cap"):
        engine.batch_for_memory(1000, 100, cap=0)


class FakeProbe:
    """Peak bytes of a forward: ``fixed + b * per_image``; out of memory above ``max_batch``."""

    def __init__(self, fixed: float, per_image: float, max_batch: int | None = None) -> None:
        self.fixed, self.per_image, self.max_batch = fixed, per_image, max_batch
        self.sizes: list[int] = []

    def __call__(self, b: int) -> float:
        self.sizes.append(b)
        if self.max_batch is not None and b > self.max_batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.fixed + b * self.per_image


def test_auto_batch_size_fits_the_probed_memory_line(caplog):
    MiB, GiB = 2**20, 2**30
    m = model()  # [3, 8, 8]: the DDIM state adds 8 * 192 * 4 = 6144 bytes per image
    probe = FakeProbe(50 * MiB, 30 * MiB)
    per_image, fixed = engine.measure_batch_memory(m, measure=probe)
    assert probe.sizes == [1, 4]
    assert per_image == pytest.approx(30 * MiB + 6144) and fixed == pytest.approx(50 * MiB)
    with caplog.at_level("INFO", logger="oodgen.engine"):
        # (0.8 * 4096 - 50) MiB / (30 MiB + 6 KiB) = 107.5 -> 104
        assert engine.auto_batch_size(m, measure=FakeProbe(50 * MiB, 30 * MiB), free_bytes=4 * GiB) == 104
    assert "batch size 104" in caplog.text and "30.0 MiB per image" in caplog.text
    assert engine.auto_batch_size(m, measure=FakeProbe(50 * MiB, 30 * MiB), free_bytes=4 * GiB, n=20) == 20
    assert engine.auto_batch_size(m, measure=FakeProbe(50 * MiB, 30 * MiB), free_bytes=64 * GiB) == 256
    assert engine.auto_batch_size(m, measure=FakeProbe(50 * MiB, 30 * MiB), free_bytes=64 * GiB, cap=64) == 64
    # a larger image: the probe is asked for that shape's cost, the state term grows with it
    per_image, _ = engine.measure_batch_memory(m, (3, 64, 64), measure=FakeProbe(0, 1 * MiB))
    assert per_image == pytest.approx(1 * MiB + 8 * 3 * 64 * 64 * 4)


def test_auto_batch_size_survives_an_out_of_memory_probe_and_passes_other_errors():
    MiB, GiB = 2**20, 2**30
    probe = FakeProbe(0, 80 * MiB, max_batch=1)  # batch 4 does not fit: all of batch 1's peak counts per image
    assert engine.auto_batch_size(model(), measure=probe, free_bytes=1 * GiB) == 8  # 819.2 / 80.006 = 10.2
    assert probe.sizes == [1, 4]
    assert engine.auto_batch_size(model(), measure=FakeProbe(0, GiB, max_batch=0), free_bytes=GiB) == 1  # not even 1 fits

    def broken(b: int) -> float:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.auto_batch_size(model(), measure=broken, free_bytes=GiB)
    with pytest.raises(ValueError, match="free_bytes"):
        engine.auto_batch_size(model(), measure=FakeProbe(0, MiB))  # no free memory to read off a CPU
    with pytest.raises(ValueError, match="measure"):
        engine.measure_batch_memory(model())


class FakeTimer:
    """Seconds of one forward of batch b: per-call overhead + per-image cost that jumps past a 'cache' size."""

    def __init__(self, overhead: float, per_image: float, spill_at: int, spill_factor: float = 3.0) -> None:
        self.overhead, self.per_image, self.spill_at, self.spill_factor = overhead, per_image, spill_at, spill_factor
        self.calls: list[int] = []

    def __call__(self, b: int) -> float:
        self.calls.append(b)
        return self.overhead + b * self.per_image * (self.spill_factor if b > self.spill_at else 1.0)


def test_cpu_batch_size_is_the_fastest_measured_and_stops_after_two_drops(tmp_path):
    timer = FakeTimer(overhead=0.05, per_image=0.01, spill_at=16)  # img/s: 4: 44, 8: 61, 16: 76, 32: 31, 64: 32
    assert engine.cpu_batch_size(model(), time_forward=timer, cache_file=tmp_path / "c.json", candidates=(4, 8, 16, 32, 64, 128)) == 16
    assert timer.calls == [4, 8, 16, 32, 64]  # two in a row over 10% slower than 16: 128 is not measured
    timer = FakeTimer(overhead=0.5, per_image=0.01, spill_at=10**6)  # overhead dominates: the largest wins
    assert engine.cpu_batch_size(model(), time_forward=timer, cache_file=tmp_path / "d.json") == 64


def test_cpu_batch_size_is_measured_once_per_model_and_precision(tmp_path):
    cache = tmp_path / "cache.json"
    first = FakeTimer(0.05, 0.01, spill_at=8)
    assert engine.cpu_batch_size(model(), time_forward=first, cache_file=cache) == 8
    again = FakeTimer(0.05, 0.01, spill_at=32)  # would pick 32: the cached answer is used instead, nothing timed
    assert engine.cpu_batch_size(model(), time_forward=again, cache_file=cache) == 8 and again.calls == []
    bf16 = FrozenDDPM(Linear(), linear_alphas_cumprod(), "linear", 8, 3, torch.device("cpu"), torch.bfloat16)
    assert engine.cpu_batch_size(bf16, time_forward=again, cache_file=cache) == 32 and again.calls  # another key
    assert len(json.loads(cache.read_text())) == 2
    cache.write_text("{not json")  # a damaged cache is measured again and rewritten, not an error
    assert engine.cpu_batch_size(model(), time_forward=FakeTimer(0.05, 0.01, spill_at=16), cache_file=cache) == 16


def test_auto_batch_size_on_cpu_is_the_measured_one_clipped_to_n(monkeypatch):
    monkeypatch.setattr(engine, "cpu_batch_size", lambda m, shape=None: 16)
    assert engine.auto_batch_size(model()) == 16
    assert engine.auto_batch_size(model(), n=7) == 7
    assert engine.auto_batch_size(model(), n=0) == 1


def test_batch_size_0_is_auto_everywhere_the_engine_runs(monkeypatch):
    """DDIMSettings().batch_size is 0 = auto: the engine asks auto_batch_size, and results do not depend on the batch."""
    asked = []
    monkeypatch.setattr(engine, "cpu_batch_size", lambda m, shape=None: asked.append(shape) or 4)
    unet = Linear()
    z = engine.invert(model(unet), X, DDIMSettings(t_end=100, steps=3))
    assert DDIMSettings().batch_size == 0 and asked == [(3, 8, 8)]
    assert set(unet.calls) == {4, 2}  # 10 images in batches of 4, 4, 2
    assert torch.allclose(z, engine.invert(model(), X, DDIMSettings(t_end=100, steps=3, batch_size=10)), atol=1e-6)
    with pytest.raises(ValueError, match="or 0 for auto"):
        DDIMSettings(batch_size=-1)


def test_cpu_batch_size_times_the_real_forward(tmp_path):
    """No fake: the default timer runs the UNet and returns a candidate; the cache records the measured rates."""
    from tests.conftest import tiny_unet

    m = FrozenDDPM(tiny_unet().eval(), linear_alphas_cumprod(), "tiny", 8, 3, torch.device("cpu"), torch.float32)
    b = engine.cpu_batch_size(m, cache_file=tmp_path / "c.json", candidates=(1, 2, 4))
    rec = next(iter(json.loads((tmp_path / "c.json").read_text()).values()))
    assert b in (1, 2, 4) and rec["batch_size"] == b and float(rec["images_per_s"][str(b)]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_batch_size_probes_real_cuda_memory():
    from tests.conftest import tiny_unet

    unet = tiny_unet(sample_size=32).eval().requires_grad_(False).cuda()
    m = FrozenDDPM(unet, linear_alphas_cumprod(), "tiny", 32, 3, torch.device("cuda"), torch.float32)
    per_image, fixed = engine.measure_batch_memory(m)
    assert per_image > 8 * 3 * 32 * 32 * 4 and fixed >= 0
    b = engine.auto_batch_size(m, n=100)
    assert 1 <= b <= 100
    x = torch.rand(b, 3, 32, 32) * 2 - 1
    assert engine.invert(m, x, DDIMSettings(t_end=900, steps=2, batch_size=b)).shape == x.shape


def test_each_batch_is_staged_once_and_the_next_one_before_the_current_result_is_read(monkeypatch):
    """The prefetch order of _run_batched: batch k + 1 is put on the device before batch k's result is fetched."""
    events: list[tuple] = []
    real_stage = engine._Stager.__call__

    def spy(self, start, stop):
        events.append(("stage", start, stop))
        return real_stage(self, start, stop)

    monkeypatch.setattr(engine._Stager, "__call__", spy)

    def fn(batch, start, cb):
        events.append(("run", start, start + batch.shape[0]))
        return batch * 2

    y = engine._run_batched(fn, X.double(), model(), batch_size=4, steps=1, progress=None)
    assert torch.equal(y, (X.double().float() * 2))
    assert events == [("stage", 0, 4), ("run", 0, 4), ("stage", 4, 8), ("run", 4, 8), ("stage", 8, 10), ("run", 8, 10)]


def test_a_prefetched_batch_is_restaged_after_an_out_of_memory_retry(monkeypatch):
    want = engine.invert(model(), X, DDIMSettings(t_end=900, steps=3, batch_size=4))
    staged: list[tuple[int, int]] = []
    real_stage = engine._Stager.__call__
    monkeypatch.setattr(engine._Stager, "__call__", lambda self, a, b: staged.append((a, b)) or real_stage(self, a, b))
    got = engine.invert(model(Linear(max_batch=3)), X, DDIMSettings(t_end=900, steps=3, batch_size=4))
    assert torch.allclose(got, want, atol=1e-6)
    assert staged == [(0, 4), (0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


# ---------------------------------------------------------------- the CUDA paths (skipped without a GPU; run them on one)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_inversion_with_prefetch_equals_cpu():
    """The pinned-memory side-stream prefetch and the sync-free step loop give the CPU's latents (float32, 1e-4)."""
    import copy

    from tests.conftest import tiny_unet

    unet = tiny_unet(sample_size=32).eval().requires_grad_(False)
    cpu = FrozenDDPM(unet, linear_alphas_cumprod(), "tiny", 32, 3, torch.device("cpu"), torch.float32)
    gpu = FrozenDDPM(copy.deepcopy(unet).cuda(), linear_alphas_cumprod(), "tiny", 32, 3, torch.device("cuda"), torch.float32)
    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = DDIMSettings(t_end=900, steps=6, batch_size=4)  # 3 batches: two prefetches
    assert engine._Stager(x, gpu.device).stream is not None
    z_gpu, z_cpu = engine.invert(gpu, x, s), engine.invert(cpu, x, s)
    assert z_gpu.device.type == "cpu" and (z_gpu - z_cpu).abs().max().item() < 1e-4


@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_reduced_precision_reconstruction_within_0_005_of_float32(dtype):
    from tests.conftest import SAMPLES, require_bundled_model

    require_bundled_model()
    from oodgen.data import load_paths, to_model_input

    s = DDIMSettings(t_end=900, steps=20, batch_size=64)
    for name in ("galaxy", "radiation"):
        samples = load_paths([SAMPLES / name]).samples
        maes = {}
        for dt in ("float32", dtype):
            m = load_model(device="cuda", dtype=dt)
            x, _ = to_model_input(samples, m.resolution, m.channels)
            maes[dt] = engine.reconstruct(m, x, s).summary()["mae"]
        assert abs(maes[dtype] - maes["float32"]) < 0.005, (name, maes)


@cuda
def test_cuda_compiled_channels_last_model_matches_the_plain_one():
    m = load_model(device="cuda")
    x = torch.rand(8, 3, m.resolution, m.resolution, generator=torch.Generator().manual_seed(1)) * 2 - 1
    s = DDIMSettings(t_end=900, steps=4, batch_size=8)
    plain = engine.invert(m, x, s)
    c = load_model(device="cuda", compile=True)
    assert (engine.invert(c, x, s) - plain).abs().max().item() < 1e-3  # compiled kernels differ in rounding only
