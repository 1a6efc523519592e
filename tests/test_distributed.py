"""Multi-process inversion: batch-aligned shards, and torchrun on 2 CPU processes == one process, bit for bit."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from oodgen import distributed
from oodgen.latents import load_latents
from tests.conftest import REPO


# ---------------------------------------------------------------- shard_range
@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 10, 31, 32, 33, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 32])
def test_shards_cover_everything_once_in_batches_a_single_process_would_run(n, world_size, batch_size):
    ranges = [distributed.shard_range(n, world_size, r, batch_size) for r in range(world_size)]
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(n))  # every item once, contiguous, in rank order
    single_batches = {(s, min(s + batch_size, n)) for s in range(0, n, batch_size)}
    for a, b in ranges:
        assert 0 <= a <= b <= n
        assert a % batch_size == 0 or a == n  # starts on a batch boundary
        assert b % batch_size == 0 or b == n
        assert {(s, min(s + batch_size, b)) for s in range(a, b, batch_size)} <= single_batches
    sizes = [-(-(b - a) // batch_size) for a, b in ranges]  # batches per rank differ by at most one
    assert max(sizes) - min(sizes) <= 1


def test_fewer_batches_than_ranks_gives_empty_shards():
    ranges = [distributed.shard_range(5, 4, r, 4) for r in range(4)]  # 2 batches (4 + 1) for 4 ranks
    assert [b - a for a, b in ranges].count(0) == 2
    assert sorted(r for r in ranges if r[0] != r[1]) == [(0, 4), (4, 5)]
    assert distributed.shard_range(0, 3, 2, 8) == (0, 0)


def test_shard_range_rejects_bad_arguments():
    for bad in [(-1, 2, 0, 1), (4, 0, 0, 1), (4, 2, 2, 1), (4, 2, -1, 1), (4, 2, 0, 0)]:
        with pytest.raises(ValueError):
            distributed.shard_range(*bad)


def test_without_torchrun_nothing_is_initialized(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_from_env("cpu")
    assert info == distributed.DistInfo(rank=0, world_size=1, local_rank=0, backend=None) and info.is_main
    assert not torch.distributed.is_initialized()
    assert distributed.local_device("auto", info) == "auto"
    x = torch.arange(12.0).reshape(3, 4)
    assert distributed.gather_objects_to_rank0(x) == [x]
    assert distributed.same_on_all_ranks(["anything"])
    distributed.barrier()
    distributed.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() == distributed.SINGLE


# ---------------------------------------------------------------- torchrun, for real
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _run(cmd, tmp_path, ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(var, None)  # never join an outer job
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after 300 s: {' '.join(map(str, cmd))}\nstderr:\n{e.stderr}")
    assert (proc.returncode == 0) == ok, f"exit {proc.returncode}: {' '.join(map(str, cmd))}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _pngs(tmp_path, n=10):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(7)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(src / f"im{k:02d}.png")
    return src


def test_torchrun_two_processes_equal_one_process_bit_for_bit(tiny_pipeline_dir, tmp_path):
    src = _pngs(tmp_path)  # chunks of 2 files: 5 chunks, split 2 + 3 between the ranks (unequal shards)
    common = ["invert", "--input", str(src), "--model", str(tiny_pipeline_dir), "--steps", "4", "--batch-size", "2", "--device", "cpu",
              "--chunk-size", "2"]
    merged, single = tmp_path / "merged.safetensors", tmp_path / "single.safetensors"

    dist_run = _run([*TORCHRUN, "-m", "oodgen", *common, "--out", str(merged)], tmp_path)
    _run([sys.executable, "-m", "oodgen", *common, "--out", str(single)], tmp_path)

    z_merged, meta_merged = load_latents(merged)
    z_single, meta_single = load_latents(single)
    assert z_merged.shape == (10, 3, 8, 8)
    assert torch.equal(z_merged, z_single)  # identical bits, hence also input order
    assert [s["name"] for s in meta_merged["sources"]] == [f"imgs/im{k:02d}.png" for k in range(10)]
    assert meta_merged["sources"] == meta_single["sources"]
    assert meta_merged.pop("world_size") == 2 and "world_size" not in meta_single
    for meta in (meta_merged, meta_single):
        meta.pop("created")
    assert meta_merged == meta_single
    assert dist_run.stderr.count("wrote 10 latents") == 1  # only rank 0 reports and writes
    assert not list(tmp_path.glob(".merged.safetensors.*"))  # no stray temporary files from other ranks


def test_a_failing_rank_stops_the_job_instead_of_hanging_it_and_a_rerun_resumes(tiny_pipeline_dir, tmp_path):
    # rank 1 dies while inverting; rank 0 is then waiting for its shard: torchrun must end the job promptly
    script = tmp_path / "fail_on_rank1.py"
    script.write_text(
        "import os, sys\n"
        "from oodgen import cli, engine\n"
        "if os.environ.get('RANK') == '1':\n"
        "    def boom(*a, **k):\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    engine.invert = boom\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    out = tmp_path / "z.safetensors"
    args = ["-q", "invert", "--input", str(_pngs(tmp_path, 6)), "--out", str(out), "--model", str(tiny_pipeline_dir), "--steps", "2",
            "--batch-size", "2", "--device", "cpu", "--chunk-size", "2"]  # 3 chunks: rank 0 takes 1, rank 1 takes 2
    proc = _run([*TORCHRUN, str(script), *args], tmp_path, ok=False)
    assert "injected failure on rank 1" in proc.stderr
    assert not out.exists()

    # the same job again, without the failure, resumes from the checkpoints and equals a single process
    _run([*TORCHRUN, "-m", "oodgen", *args], tmp_path)
    single = tmp_path / "single.safetensors"
    _run([sys.executable, "-m", "oodgen", *[a if a != str(out) else str(single) for a in args]], tmp_path)
    assert torch.equal(load_latents(out)[0], load_latents(single)[0])
    assert not (tmp_path / "z.safetensors.parts").exists()


def test_bad_input_under_torchrun_is_the_usual_one_line_error(tiny_pipeline_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = _run([*TORCHRUN, "-m", "oodgen", "-q", "invert", "--input", str(bad), "--out", str(tmp_path / "z.safetensors"),
                 "--model", str(tiny_pipeline_dir), "--device", "cpu"], tmp_path, ok=False)
    assert "oodgen: error: no usable images" in proc.stderr
    assert not (tmp_path / "z.safetensors").exists()
