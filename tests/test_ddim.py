"""DDIM math against an oracle noise predictor with known answers."""

import math

import numpy as np
import pytest
import torch

from oodgen import ddim
from oodgen.schedule import linear_alphas_cumprod

AB = linear_alphas_cumprod()


def oracle(target: torch.Tensor):
    """Exact eps for data concentrated at ``target``: eps(x, t) = (x - sqrt(a_t) target) / sqrt(1 - a_t)."""

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(AB[t])
        return (x - math.sqrt(a) * target) / math.sqrt(1 - a)

    return eps_fn


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand((4, 3, 16, 16), generator=g) * 2 - 1


def test_timesteps_grid():
    assert ddim.timesteps(900, 50)[0] == 0 and ddim.timesteps(900, 50)[-1] == 900
    assert len(ddim.timesteps(900, 50)) == 51
    assert ddim.timesteps(999, 999) == list(range(1000))
    with pytest.raises(ValueError, match="t_end=1000"):
        ddim.timesteps(1000, 10)
    with pytest.raises(ValueError, match="steps=0"):
        ddim.timesteps(900, 0)


@pytest.mark.parametrize("t_end,steps", [(900, 50), (999, 7), (200, 200), (500, 1)])
def test_oracle_round_trip_is_exact(images, t_end, steps):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    x = ddim.q_sample(images, noise, float(AB[0]))  # the image at tau_0 = 0, carrying unit noise
    eps_fn = oracle(images)  # the exact noise predictor for this trajectory
    z = ddim.invert(eps_fn, x, AB, t_end, steps)
    expected = ddim.q_sample(images, noise, float(AB[t_end]))  # closed form of the exact latent
    assert (z - expected).abs().max() < 5e-5  # float32 accumulation over up to 200 steps
    back = ddim.denoise(eps_fn, z, AB, t_end, steps)
    assert (back - x).abs().max() < 1e-5


def test_round_trip_is_exact_for_any_consistent_trajectory_in_float64(images):
    x = images.double()
    eps_fn = oracle(x.flip(0) * 0.5)  # clean target differs from the input: eps is large but conserved
    z = ddim.invert(eps_fn, x, AB, 999, 7)
    back = ddim.denoise(eps_fn, z, AB, 999, 7)
    assert (back - x).abs().max() < 1e-9


def test_oracle_latent_has_closed_form(images):
    target = torch.zeros_like(images)
    eps_fn = oracle(target)
    z = ddim.invert(eps_fn, images, AB, 900, 30)
    # eps is conserved along the exact trajectory: eps0 = (x - sqrt(a0) * 0) / sqrt(1 - a0)
    eps0 = images / math.sqrt(1 - AB[0])
    assert torch.allclose(z, math.sqrt(1 - AB[900]) * eps0, atol=1e-4)


def test_wrong_noise_predictor_does_not_round_trip(images):
    eps_fn = lambda x, t: torch.tanh(3 * x)  # noqa: E731 - not a consistent predictor
    z = ddim.invert(eps_fn, images, AB, 900, 10)
    back = ddim.denoise(eps_fn, z, AB, 900, 10)
    assert (back - images).abs().max() > 1e-2


def test_eta_is_seeded_and_changes_result(images):
    eps_fn = oracle(images * 0)
    z = torch.randn_like(images)
    a = ddim.denoise(eps_fn, z, AB, 900, 20, eta=0.5, generator=torch.Generator().manual_seed(1))
    b = ddim.denoise(eps_fn, z, AB, 900, 20, eta=0.5, generator=torch.Generator().manual_seed(1))
    c = ddim.denoise(eps_fn, z, AB, 900, 20, eta=0.5, generator=torch.Generator().manual_seed(2))
    d = ddim.denoise(eps_fn, z, AB, 900, 20, eta=0.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, d)


def test_sigma_matches_ddim_paper():
    a_t, a_prev = float(AB[500]), float(AB[400])
    expected = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    assert ddim.ddim_sigma(a_t, a_prev, 1.0) == pytest.approx(expected)
    assert ddim.ddim_sigma(a_t, a_prev, 0.0) == 0.0


def test_progress_callback_and_cancel(images):
    seen = []
    ddim.invert(oracle(images), images, AB, 900, 5, callback=lambda info: seen.append((info["i"], info["n"], info["t"])))
    assert seen == [(1, 5, 180), (2, 5, 360), (3, 5, 540), (4, 5, 720), (5, 5, 900)]
    calls = iter([False, False, True])
    with pytest.raises(ddim.Cancelled):
        ddim.denoise(oracle(images), images, AB, 900, 5, cancel=lambda: next(calls))


def test_schedule_is_float64_linear():
    betas = 1 - AB[1:] / AB[:-1]
    assert AB.dtype == np.float64
    assert betas[0] == pytest.approx(1e-4 + (0.02 - 1e-4) / 999, rel=1e-9)
    assert AB[0] == pytest.approx(1 - 1e-4)


def test_grid_through_hits_every_requested_t():
    g = ddim.grid_through([200, 900, 500, 999], 50)
    assert g[0] == 0 and g[-1] == 999 and {200, 500, 900, 999} <= set(g)
    assert all(b > a for a, b in zip(g, g[1:]))
    assert 45 <= len(g) - 1 <= 56


def test_snapshots_on_a_custom_grid_equal_direct_inversions(images):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    x = ddim.q_sample(images, noise, float(AB[0]))
    eps_fn = oracle(images)
    grid = ddim.grid_through([300, 800], 20)
    seen = {}
    ddim.invert(eps_fn, x, AB, 0, 0, grid=grid, callback=lambda info: seen.__setitem__(info["t"], info["x"]))
    for t in (300, 800):
        assert torch.allclose(seen[t], ddim.q_sample(images, noise, float(AB[t])), atol=5e-5)
    back = ddim.denoise(eps_fn, seen[800], AB, 0, 0, grid=[g for g in grid if g <= 800])
    assert (back - x).abs().max() < 1e-5
    with pytest.raises(ValueError, match="start at 0"):
        ddim.invert(eps_fn, x, AB, 0, 0, grid=[5, 10])


def test_the_step_loop_makes_no_host_device_copies_or_syncs(images):
    """Host-device traffic must not grow with the number of steps: no .item()/float(tensor), no .to() per step.

    Recorded with a dispatch mode on CPU, with the schedule given as a tensor (as it would live on a
    device): converting it once before the loop is the only copy allowed.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    ab = torch.tensor(AB)
    eps_fn = lambda x, t: x * 0.1  # noqa: E731 - a torch-only noise predictor
    traffic = {"aten._local_scalar_dense", "aten._to_copy", "aten.copy_", "aten.lift_fresh", "aten.scalar_tensor"}
    counts = {}
    for steps in (5, 20):
        for name, run in (("invert", lambda: ddim.invert(eps_fn, images, ab, 900, steps)),
                          ("denoise", lambda: ddim.denoise(eps_fn, images, ab, 900, steps))):
            with Recorder() as rec:
                run()
            counts[name, steps] = sorted(op for op in rec.ops if op in traffic)
    for name in ("invert", "denoise"):
        assert counts[name, 5] == counts[name, 20], counts
        assert "aten._local_scalar_dense" not in counts[name, 20] and len(counts[name, 20]) <= 1, counts
