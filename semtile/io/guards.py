"""The checks between a file and its pixels: every failure an image error naming the file.

:func:`check_file` looks at the file before tifffile parses it,
:func:`check_budget` at the page header before anything is decoded, and
:class:`DecodedPage` turns whatever tifffile and its codecs raise on corrupt
data, at open or later inside dask, into an
:class:`~semtile.errors.UnreadableImageError`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from semtile.errors import ImageError, UnreadableImageError

__all__ = [
    "DEFAULT_MAX_PIXELS", "ImageTooLargeError", "DecodedPage",
    "check_file", "check_budget", "check_last_rows", "describe", "truncation",
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


def check_file(path: Path, data: bytes | None = None) -> int:
    """Cheap checks before parsing; returns the file size. ``data``: the file's bytes, already read."""
    if data is not None:
        return _check_head(path, data[:4], len(data))
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
    return _check_head(path, head, st.st_size)


def _check_head(path: Path, head: bytes, size: int) -> int:
    if size == 0:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    if len(head) < 4 and any(magic.startswith(head) for magic in _TIFF_MAGIC):
        raise UnreadableImageError(path, f"truncated: the file has {len(head)} bytes, fewer than a TIFF header")
    if head not in _TIFF_MAGIC:
        raise UnreadableImageError(
            path, f"not a TIFF file: it starts with {head!r}, not a TIFF header (b'II*\\x00' or b'MM\\x00*')"
        )
    return size


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


#: Bytes per value of the TIFF field types (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., LONG8, SLONG8, IFD8).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def truncation(path: Path, size: int) -> str | None:
    """Why the file at ``path`` (``size`` bytes) looks cut short, or None: the first IFD, its entries or
    a tag value it points to lying past the end of the file. Used to name the cause when tifffile fails."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(min(size, 2**24))
    except OSError:
        return None
    if len(data) < 8:
        return f"truncated: the file has {size} bytes, fewer than a TIFF header"
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    if big and len(data) < 16:
        return f"truncated: the file has {size} bytes, fewer than a BigTIFF header"
    ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count_size, entry_size, inline = (8, 20, 8) if big else (2, 12, 4)
    if ifd + count_size > size:
        return f"truncated: the first image directory starts at byte {ifd} but the file has {size} bytes"
    if ifd + count_size > len(data):
        return None
    entries = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)[0]
    end = ifd + count_size + entries * entry_size
    if end > size:
        return f"truncated: the image directory ends at byte {end} but the file has {size} bytes"
    for i in range(entries):
        pos = ifd + count_size + i * entry_size
        if pos + entry_size > len(data):
            return None
        kind = struct.unpack_from(order + "H", data, pos + 2)[0]
        count = struct.unpack_from(order + ("Q" if big else "I"), data, pos + 4)[0]
        nbytes = _TYPE_SIZES.get(kind, 0) * count
        if nbytes > inline:
            offset = struct.unpack_from(order + ("Q" if big else "I"), data, pos + (12 if big else 8))[0]
            if offset + nbytes > size and offset < 2 * size:  # past the end, not a nonsense offset
                return f"truncated: a tag value ends at byte {offset + nbytes} but the file has {size} bytes"
    return None
