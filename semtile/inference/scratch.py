"""A large scan's normalised copy in scratch, and reading it back so that missing data is an error, never zeros.

Zarr reads a chunk that is not there as the array's fill value. The scratch
array's fill value is NaN and a normalised image is finite everywhere, so
:class:`ScratchImage` raises :class:`ScratchMissingError` on any NaN it reads:
a scratch folder or chunk removed while a scan is processed fails that scan.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from semtile.errors import ImageTooSmallError, SemtileError
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.io.tiff import open_scan

__all__ = ["SCRATCH_BAND_COLS", "SYNCHRONOUS_PREPARE_PIXELS", "ScratchMissingError", "ScratchImage",
           "normalised_copy", "scratch_copy"]

#: Columns of one chunk of the scratch array (its rows are one tile core): a row of
#: tiles is then a read of a few chunks, not of one chunk per tile.
SCRATCH_BAND_COLS = 4096
#: Scans up to this many pixels are prepared without Dask's thread pool.
SYNCHRONOUS_PREPARE_PIXELS = 16 * 2**20


class ScratchMissingError(SemtileError):
    """Scratch data that should be there is not (its folder or a chunk removed while the scan was processed)."""


class ScratchImage:
    """A scan's normalised copy in scratch, read by window: a read that meets a missing chunk raises.

    The scratch array's fill value is NaN and a normalised image is finite
    everywhere, so a NaN read is data that was written and is gone.
    """

    def __init__(self, array: zarr.Array, path: Path):
        self.array, self.path = array, Path(path)
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key) -> np.ndarray:
        try:
            values = np.asarray(self.array[key])
        except Exception as exc:  # a folder removed under zarr: any error, said plainly
            raise ScratchMissingError(f"scratch copy {self.path} cannot be read ({type(exc).__name__}: {exc}); "
                                      "was it removed while the scan was processed?") from exc
        if np.isnan(values).any():
            raise ScratchMissingError(f"scratch copy {self.path} is missing data (a chunk or the folder was removed "
                                      "while the scan was processed); the scan is not stored")
        return values

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[...]
        return values if dtype is None else values.astype(dtype)


def normalised_copy(path: Path, options: ProcessOptions, target: Path, core: int, *, threads: bool | None = None):
    """Open the scan and write its normalised valid area to a new Zarr array at ``target``; (info, array).

    Chunked by tile core: tiles are then cheap rectangular reads whatever the TIFF's own
    strip or tile layout. Uncompressed: it lives only for this run. Its fill value is NaN,
    so a chunk that goes missing reads as NaN (:class:`ScratchImage` raises), never as 0.
    """
    with open_scan(path, page=options.page, databar_rows=options.databar_rows,
                   max_pixels=options.max_pixels) as scan:
        return scratch_copy(scan, path, target, core, threads)


def scratch_copy(scan, path: Path, target: Path, core: int, threads: bool | None = None):
    """The open ``scan``'s normalised valid area into a new Zarr array at ``target`` (NaN fill); (info, array)."""
    info = scan.info
    rows, cols = info.valid_shape
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise ImageTooSmallError(path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
    normalised = zarr.create_array(str(target), shape=(rows, cols), dtype="float32",
                                   chunks=(min(core, rows), min(SCRATCH_BAND_COLS, cols)),
                                   compressors=None, fill_value=np.nan, overwrite=True)
    # Dask blocks aligned with the Zarr chunks: every chunk has exactly one writer.
    # Small scans are written on this thread: the engine already has the cores, and
    # handing a few dozen blocks to a thread pool costs more than it saves.
    small = rows * cols <= SYNCHRONOUS_PREPARE_PIXELS if threads is None else not threads
    da.store(scan.valid().rechunk(normalised.chunks), normalised, lock=False,
             scheduler="synchronous" if small else "threads")
    return info, normalised
