"""Expert Mean Opinion Score (MOS) rating studies: blinded sessions, a crash-safe ratings CSV, summaries.

The paper scores generated astrophysical images against real ones with a MOS from astrophysicists
(50 generated + 50 real samples, 1-5 each; galaxy 2.88 +- 0.93). This module runs such studies:

* a **study** (:func:`create_study`) is a pool of real and generated images of one domain, copied
  under ``HOME/studies/<study_id>/items/`` as blinded PNGs (``item_0001.png``: no original name,
  no metadata, ids shuffled so they do not reveal the source), described by ``study.json``;
* a **rater session** (:func:`start_or_resume`) shows the items in a per-rater shuffled order with
  some items repeated later (consistency check), on the ITU-T P.800 ACR scale (:data:`ACR_LABELS`).
  Its position is derived from the ratings CSV alone, so it resumes exactly after a refresh, a
  closed tab or a restarted app;
* the **ratings CSV** (:class:`RatingsLog`, default ``HOME/ratings/ratings.csv``) gets one row per
  rating (:data:`CSV_COLUMNS`), appended under a file lock with fsync, safe for any number of
  threads and processes; an incomplete last line left by a crash is moved aside on the next open;
  cells a spreadsheet would run as a formula are neutralized with a leading ``'``;
* a **summary** (:func:`summarize`) gives MOS +- std, N and a 95% t interval per (study, domain,
  method, source) (ITU-T P.1401; reported clipped to the 1-5 scale and flagged where the t
  interval passes a scale end, the unclipped ends kept), per-rater means, repeat consistency,
  straight-liner flags and Krippendorff's ordinal alpha.

``study.json`` and the CSV hold the answers (which item is real): serve only ``items/`` to raters.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import threading
import unicodedata
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Sequence

from filelock import FileLock
from filelock import Timeout as LockTimeout

from .fsutil import atomic_dir, atomic_write, utc_now, write_text

log = logging.getLogger(__name__)

ACR_LABELS: dict[int, str] = {5: "Excellent", 4: "Good", 3: "Fair", 2: "Poor", 1: "Bad"}  # ITU-T P.800 ACR
SCORES: tuple[int, ...] = (1, 2, 3, 4, 5)
SOURCES: tuple[str, ...] = ("real", "generated")
Source = Literal["real", "generated"]
CSV_COLUMNS: tuple[str, ...] = (
    "timestamp", "study", "rater", "session", "item", "source", "domain", "method", "model", "score", "repeat", "response_ms", "comment",
)
STUDY_FILE = "study.json"
ITEMS_DIR = "items"
STUDY_FORMAT = "oodgen-mos-study"
STUDY_VERSION = 1
MAX_COMMENT = 1000  # characters of a rater's comment
MAX_RATER = 64  # characters of a rater id
MAX_LABEL = 200  # characters of a domain, method or model name
MAX_INSTRUCTIONS = 10_000  # characters of a study's instructions
MAX_ITEMS = 10_000  # items in one study
MAX_REPEAT_FRACTION = 0.5  # repeats all go in the second half of a session
STRAIGHT_LINER_MIN_RATINGS = 10  # flag only raters with at least this many first ratings
STRAIGHT_LINER_MAX_SHARE = 0.9  # ... whose most used score exceeds this share (or who never vary)
ADMIN_TOKEN_ENV = "OODGEN_ADMIN_TOKEN"

_STUDY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# "'" too, so that neutralizing is reversible; the full-width signs, which some spreadsheets also take as a formula start
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_SURROGATE = re.compile("[\ud800-\udfff]")  # bytes that were not UTF-8 (decoded with surrogateescape)
_TEXT_CELLS = frozenset(("study", "rater", "session", "item", "source", "domain", "method", "model", "comment"))


class RatingError(ValueError):
    """Bad rating input, a refused rating, or an unreadable study / ratings file (message says the fix)."""


class StaleRating(RatingError):
    """A score for an item that is not the one to rate now: already rated (a fast second click, another tab) or not shown yet."""


# ---------------------------------------------------------------- validation
def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch)}" if unicodedata.name(ch, "") else "")


def _check_text(value: Any, what: str, max_len: int, *, required: bool = False, newlines: bool = False, invisible: bool = True) -> str:
    """``value`` as NFC text without control characters (newline allowed if ``newlines``), at most ``max_len`` chars."""
    if not isinstance(value, str):
        raise RatingError(f"{what} must be text, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n")).strip()
    if required and not text:
        raise RatingError(f"{what} is empty; enter 1 to {max_len} characters")
    if len(text) > max_len:
        raise RatingError(f"{what} is {len(text)} characters long; keep it to {max_len}")
    for ch in text:
        cat = unicodedata.category(ch)
        if (cat == "Cc" and not (newlines and ch == "\n")) or cat in ("Zl", "Zp") or (cat == "Cf" and not invisible):
            kind = "control" if cat == "Cc" else "invisible or line-breaking"
            allowed = "letters, digits, spaces, punctuation" + (" and line breaks" if newlines else "")
            raise RatingError(f"{what} contains the {kind} character {_char_name(ch)}; use {allowed}")
    return text


def validate_study_id(study_id: Any) -> str:
    """A study id: 1-64 ASCII letters, digits, ``_`` or ``-``, starting with a letter or digit."""
    if not isinstance(study_id, str) or not _STUDY_ID.fullmatch(study_id):
        raise RatingError(f"study id {study_id!r} is invalid; use 1-64 letters, digits, '_' or '-', starting with a letter or digit (e.g. galaxy-2025)")
    return study_id


def validate_rater(rater: Any) -> str:
    """A rater id: 1-64 characters (surrounding spaces dropped, NFC) with no control or invisible characters."""
    return _check_text(rater, "rater name", MAX_RATER, required=True, invisible=False)


def validate_comment(comment: Any) -> str:
    """An optional comment: at most 1000 characters, line breaks allowed, no other control characters."""
    if comment is None:
        return ""
    return _check_text(comment, "comment", MAX_COMMENT, newlines=True)


def validate_score(score: Any) -> int:
    """An ACR score, an integer 1-5."""
    if isinstance(score, bool) or not hasattr(score, "__index__") or int(score) not in ACR_LABELS:
        choices = ", ".join(f"{k} {v}" for k, v in sorted(ACR_LABELS.items()))
        raise RatingError(f"score {score!r} is not on the 1-5 scale; choose one of {choices}")
    return int(score)


def neutralize(cell: str) -> str:
    """Prefix ``'`` to every line of a cell that a spreadsheet would run as a formula.

    A line is prefixed when it starts with ``= + - @``, their full-width forms (U+FF1D, U+FF0B,
    U+FF0D, U+FF20), tab or CR, or ``'`` (so that :func:`unneutralize` is exact). Every line, not
    only the first: a tool that splits a multi-line cell into rows would otherwise run its later lines.
    """
    return "\n".join("'" + line if line.startswith(_FORMULA_START) else line for line in cell.split("\n"))


def unneutralize(cell: str) -> str:
    """The original text of a cell written by :func:`neutralize`."""
    return "\n".join(line[1:] if line.startswith("'") else line for line in cell.split("\n"))


# ---------------------------------------------------------------- studies
@dataclass(frozen=True)
class StudyItem:
    """One image to put into a study (input of :func:`create_study`)."""

    path: Path  # image file: PNG/JPEG/TIFF/WebP, or FITS / .npy (rendered like the app's previews)
    source: Source  # "real" reference or "generated"
    method: str = ""  # how it was generated (slerp, gaussian, clip-finetune, ...); "" for real data
    model: str = ""  # model that generated it; "" for real data
    data: Optional[Path] = None  # render from this file instead (e.g. a generated set's physical .npy beside its PNG); path stays the record


@dataclass(frozen=True)
class StudyEntry:
    """One blinded item of a stored study."""

    item_id: str  # blinded id shown to raters, e.g. "item_0007"
    file: str  # image path relative to the study folder, e.g. "items/item_0007.png"
    source: str  # "real" | "generated" (never shown to raters)
    method: str  # generation method; "" for real data
    model: str  # generating model; "" for real data
    origin: str  # original file name, for the study owner's records only (never shown to raters)
    origin_sha256: str  # SHA-256 of the original file's bytes


@dataclass(frozen=True)
class Study:
    """A stored study: blinded items of one domain and the instructions raters see."""

    study_id: str  # folder name under HOME/studies
    domain: str  # e.g. "galaxy", "radiation"
    instructions: str  # shown to raters above the scale
    repeat_fraction: float  # fraction of items each rater sees a second time, late in the session
    seed: int  # with the rater id, seeds each rater's order
    created: str  # UTC ISO 8601
    items: tuple[StudyEntry, ...]  # in blinded-id order
    root: Path  # the study folder
    effective_resolution: Optional[int] = None  # every item was resampled to this many pixels a side (the lowest source's)
    display_size: Optional[int] = None  # ... then shown at this size (pixel repetition above the effective resolution)
    stretch: Optional[dict] = None  # the one display stretch of the physical items (Stretch.to_json), None for images

    @property
    def n_repeats(self) -> int:
        """Items shown twice to every rater."""
        return _n_repeats(len(self.items), self.repeat_fraction)

    def entry(self, item_id: str) -> StudyEntry:
        for e in self.items:
            if e.item_id == item_id:
                return e
        raise KeyError(f"study {self.study_id!r} has no item {item_id!r}")

    def image_path(self, item_id: str) -> Path:
        """The blinded image file of ``item_id`` (safe to serve to raters)."""
        return self.root / self.entry(item_id).file

    def to_json(self) -> dict:
        return {"format": STUDY_FORMAT, "version": STUDY_VERSION, "study_id": self.study_id, "domain": self.domain,
                "instructions": self.instructions, "repeat_fraction": self.repeat_fraction, "seed": self.seed,
                "created": self.created, "effective_resolution": self.effective_resolution, "display_size": self.display_size,
                "stretch": self.stretch, "items": [asdict(e) for e in self.items]}


def _n_repeats(n: int, fraction: float) -> int:
    # originals of repeats come from the first half (not its last slot), repeats go in the second half
    return max(0, min(int(fraction * n + 0.5), n - 2))


def studies_dir(home: str | Path) -> Path:
    return Path(home) / "studies"


def default_ratings_path(home: str | Path) -> Path:
    """Where raters' scores go by default: ``HOME/ratings/ratings.csv``."""
    return Path(home) / "ratings" / "ratings.csv"


MAX_STRETCH_FIT = 1024  # physical items a study's display stretch is fitted on (evenly spaced beyond that)


def _load_item(it: StudyItem):
    """The one sample of a study item (from ``it.data`` when given)."""
    from .data import DataError, load_file

    path = Path(it.data) if it.data is not None else Path(it.path)
    try:
        samples = load_file(path)
    except (DataError, OSError) as e:
        raise RatingError(f"cannot use {path.name} as a study item: {e}") from None
    if len(samples) != 1:
        raise RatingError(f"{path.name} holds {len(samples)} images; a study item must be one image (split the stack into files)")
    return samples[0]


def _render_png(sample, stretch, effective: int, display_size: Optional[int]) -> tuple[bytes, tuple[int, int]]:
    """PNG bytes (RGB, no metadata) of ``sample``: centre square, resampled to ``effective`` px, shown at ``display_size`` px."""
    from PIL import Image

    from .data import preview

    im = Image.fromarray(preview(sample, stretch))
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != effective:
        im = im.resize((effective, effective), Image.Resampling.BOX)  # area average: what a coarser detector would record
    out = display_size or effective
    if out != effective:
        im = im.resize((out, out), Image.Resampling.NEAREST if out > effective else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue(), im.size


def _study_look(study_id: str, items: Sequence[StudyItem]) -> tuple[int, Any]:
    """(effective resolution, stretch) shared by all items: the lowest source resolution, one stretch for the physical maps.

    The stretch is fitted on the real physical items (the reference look), or on all physical items
    when none is real. Items of both kinds (physical maps and plain images) cannot share a stretch:
    refused, with the fix.
    """
    from .data import DataError, fit_stretch

    sides, physical, kinds = [], [], defaultdict(set)
    for it in items:
        sample = _load_item(it)
        sides.append(min(sample.data.shape[:2]))
        kinds[sample.kind].add(it.source)
        if sample.kind == "physical":
            physical.append((it.source, sample))
    if len(kinds) > 1:
        raise RatingError(f"study {study_id}: some items are physical maps ({'/'.join(sorted(kinds['physical']))}) and others plain "
                          f"images ({'/'.join(sorted(kinds['image']))}), so they cannot be shown with one stretch; use the generated "
                          "set's physical .npy maps (StudyItem.data) or PNG images for every source")
    stretch = None
    if physical:
        ref = [x for src, x in physical if src == "real"] or [x for _, x in physical]
        if len(ref) > MAX_STRETCH_FIT:
            ref = [ref[round(k * (len(ref) - 1) / (MAX_STRETCH_FIT - 1))] for k in range(MAX_STRETCH_FIT)]
        try:
            stretch = fit_stretch(ref)
        except DataError as e:
            raise RatingError(f"study {study_id}: the physical items cannot share one stretch: {e}") from None
    return min(sides), stretch


def create_study(
    home: str | Path,
    study_id: str,
    domain: str,
    items: Sequence[StudyItem],
    instructions: str = "",
    repeat_fraction: float = 0.1,
    seed: int = 0,
    *,
    display_size: Optional[int] = None,
) -> Study:
    """Copy ``items`` into a new blinded study ``HOME/studies/<study_id>/`` and return it.

    Every image is re-encoded as ``items/item_NNNN.png`` (RGB, no metadata, so neither the file
    name, the format nor embedded text reveals the source); ids are assigned in a seeded shuffled
    order. Every item is centre-cropped to a square and resampled (area average) to the lowest
    resolution among the items, so that sharpness does not give a source away, then shown at
    ``display_size`` pixels (pixel repetition; default: that resolution). Physical maps are all
    rendered with one stretch, fitted on the real ones. Both are recorded in ``study.json``
    (``effective_resolution``, ``display_size``, ``stretch``). The folder appears complete or not at
    all. Raises :class:`RatingError` for bad input or an existing study.
    """
    study_id = validate_study_id(study_id)
    domain = _check_text(domain, "domain", MAX_LABEL, required=True)
    instructions = _check_text(instructions or "", "instructions", MAX_INSTRUCTIONS, newlines=True)
    if isinstance(repeat_fraction, bool) or not isinstance(repeat_fraction, (int, float)) or not 0.0 <= repeat_fraction <= MAX_REPEAT_FRACTION:
        raise RatingError(f"repeat_fraction={repeat_fraction!r} must be a number in [0, {MAX_REPEAT_FRACTION}]; 0.1 repeats every tenth item")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RatingError(f"seed={seed!r} must be an integer")
    if display_size is not None and not (isinstance(display_size, int) and 8 <= display_size <= 4096):
        raise RatingError(f"display_size={display_size!r} must be an integer from 8 to 4096 pixels")
    items = list(items)
    if not items:
        raise RatingError("a study needs items; pass real reference images and generated images")
    if len(items) > MAX_ITEMS:
        raise RatingError(f"{len(items)} items is more than {MAX_ITEMS}; split them into several studies")
    labels = []  # validated (method, model) per item
    for it in items:
        if it.source not in SOURCES:
            raise RatingError(f"item {Path(it.path).name}: source {it.source!r} must be 'real' or 'generated'")
        labels.append((_check_text(it.method, f"method of {Path(it.path).name}", MAX_LABEL),
                       _check_text(it.model, f"model of {Path(it.path).name}", MAX_LABEL)))
        if not Path(it.path).is_file():
            raise RatingError(f"item {it.path}: no such file")
    if not any(it.source == "generated" for it in items):
        raise RatingError("a study needs at least one generated item (source='generated')")
    if not any(it.source == "real" for it in items):
        log.warning("study %s has no real reference items; raters cannot score against the real data", study_id)

    root = studies_dir(home)
    final = root / study_id
    if final.exists():
        raise RatingError(f"study {study_id!r} already exists in {root}; choose another id (or delete {final})")
    root.mkdir(parents=True, exist_ok=True)
    effective, stretch = _study_look(study_id, items)
    width = max(4, len(str(len(items))))
    order = sorted(range(len(items)), key=lambda k: hashlib.sha256(f"{seed}:{study_id}:ids:{k}".encode()).digest())
    def fill(tmp: Path) -> Study:
        (tmp / ITEMS_DIR).mkdir()
        entries: list[StudyEntry] = []
        seen: dict[str, Path] = {}
        for rank, k in enumerate(order, start=1):
            it = items[k]
            path = Path(it.path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                raise RatingError(f"{path} and {seen[digest]} are the same image; each item must appear once (repeats are planned per rater)")
            seen[digest] = path
            png, _ = _render_png(_load_item(it), stretch, effective, display_size)
            item_id = f"item_{rank:0{width}d}"
            rel = f"{ITEMS_DIR}/{item_id}.png"
            (tmp / rel).write_bytes(png)
            entries.append(StudyEntry(item_id, rel, it.source, *labels[k], path.name, digest))
        entries.sort(key=lambda e: e.item_id)
        study = Study(study_id, domain, instructions, float(repeat_fraction), seed, utc_now("milliseconds"), tuple(entries), final,
                      effective, display_size, stretch.to_json() if stretch is not None else None)
        write_text(tmp / STUDY_FILE, json.dumps(study.to_json(), indent=2, ensure_ascii=False))
        return study

    try:
        study = atomic_dir(final, fill, replace=False)
    except FileExistsError:
        raise RatingError(f"study {study_id!r} was created meanwhile in {root}; choose another id") from None
    entries = study.items
    log.info("created study %s: %d items (%d real), %d repeats per rater, at %d px shown at %s px, in %s", study_id, len(entries),
             sum(e.source == "real" for e in entries), study.n_repeats, effective, display_size or effective, final)
    return study


def load_study(home: str | Path, study_id: str) -> Study:
    """The study ``HOME/studies/<study_id>``; :class:`RatingError` if it is missing or damaged."""
    study_id = validate_study_id(study_id)
    root = studies_dir(home) / study_id
    path = root / STUDY_FILE
    if not path.is_file():
        raise RatingError(f"no study {study_id!r} in {studies_dir(home)}; create it with: python -m oodgen mos create-study --home {home} --id {study_id} ...")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("format") != STUDY_FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {STUDY_FORMAT!r}")
        if d["study_id"] != study_id:
            raise ValueError(f"it names study {d['study_id']!r}")
        entries = tuple(StudyEntry(**e) for e in d["items"])
        for e in entries:
            if e.source not in SOURCES or not re.fullmatch(r"item_\d+", e.item_id) or e.file != f"{ITEMS_DIR}/{e.item_id}.png":
                raise ValueError(f"bad item {e.item_id!r}")
        study = Study(study_id, d["domain"], d["instructions"], float(d["repeat_fraction"]), int(d["seed"]), d["created"], entries, root,
                      d.get("effective_resolution"), d.get("display_size"), d.get("stretch"))
    except (ValueError, KeyError, TypeError) as e:
        raise RatingError(f"{path} is damaged ({e}); restore it from a backup or create the study again under a new id") from None
    if not entries:
        raise RatingError(f"{path} lists no items; create the study again")
    return study


def list_studies(home: str | Path) -> list[Study]:
    """All readable studies under ``HOME/studies``, by id (damaged ones are logged and skipped)."""
    root = studies_dir(home)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / STUDY_FILE).is_file():
            continue
        try:
            out.append(load_study(home, d.name))
        except RatingError as e:
            log.warning("skipping study %s: %s", d.name, e)
    return out


# ---------------------------------------------------------------- the ratings CSV
@dataclass(frozen=True)
class Rating:
    """One row of the ratings CSV (free-text cells hold the original text; neutralizing happens on write)."""

    timestamp: str  # UTC ISO 8601, e.g. 2025-05-01T12:00:00.000Z
    study: str  # study id
    rater: str  # rater id as entered (validated)
    session: str  # stable id of this rater's plan in this study (hash of study, seed, rater)
    item: str  # blinded item id
    source: str  # "real" | "generated"
    domain: str  # study domain
    method: str  # generation method; "" for real data
    model: str  # generating model; "" for real data
    score: int  # 1-5 (ACR)
    repeat: int  # 0: first rating of the item; 1: the planned repeat
    response_ms: Optional[int]  # time from display to submit, if the client measured it
    comment: str  # optional free text

    def cells(self) -> list[str]:
        """CSV cells in :data:`CSV_COLUMNS` order, formula-like text neutralized."""
        d = asdict(self)
        return [neutralize(str(d[c])) if c in _TEXT_CELLS else ("" if d[c] is None else str(d[c])) for c in CSV_COLUMNS]

    @classmethod
    def from_cells(cls, cells: Sequence[str]) -> "Rating":
        """Parse one CSV row; ValueError naming the bad cell."""
        if len(cells) != len(CSV_COLUMNS):
            raise ValueError(f"{len(cells)} cells, expected {len(CSV_COLUMNS)}")
        d = dict(zip(CSV_COLUMNS, cells))
        try:
            datetime.fromisoformat(d["timestamp"])
        except ValueError:
            raise ValueError(f"timestamp {d['timestamp']!r} is not ISO 8601") from None
        if any(_SURROGATE.search(c) for c in cells):
            raise ValueError("not valid UTF-8 text")
        kw: dict[str, Any] = {c: unneutralize(d[c]) for c in _TEXT_CELLS}
        kw["timestamp"] = d["timestamp"]
        if kw["source"] not in SOURCES:
            raise ValueError(f"source {kw['source']!r} is not real or generated")
        if d["score"] not in ("1", "2", "3", "4", "5"):
            raise ValueError(f"score {d['score']!r} is not 1-5")
        if d["repeat"] not in ("0", "1"):
            raise ValueError(f"repeat {d['repeat']!r} is not 0 or 1")
        if d["response_ms"] and not d["response_ms"].isdigit():
            raise ValueError(f"response_ms {d['response_ms']!r} is not a whole number")
        kw["score"], kw["repeat"] = int(d["score"]), int(d["repeat"])
        kw["response_ms"] = int(d["response_ms"]) if d["response_ms"] else None
        return cls(**kw)


def _encode_row(cells: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue().encode("utf-8")


def write_ratings(path: str | Path, rows: Iterable[Rating]) -> Path:
    """A ratings CSV (header + ``rows``) written atomically, e.g. one study's rows for export."""
    data = _encode_row(CSV_COLUMNS) + b"".join(_encode_row(r.cells()) for r in rows)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
    return Path(path)


@dataclass(frozen=True)
class _Scan:
    rows: tuple[Rating, ...]  # the good rows
    has_header: bool  # the file starts with the expected header
    good_end: int  # byte offset where the good content ends
    size: int  # file size in bytes


def _scan(data: bytes, name: str) -> _Scan:
    """Parse the CSV bytes; an incomplete or unparsable *last* record is left out (``good_end`` before it).

    A bad record followed by more records, or a first line that is not the header, means a damaged
    or foreign file: :class:`RatingError` naming the line.
    """
    header = _encode_row(CSV_COLUMNS)
    if not data or (len(data) < len(header) and header.startswith(data)):
        return _Scan((), False, 0, len(data))  # empty, or a crash while the header was written
    pos = 0

    def lines() -> Iterable[str]:
        nonlocal pos
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            chunk, pos = data[pos:end], end
            yield chunk.decode("utf-8", errors="surrogateescape")  # bad bytes fail validation, at their line

    reader = csv.reader(lines(), strict=True)
    rows: list[Rating] = []
    has_header, good_end = False, 0
    bad: Optional[tuple[int, str]] = None  # (line, problem) of the first bad record
    while True:
        start_line = reader.line_num + 1
        try:
            record = next(reader)
            problem = None if data[pos - 1 : pos] == b"\n" else "incomplete line (no line end)"  # not data[:pos]: a copy per line
        except StopIteration:
            break
        except csv.Error as e:
            record, problem = [], f"not valid CSV ({e})"
        if bad is not None:
            raise RatingError(f"{name} line {bad[0]}: {bad[1]}; fix or delete that line (the rows around it are intact)")
        if problem is None and not has_header:
            if tuple(record) != CSV_COLUMNS:
                raise RatingError(f"{name} is not an oodgen ratings file: its first line is {','.join(record)[:120]!r}, "
                                  f"expected {','.join(CSV_COLUMNS)}; pass another ratings path")
            has_header, good_end = True, pos
            continue
        if problem is None and record:
            try:
                rows.append(Rating.from_cells(record))
            except ValueError as e:
                problem = str(e)
        if problem is not None:
            bad = (start_line, problem)
            continue
        good_end = pos
    if not has_header:
        raise RatingError(f"{name} is not an oodgen ratings file ({bad[1] if bad else 'no header'}); "
                          f"expected a CSV with the columns {','.join(CSV_COLUMNS)}")
    return _Scan(tuple(rows), has_header, good_end, len(data))


def read_ratings(path: str | Path) -> list[Rating]:
    """All ratings in a ratings CSV, read-only (no lock, no repair: an incomplete last line is skipped with a warning)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RatingError(f"{path}: no such ratings file; raters' scores are written to HOME/ratings/ratings.csv") from None
    except IsADirectoryError:
        raise RatingError(f"{path} is a folder; pass the ratings CSV file inside it") from None
    scan = _scan(data, str(path))
    if scan.good_end < scan.size:
        log.warning("%s: ignoring an incomplete last line (%d bytes), probably a rating being written or a crash", path, scan.size - scan.good_end)
    return list(scan.rows)


def _parse_tail(data: bytes) -> Optional[list[Rating]]:
    """The complete, valid rows of bytes appended after a record boundary; None when anything is off (then reread all)."""
    if not data.endswith(b"\n"):
        return None
    try:
        text = data.decode("utf-8")
        return [Rating.from_cells(rec) for rec in csv.reader(io.StringIO(text, newline=""), strict=True) if rec]
    except (UnicodeDecodeError, csv.Error, ValueError):
        return None


class _Index:
    """What this process knows of one ratings CSV: how far it has read, and per (study, rater) the (item, repeat) pairs rated.

    Kept per file for the whole process, so a rating costs the rows appended since the last one, not
    the whole file. It notices a replaced (new inode), shortened or rewritten file and reads it all again.
    """

    def __init__(self) -> None:
        self.file: Optional[tuple[int, int]] = None  # (st_dev, st_ino) of the file read
        self.offset = 0  # bytes read: always the end of a complete record
        self.done: dict[tuple[str, str], set[tuple[str, bool]]] = defaultdict(set)
        self.n = 0  # rows indexed

    def reset(self, file: Optional[tuple[int, int]], offset: int, rows: Iterable[Rating]) -> None:
        self.file, self.offset, self.done, self.n = file, offset, defaultdict(set), 0
        self.add(rows)

    def add(self, rows: Iterable[Rating]) -> None:
        for r in rows:
            self.done[(r.study, r.rater)].add((r.item, bool(r.repeat)))
            self.n += 1


_INDEXES: dict[str, _Index] = {}
_INDEXES_LOCK = threading.Lock()


def _index_for(path: Path) -> _Index:
    key = os.path.abspath(path)
    with _INDEXES_LOCK:
        return _INDEXES.setdefault(key, _Index())


class RatingsLog:
    """The shared ratings CSV: appends under a file lock with fsync; safe across threads and processes.

    Every open checks the file: an incomplete or unparsable last line (from a process killed while
    writing) is moved to ``<name>.partial-<UTC time>`` and logged; the good rows stay. What a rater
    has rated (:meth:`done`) comes from a per-process index that reads only what was appended since
    its last read, so its cost does not grow with the rows already in the file.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock", timeout=timeout, poll_interval=0.005)
        self._cache: Optional[tuple[tuple[int, int, int], tuple[Rating, ...]]] = None  # (stat key, rows)
        self._cache_lock = threading.Lock()
        self._index = _index_for(self.path)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file lock (reentrant within a thread); :class:`RatingError` after ``timeout`` seconds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except LockTimeout:
            log.warning("%s stayed locked for %.0f s; check that no stuck process holds %s", self.path, self.lock.timeout, self.lock.lock_file)
            raise RatingError(f"the ratings file is busy (locked for {self.lock.timeout:.0f} s by another process); "
                              "nothing was recorded: try again in a moment") from None
        try:
            yield
        finally:
            self.lock.release()

    @staticmethod
    def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_locked(self) -> tuple[Rating, ...]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == self._stat_key(st):
                return self._cache[1]
        data = self.path.read_bytes()
        scan = _scan(data, str(self.path))
        if scan.good_end < len(data):
            self._set_aside(data[scan.good_end:], scan.good_end, len(scan.rows))
        rows = scan.rows
        st = self.path.stat()
        with self._cache_lock:
            self._cache = (self._stat_key(st), rows)
        with _INDEXES_LOCK:
            self._index.reset((st.st_dev, st.st_ino), scan.good_end, rows)
        return rows

    def _refresh_locked(self) -> _Index:
        """The index, brought up to the end of the file (under the lock): appended bytes only, or all when the file changed otherwise."""
        idx = self._index
        try:
            st = self.path.stat()
        except FileNotFoundError:
            with _INDEXES_LOCK:
                idx.reset(None, 0, ())
            return idx
        same = idx.file == (st.st_dev, st.st_ino) and idx.offset <= st.st_size
        if same and idx.offset == st.st_size:
            return idx
        if same and idx.offset > 0:
            with open(self.path, "rb") as f:
                f.seek(idx.offset - 1)
                data = f.read(st.st_size - idx.offset + 1)
            rows = _parse_tail(data[1:]) if data[:1] == b"\n" else None  # still at a record boundary: nothing rewritten before it
            if rows is not None:
                with _INDEXES_LOCK:
                    idx.add(rows)
                    idx.offset = st.st_size
                return idx
        with self._cache_lock:
            self._cache = None  # read the file itself, and index what it holds
        self._read_locked()  # new, replaced, shortened or damaged at the end: read it all (repairs a torn last line)
        return idx

    def done(self, study: str, rater: str) -> frozenset[tuple[str, bool]]:
        """The (item, is_repeat) pairs ``rater`` has rated in ``study`` (under the lock; reads only new rows)."""
        with self.locked():
            return self._done_locked(study, rater)

    def _done_locked(self, study: str, rater: str) -> frozenset[tuple[str, bool]]:
        idx = self._refresh_locked()
        with _INDEXES_LOCK:
            return frozenset(idx.done.get((study, rater), ()))

    def _set_aside(self, tail: bytes, good_end: int, n_good: int) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.partial-{stamp}")
        with open(aside, "xb") as f:
            f.write(tail)
            f.flush()
            os.fsync(f.fileno())
        with open(self.path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        log.warning("%s: moved an incomplete last line (%d bytes, likely from a crash while writing) to %s; the %d ratings before it are intact",
                    self.path, len(tail), aside.name, n_good)

    def read(self) -> list[Rating]:
        """All ratings (under the lock; repairs an incomplete last line first)."""
        with self.locked():
            return list(self._read_locked())

    def append(self, rating: Rating) -> None:
        """Append one row (header first if the file is new), flushed and fsynced before returning."""
        with self.locked():
            self._append_locked(rating)

    def _append_locked(self, rating: Rating) -> None:
        idx = self._refresh_locked()  # checks the file (a torn last line is set aside first), reads new rows only
        new = not self.path.exists() or self.path.stat().st_size == 0
        data = (_encode_row(CSV_COLUMNS) if new else b"") + _encode_row(rating.cells())
        with open(self.path, "ab") as f:
            size = os.fstat(f.fileno()).st_size
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        if new:
            _fsync_dir(self.path.parent)
        with _INDEXES_LOCK:
            if idx.file == (st.st_dev, st.st_ino) and idx.offset == size:
                idx.add((rating,))
                idx.offset = st.st_size
            elif new:
                idx.reset((st.st_dev, st.st_ino), st.st_size, (rating,))
        with self._cache_lock:
            cached = self._cache
            self._cache = (self._stat_key(st), cached[1] + (rating,)) if cached and cached[0][1] == size else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- rater sessions
@dataclass(frozen=True)
class SessionItem:
    """What a rater sees next."""

    position: int  # 1-based place in this rater's sequence
    total: int  # length of the sequence (items + planned repeats)
    item_id: str  # blinded id, e.g. "item_0007"
    image: Path  # blinded image file to display
    is_repeat: bool  # a planned repeat; for analysis only, never show it to the rater

    @property
    def progress_text(self) -> str:
        return f"{self.position} / {self.total}"


def session_id(study: Study, rater: str) -> str:
    """Stable id of ``rater``'s plan in ``study`` (also the seed of its order)."""
    return hashlib.sha256(f"{study.study_id}\n{study.seed}\n{rater}".encode()).hexdigest()[:16]


def rater_plan(study: Study, rater: str) -> tuple[tuple[str, bool], ...]:
    """``rater``'s sequence of (item id, is_repeat): a seeded shuffle of all items, with repeats in the second half.

    The order depends only on (study id, seed, rater) through SHA-256, so it is identical across
    restarts, machines and library versions. The original of every repeat is in the first half
    (never its last slot) and the repeat in the second half, so they are never adjacent.
    """
    key = session_id(study, rater)

    def h(tag: str, s: str) -> bytes:
        return hashlib.sha256(f"{key}:{tag}:{s}".encode()).digest()

    order = sorted((e.item_id for e in study.items), key=lambda i: h("order", i))
    n_rep = study.n_repeats
    first_len = (len(order) + n_rep + 1) // 2
    first, rest = order[:first_len], order[first_len:]
    repeats = sorted(first[:-1], key=lambda i: h("repeat", i))[:n_rep]
    second = sorted([(i, False) for i in rest] + [(i, True) for i in repeats], key=lambda e: h("slot", f"{e[0]}:{int(e[1])}"))
    return tuple([(i, False) for i in first] + second)


class RaterSession:
    """One rater working through one study. Holds no state of its own: the position comes from the CSV."""

    def __init__(self, study: Study, rater: str, ratings: RatingsLog) -> None:
        self.study = study
        self.rater = validate_rater(rater)
        self.session_id = session_id(study, self.rater)
        self.plan = rater_plan(study, self.rater)
        self.log = ratings
        self._lock = threading.Lock()
        self._position = self._derive(self.log.done(self.study.study_id, self.rater))

    def _derive(self, done: frozenset[tuple[str, bool]]) -> int:
        """Index of the first planned (item, repeat) this rater has not rated yet (len(plan) when done)."""
        for k, entry in enumerate(self.plan):
            if entry not in done:
                return k
        return len(self.plan)

    @property
    def progress(self) -> tuple[int, int]:
        """(ratings given, ratings planned), e.g. (12, 110)."""
        return self._position, len(self.plan)

    @property
    def complete(self) -> bool:
        return self._position >= len(self.plan)

    def current(self) -> Optional[SessionItem]:
        """The item to rate now (re-read from the CSV, so other tabs are seen), or None when all are rated."""
        with self._lock:
            self._position = self._derive(self.log.done(self.study.study_id, self.rater))
            return self._item(self._position)

    def _item(self, k: int) -> Optional[SessionItem]:
        if k >= len(self.plan):
            return None
        item_id, is_repeat = self.plan[k]
        return SessionItem(k + 1, len(self.plan), item_id, self.study.image_path(item_id), is_repeat)

    def rate(self, score: int, comment: str = "", response_ms: Optional[int] = None, *, position: Optional[int] = None,
             item_id: Optional[str] = None) -> None:
        """Record ``score`` for the item shown at ``position`` (1-based; default: the one :meth:`current` last returned).

        ``item_id``: the blinded id of the item the rater saw when scoring; the score is refused unless
        it is the item planned at that position ("" = no item was shown yet). Refused with
        :class:`StaleRating` when that position is already rated (a second tab, a fast second click)
        or another item is shown, and with :class:`RatingError` when the session is complete; nothing
        is written then.
        """
        score = validate_score(score)
        comment = validate_comment(comment)
        if response_ms is not None and (isinstance(response_ms, bool) or not hasattr(response_ms, "__index__") or not 0 <= int(response_ms) <= 10**9):
            raise RatingError(f"response_ms={response_ms!r} must be a whole number of milliseconds >= 0")
        n = len(self.plan)
        with self._lock, self.log.locked():  # check and append atomically, across threads and processes
            expected = self._position if position is None else int(position) - 1
            actual = self._position = self._derive(self.log._done_locked(self.study.study_id, self.rater))
            if actual >= n:
                raise RatingError(f"all {n} items of study {self.study.study_id} are rated by {self.rater}; thank you")
            if actual != expected:
                raise StaleRating(f"item {expected + 1} / {n} is already rated (a second click, or another tab or window); "
                                  f"not recorded again: item {actual + 1} / {n} is next")
            planned, is_repeat = self.plan[actual]
            if item_id is not None and item_id != planned:
                shown = f"item {item_id!r} was shown" if item_id else "no image was shown yet"
                raise StaleRating(f"not recorded: {shown}, but item {actual + 1} / {n} is {planned!r}; score it once its image is shown")
            e = self.study.entry(planned)
            self.log._append_locked(Rating(
                timestamp=utc_now("milliseconds"), study=self.study.study_id, rater=self.rater, session=self.session_id, item=planned,
                source=e.source, domain=self.study.domain, method=e.method, model=e.model, score=score, repeat=int(is_repeat),
                response_ms=None if response_ms is None else int(response_ms), comment=comment,
            ))
            self._position = actual + 1


def start_or_resume(home: str | Path, study_id: str, rater: str, ratings_path: str | Path | None = None) -> RaterSession:
    """The session of ``rater`` in study ``study_id``, at the first item they have not rated (from the CSV)."""
    study = load_study(home, study_id)
    return RaterSession(study, rater, RatingsLog(ratings_path or default_ratings_path(home)))


# ---------------------------------------------------------------- summary
GROUP_COLUMNS: tuple[str, ...] = (
    "study", "domain", "method", "source", "n", "mos", "std", "ci95_low", "ci95_high", "ci95_clipped", "ci95_t_low", "ci95_t_high",
)  # what GroupStats.to_json and the groups CSV hold (the Results tab shows all but the unclipped ends)


@dataclass(frozen=True)
class GroupStats:
    """MOS of one condition: first ratings of one (study, domain, method, source)."""

    study: str  # study id
    domain: str  # study domain
    method: str  # generation method; "" for real data
    source: str  # "real" | "generated"
    n: int  # ratings (raters x items, first ratings only)
    mos: float  # mean opinion score
    std: Optional[float]  # sample standard deviation (ddof=1); None when n < 2
    ci95_low: Optional[float]  # 95% t interval of the mean (ratings taken as independent), clipped to [1, 5]; None when n < 2
    ci95_high: Optional[float]  # upper end of that interval, clipped to [1, 5]
    counts: tuple[int, ...]  # how many ratings gave 1, 2, 3, 4, 5
    ci95_clipped: bool = False  # the t interval passed 1 or 5 (small n or scores at a scale end) and was clipped
    ci95_t_low: Optional[float] = None  # the t interval as computed, unclipped (may lie outside 1-5)
    ci95_t_high: Optional[float] = None

    @property
    def mos_pm_std(self) -> str:
        """The paper's form, e.g. "2.88 +- 0.93"."""
        return f"{self.mos:.2f} +- {self.std:.2f}" if self.std is not None else f"{self.mos:.2f} (n=1)"

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in GROUP_COLUMNS}


@dataclass(frozen=True)
class RaterStats:
    """One rater in one study."""

    study: str  # study id
    rater: str  # rater id
    n: int  # first ratings
    mean: float  # mean of the first ratings
    top_share: float  # share of the most used score among the first ratings
    n_repeats: int  # repeated items with both ratings present
    repeat_mad: Optional[float]  # mean |first - repeat| score; None without repeats
    repeat_agreement: Optional[float]  # share of repeats scored exactly as the first time; None without repeats
    straight_liner: bool  # >= 10 first ratings and zero variance or > 90% one score

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MOSSummary:
    """Everything :func:`summarize` measures."""

    groups: tuple[GroupStats, ...]  # sorted by (study, domain, method, source)
    raters: tuple[RaterStats, ...]  # sorted by (study, rater)
    krippendorff_alpha: Optional[float]  # ordinal alpha over (study, item) x rater, first ratings; None if undefined
    krippendorff_alpha_by_study: dict[str, Optional[float]] = field(default_factory=dict)  # the same per study
    n_ratings: int = 0  # rows read, repeats included
    n_ignored: int = 0  # duplicate first ratings / repeats ignored (hand-merged files)

    def to_json(self) -> dict:
        """Plain JSON-ready dict (no NaN: undefined numbers are None)."""
        return {"groups": [g.to_json() for g in self.groups], "krippendorff_alpha": self.krippendorff_alpha,
                "krippendorff_alpha_by_study": dict(self.krippendorff_alpha_by_study), "raters": [r.to_json() for r in self.raters],
                "n_ratings": self.n_ratings, "n_ignored": self.n_ignored}

    def to_csv(self, table: Literal["groups", "raters"] = "groups") -> str:
        """One table as CSV text (groups also get the "MOS +- std" column); text cells neutralized."""
        if table == "groups":
            header = [*GROUP_COLUMNS, "mos_pm_std"]
            records = [[*(g.to_json()[k] for k in header[:-1]), g.mos_pm_std] for g in self.groups]
        elif table == "raters":
            header = list(RaterStats.__dataclass_fields__)
            records = [[r.to_json()[k] for k in header] for r in self.raters]
        else:
            raise ValueError(f"table={table!r} must be 'groups' or 'raters'")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for rec in records:
            w.writerow([neutralize(v) if isinstance(v, str) else ("" if v is None else v) for v in rec])
        return buf.getvalue()


def _t_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The t interval of a mean (ITU-T P.1401), unbounded: for small n it can pass the ends of the scale."""
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def clip_to_scale(low: float, high: float) -> tuple[float, float, bool]:
    """(low, high) clipped to the score range [1, 5], and whether anything was clipped.

    A mean of 1-5 scores cannot lie outside [1, 5], so the part of a t interval beyond a scale end
    carries no information; reports show the clipped interval with a flag (the t interval is kept).
    """
    lo, hi = max(low, SCORES[0]), min(high, SCORES[-1])
    return float(lo), float(hi), bool(lo != low or hi != high)


def krippendorff_alpha_ordinal(ratings: Iterable[tuple[Any, str, int]]) -> Optional[float]:
    """Krippendorff's ordinal alpha of (unit, rater, score) triples; None when undefined (no pairable units or no variation)."""
    import krippendorff
    import numpy as np

    by_unit: dict[Any, dict[str, int]] = defaultdict(dict)
    for unit, rater, score in ratings:
        by_unit[unit][rater] = score
    units = [u for u in by_unit if len(by_unit[u]) >= 2]  # unpairable units carry no information
    if not units:
        return None
    raters = sorted({r for u in units for r in by_unit[u]})
    col = {r: k for k, r in enumerate(raters)}
    data = np.full((len(raters), len(units)), np.nan)
    for j, u in enumerate(units):
        for r, s in by_unit[u].items():
            data[col[r], j] = s
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None  # everyone gave the same score: agreement is undefined (0 / 0)
    return float(krippendorff.alpha(reliability_data=data, value_domain=list(SCORES), level_of_measurement="ordinal"))


def summarize(ratings: str | Path | Iterable[Rating]) -> MOSSummary:
    """MOS per condition, rater statistics and agreement from a ratings CSV path or :class:`Rating` rows.

    MOS, per-rater means, straight-liner flags and alpha use first ratings only; planned repeats
    only measure consistency (|first - repeat| and exact agreement per rater).
    """
    import numpy as np

    rows = read_ratings(ratings) if isinstance(ratings, (str, Path)) else list(ratings)
    first: dict[tuple[str, str, str], Rating] = {}
    repeats: dict[tuple[str, str, str], Rating] = {}
    ignored = 0
    for r in rows:
        key = (r.study, r.rater, r.item)
        target = repeats if r.repeat else first
        if key in target:
            ignored += 1
            continue
        target[key] = r
    if ignored:
        log.warning("%d duplicate ratings of the same (study, rater, item, repeat) ignored; the first of each was kept", ignored)

    groups_scores: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for r in first.values():
        groups_scores[(r.study, r.domain, r.method, r.source)].append(r.score)
    groups = []
    for key in sorted(groups_scores):
        s = np.asarray(groups_scores[key], dtype=np.float64)
        n, mos = len(s), float(s.mean())
        std = float(s.std(ddof=1)) if n >= 2 else None
        counts = tuple(int((s == v).sum()) for v in SCORES)
        if std is None:
            groups.append(GroupStats(*key, n=n, mos=mos, std=None, ci95_low=None, ci95_high=None, counts=counts))
            continue
        t_lo, t_hi = _t_interval(mos, std, n)
        lo, hi, clipped = clip_to_scale(t_lo, t_hi)
        groups.append(GroupStats(*key, n=n, mos=mos, std=std, ci95_low=lo, ci95_high=hi, counts=counts,
                                 ci95_clipped=clipped, ci95_t_low=t_lo, ci95_t_high=t_hi))

    per_rater: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (study, rater, _), r in first.items():
        per_rater[(study, rater)].append(r.score)
    diffs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for key, rep in repeats.items():
        if key in first:
            diffs[key[:2]].append(abs(rep.score - first[key].score))
    raters = []
    for study, rater in sorted(per_rater):
        s = per_rater[(study, rater)]
        top = Counter(s).most_common(1)[0][1] / len(s)
        d = diffs.get((study, rater), [])
        flagged = len(s) >= STRAIGHT_LINER_MIN_RATINGS and (len(set(s)) == 1 or top > STRAIGHT_LINER_MAX_SHARE)
        raters.append(RaterStats(study, rater, len(s), float(np.mean(s)), top, len(d),
                                 float(np.mean(d)) if d else None, float(np.mean([x == 0 for x in d])) if d else None, flagged))
    for r in raters:
        if r.straight_liner:
            log.info("rater %s in study %s looks like a straight-liner (%d ratings, %.0f%% one score)", r.rater, r.study, r.n, 100 * r.top_share)

    triples = [((study, item), rater, r.score) for (study, rater, item), r in first.items()]
    by_study = {s: krippendorff_alpha_ordinal(t for t in triples if t[0][0] == s) for s in sorted({k[0] for k in first})}
    return MOSSummary(tuple(groups), tuple(raters), krippendorff_alpha_ordinal(triples), by_study, len(rows), ignored)


def score_distribution_figure(summary: MOSSummary):
    """A plotly bar chart of the share of each ACR score per group (first ratings)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = [f"{v} {ACR_LABELS[v]}" for v in SCORES]
    for g in summary.groups:
        name = f"{g.study} / {g.method or '-'} ({g.source})"
        fig.add_trace(go.Bar(x=x, y=[c / g.n for c in g.counts], name=name,
                             hovertemplate="%{x}: %{y:.0%} of " + str(g.n) + "<extra>" + name.replace("<", "&lt;") + f", MOS {g.mos_pm_std}</extra>"))
    fig.update_layout(barmode="group", title="Score distributions (first ratings)", xaxis_title="score", yaxis_title="share of ratings",
                      yaxis_tickformat=".0%", legend_title="study / method (source)")
    return fig


# ---------------------------------------------------------------- access
def is_admin(token: Optional[str]) -> bool:
    """Whether ``token`` matches ``$OODGEN_ADMIN_TOKEN`` (constant-time); everyone is admin when it is unset or empty (local runs)."""
    expected = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not expected:
        return True
    if not isinstance(token, str) or not token:
        return False
    return hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))
