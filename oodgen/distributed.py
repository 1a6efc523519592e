"""Run ``python -m oodgen invert`` on several processes (GPUs, nodes) with ``torchrun``.

Nothing changes for a plain ``python -m oodgen invert``: without the environment that torchrun sets
(``WORLD_SIZE`` > 1) :func:`init_from_env` initializes nothing and returns world_size 1, and the
other helpers do nothing. Under torchrun every rank lists the input files (names only), probes the
data kind and stretch, loads the model on its own device, and inverts a contiguous run of the
chunks of files of :mod:`oodgen.bulk` (:func:`shard_range` over chunks), checkpointing each chunk
in ``<out>.parts``. Rank 0 then writes the latent file, streaming the chunks in input order: its own
from disk, the others' sent over gloo (:func:`send_to_rank0`, :func:`recv_on_rank0`), one chunk in
memory at a time. A chunk's batches depend only on its files, so on the same hardware and software
the merged latents are bit-identical to a single-process run (on GPUs: the same GPU model and
deterministic kernels; oodgen keeps torch's default ``cudnn.benchmark = False``); the metadata is
that of a single-process run plus ``"world_size"``. A job that stopped resumes from the checkpoints
when run again, with any number of ranks.

One node with N GPUs (rank k uses ``cuda:k`` when ``--device`` is ``auto`` or ``cuda``)::

    torchrun --standalone --nproc_per_node=N -m oodgen invert \\
        --input my_galaxies/ --out out/galaxies.safetensors --device cuda

Several nodes, e.g. 2 nodes with 8 GPUs each: run the same command on every node; HOST:PORT is a
reachable address of one of them (e.g. ``node1:29400``) and JOB a name shared by the nodes::

    torchrun --nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --rdzv_id=JOB \\
        --nproc_per_node=8 -m oodgen invert --input /shared/galaxies --out /shared/galaxies.safetensors

With the c10d rendezvous torchrun assigns the ranks itself (it ignores ``--node_rank``, with a
warning), so global rank 0, which writes ``--out``, may run on any node: put ``--out`` on a file
system the nodes share. To pin rank 0 to a given node use the static rendezvous instead, with
``--node_rank=0`` on that node (HOST) and ``--node_rank=1`` on the other::

    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=PORT \\
        --nproc_per_node=8 -m oodgen invert --input /data/galaxies --out out/galaxies.safetensors

Every node must see the same ``--input`` files (a shared file system or identical copies): the
ranks compare the names and sizes of the files they list and stop with an error if they differ;
the sources' SHA-256 are recorded as the chunks are read.

CPU-only (one process per core group, e.g. to test): ``OMP_NUM_THREADS=4 torchrun --standalone
--nproc_per_node=2 -m oodgen invert ... --device cpu``. When torchrun is not on the PATH,
``python -m torch.distributed.run`` is the same program.

Order of work in ``cmd_invert``: every rank lists the inputs, probes them and loads the model first
(bad input fails at once, before any rendezvous), then joins the process group (:func:`init_from_env`),
checks that all ranks list the same files, inverts its chunks, and the ranks meet to merge: rank 0
gathers the chunks' metadata (:func:`gather_objects_to_rank0`), writes the file while receiving the
other ranks' chunks, and a final barrier lets every rank remove its checkpoints.

Communication: results travel as CPU tensors over gloo. On GPUs the process group is created with
``"cpu:gloo,cuda:nccl"`` (gloo for CPU tensors and object collectives, NCCL for any CUDA tensor), so
the merge never takes GPU memory. Collectives time out after :data:`DEFAULT_TIMEOUT` (a day, since
the ranks wait for the slowest one before the merge; ``OODGEN_DIST_TIMEOUT_MIN`` sets it); a rank that fails exits non-zero and torchrun then stops the others, so an error never hangs a job.
Memory: about two chunks of input and one of latents per rank, whatever the size of the data set.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("OODGEN_DIST_TIMEOUT_MIN") or 24 * 60))
"""How long a collective (the input check, the wait for the slowest rank before the merge) waits for the other ranks.

A day by default (``OODGEN_DIST_TIMEOUT_MIN`` minutes if set): shards are equal in files, not in time,
and a rank that dies ends the job through torchrun anyway."""


class DistributedError(ValueError):
    """Bad distributed setup (more ranks than GPUs, ranks that disagree); a ValueError so the CLI prints one line."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job; world_size 1 (rank 0, backend None) for a plain run."""

    rank: int  # global rank, 0 .. world_size - 1; rank 0 writes the outputs
    world_size: int  # number of processes in the job
    local_rank: int  # rank on this node: the GPU index used with --device auto/cuda
    backend: Optional[str]  # torch.distributed backend ("gloo" or "cpu:gloo,cuda:nccl"), None when not distributed

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, backend=None)

_owned_group = False  # True while the default process group is one that init_from_env created


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def local_device(device: str, info: DistInfo) -> str:
    """The device string this rank should load the model on.

    Under torchrun, ``auto`` (when CUDA is available) and ``cuda`` become ``cuda:LOCAL_RANK``; anything
    else (``cpu``, ``mps``, an explicit ``cuda:N``) is kept. Without torchrun ``device`` is returned unchanged.
    """
    if info.world_size > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{info.local_rank}"
    return device


def env_info() -> DistInfo:
    """This process's place in the torchrun job, read from the environment only (no process group, backend None).

    :data:`SINGLE` when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world_size - 1}")
    return DistInfo(rank, world_size, local_rank, None)


def init_from_env(device: str = "auto", timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Join the torchrun job described by the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    With ``WORLD_SIZE`` unset or 1 nothing is initialized and :data:`SINGLE` is returned. Otherwise
    the default process group is created (env:// rendezvous, ``timeout`` for every collective): with
    backend ``"cpu:gloo,cuda:nccl"`` and the current CUDA device set to this rank's GPU when the model
    will run on CUDA (``device`` auto with CUDA available, ``cuda`` or ``cuda:N``), else ``"gloo"``.
    Calling it again in an initialized process returns the same info.

    Call it AFTER the model is loaded (after diffusers is imported): torch.distributed submodules
    imported after the group exists (``torch.distributed.fsdp``, which diffusers imports) keep a
    reference to it in default arguments, so :func:`cleanup` cannot free it, gloo's worker threads
    outlive ``main`` and may abort the process at exit ("terminate called without an active exception").
    """
    global _owned_group
    info = env_info()
    if info.world_size <= 1:
        return SINGLE
    rank, world_size, local_rank = info.rank, info.world_size, info.local_rank
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run without torchrun")
    info_dev = local_device(device, info)
    on_cuda = torch.cuda.is_available() and info_dev.startswith("cuda")
    backend = "cpu:gloo,cuda:nccl" if on_cuda else "gloo"
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))
    if on_cuda:
        index = torch.device(info_dev).index or 0
        if index >= torch.cuda.device_count():
            raise DistributedError(
                f"rank {rank} (local rank {local_rank}) wants {info_dev}, but only {torch.cuda.device_count()} GPU(s) are visible; "
                f"use --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(index)
    dist.init_process_group(backend=backend, timeout=timeout)
    _owned_group = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def shard_range(n: int, world_size: int, rank: int, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the items of ``rank``: contiguous, in order, boundaries at multiples of ``batch_size``.

    The ceil(n / batch_size) batches a single process would run are split into ``world_size``
    contiguous runs of nearly equal length (lengths differ by at most one batch), so each rank runs
    exactly those batches. Ranks get an empty range (start == stop) when there are fewer batches
    than ranks. Over all ranks the ranges cover 0..n once, in rank order.
    """
    if n < 0 or world_size < 1 or batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range needs n >= 0, world_size >= 1, 0 <= rank < world_size, batch_size >= 1; "
                         f"got n={n}, world_size={world_size}, rank={rank}, batch_size={batch_size}")
    n_batches = -(-n // batch_size)
    first = rank * n_batches // world_size
    last = (rank + 1) * n_batches // world_size
    return min(n, first * batch_size), min(n, last * batch_size)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_objects_to_rank0(obj: Any) -> Optional[list[Any]]:
    """Every rank's ``obj`` (picklable, small) as a list in rank order on rank 0; None on the others; [obj] without a group."""
    if not _active():
        return [obj]
    received: Optional[list[Any]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, received, dst=0)
    return received


def send_to_rank0(tensor: torch.Tensor) -> None:
    """Send a CPU tensor to rank 0, which takes it with :func:`recv_on_rank0` (shape agreed beforehand)."""
    dist.send(tensor.detach().to("cpu", torch.float32).contiguous(), dst=0)


def recv_on_rank0(src: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Receive a float32 CPU tensor of ``shape`` that rank ``src`` sent with :func:`send_to_rank0`."""
    buf = torch.empty(shape, dtype=torch.float32)
    dist.recv(buf, src=src)
    return buf


def min_over_ranks(value: int) -> int:
    """The smallest ``value`` over all ranks (``value`` itself without a group), e.g. one batch size for every rank."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def same_on_all_ranks(obj: Any) -> bool:
    """True when every rank passes an equal ``obj`` (compared by a SHA-256 of its pickle); True without a group.

    A collective: every rank must call it. Use it on plain data (lists of names and hashes).
    """
    if not _active():
        return True
    digest = hashlib.sha256(pickle.dumps(obj, protocol=4)).hexdigest()
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    return len(set(digests)) == 1


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _active():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group that :func:`init_from_env` created (safe to call twice, and after errors).

    A group created by someone else (an embedding program) is left alone.
    """
    global _owned_group
    if _owned_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False
