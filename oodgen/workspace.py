"""The app's workspace: one folder (``$OODGEN_HOME``, default ``./workspace``) holding everything made.

Layout (every record is a folder with a JSON manifest, written under a hidden temporary name and
renamed into place, so a crash never leaves a half-written entry that breaks a listing)::

    HOME/datasets/<id>/dataset.json + files/...       uploaded data, per owner (or shared)
    HOME/runs/<id>/run.json + latents.safetensors      finished inversions (+ thumbs.npy, diagnostics/)
    HOME/generated/<id>/generated.json + images/ ...   generated sets (PNG, physical .npy, latents; .quality/: the
                                                       cached quality report, hidden so reading the set skips it)
    HOME/jobs/<id>.json + jobs/<id>/                   background jobs and their finished chunks
    HOME/studies/, HOME/ratings/                       MOS studies and the ratings CSV (oodgen.ratings)

Owners are opaque ids: ``anon-<16 hex>`` derived from a random browser key, or ``hf-<user>`` for a
Hugging Face login. Nobody lists another owner's records unless they are marked shared. Every id
that reaches a path is checked against :data:`ID_RE` first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .fsutil import atomic_dir, utc_now, write_json

log = logging.getLogger(__name__)

HOME_ENV = "OODGEN_HOME"
SECRET_ENV = "OODGEN_BROWSER_SECRET"  # a Space's secret: keeps browser keys readable across rebuilds of its disk
SECRET_FILE = ".browser_secret"  # else created once in the workspace, mode 0600
MIN_SECRET = 16  # characters
ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
NAME_MAX = 60
KINDS = ("datasets", "runs", "generated")
MANIFEST = {"datasets": "dataset.json", "runs": "run.json", "generated": "generated.json"}


class WorkspaceError(ValueError):
    """A bad name or id, a missing record, or a record that belongs to someone else."""


def home_from_env() -> Path:
    """``$OODGEN_HOME`` or ``./workspace``, absolute."""
    return Path(os.environ.get(HOME_ENV) or "workspace").expanduser().resolve()


def check_id(value: Any, what: str = "id") -> str:
    """``value`` if it is a safe id (lowercase letters, digits, ``-``, ``_``), else WorkspaceError."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise WorkspaceError(f"{what} {value!r} is not valid: use 1-80 lowercase letters, digits, '-' or '_'")
    return value


def check_name(value: Any, what: str = "name") -> str:
    """A display name: 1-60 printable characters, no path separators."""
    name = str(value or "").strip()
    if not name:
        raise WorkspaceError(f"the {what} is empty: type a short name such as 'my-galaxies'")
    if len(name) > NAME_MAX:
        raise WorkspaceError(f"the {what} has {len(name)} characters; use at most {NAME_MAX}")
    if any(not ch.isprintable() for ch in name) or "/" in name or "\\" in name:
        raise WorkspaceError(f"the {what} {name!r} holds control characters or slashes; use letters, digits, spaces, '-' and '_'")
    return name


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    return s or "set"


def new_id(name: str) -> str:
    """A fresh id: the name's slug plus 8 random hex digits."""
    return f"{slug(name)}-{secrets.token_hex(4)}"


def owner_from_key(key: Optional[str]) -> str:
    """An anonymous owner id from a browser key (never stored or shown itself)."""
    if not key or not isinstance(key, str) or len(key) < 16:
        raise WorkspaceError("this browser has no workspace key yet; reload the page")
    return "anon-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def owner_from_login(username: str) -> str:
    """The owner id of a Hugging Face login: ``hf-<name>``, distinct for distinct user names.

    A name that is already lowercase letters, digits and '-' (at most 40) keeps that id (case is
    ignored, as Hugging Face user names are unique regardless of case). Any other name (with '.',
    '_', other characters, or longer) gets its slug plus '_' and 16 hex digits of its SHA-256: no
    plain id has a '_', so 'a_b', 'a.b' and 'a-b' no longer share one owner.
    """
    s = slug(username)
    if s == username.lower():
        return "hf-" + s
    return f"hf-{s}_{hashlib.sha256(username.lower().encode()).hexdigest()[:16]}"


def new_browser_key() -> str:
    return secrets.token_hex(16)


def browser_secret(home: str | Path | None = None) -> str:
    """The secret that encrypts what the app keeps in a visitor's browser (their workspace key, rater name).

    It must survive restarts, or a restarted app cannot read the key and the visitor's datasets, runs
    and jobs vanish from their view. From ``$OODGEN_BROWSER_SECRET`` when set (a Space's secret), else
    ``HOME/.browser_secret``, created once with mode 0600 (several processes starting at once agree
    on one: it is linked into place, never overwritten). The workspace is never served, so neither is the file.
    """
    env = os.environ.get(SECRET_ENV, "").strip()
    if env:
        if len(env) < MIN_SECRET:
            raise WorkspaceError(f"{SECRET_ENV} has {len(env)} characters; use at least {MIN_SECRET} random ones "
                                 "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return env
    root = Path(home).resolve() if home is not None else home_from_env()
    root.mkdir(parents=True, exist_ok=True)
    path = root / SECRET_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".browser_secret.", suffix=".tmp", dir=root)  # mode 0600
        try:
            os.write(fd, secrets.token_urlsafe(32).encode("ascii"))
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)  # atomic; fails if another process made it first, whose secret is then used
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        log.warning("workspace: %s was readable by others; made it private (mode 0600)", path)
        os.chmod(path, 0o600)
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < MIN_SECRET:
        raise WorkspaceError(f"the browser secret file in the workspace holds {len(secret)} characters; delete it and restart "
                             "(visitors then get new keys)")
    return secret


@dataclass(frozen=True)
class Record:
    """One listed entry: a dataset, run or generated set."""

    kind: str  # datasets | runs | generated
    id: str  # folder name
    name: str  # display name
    owner: str  # owner id
    shared: bool  # listed to every user
    created: str  # UTC ISO 8601
    meta: dict = field(default_factory=dict, compare=False)  # the whole manifest
    root: Optional[Path] = field(default=None, compare=False)  # the folder

    def label(self) -> str:
        """Dropdown label."""
        n = self.meta.get("n")
        return f"{self.name} ({n})" if n is not None else self.name


class Workspace:
    """Folders and manifests under one home directory; safe for several threads and processes."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home).resolve() if home is not None else home_from_env()
        for sub in (*KINDS, "jobs"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- paths
    def path(self, kind: str, record_id: str) -> Path:
        if kind not in KINDS:
            raise WorkspaceError(f"unknown record kind {kind!r}")
        return self.home / kind / check_id(record_id, f"{kind[:-1] if kind != 'generated' else 'generated set'} id")

    # ---------------------------------------------------------------- writing
    def create(self, kind: str, name: str, owner: str, fill: Callable[[Path], dict], *, shared: bool = False,
               record_id: Optional[str] = None) -> Record:
        """Make a record atomically: ``fill(tmp_folder)`` writes files and returns extra manifest fields.

        The folder becomes visible under its final name only once complete.
        """
        name = check_name(name)
        rid = check_id(record_id) if record_id else new_id(name)
        final = self.path(kind, rid)
        if final.exists():
            raise WorkspaceError(f"{kind[:-1]} {rid!r} already exists")

        def fill_record(tmp: Path) -> dict:
            extra = fill(tmp) or {}
            manifest = {"id": rid, "name": name, "owner": owner, "shared": bool(shared), "created": utc_now(), **extra}
            write_json(tmp / MANIFEST[kind], manifest)
            return manifest

        try:
            manifest = atomic_dir(final, fill_record, replace=False)
        except FileExistsError:
            raise WorkspaceError(f"{kind[:-1]} {rid!r} already exists") from None
        log.info("workspace: created %s/%s (%s)", kind, rid, name)
        return self._record(kind, final, manifest)

    def update(self, kind: str, record_id: str, **changes: Any) -> Record:
        """Change manifest fields (e.g. ``shared=True``) atomically."""
        rec = self.get(kind, record_id)
        manifest = {**rec.meta, **changes}
        write_json(rec.root / MANIFEST[kind], manifest)
        return self._record(kind, rec.root, manifest)

    def delete(self, kind: str, record_id: str, owner: str) -> None:
        """Remove one of ``owner``'s own records with its files (a shared record of another owner is refused)."""
        rec = self.get(kind, record_id, owner)
        if rec.owner != owner:
            raise WorkspaceError(f"{rec.label()} is shared by another user: only its owner can delete it")
        trash = rec.root.with_name(f".{rec.id}.deleted")
        os.rename(rec.root, trash)  # vanishes from listings at once
        shutil.rmtree(trash, ignore_errors=True)

    # ---------------------------------------------------------------- reading
    @staticmethod
    def _record(kind: str, root: Path, m: dict) -> Record:
        return Record(kind, m["id"], m["name"], m["owner"], bool(m.get("shared")), m["created"], m, root)

    def _read(self, kind: str, root: Path) -> Optional[Record]:
        try:
            m = json.loads((root / MANIFEST[kind]).read_text(encoding="utf-8"))
            if m.get("id") != root.name:
                raise ValueError(f"manifest names {m.get('id')!r}")
            return self._record(kind, root, m)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.warning("workspace: skipping damaged %s/%s: %s", kind, root.name, e)
            return None

    def get(self, kind: str, record_id: str, owner: Optional[str] = None) -> Record:
        """One record; with ``owner``, only if that owner may see it (own or shared)."""
        rec = self._read(kind, self.path(kind, record_id))
        if rec is None or (owner is not None and rec.owner != owner and not rec.shared):
            raise WorkspaceError(f"no {kind[:-1] if kind != 'generated' else 'generated set'} {record_id!r} in this workspace for you; pick one from the list")
        return rec

    def list(self, kind: str, owner: Optional[str] = None) -> list[Record]:
        """Complete records visible to ``owner`` (own and shared; all when owner is None), newest first."""
        root = self.home / kind
        out = []
        for d in root.iterdir() if root.is_dir() else ():
            if d.name.startswith(".") or not d.is_dir() or not ID_RE.fullmatch(d.name):
                continue
            rec = self._read(kind, d)
            if rec is not None and (owner is None or rec.owner == owner or rec.shared):
                out.append(rec)
        return sorted(out, key=lambda r: (r.created, r.id), reverse=True)

    # ---------------------------------------------------------------- jobs
    def job_path(self, job_id: str) -> Path:
        return self.home / "jobs" / f"{check_id(job_id, 'job id')}.json"

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / check_id(job_id, "job id")

