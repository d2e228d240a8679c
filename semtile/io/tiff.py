"""Open SEM scans (TIFF files) lazily, as gray images in [0, 1].

PNG and JPEG files (told by their first bytes) are handed to
:mod:`semtile.io.png`, which returns the same :class:`Scan`.

A scan is never read whole into memory. The chosen page is opened through
tifffile's Zarr store and wrapped in a :mod:`dask` array cut into bands of
whole rows (:mod:`semtile.io.gray`), so callers compute only the rows they
need.

Besides the pixels, opening a scan reads what the file tells about itself:
the pixel size (:mod:`semtile.io.vendor`) and the height of the burned-in
data bar at the bottom of the frame, from the caller, from the FEI metadata,
or detected in the pixels (:func:`semtile.io.databar.detect_databar`).

Every problem with one file raises an :class:`~semtile.errors.ImageError`
whose message names the file and the reason, at open or whenever the pixels
are computed. A page whose header claims more pixels than a budget is refused
from the header alone, before anything is decoded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from semtile.errors import ImageError, ImageTooSmallError, SemtileError, UnreadableImageError, UnsupportedImageError
from semtile.io.databar import DATABAR_SEARCH_FRACTION, detect_databar_blocks
from semtile.io.gray import LUMA, choose_conversion, gray_block, to_dask
from semtile.io.guards import (
    DEFAULT_MAX_PIXELS, DecodedPage, ImageTooLargeError, check_budget, check_file, check_last_rows, describe,
)
from semtile.io.vendor import fei_databar, fei_metadata, read_pixel_size

__all__ = ["DEFAULT_MAX_PIXELS", "ImageTooLargeError", "ScanInfo", "Scan", "open_scan", "scan_pixels"]

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
            gray_block,
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
                x = x[..., :3] @ LUMA
            x = da.where(da.isfinite(x), x, np.nan)
            lo, hi = da.compute(da.nanmin(x), da.nanmax(x), scheduler="threads")  # holds a file handle: local only
            lo, hi = float(lo), float(hi)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                lo, hi = 0.0, 1.0  # no finite value at all
            self._float_range = (lo, hi)
        return self._float_range


# --------------------------------------------------------------------------
# opening


def open_scan(
    path: str | Path, *, page: int = 0, databar_rows: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Scan:
    """Open one page of a TIFF scan lazily (a PNG or JPEG: see :func:`semtile.io.png.open_png_scan`).

    Parameters
    ----------
    path
        The TIFF file (or a PNG or JPEG, told by its first bytes).
    page
        Index of the page to use (default the first).
    databar_rows
        Height of the data bar in rows, overriding metadata and detection.
        Use 0 for a scan without a bar.
    max_pixels
        Most pixels (rows x columns) the page header may claim; a larger page
        is refused from its header alone. None means :data:`DEFAULT_MAX_PIXELS`.

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
    ImageTooLargeError
        If the page header claims more than ``max_pixels`` pixels.
    ImageTooSmallError
        If ``databar_rows`` leaves no image rows.
    SemtileError
        If ``databar_rows`` is not a non-negative integer or ``max_pixels``
        not a positive one.
    """
    path = Path(path)
    if max_pixels is None:
        max_pixels = DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise SemtileError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if databar_rows is not None and (
        isinstance(databar_rows, bool) or not isinstance(databar_rows, (int, np.integer)) or databar_rows < 0
    ):
        raise SemtileError(f"databar_rows must be a non-negative integer, got {databar_rows!r}")
    from semtile.io.png import open_png_scan, sniff_format

    if sniff_format(path) is not None:  # a PNG or JPEG, whatever its name: the same Scan, read with Pillow
        return open_png_scan(path, page=page, databar_rows=databar_rows, max_pixels=int(max_pixels))
    size = check_file(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many kinds
        raise UnreadableImageError(path, f"cannot parse TIFF: {describe(exc)}") from exc
    try:
        return _open(tif, path, size, page, databar_rows, int(max_pixels))
    except BaseException:
        tif.close()
        raise


def _open(
    tif: tifffile.TiffFile, path: Path, size: int, page_index: int, databar_rows: int | None, max_pixels: int
) -> Scan:
    try:
        n_pages = len(tif.pages)
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot read the page list: {describe(exc)}") from exc
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
        # from the header alone, before anything else looks at the page
        check_budget(path, int(page.imagelength), int(page.imagewidth), int(page.imagedepth), max_pixels)
        axes = page.axes
        shape = tuple(int(s) for s in page.shape)
        photometric = tifffile.PHOTOMETRIC(page.photometric).name
        dtype = np.dtype(page.dtype) if page.dtype is not None else None
        offsets = tuple(page.dataoffsets)
        counts = tuple(page.databytecounts)
    except ImageError:
        raise
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot read page {page_index}: {describe(exc)}") from exc

    # truncated files: every strip/tile must lie inside the file
    if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in offsets + counts):
        raise UnreadableImageError(path, f"page {page_index} has malformed strip or tile offsets or byte counts")
    if not offsets or not any(counts):
        raise UnreadableImageError(path, f"page {page_index} has no image data")
    data_end = max((o + c for o, c in zip(offsets, counts) if c), default=0)
    if data_end > size:
        raise UnreadableImageError(
            path, f"truncated: image data ends at byte {data_end} but the file has {size} bytes"
        )
    if dtype is None:
        raise UnsupportedImageError(path, f"unsupported sample format on page {page_index}")

    convert, raw_axes = choose_conversion(path, page, axes, shape, photometric, dtype)

    # lazy pixels
    try:
        store = tif.aszarr(key=int(page_index))
        z = DecodedPage(zarr.open(store, mode="r"), path)
        if min(z.chunks, default=0) < 1 or z.ndim != len(raw_axes):
            raise ValueError(f"stored chunks {z.chunks} of an array of shape {z.shape}")
        raw = to_dask(z, raw_axes)
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot open image data: {describe(exc)}") from exc
    rows, cols = int(raw.shape[0]), int(raw.shape[1])

    check_last_rows(z, raw_axes)

    vendor, pixel_size, pixel_source = read_pixel_size(tif, page)
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
    else:  # metadata first: it is exact, and cheaper than decoding the bottom band
        fei_bar = fei_databar(fei_metadata(tif, page), rows) if vendor == "FEI" else None
        if fei_bar is not None:
            bar, source = fei_bar, "fei"
        else:
            bar, source = _detect_databar(scan, path, rows), "detected"
    scan.info = dataclasses.replace(scan.info, databar_rows=bar, databar_source=source)
    return scan


def _detect_databar(scan: Scan, path: Path, rows: int) -> int:
    """Search the bottom band for a data bar, one decoded block at a time, bottom block first."""
    band_rows = min(rows, max(8, math.ceil(rows * DATABAR_SEARCH_FRACTION)))
    try:
        band = scan.gray()[rows - band_rows :]
        blocks = (band.blocks[i].compute(scheduler="synchronous") for i in reversed(range(band.numblocks[0])))
        return detect_databar_blocks(blocks, band_rows)
    except ImageError:
        raise
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot decode image data: {describe(exc)}") from exc


def scan_pixels(path: str | Path, page: int = 0) -> int:
    """Pixels of a TIFF scan's frame from its header alone; 0 when it cannot be read (its runner says why).

    The frame bounds the valid area (the data bar only removes rows); a header
    read keeps the choice of merger off the hot path of runs of many small scans.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[page].shape
        return int(shape[0]) * int(shape[1])
    except Exception:  # noqa: BLE001 - the runner that processes it reports the reason
        return 0
