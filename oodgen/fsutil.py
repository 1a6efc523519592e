"""Small file-system helpers used everywhere a file or folder is written: atomic writes, UTC timestamps.

A file is written under a hidden temporary name in its folder and renamed onto its final name
(:func:`atomic_write`); a folder is filled under a hidden temporary name beside its final one and
renamed into place (:func:`atomic_dir`). Either way a crash leaves no half-written entry, and
listings that skip names starting with ``.`` never see one being written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def cache_dir() -> Path:
    """oodgen's per-machine cache folder (measured batch sizes, compiled kernels): ``$OODGEN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/oodgen``, else ``~/.cache/oodgen``. Not created here."""
    env = os.environ.get("OODGEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "oodgen"


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601 with a ``Z``: ``2026-01-31T12:00:00Z`` (``timespec`` as in :meth:`datetime.isoformat`)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def atomic_write(path: str | Path, write: Callable[[Path], Any], *, fsync: bool = True) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (a crash leaves no half file).

    ``fsync``: flush the file to disk before the rename (off for caches that may be lost).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomic UTF-8 text write."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """Atomic JSON write (UTF-8, non-ASCII kept)."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


def atomic_dir(final: str | Path, fill: Callable[[Path], T], *, replace: bool = True) -> T:
    """Call ``fill(tmp_folder)`` on a hidden temporary folder beside ``final``, rename it into place and return what
    ``fill`` returned; a crash leaves no half-written folder.

    ``replace``: an existing ``final`` is replaced; else :class:`FileExistsError` (checked after ``fill``, just
    before the rename, so a folder made meanwhile by someone else is never overwritten).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        out = fill(tmp)
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} exists")
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
