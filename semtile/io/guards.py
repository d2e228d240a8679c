"""The checks between a file and its pixels: every failure an image error naming the file.

:func:`check_file` looks at the file before tifffile parses it,
:func:`check_budget` at the page header before anything is decoded, and
:class:`DecodedPage` turns whatever tifffile and its codecs raise on corrupt
data, at open or later inside dask, into an
:class:`~semtile.errors.UnreadableImageError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semtile.errors import ImageError, UnreadableImageError

__all__ = [
    "DEFAULT_MAX_PIXELS", "ImageTooLargeError", "DecodedPage",
    "check_file", "check_budget", "check_last_rows", "describe",
]

#: Pixels a page header may claim (rows x columns) before the file is refused.
#: semtile streams every scan in bands and tiles, so its memory does not grow
#: with the image and big montages need no budget. This one guards against
#: nonsense or hostile headers (a 1 MB file claiming 100000 x 100000 pixels, a
#: decompression bomb) that would otherwise keep a run busy for hours or fill
#: its scratch disk. 2**32 pixels is a 65536 x 65536 frame (16 GiB of float32
#: scratch): far above any SEM frame or stitched montage, and more 8-bit
#: pixels than a classic TIFF, with its 32-bit offsets, can hold at all.
DEFAULT_MAX_PIXELS = 2**32

#: The last chunk row is decoded at open (to surface decode errors early)
#: only when it is at most this many bytes.
CHECK_READ_LIMIT = 64 * 2**20

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageTooLargeError(ImageError):
    """The page header claims more pixels than the budget (``max_pixels``)."""


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of an exception, for a reason."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_file(path: Path) -> int:
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


def check_budget(path: Path, rows: int, cols: int, depth: int, max_pixels: int) -> None:
    """Refuse a page whose header claims more than ``max_pixels`` pixels, or none."""
    pixels = rows * cols * max(depth, 1)
    claimed = f"{rows}x{cols}" + (f"x{depth}" if depth > 1 else "")
    if pixels <= 0:
        raise UnreadableImageError(path, f"header claims an empty image of {claimed} pixels")
    if pixels > max_pixels:
        raise ImageTooLargeError(
            path, f"header claims {claimed} = {_count(pixels)}, over the budget of {_count(max_pixels)} (--max-pixels)"
        )


def _count(pixels: int) -> str:
    for unit, name in ((10**9, "gigapixels"), (10**6, "megapixels")):
        if pixels >= unit:
            return f"{pixels / unit:.1f} {name}"
    return f"{pixels} pixels"


class DecodedPage:
    """A page's Zarr array whose decoding errors are image errors naming the file."""

    def __init__(self, z: Any, path: Path):
        self._z, self.path = z, path
        self.shape, self.dtype, self.ndim, self.chunks = z.shape, z.dtype, z.ndim, z.chunks

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self._z[index])
        except ImageError:
            raise
        except Exception as exc:  # tifffile, zarr and the codecs raise many kinds
            raise UnreadableImageError(self.path, f"cannot decode image data: {describe(exc)}") from exc


def check_last_rows(z: DecodedPage, axes: str) -> None:
    """Decode the last stored chunk row, if cheap, to surface decode errors at open."""
    y = axes.index("Y")
    step = int(z.chunks[y])
    nbytes = step * int(np.prod([s for i, s in enumerate(z.shape) if i != y])) * z.dtype.itemsize
    if nbytes > CHECK_READ_LIMIT:
        return
    z[tuple(slice(-1, None) if i == y else slice(None) for i in range(z.ndim))]
