"""Hugging Face ZeroGPU support, optional: without the ``spaces`` package nothing changes.

On a ZeroGPU Space a GPU is attached only inside calls decorated with ``@spaces.GPU``, for a
limited time each, so long work runs as several short decorated calls (one chunk of images each)
that take and return CPU tensors. Everywhere else :func:`gpu` returns the function unchanged.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


def active() -> bool:
    """True on a ZeroGPU Space (the platform sets ``SPACES_ZERO_GPU``) with ``spaces`` importable."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return False
    try:
        import spaces  # noqa: F401
    except ImportError:
        log.warning("SPACES_ZERO_GPU is set but the `spaces` package is missing: running without ZeroGPU")
        return False
    return True


def gpu(duration: int = 60) -> Callable[[F], F]:
    """``spaces.GPU(duration=...)`` on ZeroGPU, else the identity. Applied at import time, as ZeroGPU requires."""

    def wrap(fn: F) -> F:
        if not active():
            return fn
        import spaces

        return spaces.GPU(duration=duration)(fn)

    return wrap
