"""Open SEM scans (TIFF files) lazily, as gray images in [0, 1].

A scan is never read whole into memory. The chosen page is opened through
tifffile's Zarr store and wrapped in a :mod:`dask` array cut into bands of
whole rows, so callers compute only the rows they need.

Besides the pixels, opening a scan reads what the file tells about itself:

* the pixel size, from FEI (``Scan.PixelWidth``), Zeiss
  (``ap_image_pixel_size``) or semtile's own JSON description
  (``pixel_size_m``);
* the height of the burned-in data bar at the bottom of the frame, from the
  caller, from the FEI metadata, or detected in the pixels
  (:func:`detect_databar`).

Every problem with one file raises an :class:`~semtile.errors.ImageError`
whose message names the file and the reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from semtile.store.provenance import sha256_file as _sha256_file
from semtile.errors import (
    ImageTooSmallError,
    SemtileError,
    UnreadableImageError,
    UnsupportedImageError,
)

__all__ = [
    "TIFF_SUFFIXES",
    "ScanInfo",
    "Scan",
    "find_scans",
    "open_scan",
    "detect_databar",
    "sha256_file",
]

TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

#: Decoded bytes aimed at per dask chunk (a band of whole rows).
TARGET_CHUNK_BYTES = 8 * 2**20

#: Fraction of the frame's rows, at the bottom, searched for a data bar.
DATABAR_SEARCH_FRACTION = 0.25

#: The last chunk row is decoded at open (to surface decode errors early)
#: only when it is at most this many bytes.
_CHECK_READ_LIMIT = 64 * 2**20

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Rec. 601 luma weights, used for RGB and palette images.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)

_UNIT_TO_M = {
    "pm": 1e-12,
    "a": 1e-10,
    "å": 1e-10,
    "nm": 1e-9,
    "µm": 1e-6,  # micro sign U+00B5
    "μm": 1e-6,  # Greek mu U+03BC
    "um": 1e-6,
    "mm": 1e-3,
    "cm": 1e-2,
    "m": 1.0,
}


# --------------------------------------------------------------------------
# finding files


def find_scans(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """List the TIFF scans named by files and folders.

    Parameters
    ----------
    inputs
        Files and folders. A file is taken as it is, whatever its suffix.
        A folder is searched recursively for files ending in ``.tif`` or
        ``.tiff`` (any case); hidden files and folders (names starting with
        ``.``, e.g. macOS ``._x.tif`` resource forks) are skipped. A single
        path may be given instead of a sequence.

    Returns
    -------
    list of Path
        Resolved paths, sorted, each listed once.

    Raises
    ------
    SemtileError
        If an input does not exist or is neither a file nor a folder.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise SemtileError(f"input path does not exist: {path}")
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() in TIFF_SUFFIXES:
                        found.add((Path(root) / name).resolve())
        else:
            raise SemtileError(f"input path is neither a file nor a folder: {path}")
    return sorted(found)


def sha256_file(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks.

    Raises
    ------
    UnreadableImageError
        If the file cannot be read.
    """
    try:
        return _sha256_file(path)
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot read file: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------
# scan description


@dataclass(frozen=True)
class ScanInfo:
    """What is known about one opened scan.

    Attributes
    ----------
    path
        The file.
    frame_shape
        ``(rows, cols)`` of the chosen page, data bar included.
    dtype
        The stored sample type, e.g. ``"uint8"`` or ``"uint16"``.
    photometric
        TIFF photometric interpretation: ``"MINISBLACK"``, ``"PALETTE"``,
        ``"RGB"``, ...
    page
        Index of the chosen page.
    n_pages
        Number of pages in the file.
    pixel_size_m
        Pixel size in metres, or None if the file does not say.
    pixel_size_source
        ``"fei"``, ``"zeiss"``, ``"semtile"`` or None.
    vendor
        ``"FEI"``, ``"Zeiss"`` or None.
    databar_rows
        Rows of burned-in data bar at the bottom of the frame (0 if none).
    databar_source
        ``"fei"`` (metadata), ``"detected"`` (in the pixels, a bar was
        searched for whether or not one was found), ``"option"`` (given by
        the caller) or ``"none"``.
    """

    path: Path
    frame_shape: tuple[int, int]
    dtype: str
    photometric: str
    page: int
    n_pages: int
    pixel_size_m: float | None
    pixel_size_source: str | None
    vendor: str | None
    databar_rows: int
    databar_source: str

    @property
    def valid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the image above the data bar."""
        rows, cols = self.frame_shape
        return rows - self.databar_rows, cols


# --------------------------------------------------------------------------
# gray conversion (runs per dask block)


def _gray_block(
    block: np.ndarray,
    *,
    mode: str,
    scale: float,
    lut: np.ndarray | None,
    offset: float,
    invert: bool,
) -> np.ndarray:
    """Convert one block of stored samples to float32 gray in [0, 1]."""
    if mode == "palette":
        assert lut is not None
        return lut[block]
    if mode == "bool":
        out = block.astype(np.float32)
    else:
        x = block
        if x.ndim == 3:  # samples last: RGB(A)
            x = x[..., :3].astype(np.float64) @ _LUMA
        x = x.astype(np.float32)
        if mode == "float":
            x = np.where(np.isfinite(x), x, np.float32(offset))
        out = (x - np.float32(offset)) * np.float32(scale)
        np.clip(out, 0.0, 1.0, out=out)
    if invert:
        out = 1.0 - out
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------
# the scan


class Scan:
    """An open scan: metadata plus lazy access to its pixels.

    Use :func:`open_scan` to make one. The file stays open until
    :meth:`close` (or the end of a ``with`` block); the dask arrays returned
    by :meth:`gray` and :meth:`valid` can only be computed while it is open.
    They are safe to compute with dask's threaded scheduler.

    Attributes
    ----------
    info : ScanInfo
        What is known about the scan.
    """

    info: ScanInfo

    def __init__(self, tif: tifffile.TiffFile, raw: da.Array, info: ScanInfo, convert: dict[str, Any]):
        self._tif = tif
        self._raw = raw
        self._convert = convert
        self._float_range: tuple[float, float] | None = None
        self.info = info

    # -- lifecycle
    def close(self) -> None:
        """Close the file. Arrays made from this scan can no longer be computed."""
        self._tif.close()

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Scan({str(i.path)!r}, frame={i.frame_shape}, dtype={i.dtype}, "
            f"page={i.page}/{i.n_pages}, databar_rows={i.databar_rows})"
        )

    # -- pixels
    def gray(self) -> da.Array:
        """The full frame as lazy float32 gray values in [0, 1].

        Integer samples are divided by their type's maximum (uint8 by 255,
        uint16 by 65535; negative values of signed types clip to 0). Palette
        images go through their colour map, RGB(A) images are reduced to the
        luminance ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored) and
        MINISWHITE images are inverted.

        Float samples are clipped to [0, 1] if they already lie in it.
        Otherwise they are scaled by their own finite minimum and maximum;
        that range is computed once per scan (one streaming pass over the
        page, on the first call) and then reused. Non-finite values map to 0.

        Returns
        -------
        dask.array.Array
            Shape ``(rows, cols)``, dtype float32, chunked in bands of rows.
        """
        conv = dict(self._convert)
        if conv["mode"] == "float":
            lo, hi = self._get_float_range()
            if lo >= 0.0 and hi <= 1.0:
                conv["offset"], conv["scale"] = 0.0, 1.0
            else:
                conv["offset"] = lo
                conv["scale"] = 1.0 / (hi - lo) if hi > lo else 0.0
        raw = self._raw
        drop = [2] if raw.ndim == 3 else []
        return raw.map_blocks(
            _gray_block,
            drop_axis=drop,
            dtype=np.float32,
            meta=np.empty((0, 0), dtype=np.float32),
            **conv,
        )

    def valid(self) -> da.Array:
        """The image above the data bar: ``gray()[: rows - databar_rows]``."""
        return self.gray()[: self.info.valid_shape[0]]

    def _get_float_range(self) -> tuple[float, float]:
        if self._float_range is None:
            x = self._raw.astype(np.float64)
            if x.ndim == 3:
                x = x[..., :3] @ _LUMA
            x = da.where(da.isfinite(x), x, np.nan)
            lo, hi = da.compute(da.nanmin(x), da.nanmax(x))
            lo, hi = float(lo), float(hi)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                lo, hi = 0.0, 1.0  # no finite value at all
            self._float_range = (lo, hi)
        return self._float_range


# --------------------------------------------------------------------------
# opening


def open_scan(path: str | Path, *, page: int = 0, databar_rows: int | None = None) -> Scan:
    """Open one page of a TIFF scan lazily.

    Parameters
    ----------
    path
        The TIFF file.
    page
        Index of the page to use (default the first).
    databar_rows
        Height of the data bar in rows, overriding metadata and detection.
        Use 0 for a scan without a bar.

    Returns
    -------
    Scan
        The open scan; close it (or use it as a context manager).

    Raises
    ------
    UnreadableImageError
        If the file is missing, empty, not a TIFF, truncated or cannot be
        decoded.
    UnsupportedImageError
        If the page does not exist or is not a 2-D gray, palette or RGB(A)
        image.
    ImageTooSmallError
        If ``databar_rows`` leaves no image rows.
    SemtileError
        If ``databar_rows`` is not a non-negative integer.
    """
    path = Path(path)
    if databar_rows is not None and (
        isinstance(databar_rows, bool) or not isinstance(databar_rows, (int, np.integer)) or databar_rows < 0
    ):
        raise SemtileError(f"databar_rows must be a non-negative integer, got {databar_rows!r}")
    size = _check_file(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many kinds
        raise UnreadableImageError(path, f"cannot parse TIFF: {_describe(exc)}") from exc
    try:
        return _open(tif, path, size, page, databar_rows)
    except BaseException:
        tif.close()
        raise


def _check_file(path: Path) -> int:
    """Cheap checks before parsing; returns the file size."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot access file: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise UnreadableImageError(path, "is a folder, not a file")
    if st.st_size == 0:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if head not in _TIFF_MAGIC:
        raise UnreadableImageError(
            path, f"not a TIFF file: it starts with {head!r}, not a TIFF header (b'II*\\x00' or b'MM\\x00*')"
        )
    return st.st_size


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open(tif: tifffile.TiffFile, path: Path, size: int, page_index: int, databar_rows: int | None) -> Scan:
    try:
        n_pages = len(tif.pages)
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot read the page list: {_describe(exc)}") from exc
    if n_pages == 0:
        raise UnreadableImageError(path, "the TIFF has no image pages")
    if not isinstance(page_index, (int, np.integer)) or isinstance(page_index, bool):
        raise SemtileError(f"page must be an integer, got {page_index!r}")
    if not 0 <= page_index < n_pages:
        raise UnsupportedImageError(
            path, f"page {page_index} requested but the file has {n_pages} page(s) (0..{n_pages - 1})"
        )
    try:
        page = tif.pages[int(page_index)]
        if not isinstance(page, tifffile.TiffPage):  # a TiffFrame
            page = page.aspage()
        axes = page.axes
        shape = tuple(int(s) for s in page.shape)
        photometric = tifffile.PHOTOMETRIC(page.photometric).name
        dtype = np.dtype(page.dtype) if page.dtype is not None else None
        offsets = tuple(page.dataoffsets)
        counts = tuple(page.databytecounts)
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot read page {page_index}: {_describe(exc)}") from exc

    # truncated files: every strip/tile must lie inside the file
    if not offsets or not any(counts):
        raise UnreadableImageError(path, f"page {page_index} has no image data")
    data_end = max((o + c for o, c in zip(offsets, counts) if c), default=0)
    if data_end > size:
        raise UnreadableImageError(
            path, f"truncated: image data ends at byte {data_end} but the file has {size} bytes"
        )
    if dtype is None:
        raise UnsupportedImageError(path, f"unsupported sample format on page {page_index}")

    convert, raw_axes = _conversion(path, page, axes, shape, photometric, dtype)

    # lazy pixels
    try:
        store = tif.aszarr(key=int(page_index))
        z = zarr.open(store, mode="r")
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot open image data: {_describe(exc)}") from exc
    raw = _to_dask(z, raw_axes)
    rows, cols = int(raw.shape[0]), int(raw.shape[1])

    _check_last_rows(path, z, raw_axes)

    vendor, pixel_size, pixel_source = _pixel_size(tif, page)
    scan = Scan(
        tif,
        raw,
        ScanInfo(
            path=path,
            frame_shape=(rows, cols),
            dtype=dtype.name,
            photometric=photometric,
            page=int(page_index),
            n_pages=n_pages,
            pixel_size_m=pixel_size,
            pixel_size_source=pixel_source,
            vendor=vendor,
            databar_rows=0,
            databar_source="none",
        ),
        convert,
    )

    # data bar
    if databar_rows is not None:
        if databar_rows >= rows:
            raise ImageTooSmallError(
                path, f"databar_rows={databar_rows} leaves no image rows: the frame has {rows} rows"
            )
        bar, source = int(databar_rows), "option"
    else:
        fei_bar = _fei_databar(_fei_metadata(tif, page), rows) if vendor == "FEI" else None
        if fei_bar is not None:
            bar, source = fei_bar, "fei"
        else:
            band_rows = min(rows, max(8, math.ceil(rows * DATABAR_SEARCH_FRACTION)))
            try:
                band = scan.gray()[rows - band_rows :].compute()
            except Exception as exc:
                raise UnreadableImageError(path, f"cannot decode image data: {_describe(exc)}") from exc
            bar, source = detect_databar(band), "detected"
    scan.info = dataclasses.replace(scan.info, databar_rows=bar, databar_source=source)
    return scan


def _conversion(
    path: Path, page: tifffile.TiffPage, axes: str, shape: tuple[int, ...], photometric: str, dtype: np.dtype
) -> tuple[dict[str, Any], str]:
    """Choose the gray conversion; returns its parameters and the raw axes."""
    conv: dict[str, Any] = {"mode": "int", "scale": 1.0, "lut": None, "offset": 0.0, "invert": False}
    described = f"page shape {shape} (axes {axes!r}, photometric {photometric})"
    if axes == "YX":
        pass
    elif axes in ("YXS", "SYX") and photometric == "RGB":
        n_samples = shape[axes.index("S")]
        if n_samples not in (3, 4):
            raise UnsupportedImageError(path, f"RGB image with {n_samples} samples per pixel: {described}")
    else:
        raise UnsupportedImageError(
            path, f"only 2-D gray, palette or RGB(A) images are supported, not {described}"
        )

    if photometric == "PALETTE":
        cmap = page.colormap
        if cmap is None or dtype.kind != "u":
            raise UnsupportedImageError(path, "palette image without a usable colour map")
        cmap = np.asarray(cmap, dtype=np.float64)
        cmax = 255.0 if cmap.max() < 256 else 65535.0  # some writers store 8-bit maps
        lut = (_LUMA @ cmap[:3]) / cmax
        n = 2 ** (8 * dtype.itemsize)
        if lut.size < n:  # indices past the map's end: clamp to its last entry
            lut = np.concatenate([lut, np.full(n - lut.size, lut[-1])])
        conv.update(mode="palette", lut=np.clip(lut, 0.0, 1.0).astype(np.float32))
        return conv, axes
    if photometric not in ("MINISBLACK", "MINISWHITE", "RGB"):
        raise UnsupportedImageError(path, f"unsupported photometric interpretation {photometric}")
    conv["invert"] = photometric == "MINISWHITE"
    if dtype.kind == "b":
        conv["mode"] = "bool"
    elif dtype.kind in "ui":
        conv["scale"] = 1.0 / float(np.iinfo(dtype).max)
    elif dtype.kind == "f":
        conv["mode"] = "float"
    else:
        raise UnsupportedImageError(path, f"unsupported sample type {dtype.name}")
    return conv, axes


def _to_dask(z: Any, axes: str) -> da.Array:
    """Wrap the zarr array in dask bands of whole rows, samples last."""
    shape = tuple(int(s) for s in z.shape)
    zchunks = tuple(int(c) for c in z.chunks)
    y = axes.index("Y")
    rows = shape[y]
    row_bytes = int(np.prod([s for i, s in enumerate(shape) if i != y])) * max(4, z.dtype.itemsize)
    target = max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))
    step = zchunks[y]  # RowsPerStrip or tile length: whole stored chunks per band
    band = min(rows, max(step, math.ceil(target / step) * step))
    chunks = tuple(band if i == y else -1 for i in range(len(shape)))
    arr = da.from_zarr(z, chunks=chunks)
    if axes == "SYX":
        arr = arr.transpose(1, 2, 0)
    return arr


def _check_last_rows(path: Path, z: Any, axes: str) -> None:
    """Decode the last stored chunk row, if cheap, to surface decode errors at open."""
    y = axes.index("Y")
    step = int(z.chunks[y])
    nbytes = step * int(np.prod([s for i, s in enumerate(z.shape) if i != y])) * z.dtype.itemsize
    if nbytes > _CHECK_READ_LIMIT:
        return
    index = tuple(slice(-1, None) if i == y else slice(None) for i in range(z.ndim))
    try:
        z[index]
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot decode image data: {_describe(exc)}") from exc


# --------------------------------------------------------------------------
# metadata


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _tag_dict(tif: tifffile.TiffFile, page: tifffile.TiffPage, codes: tuple[int, ...]) -> dict[str, Any]:
    """Merged dict-valued tags ``codes`` of ``page``, else of the first page."""
    for candidate in (page, tif.pages.first):
        result: dict[str, Any] = {}
        for code in codes:
            try:
                value = candidate.tags.valueof(code)
            except Exception:  # a malformed tag must not make the image unreadable
                value = None
            if isinstance(value, dict):
                result.update(value)
        if result:
            return result
    return {}


def _fei_metadata(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> dict[str, Any]:
    return _tag_dict(tif, page, (34680, 34682))  # FEI_SFEG, FEI_HELIOS


def _pixel_size(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> tuple[str | None, float | None, str | None]:
    """Return (vendor, pixel size in metres, source). Metadata problems give None."""
    vendor: str | None = None
    fei = _fei_metadata(tif, page)
    if fei:
        vendor = "FEI"
        scan_meta = fei.get("Scan")
        size = _positive(scan_meta.get("PixelWidth")) if isinstance(scan_meta, dict) else None
        if size is not None:
            return vendor, size, "fei"
    sem = _tag_dict(tif, page, (34118,))  # CZ_SEM
    if sem:
        vendor = vendor or "Zeiss"
        for key in ("ap_image_pixel_size", "ap_pixel_size"):
            size = _zeiss_length(sem.get(key))
            if size is not None:
                return vendor, size, "zeiss"
    for candidate in (page, tif.pages.first):
        size = _semtile_pixel_size(getattr(candidate, "description", ""))
        if size is not None:
            return vendor, size, "semtile"
    return vendor, None, None


def _zeiss_length(entry: Any) -> float | None:
    """Convert a Zeiss ``(name, value, unit)`` entry to metres."""
    if not isinstance(entry, (tuple, list)) or len(entry) < 2:
        return None
    value, unit = entry[-2], entry[-1]
    factor = _UNIT_TO_M.get(str(unit).strip().lower()) if isinstance(unit, str) else None
    v = _positive(value)
    if factor is None or v is None:
        return None
    return v * factor


def _semtile_pixel_size(description: str | None) -> float | None:
    if not description or not description.lstrip().startswith("{"):
        return None
    try:
        meta = json.loads(description)
    except ValueError:
        return None
    return _positive(meta.get("pixel_size_m")) if isinstance(meta, dict) else None


def _fei_databar(meta: dict[str, Any], rows: int) -> int | None:
    """Data-bar height from FEI metadata, or None if it does not say (sensibly)."""
    private = meta.get("PrivateFei")
    height = private.get("DatabarHeight") if isinstance(private, dict) else None
    try:
        if height is not None and 0 <= int(height) < rows:
            return int(height)
    except (TypeError, ValueError):
        pass
    image = meta.get("Image")
    try:
        res_y = int(image["ResolutionY"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    if 0 < res_y < rows:
        return rows - res_y
    return None


# --------------------------------------------------------------------------
# data-bar detection


def detect_databar(
    frame_bottom: np.ndarray,
    *,
    uniform_fraction: float = 0.97,
    tolerance: float = 0.01,
    min_contrast: float = 0.25,
    min_body_fraction: float = 0.5,
    min_rows: int = 3,
) -> int:
    """Find a burned-in data bar at the bottom of a frame.

    A data bar is recognised by its frame line: its top row is uniform across
    the full width (a white line on FEI and semtile's synthetic scans, a
    black border row on Zeiss), the row above it is ordinary image content,
    and the bar below that line is mostly one background level that clearly
    differs from the line (black under FEI's white line, white under Zeiss'
    black row). Requiring that contrast keeps flat or saturated image regions
    from being taken for a bar. The top-most row that qualifies wins, so
    lines and boxes inside the bar do not matter.

    Bars without such a line (plain bars whose first row has the same level
    as their background) are not detected; give their height explicitly.

    Parameters
    ----------
    frame_bottom
        2-D array, the bottom band of a frame (e.g. its bottom quarter):
        floats in [0, 1] or unsigned/signed integers (scaled by their type's
        maximum) or bools.
    uniform_fraction
        Fraction of a row's pixels within ``tolerance`` of its median for the
        row to count as uniform.
    tolerance
        Gray-level tolerance, on the [0, 1] scale.
    min_contrast
        Least difference between the line's level and the bar background's.
    min_body_fraction
        Least fraction of the bar below the line at its background level.
    min_rows
        Least bar height, line included.

    Returns
    -------
    int
        Number of data-bar rows at the bottom of ``frame_bottom`` (0 if none).
    """
    band = np.asarray(frame_bottom)
    if band.ndim != 2:
        raise ValueError(f"detect_databar needs a 2-D array, got shape {band.shape}")
    if band.dtype.kind == "b":
        band = band.astype(np.float32)
    elif band.dtype.kind in "ui":
        band = band.astype(np.float32) / np.float32(np.iinfo(band.dtype).max)
    else:
        band = band.astype(np.float32, copy=False)
    n_rows = band.shape[0]
    if n_rows < min_rows + 1 or band.shape[1] == 0:
        return 0
    band = np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0)

    level = np.median(band, axis=1)
    uniform = np.mean(np.abs(band - level[:, None]) <= tolerance, axis=1) >= uniform_fraction

    # Per-row histograms (256 levels) summed from the bottom: the histogram of
    # rows r+1..end is suffix[r + 1].
    q = np.rint(band * 255).astype(np.intp)
    q += np.arange(n_rows, dtype=np.intp)[:, None] * 256
    hist = np.bincount(q.ravel(), minlength=n_rows * 256).reshape(n_rows, 256)
    suffix = np.cumsum(hist[::-1], axis=0)[::-1]
    bins = np.arange(256)
    tol_bins = max(1, int(round(tolerance * 255)))

    for r in range(1, n_rows - min_rows + 1):
        if not uniform[r]:
            continue
        above_is_content = not uniform[r - 1] or abs(level[r - 1] - level[r]) >= min_contrast
        if not above_is_content:
            continue
        body = suffix[r + 1]
        peak = int(np.argmax(body))
        near = np.abs(bins - peak) <= tol_bins
        body_fraction = body[near].sum() / body.sum()
        if body_fraction >= min_body_fraction and abs(peak / 255 - level[r]) >= min_contrast:
            return n_rows - r
    return 0
