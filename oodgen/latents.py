"""Latent files: safetensors with one tensor ``latents`` [N, C, H, W] and JSON metadata.

Metadata (all JSON under the safetensors metadata key ``oodgen``): model id, resolution,
t_end, steps, source names and content hashes, the stretch used for physical data, the data
kind, oodgen version and creation time. Loading memory-maps the file and reads only the
``latents`` tensor (or just the metadata with :func:`read_metadata`).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__

TENSOR = "latents"
META_KEY = "oodgen"


class LatentFileError(ValueError):
    """A latent file is missing, unreadable or not an oodgen latent file."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then atomically rename onto ``path`` (a crash leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_latents(path: str | Path, latents: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write ``latents`` [N, C, H, W] (stored float32, contiguous, CPU) and ``meta`` atomically."""
    if latents.ndim != 4:
        raise LatentFileError(f"latents must be [N, C, H, W], got shape {tuple(latents.shape)}")
    full = {"oodgen_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **meta}
    full["shape"] = list(latents.shape)
    tensor = latents.detach().to("cpu", torch.float32).contiguous()
    atomic_write(Path(path), lambda tmp: save_file({TENSOR: tensor}, str(tmp), metadata={META_KEY: json.dumps(full)}))
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


def load_latents(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """(latents [N, C, H, W] float32, metadata) of a latent file."""
    path = Path(path)
    meta = read_metadata(path)
    with _open(path) as f:
        x = f.get_tensor(TENSOR)
    if x.ndim != 4:
        raise LatentFileError(f"{path}: tensor {TENSOR!r} has shape {tuple(x.shape)}, expected [N, C, H, W]")
    return x.float(), meta


def inversion_metadata(model: str, model_config: Any, resolution: int, settings: Any, samples: Any, stretch: Any) -> dict[str, Any]:
    """The metadata every inverted-latents file carries: model, settings, data kind, sources, stretch."""
    return {
        "model": model,
        "model_config": model_config,
        "resolution": resolution,
        **settings.to_json(),
        "kind": samples[0].kind,
        "sources": [{"name": s.name, "sha256": s.sha256} for s in samples],
        "stretch": stretch.to_json() if stretch is not None else None,
    }
