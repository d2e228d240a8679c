"""An opened scan, whatever its format: :class:`ScanInfo` (what the file tells) and :class:`Scan` (lazy pixels).

:mod:`semtile.io.tiff` makes them from TIFF files, :mod:`semtile.io.png` from
PNG and JPEG files; both detect the data bar in the pixels with
:func:`detect_scan_databar`. The pixels are a :mod:`dask` array cut into
bands of whole rows (:mod:`semtile.io.gray`), so callers compute only the
rows they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from semtile.errors import ImageError, UnreadableImageError
from semtile.io.databar import DATABAR_SEARCH_FRACTION, detect_databar_blocks
from semtile.io.gray import LUMA, gray_block
from semtile.io.guards import describe

__all__ = ["ScanInfo", "Scan", "detect_scan_databar"]

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
        #: The page's samples decoded whole (samples last), when the scan was read into memory; else None.
        self.decoded: np.ndarray | None = None

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

    def valid_into(self, out: np.ndarray) -> np.ndarray:
        """The valid area's gray values written into ``out`` (float32, ``info.valid_shape``); returns ``out``.

        A scan decoded into memory is converted in place, without dask; the
        values are exactly those of :meth:`valid`.
        """
        rows = self.info.valid_shape[0]
        conv = self._convert
        if self.decoded is not None and self.decoded.ndim == 2 and conv["mode"] == "int" and not conv["invert"] \
                and conv["offset"] == 0.0 and self.decoded.dtype.kind == "u":
            # gray_block's arithmetic (x * scale in float32; unsigned: no offset), with no temporaries
            np.multiply(self.decoded[:rows], np.float32(conv["scale"]), out=out, dtype=np.float32)
            np.clip(out, 0.0, 1.0, out=out)
        elif self.decoded is not None and conv["mode"] != "float":
            out[...] = gray_block(self.decoded[:rows], **conv)
        else:
            out[...] = self.valid().compute(scheduler="synchronous")
        return out

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
# the data bar, in the pixels


def _plain_gray8(band: np.ndarray, convert: dict) -> bool:
    """Whether ``band`` is 8-bit gray whose conversion is only ``x / 255`` (no palette, offset or inversion)."""
    return (band.dtype == np.uint8 and band.ndim == 2 and convert["mode"] == "int" and convert["lut"] is None
            and convert["offset"] == 0 and not convert["invert"] and convert["scale"] == 1 / 255)


def detect_scan_databar(scan: Scan, path: Path, rows: int) -> int:
    """Search the bottom band for a data bar, one decoded block at a time, bottom block first."""
    band_rows = min(rows, max(8, math.ceil(rows * DATABAR_SEARCH_FRACTION)))
    try:
        if scan.decoded is not None and scan._convert["mode"] != "float":  # in memory: one block, no dask
            band = scan.decoded[rows - band_rows: rows]
            if _plain_gray8(band, scan._convert):  # its gray is x / 255: the search takes the samples themselves
                return detect_databar_blocks(iter([band]), band_rows)
            return detect_databar_blocks(iter([gray_block(band, **scan._convert)]), band_rows)
        band = scan.gray()[rows - band_rows :]
        blocks = (band.blocks[i].compute(scheduler="synchronous") for i in reversed(range(band.numblocks[0])))
        return detect_databar_blocks(blocks, band_rows)
    except ImageError:
        raise
    except Exception as exc:
        raise UnreadableImageError(path, f"cannot decode image data: {describe(exc)}") from exc
