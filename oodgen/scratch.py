"""Temporary folders for files the app hands to Gradio (exports, downloads), removed after use.

Gradio copies a returned file into its own cache while it answers the request, so the folder that
held it is not needed once the request is over. Each call of :func:`new_folder` makes a fresh
folder under one root per process and removes the folders made more than :data:`KEEP_S` seconds
earlier; the root goes when the process exits. Nothing here is ever in the workspace.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

KEEP_S = 600.0  # a folder is kept this long after it was made (Gradio has copied its files long before)
_ROOT: Optional[Path] = None
_LOCK = threading.Lock()


def _root() -> Path:
    global _ROOT
    if _ROOT is None or not _ROOT.is_dir():
        _ROOT = Path(tempfile.mkdtemp(prefix="oodgen-scratch-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def new_folder(tag: str) -> Path:
    """A new empty folder for one export or download (``tag``: what it is for, e.g. "mos" or "dl"); prunes stale ones."""
    with _LOCK:
        root = _root()
        now = time.time()
        for old in root.iterdir():
            try:
                if now - old.stat().st_mtime > KEEP_S:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=root))
