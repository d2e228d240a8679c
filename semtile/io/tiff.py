"""Open SEM scans (TIFF files) lazily, as gray images in [0, 1].

PNG and JPEG files (told by their first bytes) are handed to
:mod:`semtile.io.png`, which returns the same :class:`~semtile.io.scan.Scan`
(defined in :mod:`semtile.io.scan`, re-exported here).

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
import io
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from semtile.errors import ImageError, ImageTooSmallError, SemtileError, UnreadableImageError, UnsupportedImageError
from semtile.io.gray import choose_conversion, to_dask
from semtile.io.guards import (
    DEFAULT_MAX_PIXELS,
    DecodedPage,
    ImageTooLargeError,
    check_budget,
    check_file,
    check_last_rows,
    describe,
    truncation,
)
from semtile.io.png import open_png_scan, sniff_format
from semtile.io.scan import Scan, ScanInfo, detect_scan_databar
from semtile.io.vendor import fei_databar, fei_metadata, read_pixel_size
from semtile.logs import get_logger

__all__ = ["DEFAULT_MAX_PIXELS", "ImageTooLargeError", "ScanInfo", "Scan", "open_scan", "scan_pixels"]

log = get_logger("semtile.io")

#: (file, page) pairs whose page choice this process has logged: a scan opened again (a region, a retry) is not
#: logged again.
_PAGE_LOGGED: set[tuple[str, int]] = set()


def _log_page_choice(path: Path, page: int, n_pages: int) -> None:
    """Say once per scan which page of a multi-page TIFF is used: ``2 pages, using page 0 (--page)``."""
    key = (str(path.resolve()), page)
    if n_pages > 1 and key not in _PAGE_LOGGED:
        _PAGE_LOGGED.add(key)
        log.info(f"{n_pages} pages, using page {page} (--page)", file=str(path), pages=n_pages, page=page)

# --------------------------------------------------------------------------
# opening


def open_scan(
    path: str | Path, *, page: int = 0, databar_rows: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    data: bytes | None = None, decode_limit: int | None = None,
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
    data
        The file's bytes, already read (:func:`semtile.io.source.read_source`):
        the scan is parsed and its page decoded whole from them, once, and
        ``path`` only names it. None: read lazily from ``path``.
    decode_limit
        With ``data``: the page is decoded whole (``Scan.decoded``) only when
        its frame has at most this many pixels, else it is read lazily from
        ``path`` (None: no limit).

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
    if sniff_format(path, data) is not None:  # a PNG or JPEG, whatever its name: the same Scan, read with Pillow
        return open_png_scan(path, page=page, databar_rows=databar_rows, max_pixels=int(max_pixels), data=data)
    size = check_file(path, data)
    try:
        tif = tifffile.TiffFile(path if data is None else io.BytesIO(data), name=path.name)
    except Exception as exc:  # tifffile raises many kinds
        raise UnreadableImageError(path, truncation(path, size) or f"cannot parse TIFF: {describe(exc)}") from exc
    try:
        return _open(tif, path, size, page, databar_rows, int(max_pixels), in_memory=data is not None,
                     decode_limit=decode_limit)
    except _NotInMemory:  # too many pixels to decode whole: read lazily from the file instead
        tif.close()
        return open_scan(path, page=page, databar_rows=databar_rows, max_pixels=max_pixels)
    except BaseException:
        tif.close()
        raise


class _NotInMemory(Exception):
    """The page has more pixels than ``decode_limit``: it is read lazily from its file."""


def _open(
    tif: tifffile.TiffFile, path: Path, size: int, page_index: int, databar_rows: int | None, max_pixels: int,
    in_memory: bool = False, decode_limit: int | None = None,
) -> Scan:
    try:
        n_pages = len(tif.pages)
    except Exception as exc:
        raise UnreadableImageError(path, truncation(path, size) or f"cannot read the page list: {describe(exc)}") from exc
    if n_pages == 0:
        raise UnreadableImageError(path, truncation(path, size) or "the TIFF has no image pages")
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
        cut = truncation(path, size)
        raise UnreadableImageError(path, cut or f"cannot read page {page_index}: {describe(exc)}") from exc

    # truncated files: every strip/tile must lie inside the file
    if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in offsets + counts):
        raise UnreadableImageError(path, truncation(path, size)
                                   or f"page {page_index} has malformed strip or tile offsets or byte counts")
    if not offsets or not any(counts):
        raise UnreadableImageError(path, truncation(path, size) or f"page {page_index} has no image data")
    data_end = max((o + c for o, c in zip(offsets, counts) if c), default=0)
    if data_end > size:
        raise UnreadableImageError(
            path, f"truncated: image data ends at byte {data_end} but the file has {size} bytes"
        )
    if dtype is None:
        raise UnsupportedImageError(path, f"unsupported sample format on page {page_index}")
    _log_page_choice(path, int(page_index), n_pages)

    convert, raw_axes = choose_conversion(path, page, axes, shape, photometric, dtype)

    decoded = None
    frame_pixels = int(np.prod([shape[i] for i, a in enumerate(axes) if a in "YX"]))
    if in_memory and decode_limit is not None and frame_pixels > decode_limit:
        raise _NotInMemory
    if in_memory:  # the bytes are in memory: decode the page whole, once
        decoded = _decode_page(page, path, size, raw_axes)
        raw = da.from_array(decoded, chunks=decoded.shape, name=f"semtile-page-{uuid.uuid4().hex}",
                            meta=np.empty((0,) * decoded.ndim, dtype=decoded.dtype))
    else:  # lazy pixels
        try:
            store = tif.aszarr(key=int(page_index))
            z = DecodedPage(zarr.open(store, mode="r"), path)
            if min(z.chunks, default=0) < 1 or z.ndim != len(raw_axes):
                raise ValueError(f"stored chunks {z.chunks} of an array of shape {z.shape}")
            raw = to_dask(z, raw_axes)
        except Exception as exc:
            raise UnreadableImageError(path, f"cannot open image data: {describe(exc)}") from exc
        check_last_rows(z, raw_axes)
    rows, cols = int(raw.shape[0]), int(raw.shape[1])

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
    scan.decoded = decoded

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
            bar, source = detect_scan_databar(scan, path, rows), "detected"
    scan.info = dataclasses.replace(scan.info, databar_rows=bar, databar_source=source)
    return scan


def _decode_page(page: tifffile.TiffPage, path: Path, size: int, axes: str) -> np.ndarray:
    """The page's samples decoded whole from memory, samples last; decoding errors name the file."""
    try:
        decoded = np.asarray(page.asarray())
        if decoded.ndim != len(axes):
            raise ValueError(f"decoded shape {decoded.shape} does not match axes {axes!r}")
    except Exception as exc:  # tifffile and the codecs raise many kinds
        raise UnreadableImageError(path, truncation(path, size) or f"cannot decode image data: {describe(exc)}"
                                   ) from exc
    return decoded.transpose(1, 2, 0) if axes == "SYX" else decoded


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
