"""User data in, model tensors out (and back): images, FITS, NumPy arrays; files, folders, zip archives.

Loading
-------
:func:`load_file` reads one file into one or more :class:`Sample` s; :func:`load_paths` reads files,
folders (recursive, sorted, hidden entries skipped) and zip archives (read in memory, never
extracted) and collects bad files in a :class:`LoadReport` instead of raising. Every reader takes
``(bytes, display name)``, so files on disk and archive members go through the same code.

A sample is float32 ``[H, W, C]`` with C in {1, 3}, of one of two kinds:

``"image"``     display-referred pixels in [0, 1]: PNG, JPEG, TIFF, WebP (8-bit / 255, 16-bit / 65535;
                alpha dropped; palette and CMYK converted to RGB; multi-frame files: first frame)
                and uint8 / uint16 ``.npy`` arrays.
``"physical"``  values in scientific units: FITS (the first HDU holding an image with >= 2 axes;
                ``BUNIT`` -> ``unit``), float / signed-integer ``.npy`` / ``.npz`` arrays and float
                TIFFs. Non-finite values are replaced by the band's median of finite values (logged
                as a warning); an all-NaN / all-infinite band is an error.

Array layouts: ``[H, W]``; ``[B, H, W]`` (band axis first, recognised when ``shape[0] <= 4 < shape[-1]``)
or ``[H, W, B]``; 4-D ``[N, B, H, W]`` / ``[N, H, W, B]`` stacks give N samples (``name[i]``); each
``.npz`` member gives its own sample(s) (``name:key``). FITS cubes are ``[B, H, W]`` in numpy order;
leading length-1 axes of FITS hyper-cubes are dropped. Rows keep the file's order (FITS row 0 is
the *bottom* row in DS9, so previews appear flipped vertically relative to DS9's ``origin=lower``).

Physical 3-band data are taken to be ordered by increasing wavelength (e.g. 4.5, 24, 250 um). A
folder (or archive directory) may hold a ``manifest.json`` with
``{"bands": [{"name": ..., "wavelength_um": ..., "unit": ...}, ...]}``; its band names and unit
are attached to the ``.npy`` / ``.npz`` samples of that folder, and since it declares the folder to
hold arrays, raster images next to it (``preview.png``) are listed as ignored, not loaded.

Limits (module constants, raise them if you must): :data:`MAX_PIXELS` per file (checked from the
header before pixel data are decoded), :data:`MAX_FILE_BYTES` per file, :data:`MAX_ZIP_MEMBERS` and
:data:`MAX_ZIP_BYTES` (total uncompressed size) per archive; images and maps must be at least
:data:`MIN_SIDE` pixels on each side.

Conversion to the model
-----------------------
:func:`to_model_input` maps samples to ``[N, channels, R, R]`` in [-1, 1]:

1. crop / resize policy: centre-crop to a square (the longer side is cut to the length of the
   shorter side, equally on both ends; an odd surplus pixel is cut from the bottom / right), then
   resize to the model resolution R with ``torch.nn.functional.interpolate``: ``mode="area"``
   (box average, antialiased, flux-conserving) when shrinking, ``mode="bicubic", antialias=True``
   when enlarging, untouched when already R x R. Physical data are resized in their own units,
   before the stretch; images are clamped to [0, 1] after resizing (bicubic overshoot).
2. physical data only: a per-band asinh :class:`Stretch` fitted on the whole set
   (:func:`fit_stretch`) maps values to [0, 1], and the three bands are put into model channels in
   reverse order, R, G, B = (longest, middle, shortest wavelength), the usual astronomical colour
   composite (red = 250 um).
3. single-band data are replicated to 3 channels; 3-band data fed to a 1-channel model are
   averaged.

:func:`from_model_output` undoes steps 2-3 (in the original band order); :func:`to_uint8_rgb`
and :func:`preview` give 8-bit RGB for display.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000
"""Largest image (pixels per band, all frames / stack entries of a file together) read from one file."""
MAX_FILE_BYTES = 1 << 30
"""Largest file (or decompressed .gz / archive member) read, in bytes."""
MAX_ZIP_MEMBERS = 2000
"""Most entries a zip archive (or .npz) may have."""
MAX_ZIP_BYTES = 1 << 30
"""Largest total uncompressed size of a zip archive (or .npz), in bytes (zip-bomb protection)."""
MIN_SIDE = 8
"""Smallest accepted image side, in pixels."""
MAX_FIT_VALUES = 4_000_000
"""fit_stretch estimates percentiles from at most this many pixels per band (seeded random subset)."""

KINDS = ("image", "physical")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz")
ARRAY_SUFFIXES = (".npy", ".npz")
ARCHIVE_SUFFIXES = (".zip",)
DATA_SUFFIXES = IMAGE_SUFFIXES + FITS_SUFFIXES + ARRAY_SUFFIXES
STUDY_SUFFIXES = IMAGE_SUFFIXES + FITS_SUFFIXES + (".npy",)  # one image per file, what a MOS study item can be (in order of preference)
SUPPORTED = "PNG, JPEG, TIFF, WebP, FITS (.fits/.fit/.fts, also .gz and .fz), NumPy .npy/.npz, and .zip archives of these"
MANIFEST = "manifest.json"
# image / science formats people may expect to work: reported as errors in folders, not ignored
_UNSUPPORTED_DATA = (".gif", ".bmp", ".jp2", ".j2k", ".heic", ".avif", ".h5", ".hdf5", ".hdf", ".mat", ".xisf", ".dng", ".cr2", ".nef")
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "MPO")
_HOW_TO_SAVE = "save it as float32 [H, W], [B, H, W] or [H, W, B] with B = 1 or 3 (numpy.save or astropy.io.fits)"


class DataError(ValueError):
    """A file cannot be used; the message names the file, the problem and how to fix it."""


class TooManyFiles(DataError):
    """More data files than the ``max_files`` of :func:`list_files` / :func:`load_paths`."""


def _err(name: str, problem: str, fix: str = "", cls: type[DataError] = DataError) -> DataError:
    return cls(f"{name}: {problem}" + (f"; {fix}" if fix else ""))


# ------------------------------------------------------------------------------------------------
# samples
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sample:
    """One image or map, ready for conversion. ``data``: float32 [H, W, C], C in {1, 3}."""

    name: str  # display name: "galaxy/hdf_0001.png", "cube.fits", "maps.npz:arr_0", "stack.npy[3]"
    data: np.ndarray  # float32 [H, W, C]; kind "image": in [0, 1]; kind "physical": finite, any units
    kind: str  # "image" or "physical"
    sha256: str  # of the source file's bytes (+ b":key" / b"[i]" for npz members and stack entries)
    unit: str | None = None  # e.g. "MJy/sr" (FITS BUNIT or manifest)
    bands: tuple[str, ...] | None = None  # band names, increasing wavelength, if known

    def __post_init__(self) -> None:
        d = self.data
        if not (isinstance(d, np.ndarray) and d.dtype == np.float32 and d.ndim == 3 and d.shape[-1] in (1, 3)):
            desc = f"{d.dtype} {d.shape}" if isinstance(d, np.ndarray) else type(d).__name__
            raise ValueError(f"Sample {self.name!r}: data must be a float32 array [H, W, C] with C in (1, 3), got {desc}")
        if self.kind not in KINDS:
            raise ValueError(f"Sample {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.bands is not None and len(self.bands) != d.shape[-1]:
            raise ValueError(f"Sample {self.name!r}: {len(self.bands)} band names for {d.shape[-1]} bands")
        if not np.isfinite(d).all():
            raise ValueError(f"Sample {self.name!r}: data contain NaN or infinite values")
        if self.kind == "image" and d.size and (d.min() < 0.0 or d.max() > 1.0):
            raise ValueError(f"Sample {self.name!r}: image data must lie in [0, 1], got [{d.min():g}, {d.max():g}]")

    @property
    def channels(self) -> int:
        return int(self.data.shape[-1])


@dataclass
class LoadReport:
    """What :func:`load_paths` found: samples, skipped files (name, message), ignored non-data files."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------


def file_suffix(name: str) -> str:
    """Lower-case file type, including a compression suffix where it matters ('.fits.gz')."""
    low = name.lower()
    for s in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return s
    return PurePosixPath(low).suffix


def _kind_of_suffix(suffix: str) -> str:
    if suffix in DATA_SUFFIXES:
        return "data"
    if suffix in ARCHIVE_SUFFIXES:
        return "archive"
    if suffix in _UNSUPPORTED_DATA:
        return "unsupported"
    return "other"


def _unsupported(name: str, suffix: str) -> DataError:
    what = f"file type '{suffix}'" if suffix else "files without an extension"
    return _err(name, f"{what} is not supported", f"supported: {SUPPORTED}")


def _pixel_count(shape: Sequence[int]) -> int:
    """Pixels per band of an array shape [..., B, H, W] or [..., H, W, B] (band axis found as in :func:`_layout_hwc`)."""
    dims = [int(d) for d in shape]
    if len(dims) >= 3:
        first = len(dims) - 3  # first axis of the [B, H, W] / [H, W, B] image
        if dims[first] <= 4 < dims[-1]:
            dims.pop(first)
        elif dims[-1] <= 4:
            dims.pop()
    return int(np.prod(dims, dtype=np.int64))


def _check_pixels(name: str, pixels: int, shape_desc: str) -> None:
    if pixels > MAX_PIXELS:
        raise _err(
            name,
            f"image of {shape_desc} ({pixels / 1e6:.1f} megapixels) exceeds the limit of {MAX_PIXELS / 1e6:g} megapixels "
            "(decompression-bomb protection)",
            "crop or downsample it first, or raise oodgen.data.MAX_PIXELS",
        )


def _check_side(name: str, h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise _err(name, f"image is {w}x{h} pixels (width x height), too small", f"at least {MIN_SIDE}x{MIN_SIDE} pixels are needed")


def _check_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise _err(
            name,
            "contains Python objects (a pickled object array), which oodgen never unpickles (allow_pickle=False)",
            "save a numeric array instead, e.g. numpy.save(path, numpy.asarray(x, dtype=numpy.float32))",
        )
    if dtype.kind == "b":
        raise _err(name, "is a boolean mask, not an image", "convert it to float32 or uint8 first")
    if dtype.kind == "c":
        raise _err(name, f"has complex values ({dtype})", "save the real part or the amplitude as float32")
    if dtype.kind not in "uif":
        raise _err(name, f"has non-numeric data type {dtype}", "save a float32 or uint8/uint16 array")


def _layout_hwc(arr: np.ndarray, name: str) -> np.ndarray:
    """[H, W] / [B, H, W] / [H, W, B] -> [H, W, B] (no copy)."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise _err(name, f"has shape {arr.shape}, expected [H, W], [B, H, W] or [H, W, B]", _HOW_TO_SAVE)
    if arr.shape[0] <= 4 < arr.shape[-1]:
        return np.moveaxis(arr, 0, -1)
    if arr.shape[-1] <= 4:
        return arr
    raise _err(
        name,
        f"has shape {arr.shape}: no band axis of length 1-4 found first or last",
        "save a single map as [H, W], bands as [B, H, W] with B = 1 or 3, and a stack of N single-band maps as [N, 1, H, W]",
    )


def _check_bands(hwc: np.ndarray, name: str, kind: str, *, alpha: bool) -> np.ndarray:
    """Accept 1 or 3 bands; drop alpha from 2 (grey + alpha, raster files only) or 4 (RGBA) channels."""
    c = hwc.shape[-1]
    if c in (1, 3):
        return hwc
    if (c == 4 and (alpha or kind == "image")) or (c == 2 and alpha):
        log.info("%s: dropped the alpha channel", name)
        return hwc[..., : c - 1]
    raise _err(
        name,
        f"has {c} bands (image {hwc.shape[1]}x{hwc.shape[0]}); oodgen uses 1 or 3 bands",
        "select 1 band or 3 bands (increasing wavelength) and save them as [B, H, W]",
    )


def _finish(hwc: np.ndarray, name: str, kind: str) -> np.ndarray:
    """Size check; physical: non-finite values -> band median (logged), cast to native float32. -> [H, W, C]."""
    _check_side(name, hwc.shape[0], hwc.shape[1])
    if kind == "image":
        return np.ascontiguousarray(hwc, dtype=np.float32)
    a = np.array(hwc, dtype=np.result_type(hwc.dtype, np.float32))  # native byte order, own copy
    bad = ~np.isfinite(a)
    if bad.any():
        counts = []
        for b in range(a.shape[-1]):
            m = bad[..., b]
            if m.all():
                which = "NaN" if np.isnan(a[..., b]).all() else "NaN or infinite"
                where = f"band {b} is entirely" if a.shape[-1] > 1 else "all values are"
                raise _err(name, f"{where} {which}, nothing to show", "check the file (wrong HDU or band, or a blank map?)")
            if m.any():
                a[..., b][m] = np.median(a[..., b][~m])
            counts.append(int(m.sum()))
        n_nan = int(np.isnan(hwc).sum()) if hwc.dtype.kind == "f" else 0
        log.warning(
            "%s: replaced %d non-finite values (%d NaN, %d infinite) by the band median (per band: %s)",
            name, int(bad.sum()), n_nan, int(bad.sum()) - n_nan, counts,
        )
    if a.dtype != np.float32:
        if np.abs(a).max(initial=0.0) > np.finfo(np.float32).max:
            raise _err(name, "has values beyond the float32 range (|x| > 3.4e38)", "rescale the data (e.g. change units)")
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def _integer_image(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """uint8 / uint16 / bool -> [0, 1] float32 'image'; other numeric -> unchanged 'physical'."""
    if arr.dtype.byteorder not in "=|":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, "image"
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, "image"
    if arr.dtype == np.bool_:
        return arr.astype(np.float32), "image"
    return arr, "physical"


# ------------------------------------------------------------------------------------------------
# readers: (bytes, display name) -> arrays
# ------------------------------------------------------------------------------------------------


def _read_tiff(data: bytes, name: str) -> np.ndarray | None:
    """First page of a grey / RGB TIFF with tifffile (16-bit colour and float TIFFs keep full precision).

    None when tifffile cannot decode it (e.g. LZW / JPEG need the optional ``imagecodecs``) or the
    photometric interpretation needs Pillow's conversions (palette, CMYK, YCbCr, min-is-white).
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            page = tf.pages[0]
            if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB) or page.axes not in ("YX", "YXS", "SYX"):
                return None
            _check_pixels(name, _pixel_count(page.shape), "x".join(map(str, page.shape)))
            if len(tf.pages) > 1:
                log.info("%s: multi-page TIFF, using the first of %d pages", name, len(tf.pages))
            arr = page.asarray()
            axes = page.axes
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding problem: let Pillow try
        log.debug("%s: tifffile could not read it (%s); trying Pillow", name, e)
        return None
    return np.moveaxis(arr, 0, -1) if axes == "SYX" else arr


def _read_pillow(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        # Pillow raises DecompressionBombError beyond 2x Image.MAX_IMAGE_PIXELS while reading the header;
        # our MAX_PIXELS check (smaller by default) runs before any pixel data are decoded
        Image.init()  # all plugins, once: lazy loading inside Image.open is not thread-safe (bulk reads files in threads)
        im = Image.open(io.BytesIO(data), formats=[f for f in _PIL_FORMATS if f in Image.OPEN])  # Pillow 12 opens MPO via JPEG
        w, h = im.size
        _check_pixels(name, w * h, f"{w}x{h}")
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            log.info("%s: %d frames, using the first", name, n_frames)
        raw = im.tile[0].args if im.tile else None
        rawmode = raw[0] if isinstance(raw, tuple) else raw
        if isinstance(rawmode, str) and ";16" in rawmode and im.mode in ("RGB", "RGBA"):
            log.warning("%s: 16-bit colour image decoded at 8-bit precision (Pillow limitation); "
                        "save it as a 16-bit TIFF or FITS to keep full precision", name)
        im.load()
        im = ImageOps.exif_transpose(im)
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise _err(name, "is corrupt, or not a PNG, JPEG, TIFF or WebP image (its content matches none of them)", "re-export or re-download it") from None
    except Image.DecompressionBombError as e:
        raise _err(name, f"image exceeds the size limit (decompression-bomb protection: {e})", "crop or downsample it first") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise _err(name, f"cannot be read as an image, the file is corrupt or truncated ({type(e).__name__}: {e})", "re-export or re-download it") from None
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(im)


def _read_raster(data: bytes, name: str, suffix: str) -> tuple[np.ndarray, str]:
    """PNG / JPEG / TIFF / WebP -> ([H, W, C] in [0, 1] 'image', or float 'physical' for float/int32 TIFF)."""
    arr = _read_tiff(data, name) if suffix in (".tif", ".tiff") else None
    if arr is None:
        arr = _read_pillow(data, name)
    if arr.ndim not in (2, 3):
        raise _err(name, f"decoded to an unexpected shape {arr.shape}", "re-export it as a grey or RGB image")
    if arr.dtype != np.bool_:
        _check_dtype(name, arr.dtype)
    arr, kind = _integer_image(arr)
    if kind == "physical":
        log.info("%s: %s pixels, treated as physical values (not display-referred)", name, arr.dtype)
    hwc = arr[..., None] if arr.ndim == 2 else arr
    return _check_bands(hwc, name, kind, alpha=True), kind


def _gunzip(data: bytes, name: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            out = g.read(MAX_FILE_BYTES + 1)
    except Exception as e:  # noqa: BLE001
        raise _err(name, f"cannot be decompressed, the gzip stream is corrupt ({e})", "re-download it or decompress it yourself") from None
    if len(out) > MAX_FILE_BYTES:
        raise _err(name, f"decompresses to more than {MAX_FILE_BYTES / 2**20:.0f} MiB (decompression-bomb protection)", "raise oodgen.data.MAX_FILE_BYTES")
    return out


def _read_fits(data: bytes, name: str, suffix: str) -> tuple[np.ndarray, str | None]:
    """First image HDU with >= 2 axes -> ([H, W, B] native-order array, BUNIT)."""
    from astropy.io import fits

    if suffix.endswith(".gz"):
        data = _gunzip(data, name)
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            seen = []
            for i, hdu in enumerate(hdul):
                shape = tuple(hdu.shape) if hdu.is_image else ()
                seen.append(f"{type(hdu).__name__}{list(shape) if shape else ' (no image)'}")
                if len(shape) >= 2 and all(shape):
                    break
            else:
                raise _err(
                    name,
                    f"contains no image HDU with 2 or more axes (HDUs: {', '.join(seen) or 'none'}); FITS tables are not supported",
                    "store the map in the primary HDU or an IMAGE extension",
                )
            while len(shape) > 3 and shape[0] == 1:  # [1, 1, H, W] radio-style cubes
                shape = shape[1:]
            if len(shape) > 3:
                raise _err(name, f"HDU {i} has shape {tuple(hdu.shape)} (numpy order), expected [H, W] or [B, H, W]", _HOW_TO_SAVE)
            _check_pixels(name, _pixel_count(shape), "x".join(map(str, shape)))
            if i > 0:
                log.info("%s: using HDU %d (%s)", name, i, hdu.name)
            arr = np.asarray(hdu.data).reshape(shape)
            unit = hdu.header.get("BUNIT")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - astropy raises OSError, ValueError, TypeError ... on bad files
        raise _err(name, f"cannot be read as FITS, the file is corrupt or truncated ({type(e).__name__}: {e})", "re-download or re-export it") from None
    _check_dtype(name, arr.dtype)
    hwc = arr[..., None] if arr.ndim == 2 else np.moveaxis(arr, 0, -1)  # FITS cubes are [B, H, W]
    unit = str(unit).strip() if unit is not None and str(unit).strip() else None
    return _check_bands(hwc, name, "physical", alpha=False), unit


def _npy_header(data: bytes, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, without reading the array."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as e:  # noqa: BLE001
        raise _err(name, f"is not a valid .npy file ({e})", "write it with numpy.save") from None
    return tuple(shape), dtype


def _read_npy(data: bytes, name: str) -> np.ndarray:
    """Header checked (dtype, size) before the array is read; never unpickles."""
    shape, dtype = _npy_header(data, name)
    _check_dtype(name, dtype)
    _check_pixels(name, _pixel_count(shape), "x".join(map(str, shape)) or "scalar")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise _err(name, f"cannot be read, the file is corrupt or truncated ({e})", "re-save it with numpy.save") from None


def _array_items(arr: np.ndarray, name: str) -> list[tuple[str, np.ndarray, str]]:
    """A numeric array -> [(key, [H, W, C], kind)]: one item, or one per entry of a 4-D stack."""
    _check_dtype(name, arr.dtype)
    if arr.ndim == 4:
        if arr.shape[1] <= 4 < arr.shape[-1]:
            arr = np.moveaxis(arr, 1, -1)
        elif arr.shape[-1] > 4:
            raise _err(name, f"has shape {arr.shape}: expected a stack [N, B, H, W] or [N, H, W, B] with B = 1 or 3", _HOW_TO_SAVE)
        entries = [(f"[{i}]", arr[i]) for i in range(arr.shape[0])]
    elif arr.ndim in (2, 3):
        entries = [("", _layout_hwc(arr, name))]
    else:
        raise _err(name, f"has {arr.ndim} dimension(s) (shape {arr.shape}), expected an image", _HOW_TO_SAVE)
    items = []
    for key, hwc in entries:
        hwc, kind = _integer_image(hwc)
        items.append((key, _check_bands(hwc, name + key, kind, alpha=False), kind))
    return items


def _open_zip(data: bytes, name: str) -> zipfile.ZipFile:
    """A validated in-memory archive: member count and total uncompressed size within limits."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception as e:  # noqa: BLE001
        raise _err(name, f"is not a valid zip archive ({e})", "re-create the archive") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise _err(name, f"has {len(infos)} entries, more than the limit of {MAX_ZIP_MEMBERS}", "split the archive, or raise oodgen.data.MAX_ZIP_MEMBERS")
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_BYTES:
        raise _err(
            name,
            f"expands to {total / 2**20:.1f} MiB, more than the limit of {MAX_ZIP_BYTES / 2**20:.0f} MiB (zip-bomb protection)",
            "split the archive, or raise oodgen.data.MAX_ZIP_BYTES",
        )
    return zf


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    if info.flag_bits & 0x1:
        raise _err(name, "is encrypted", "add it to the archive without a password")
    if info.file_size > MAX_FILE_BYTES:
        raise _err(name, f"is {info.file_size / 2**20:.0f} MiB, more than the limit of {MAX_FILE_BYTES / 2**20:.0f} MiB", "raise oodgen.data.MAX_FILE_BYTES")
    try:
        return zf.read(info)  # zipfile stops at the declared size and checks the CRC
    except Exception as e:  # noqa: BLE001
        raise _err(name, f"cannot be read from the archive ({e})", "re-create the archive") from None


def _read_npz(data: bytes, name: str) -> list[tuple[str, np.ndarray, str]]:
    zf = _open_zip(data, name)
    items, skipped = [], []
    for info in zf.infolist():
        if info.is_dir():
            continue
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        member = f"{name}:{key}"
        if not info.filename.endswith(".npy"):
            skipped.append(key)
            continue
        raw = _read_member(zf, info, member)
        shape, _ = _npy_header(raw, member)
        if len(shape) < 2:  # labels, wavelengths, ... (not even unpickled)
            skipped.append(f"{key} {list(shape)}")
            continue
        arr = _read_npy(raw, member)
        items += [(f":{key}{k}", hwc, kind) for k, hwc, kind in _array_items(arr, member)]
    if skipped:
        log.info("%s: skipped members that are not images: %s", name, ", ".join(skipped))
    if not items:
        raise _err(name, f"has no member with 2 or more dimensions (members: {', '.join(skipped) or 'none'})", "save images with numpy.savez(path, name=array)")
    return items


# ------------------------------------------------------------------------------------------------
# manifest.json
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Manifest:
    bands: tuple[str, ...]
    unit: str | None
    error: str | None = None  # set when the manifest exists but is invalid


def _parse_manifest(data: bytes, name: str) -> _Manifest | None:
    """Band names / unit of a folder's ``manifest.json``; None if it declares no bands."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except Exception as e:  # noqa: BLE001
        return _Manifest((), None, f"{name} is not valid JSON ({e})")
    if not isinstance(doc, dict) or "bands" not in doc:
        return None
    bands = doc["bands"]
    if not (isinstance(bands, list) and bands and all(isinstance(b, dict) and ("name" in b or "wavelength_um" in b) for b in bands)):
        return _Manifest((), None, f'{name}: "bands" must be a list of {{"name", "wavelength_um", "unit"}} objects')
    waves = [b.get("wavelength_um") for b in bands]
    if not all(w is None or (isinstance(w, (int, float)) and not isinstance(w, bool)) for w in waves):
        return _Manifest((), None, f'{name}: "wavelength_um" must be numbers, got {waves}')
    if all(w is not None for w in waves) and any(b <= a for a, b in zip(waves, waves[1:])):
        return _Manifest((), None, f"{name}: bands must be listed by increasing wavelength, as stored in the arrays (got {waves} um)")
    names = tuple(str(b["name"]) if "name" in b else f"{b['wavelength_um']:g} um" for b in bands)
    units = [b.get("unit", doc.get("unit")) for b in bands]
    unit = units[0] if len(set(units)) == 1 else ", ".join(str(u or "?") for u in units)  # one unit, or one per band
    return _Manifest(names, None if unit is None else str(unit))


def _apply_manifest(samples: list[Sample], manifest: _Manifest | None, file_name: str) -> list[Sample]:
    if manifest is None:
        return samples
    if manifest.error:
        raise _err(file_name, f"the folder's {MANIFEST} is invalid ({manifest.error})", f"fix or remove {MANIFEST}")
    out = []
    for s in samples:
        if s.kind != "physical":
            out.append(s)
            continue
        if s.channels != len(manifest.bands):
            raise _err(s.name, f"has {s.channels} band(s) but {MANIFEST} lists {len(manifest.bands)} ({', '.join(manifest.bands)})", f"make the array match {MANIFEST}")
        out.append(Sample(s.name, s.data, s.kind, s.sha256, s.unit or manifest.unit, manifest.bands))
    return out


# ------------------------------------------------------------------------------------------------
# one file (bytes) -> samples
# ------------------------------------------------------------------------------------------------


def _load_bytes(data: bytes, name: str, manifest: _Manifest | None = None) -> list[Sample]:
    """Shared by files and archive members. Raises DataError."""
    suffix = file_suffix(name)
    if suffix in ARCHIVE_SUFFIXES:
        raise _err(name, "zip archives inside archives are not supported", "extract the inner archive first")
    if suffix not in DATA_SUFFIXES:
        raise _unsupported(name, suffix)
    if not data:
        raise _err(name, "file is empty (0 bytes)", "re-export or re-download it")
    unit = None
    if suffix in IMAGE_SUFFIXES:
        hwc, kind = _read_raster(data, name, suffix)
        items = [("", hwc, kind)]
    elif suffix in FITS_SUFFIXES:
        hwc, unit = _read_fits(data, name, suffix)
        items = [("", hwc, "physical")]
    elif suffix == ".npy":
        items = _array_items(_read_npy(data, name), name)
    else:
        items = _read_npz(data, name)
    digest = hashlib.sha256(data)
    samples = []
    for key, hwc, kind in items:
        sha = digest.copy()
        if key:
            sha.update(key.encode())
        samples.append(Sample(name + key, _finish(hwc, name + key, kind), kind, sha.hexdigest(), unit if kind == "physical" else None))
    return _apply_manifest(samples, manifest, name) if suffix in ARRAY_SUFFIXES else samples


def _read_path(path: Path, name: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _err(name, f"is {size / 2**20:.0f} MiB, more than the limit of {MAX_FILE_BYTES / 2**20:.0f} MiB", "crop it, or raise oodgen.data.MAX_FILE_BYTES")
        return path.read_bytes()
    except DataError:
        raise
    except FileNotFoundError:
        raise _err(name, "no such file", "check the path") from None
    except OSError as e:
        raise _err(name, f"cannot be read ({e.strerror or e})", "check the file's permissions") from None


def _unsafe_member(member: str) -> bool:
    parts = re.split(r"[\\/]", member)
    return member.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", member)) or ".." in parts


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts if p)


def _load_zip(data: bytes, name: str, report: LoadReport) -> None:
    """Members of an in-memory archive into ``report`` (per-member errors collected)."""
    zf = _open_zip(data, name)
    infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
    manifests: dict[str, _Manifest | None] = {}

    def manifest_of(folder: str) -> _Manifest | None:
        if folder not in manifests:
            key = f"{folder}/{MANIFEST}" if folder else MANIFEST
            info = zf.NameToInfo.get(key)
            manifests[folder] = None
            if info is not None:
                try:
                    manifests[folder] = _parse_manifest(_read_member(zf, info, f"{name}/{key}"), f"{name}/{key}")
                except DataError as e:
                    manifests[folder] = _Manifest((), None, str(e))
        return manifests[folder]

    for info in infos:
        member = info.filename
        display = f"{name}/{member}"
        if _unsafe_member(member):
            report.errors.append((display, str(_err(display, f"unsafe member path {member!r} (absolute or containing '..', a zip-slip attempt)", "re-create the archive with relative paths"))))
            continue
        path = PurePosixPath(member)
        if _hidden(path.parts):
            continue
        folder = str(path.parent) if str(path.parent) != "." else ""
        kind = _kind_of_suffix(file_suffix(member))
        manifest = manifest_of(folder) if kind == "data" and file_suffix(member) in IMAGE_SUFFIXES else None
        if kind == "other" or (manifest is not None and manifest.bands):
            report.ignored.append(display)
            continue
        try:
            if kind == "unsupported":
                raise _unsupported(display, file_suffix(member))
            report.samples.extend(_load_bytes(_read_member(zf, info, display), display, manifest_of(folder)))
        except DataError as e:
            report.errors.append((display, str(e)))


def _folder_manifest(folder: Path, cache: dict[Path, _Manifest | None]) -> _Manifest | None:
    if folder not in cache:
        p = folder / MANIFEST
        try:
            cache[folder] = _parse_manifest(p.read_bytes(), str(p)) if p.is_file() else None
        except OSError as e:
            cache[folder] = _Manifest((), None, f"{p} cannot be read ({e})")
    return cache[folder]


def _load_disk_file(path: Path, name: str, cache: dict[Path, _Manifest | None]) -> list[Sample]:
    suffix = file_suffix(path.name)
    manifest = _folder_manifest(path.parent, cache) if suffix in ARRAY_SUFFIXES else None
    return _load_bytes(_read_path(path, name), name, manifest)


def load_file(path: str | Path) -> list[Sample]:
    """One file (image, FITS, .npy/.npz, or a .zip whose members must all load) -> its samples.

    A ``manifest.json`` beside an array file supplies band names and unit. Raises :class:`DataError`.
    """
    path = Path(path)
    if path.is_dir():
        raise _err(path.name or str(path), "is a folder", "use load_paths for folders")
    if file_suffix(path.name) in ARCHIVE_SUFFIXES:
        report = LoadReport()
        _load_zip(_read_path(path, path.name), path.name, report)
        if report.errors:
            more = f" (and {len(report.errors) - 1} more bad members)" if len(report.errors) > 1 else ""
            raise DataError(report.errors[0][1] + more)
        if not report.samples:
            raise _err(path.name, "contains no data files", f"supported: {SUPPORTED}")
        return report.samples
    return _load_disk_file(path, path.name, {})


def _walk(root: Path, listing: FileList, budget: int | None, max_files: int | None) -> list[tuple[str, Path]]:
    """Data files and archives under ``root`` (sorted by relative path, hidden entries skipped) as (display name, path).

    Raises DataError as soon as more than ``budget`` are found (``max_files`` minus those found before; None: no limit).
    """
    base = root.resolve().name or str(root)
    found: list[tuple[tuple[str, ...], Path]] = []
    cache: dict[Path, _Manifest | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden([d]))
        folder = Path(dirpath)
        for fn in sorted(filenames):
            if _hidden([fn]):
                continue
            rel = (folder / fn).relative_to(root).parts
            suffix = file_suffix(fn)
            kind = _kind_of_suffix(suffix)
            manifest = _folder_manifest(folder, cache) if kind == "data" and suffix in IMAGE_SUFFIXES else None
            if kind == "other" or (manifest is not None and manifest.bands):
                listing.ignored.append("/".join((base, *rel)))
                continue
            found.append((rel, folder / fn))
            if budget is not None and len(found) > budget:
                raise _err(str(root), f"more than {max_files} data files in all", "pass a smaller folder, or raise max_files", TooManyFiles)
    found.sort(key=lambda t: t[0])
    return [("/".join((base, *rel)), p) for rel, p in found]


@dataclass
class FileList:
    """What :func:`list_files` found, before anything is read."""

    files: list[tuple[str, Path]] = field(default_factory=list)  # (display name, path) of data files and archives, in reading order
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of paths that do not exist
    ignored: list[str] = field(default_factory=list)  # non-data files in folders (README.md, labels.csv, ...)


def list_files(paths: Sequence[str | Path] | str | Path, max_files: int | None = 10_000) -> FileList:
    """Files and folders (recursive, sorted, hidden entries skipped) -> the data files to read, without reading them.

    Raises :class:`DataError` if more than ``max_files`` data files are found (None: no limit).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    listing = FileList()
    for p in map(Path, paths):
        budget = None if max_files is None else max_files - len(listing.files)
        if p.is_dir():
            listing.files += _walk(p, listing, budget, max_files)
        elif p.exists():
            listing.files.append((p.name, p))
        else:
            listing.errors.append((str(p), str(_err(str(p), "no such file or folder", "check the path"))))
        if max_files is not None and len(listing.files) > max_files:
            raise _err(str(p), f"more than {max_files} data files given in all", "pass fewer files, or raise max_files", TooManyFiles)
    return listing


def read_files(files: Sequence[tuple[str, Path]], report: LoadReport | None = None) -> LoadReport:
    """Read (display name, path) pairs from :func:`list_files` into ``report`` (a new one if None), in order.

    Bad files never raise: they land in ``report.errors``. A ``manifest.json`` beside array files applies.
    """
    report = LoadReport() if report is None else report
    cache: dict[Path, _Manifest | None] = {}
    for name, path in files:
        try:
            if file_suffix(path.name) in ARCHIVE_SUFFIXES:
                _load_zip(_read_path(path, name), name, report)
            elif _kind_of_suffix(file_suffix(path.name)) == "unsupported":
                raise _unsupported(name, file_suffix(path.name))
            else:
                report.samples.extend(_load_disk_file(path, name, cache))
        except DataError as e:
            report.errors.append((name, str(e)))
    return report


def load_paths(paths: Sequence[str | Path] | str | Path, max_files: int | None = 10_000) -> LoadReport:
    """Files, folders (recursive, sorted) and zip archives -> :class:`LoadReport`.

    ``paths`` may also be a single path. Bad files never raise: they land in ``errors`` as (display name, message). Non-data files in
    folders and archives (README.md, labels.csv, manifest.json, ...) land in ``ignored``. Raises
    :class:`DataError` only if more than ``max_files`` data files are found (checked before reading; None: no limit).
    For data sets larger than memory see :mod:`oodgen.bulk`, which reads :func:`list_files` in chunks.
    """
    listing = list_files(paths, max_files)
    report = read_files(listing.files, LoadReport(errors=list(listing.errors), ignored=list(listing.ignored)))
    log.info("loaded %d samples; %d files skipped, %d ignored", len(report.samples), len(report.errors), len(report.ignored))
    return report


# ------------------------------------------------------------------------------------------------
# stretch
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stretch:
    """Per-band asinh stretch mapping physical values to [0, 1] display/model space and back.

    y = asinh((x - lo) / a) / asinh((hi - lo) / a), clipped to [0, 1] on the way in; exact inverse
    on the way out: x = lo + a * sinh(y * asinh((hi - lo) / a)). With a = s * (hi - lo) this equals
    astropy's ``AsinhStretch(a=s)(ManualInterval(lo, hi)(x))``. Arrays are [..., C], C = len(lo).
    """

    lo: tuple[float, ...]  # per band
    hi: tuple[float, ...]
    a: tuple[float, ...]  # softening per band, in data units
    unit: str | None = None
    bands: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for f in ("lo", "hi", "a"):
            object.__setattr__(self, f, tuple(float(v) for v in getattr(self, f)))
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(str(b) for b in self.bands))
        n = len(self.lo)
        if n == 0 or len(self.hi) != n or len(self.a) != n or (self.bands is not None and len(self.bands) != n):
            raise ValueError(f"Stretch: lo, hi, a (and bands) need one value per band, got {len(self.lo)}, {len(self.hi)}, {len(self.a)}")
        if not all(np.isfinite(self.lo + self.hi + self.a)):
            raise ValueError("Stretch: lo, hi and a must be finite")
        if any(h <= l for l, h in zip(self.lo, self.hi)) or any(a <= 0 for a in self.a):
            raise ValueError(f"Stretch: need hi > lo and a > 0 per band, got lo={self.lo}, hi={self.hi}, a={self.a}")

    @property
    def channels(self) -> int:
        return len(self.lo)

    def _params(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if x.shape[-1:] != (self.channels,):
            raise ValueError(f"Stretch has {self.channels} band(s) but the array's last axis is {x.shape[-1:] or 'missing'} (shape {x.shape})")
        return np.array(self.lo), np.array(self.a), np.arcsinh((np.array(self.hi) - np.array(self.lo)) / np.array(self.a))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Physical [..., C] -> float32 [..., C] in [0, 1] (values outside [lo, hi] are clipped)."""
        x = np.asarray(x, dtype=np.float64)
        lo, a, scale = self._params(x)
        return np.clip(np.arcsinh((x - lo) / a) / scale, 0.0, 1.0).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """[..., C] in [0, 1] -> float32 physical [..., C] (not clipped: y outside [0, 1] extrapolates)."""
        y = np.asarray(y, dtype=np.float64)
        lo, a, scale = self._params(y)
        return (lo + a * np.sinh(y * scale)).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"type": "asinh", "lo": list(self.lo), "hi": list(self.hi), "a": list(self.a), "unit": self.unit,
                "bands": list(self.bands) if self.bands is not None else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stretch:
        if not isinstance(d, dict) or d.get("type", "asinh") != "asinh":
            raise ValueError(f"not an asinh stretch: {d!r}")
        missing = [k for k in ("lo", "hi", "a") if k not in d]
        if missing:
            raise ValueError(f"stretch JSON lacks {', '.join(missing)}: {d!r}")
        bands = d.get("bands")
        return cls(tuple(d["lo"]), tuple(d["hi"]), tuple(d["a"]), d.get("unit"), tuple(bands) if bands is not None else None)


def _common(samples: Sequence[Sample], attr: str) -> Any:
    """The one non-None value of ``attr`` across samples (None if none); DataError if they disagree."""
    values = list(dict.fromkeys(getattr(s, attr) for s in samples if getattr(s, attr) is not None))
    if len(values) > 1:
        a = next(s for s in samples if getattr(s, attr) == values[0])
        b = next(s for s in samples if getattr(s, attr) == values[1])
        raise _err(f"{a.name}, {b.name}", f"samples disagree on {attr}: {values[0]!r} vs {values[1]!r}", "load one consistent data set at a time")
    return values[0] if values else None


def _band_values(samples: Sequence[Sample]) -> np.ndarray:
    """All pixels [M, C] of the samples, or a seeded random subset of MAX_FIT_VALUES of them."""
    c = samples[0].channels
    total = sum(s.data.shape[0] * s.data.shape[1] for s in samples)
    if total <= MAX_FIT_VALUES:
        return np.concatenate([s.data.reshape(-1, c) for s in samples])
    rng = np.random.default_rng(0)
    frac = MAX_FIT_VALUES / total
    parts = []
    for s in samples:
        flat = s.data.reshape(-1, c)
        parts.append(flat[rng.integers(0, len(flat), size=max(1, round(len(flat) * frac)))])
    log.info("fit_stretch: percentiles estimated from a random %d of %d pixels per band", sum(map(len, parts)), total)
    return np.concatenate(parts)


SOFTENING_REFS = ("median", "range")


def fit_stretch(samples: Sequence[Sample], low_pct: float = 0.5, high_pct: float = 100.0, softening: float = 1.0,
                softening_ref: str = "median") -> Stretch:
    """One stretch for a whole data set: per band lo / hi = percentiles over all pixels of all samples, and
    a = softening * (median - lo) (``softening_ref`` "median", the default) or softening * (hi - lo) ("range").

    The default keeps every bright pixel (hi = the maximum: point sources and warm-dust peaks are not
    clipped, so no flux is lost) and puts the asinh knee at the typical level, so the bulk of the
    emission spans a useful part of [0, 1] and the peaks are compressed logarithmically above it.
    The older stretch (0.5-99.5 percentiles, softening 0.1 of the range) is
    ``fit_stretch(s, 0.5, 99.5, 0.1, "range")``; it clips the brightest 0.5% of pixels.

    A band whose percentile range is empty (mostly constant) falls back to its min / max, with a
    warning; a band constant everywhere is a :class:`DataError`.
    """
    if not samples:
        raise ValueError("fit_stretch needs at least one sample")
    if not 0.0 <= low_pct < high_pct <= 100.0 or not softening > 0.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100 and softening > 0, got {low_pct}, {high_pct}, {softening}")
    if softening_ref not in SOFTENING_REFS:
        raise ValueError(f"softening_ref={softening_ref!r} is not one of {', '.join(SOFTENING_REFS)}")
    if any(s.kind != "physical" for s in samples):
        raise ValueError(f"fit_stretch is for physical data; {next(s.name for s in samples if s.kind != 'physical')} is an image")
    if len({s.channels for s in samples}) > 1:
        raise _mixed_bands(samples)
    unit, bands = _common(samples, "unit"), _common(samples, "bands")
    v = _band_values(samples).astype(np.float64)
    lo, hi = np.percentile(v, [low_pct, high_pct], axis=0)
    for b in range(v.shape[1]):
        if hi[b] <= lo[b]:
            label = bands[b] if bands else f"band {b}"
            vmin, vmax = float(v[:, b].min()), float(v[:, b].max())
            if vmax <= vmin:
                raise _err(samples[0].name if len(samples) == 1 else f"{len(samples)} samples", f"{label} is constant ({vmin:g}) in every pixel", "a stretch needs some contrast; drop the band or the samples")
            log.warning("fit_stretch: %s is constant between the %g and %g percentiles; using its min/max [%g, %g]", label, low_pct, high_pct, vmin, vmax)
            lo[b], hi[b] = vmin, vmax
    if softening_ref == "range":
        return Stretch(tuple(lo), tuple(hi), tuple(softening * (hi - lo)), unit, bands)
    med = np.percentile(v, 50.0, axis=0)
    knee = np.where(med > lo, med - lo, 0.01 * (hi - lo))  # a band mostly at its floor: 1% of the range
    return Stretch(tuple(lo), tuple(hi), tuple(softening * np.minimum(knee, hi - lo)), unit, bands)


# ------------------------------------------------------------------------------------------------
# model tensors
# ------------------------------------------------------------------------------------------------


def _mixed_bands(samples: Sequence[Sample]) -> DataError:
    by = {}
    for s in samples:
        by.setdefault(s.channels, s.name)
    return _err(", ".join(by.values()), f"physical samples have different band counts ({', '.join(f'{n}: {c}' for c, n in by.items())})", "load one consistent data set at a time")


def square_resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """[C, H, W] -> [C, R, R]: centre-crop to a square, then ``area`` (shrink) / antialiased ``bicubic`` (enlarge)."""
    _, h, w = x.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top : top + s, left : left + s]
    if s == resolution:
        return x
    if s > resolution:
        return F.interpolate(x[None], size=(resolution, resolution), mode="area")[0]
    return F.interpolate(x[None], size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True)[0]


def _chw(s: Sample) -> torch.Tensor:
    """Sample data as a float32 tensor [C, H, W] (a copy)."""
    return torch.from_numpy(np.ascontiguousarray(s.data.transpose(2, 0, 1)))


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, channels, H, W]: replicate grey, average colour for 1 channel."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    return x.mean(dim=1, keepdim=True)


def to_model_input(
    samples: Sequence[Sample], resolution: int, channels: int = 3, stretch: Stretch | None = None
) -> tuple[torch.Tensor, Stretch | None]:
    """Samples -> (float32 [N, channels, R, R] in [-1, 1], the stretch used; None for images).

    Physical samples use ``stretch`` (fitted on ``samples`` with :func:`fit_stretch` if None) and go
    to channels R, G, B = bands (2, 1, 0). See the module docstring for the crop / resize policy.
    """
    if not samples:
        raise ValueError("to_model_input needs at least one sample")
    if resolution < 1 or channels not in (1, 3):
        raise ValueError(f"need resolution >= 1 and channels in (1, 3), got {resolution}, {channels}")
    kinds: dict[str, str] = {}
    for s in samples:
        kinds.setdefault(s.kind, s.name)
    if len(kinds) > 1:
        raise _err(f"{kinds['image']}, {kinds['physical']}", f"cannot mix images ({kinds['image']}) and physical data ({kinds['physical']}) in one set", "load them as separate sets")
    kind = samples[0].kind
    cropped = sum(s.data.shape[0] != s.data.shape[1] for s in samples)
    resized = sum(min(s.data.shape[:2]) != resolution for s in samples)
    if cropped or resized:
        log.info("to_model_input: %d of %d samples centre-cropped to a square, %d resized to %dx%d", cropped, len(samples), resized, resolution, resolution)
    if kind == "image":
        if stretch is not None:
            raise ValueError("a stretch applies to physical data only; these samples are images")
        x = torch.cat([_to_channels(square_resize(_chw(s), resolution)[None], channels) for s in samples])  # grey and RGB may mix
        return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous(), None
    if len({s.channels for s in samples}) > 1:
        raise _mixed_bands(samples)
    if stretch is None:
        stretch = fit_stretch(samples)
    if stretch.channels != samples[0].channels:
        raise _err(samples[0].name, f"has {samples[0].channels} band(s) but the stretch has {stretch.channels}", "use the stretch fitted on this kind of data")
    unit = _common(samples, "unit")
    if unit is not None and stretch.unit is not None and unit != stretch.unit:
        raise _err(samples[0].name, f"is in {unit} but the stretch is for {stretch.unit}", "convert the data, or fit a new stretch")
    out = []
    for s in samples:
        phys = square_resize(_chw(s), resolution)  # [C, R, R], physical units
        y = torch.from_numpy(stretch.forward(phys.permute(1, 2, 0).numpy()))  # [R, R, C] in [0, 1]
        out.append(y.flip(-1).permute(2, 0, 1))  # reversed bands: R = longest wavelength
    if stretch.channels == 3 and channels == 1:
        log.warning("to_model_input: 3-band data averaged into 1 model channel; from_model_output cannot recover the bands")
    x = _to_channels(torch.stack(out), channels)
    return (x * 2.0 - 1.0).contiguous(), stretch


def _check_nchw(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a tensor [N, C, H, W] with C in (1, 3), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.detach().to("cpu", torch.float32)


def from_model_output(x: torch.Tensor, stretch: Stretch | None) -> np.ndarray:
    """Model output [N, C, H, W] in ~[-1, 1] -> float32 [N, H, W, C'].

    Images (``stretch`` None): [0, 1], clipped, C' = C. Physical: values in the stretch's units in
    the original band order (channels reversed back, then ``stretch.inverse``), C' = stretch.channels;
    a 1-band stretch takes the mean of the model's channels.
    """
    y = ((_check_nchw(x) + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    if stretch is None:
        return np.ascontiguousarray(y, dtype=np.float32)
    if stretch.channels == 1:
        return stretch.inverse(y.mean(axis=-1, keepdims=True))
    if y.shape[-1] != stretch.channels:
        raise ValueError(f"cannot recover {stretch.channels} bands from a {y.shape[-1]}-channel model output")
    return stretch.inverse(y[..., ::-1])


def to_uint8_rgb(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (grey replicated), for PNG files and previews."""
    x = _to_channels(_check_nchw(x), 3)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def preview(sample: Sample, stretch: Stretch | None = None) -> np.ndarray:
    """uint8 [H, W, 3] display of one sample at its own resolution (no crop).

    Images: as stored (grey replicated). Physical: per-band asinh ``stretch`` (default: fitted on
    this sample alone, 0.5-99.5 %), RGB = bands in reverse order (longest wavelength red).
    """
    if sample.kind == "image":
        y = sample.data
    else:
        if stretch is None:
            try:
                stretch = fit_stretch([sample])
            except DataError:  # a constant band: show it black instead of failing the preview
                v = sample.data.reshape(-1, sample.channels)
                lo = v.min(axis=0).astype(np.float64)
                hi = np.maximum(v.max(axis=0), lo + np.maximum(np.abs(lo), 1.0) * 1e-6)
                stretch = Stretch(tuple(lo), tuple(hi), tuple(0.1 * (hi - lo)))
        y = stretch.forward(sample.data)[..., ::-1]
    rgb = np.repeat(y, 3, axis=-1) if y.shape[-1] == 1 else y
    return np.ascontiguousarray((np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8))
