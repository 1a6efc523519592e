"""Latent files: safetensors with one tensor ``latents`` [N, C, H, W] and JSON metadata.

Metadata (all JSON under the safetensors metadata key ``oodgen``, written by
:func:`oodgen.pipeline.latent_metadata`): model id, resolution, the DDIM settings (``ddim``), source
names and content hashes, the stretch used for physical data, the data kind, oodgen version and
creation time. Loading memory-maps the file and reads only the
``latents`` tensor (or just the metadata with :func:`read_metadata`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .fsutil import atomic_write, utc_now

TENSOR = "latents"
META_KEY = "oodgen"


class LatentFileError(ValueError):
    """A latent file is missing, unreadable or not an oodgen latent file."""


def _full_meta(meta: dict[str, Any], shape: Iterable[int]) -> str:
    full = {"oodgen_version": __version__, "created": utc_now(), **meta}
    full["shape"] = list(shape)
    return json.dumps(full)


def save_latents(path: str | Path, latents: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write ``latents`` [N, C, H, W] (stored float32, contiguous, CPU) and ``meta`` atomically."""
    if latents.ndim != 4:
        raise LatentFileError(f"latents must be [N, C, H, W], got shape {tuple(latents.shape)}")
    tensor = latents.detach().to("cpu", torch.float32).contiguous()
    text = _full_meta(meta, latents.shape)
    atomic_write(Path(path), lambda tmp: save_file({TENSOR: tensor}, str(tmp), metadata={META_KEY: text}))
    return Path(path)


def save_latents_from_parts(path: str | Path, parts: Iterable[torch.Tensor], shape: tuple[int, int, int, int], meta: dict[str, Any]) -> Path:
    """Write the latent file of ``shape`` [N, C, H, W] from ``parts`` [n_k, C, H, W] (in order, n_k summing to N), atomically.

    The same file as :func:`save_latents` of their concatenation, but only one part is in memory at a
    time: the safetensors header is written first (8-byte little-endian length, JSON padded to 8 bytes),
    then each part's float32 bytes. For latent sets larger than memory (:mod:`oodgen.bulk`).
    """
    if len(shape) != 4:
        raise LatentFileError(f"latents must be [N, C, H, W], got shape {tuple(shape)}")
    n_bytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]
    header = {"__metadata__": {META_KEY: _full_meta(meta, shape)}, TENSOR: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, n_bytes]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(tmp: Path) -> None:
        rows = 0
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for part in parts:
                if part.ndim != 4 or tuple(part.shape[1:]) != tuple(shape[1:]):
                    raise LatentFileError(f"a part has shape {tuple(part.shape)}, expected [n, {', '.join(map(str, shape[1:]))}]")
                rows += part.shape[0]
                if rows > shape[0]:
                    raise LatentFileError(f"the parts hold more than the {shape[0]} rows announced")
                f.write(part.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes())
        if rows != shape[0]:
            raise LatentFileError(f"the parts hold {rows} rows, {shape[0]} announced")

    atomic_write(Path(path), write)
    return Path(path)


def _open(path: Path):
    if not path.is_file():
        raise LatentFileError(f"{path}: no such latent file; make one with `python -m oodgen invert --input ... --out {path.name}`")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:
        raise LatentFileError(f"{path}: not a readable safetensors file ({e})") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dict of a latent file, without reading the tensor."""
    path = Path(path)
    with _open(path) as f:
        raw = (f.metadata() or {}).get(META_KEY)
        keys = list(f.keys())
    if TENSOR not in keys:
        raise LatentFileError(f"{path}: has no tensor named {TENSOR!r} (found {', '.join(keys) or 'none'})")
    return json.loads(raw) if raw else {}


def load_latents(path: str | Path, rows: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """(latents [N, C, H, W] float32, metadata) of a latent file.

    With ``rows`` (increasing indices) only those latents are read, from the memory-mapped file: for
    files larger than memory. The metadata is then that of the whole file.
    """
    path = Path(path)
    meta = read_metadata(path)
    with _open(path) as f:
        if rows is None:
            x = f.get_tensor(TENSOR)
        else:
            sl = f.get_slice(TENSOR)
            n = sl.get_shape()[0]
            bad = [i for i in rows if not 0 <= i < n]
            if bad:
                raise LatentFileError(f"{path}: rows {bad[:3]} are outside 0..{n - 1}")
            x = torch.cat([sl[i : i + 1] for i in rows]) if len(rows) else torch.zeros((0, *sl.get_shape()[1:]))
    if x.ndim != 4:
        raise LatentFileError(f"{path}: tensor {TENSOR!r} has shape {tuple(x.shape)}, expected [N, C, H, W]")
    return x.float(), meta


def count_latents(path: str | Path) -> int:
    """N of a latent file, without reading the tensor."""
    with _open(Path(path)) as f:
        return int(f.get_slice(TENSOR).get_shape()[0])


def sources_of(samples: Any, x: Any = None) -> list[dict[str, Any]]:
    """The ``sources`` metadata entries of :class:`oodgen.data.Sample` s, in order: name, content hash and,
    when the model inputs ``x`` [N, C, H, W] are given, each image's pixel-noise sigma and sky level per
    channel in model units (:func:`oodgen.sampling.pixel_noise`, :func:`~oodgen.sampling.border_level`)
    and its per-channel quantile function at :data:`oodgen.sampling.QUANTILE_LEVELS` levels (read back by
    :func:`source_profile`)."""
    out: list[dict[str, Any]] = [{"name": s.name, "sha256": s.sha256} for s in samples]
    if x is not None and len(out):
        from .sampling import border_level, pixel_noise, quantile_functions

        xf = x.float()
        for entry, sig, sky, q in zip(out, pixel_noise(xf).tolist(), border_level(xf).tolist(), quantile_functions(xf).tolist()):
            entry["noise"] = [round(v, 6) for v in sig]
            entry["sky"] = [round(v, 6) for v in sky]
            entry["quantiles"] = [[round(v, 4) for v in row] for row in q]
    return out


def source_noise(meta: dict[str, Any], key: str = "noise") -> Optional[list[float]]:
    """Median per-channel pixel noise (``key`` "noise") or sky level ("sky") of a latent file's sources
    (model units), or None if not recorded."""
    import statistics

    sigs = [s[key] for s in meta.get("sources") or [] if isinstance(s, dict) and s.get(key)]
    if not sigs:
        return None
    return [statistics.median(col) for col in zip(*sigs)]


def source_profile(meta: dict[str, Any]):
    """The :class:`oodgen.sampling.SourceProfile` of a latent file's metadata: median noise and sky level, and
    the per-source quantile functions [N, C, Q] when every source has one (else None: files made before
    oodgen recorded them)."""
    from .sampling import SourceProfile

    noise, sky = source_noise(meta), source_noise(meta, "sky")
    srcs = [s for s in meta.get("sources") or [] if isinstance(s, dict)]
    qs = [s.get("quantiles") for s in srcs]
    quantiles = torch.tensor(qs, dtype=torch.float32) if srcs and all(qs) else None
    return SourceProfile(None if noise is None else torch.tensor(noise, dtype=torch.float32),
                         None if sky is None else torch.tensor(sky, dtype=torch.float32), quantiles)
