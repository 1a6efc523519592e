"""What of an upload becomes a dataset: one kind of data per dataset, and only the files that were used.

Policy. A dataset holds one kind of data: plain images, or physical maps with one band layout and
unit (they share a stretch at inversion). When an upload mixes kinds, the kind with the most
samples is kept (the first one seen on a tie) and every sample of another kind is skipped with the
reason and the fix (upload it as a separate dataset). Only the files (or zip members) whose
samples are all kept are saved; rejected files (unreadable, unsupported, oversized, zip bombs,
another kind) are never copied into the dataset, so inverting it later reads exactly what the
upload kept. :class:`UploadPlan` says what was kept, skipped (file, reason) and left out as not
data; :func:`save_upload` writes the kept files as a workspace dataset.
"""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from .data import ARCHIVE_SUFFIXES, MANIFEST, LoadReport, Sample, read_files
from .workspace import Record, Workspace, WorkspaceError

log = logging.getLogger(__name__)

Look = tuple  # ("image",) or ("physical", bands, unit, band names): samples of one look can share a dataset


@dataclass
class _Unit:
    """One file of the upload, or one member of an uploaded zip, and the samples it held."""

    path: Path  # the uploaded file (the archive, for a member)
    member: Optional[str]  # the zip member, or None for a plain file
    samples: list[Sample] = field(default_factory=list)


@dataclass
class UploadPlan:
    """What an upload becomes."""

    kind: str  # "image" or "physical"
    look: str  # e.g. "images" or "physical maps (3 bands, MJy/sr)"
    kept: list[Sample]  # the dataset's samples, in upload order
    skipped: list[tuple[str, str]]  # (file or sample, why it was not kept): read errors and samples of another kind
    ignored: list[str]  # files that are not data (README.md, notes.txt in a zip, ...), left out
    units: list[_Unit] = field(default_factory=list, repr=False)  # the files (or members) to save


def _look(s: Sample) -> Look:
    return ("image",) if s.kind == "image" else ("physical", s.channels, s.unit, s.bands)


def describe(look: Look) -> str:
    """A look in words: "images", "physical maps (3 bands, MJy/sr)"."""
    if look[0] == "image":
        return "images"
    _, bands, unit, names = look
    detail = f"{bands} band{'s' if bands != 1 else ''}" + (f": {', '.join(names)}" if names else "") + (f", {unit}" if unit else "")
    return f"physical maps ({detail})"


def _one(look: Look) -> str:
    """One sample of a look in words: "a plain image", "a physical map (1 band)"."""
    return "a plain image" if look[0] == "image" else "a physical map" + describe(look)[len("physical maps"):]


def _strip_name(name: str, message: str) -> str:
    """The message without the file name it starts with (the list shows the name once)."""
    return message[len(name) + 2:] if message.startswith(name + ": ") else message


def _member_of(sample_name: str, archive: str, members: Sequence[str]) -> Optional[str]:
    """The zip member a sample came from: its name is "<archive>/<member>" plus an optional "[i]" or ":key"."""
    rest = sample_name[len(archive) + 1:] if sample_name.startswith(archive + "/") else None
    if rest is None:
        return None
    best = None
    for m in members:
        if (rest == m or rest.startswith(m + "[") or rest.startswith(m + ":")) and (best is None or len(m) > len(best)):
            best = m
    return best


def plan_upload(files: Sequence[str | Path]) -> UploadPlan:
    """Read the uploaded ``files`` (each on its own, so every sample is traced to its file) and decide what is kept."""
    units: list[_Unit] = []
    skipped: list[tuple[str, str]] = []
    ignored: list[str] = []
    for f in map(Path, files):
        report = read_files([(f.name, f)], LoadReport())
        skipped += [(name, _strip_name(name, msg)) for name, msg in report.errors]
        ignored += report.ignored
        if f.name.lower().endswith(ARCHIVE_SUFFIXES) and report.samples:
            with zipfile.ZipFile(f) as zf:
                members = [i.filename for i in zf.infolist() if not i.is_dir()]
            by_member: dict[str, _Unit] = {}
            for s in report.samples:
                m = _member_of(s.name, f.name, members)
                if m is None:  # cannot happen for samples read from this archive; refuse to guess
                    skipped.append((s.name, "its place in the archive could not be traced; extract the archive and upload its files"))
                    continue
                by_member.setdefault(m, _Unit(f, m)).samples.append(s)
            units += by_member.values()
        elif report.samples:
            units.append(_Unit(f, None, list(report.samples)))
    counts = Counter(_look(s) for u in units for s in u.samples)
    if not counts:
        return UploadPlan("image", "images", [], skipped, ignored, [])
    first_seen = {lk: k for k, lk in reversed(list(enumerate(_look(s) for u in units for s in u.samples)))}
    look = max(counts, key=lambda lk: (counts[lk], -first_seen[lk]))
    what = describe(look)
    kept_units, kept = [], []
    for u in units:
        others = [s for s in u.samples if _look(s) != look]
        if not others:
            kept_units.append(u)
            kept += u.samples
            continue
        for s in u.samples:
            if _look(s) != look:
                skipped.append((s.name, f"{_one(_look(s))}, but this dataset holds {what} ({counts[look]} of them): one kind per "
                                        "dataset; upload it as a separate dataset"))
            else:
                skipped.append((s.name, "its file also holds data of another kind; split the file"))
    return UploadPlan(look[0], what, kept, skipped, ignored, kept_units)


def _safe(part: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]", "_", part).lstrip(".")
    return s or "file"


def save_upload(ws: Workspace, owner: str, name: str, plan: UploadPlan, *, shared: bool = False) -> Record:
    """The kept files of ``plan`` as a new dataset record (plain files copied; kept zip members extracted, with their folder's manifest)."""
    if not plan.kept:
        raise WorkspaceError("nothing to save: none of the files held a usable image")

    def fill(tmp: Path) -> dict:
        root = tmp / "files"
        root.mkdir()
        used: set[str] = set()

        def unique(stem: str) -> str:
            target, k = stem, 1
            while target in used:
                target, k = f"{k}_{stem}", k + 1
            used.add(target)
            return target

        archives: dict[Path, str] = {}
        for u in plan.units:
            if u.member is None:
                shutil.copyfile(u.path, root / unique(_safe(u.path.name)))
                continue
            if u.path not in archives:
                archives[u.path] = unique(_safe(Path(u.path.name).stem))
            member = PurePosixPath(u.member)
            folder = root / archives[u.path] / Path(*[_safe(p) for p in member.parent.parts])
            folder.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(u.path) as zf:
                (folder / _safe(member.name)).write_bytes(zf.read(u.member))
                manifest = str(member.parent / MANIFEST) if str(member.parent) != "." else MANIFEST
                if manifest in zf.NameToInfo and not (folder / MANIFEST).exists():
                    (folder / MANIFEST).write_bytes(zf.read(manifest))  # band names and unit of the arrays beside it
        return {"n": len(plan.kept), "kind": plan.kind, "look": plan.look, "errors": [list(e) for e in plan.skipped],
                "ignored": list(plan.ignored), "files": sorted(used)}

    rec = ws.create("datasets", name, owner, fill, shared=shared)
    log.info("upload %s: kept %d %s, skipped %d, not data %d", rec.id, len(plan.kept), plan.look, len(plan.skipped), len(plan.ignored))
    return rec
