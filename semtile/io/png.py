"""PNG and JPEG scans (and masks), read with Pillow into the same :class:`~semtile.io.scan.Scan` as TIFFs.

:func:`semtile.io.tiff.open_scan` hands a file here when its first bytes are
a PNG or JPEG signature (whatever its name), so ``semtile process``,
training and evaluation read PNG/JPEG images the way they read TIFFs: gray
float32 in [0, 1] (8-bit by 255, 16-bit by 65535; RGB(A) and palette images
by the Rec. 601 luminance, alpha ignored; gray + alpha (``LA``) by its gray
channel), the data bar detected in the pixels or given, no pixel size (PNG's
``pHYs`` dots per inch say nothing about an SEM's pixel).

Unlike TIFFs, these formats have no random access to rows: the image is
decoded whole when it is opened, after its header has been checked against
the pixel budget (``max_pixels``; Pillow's own decompression-bomb limit is
replaced by semtile's). Every problem raises an
:class:`~semtile.errors.ImageError` naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import warnings
from pathlib import Path

import dask.array as da
import numpy as np

from semtile.errors import ImageError, ImageTooSmallError, UnreadableImageError, UnsupportedImageError
from semtile.io.gray import TARGET_CHUNK_BYTES
from semtile.io.guards import DEFAULT_MAX_PIXELS, check_budget, describe
from semtile.io.scan import Scan, ScanInfo, detect_scan_databar

__all__ = ["PNG_MAGIC", "JPEG_MAGIC", "IMAGE_SUFFIXES", "ArrayScan", "sniff_format", "open_png_scan", "read_image",
           "read_mask"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
#: Suffixes of the formats read here (folders are searched for them as well as for TIFFs).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

_PIL_LIMIT = threading.Lock()  # Pillow's bomb limit is a module global: changed under a lock


def sniff_format(path: str | Path, data: bytes | None = None) -> str | None:
    """``"png"`` or ``"jpeg"`` from the file's first bytes (``data``: the file already read); None otherwise (or
    when it cannot be read)."""
    if data is not None:
        head = data[:8]
    else:
        try:
            with open(path, "rb") as handle:
                head = handle.read(8)
        except OSError:
            return None
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


def _open_pil(path: Path, data: bytes | None = None):
    """Pillow's lazy image (header only), Pillow's own size limit off: semtile's budget applies instead."""
    from PIL import Image

    with _PIL_LIMIT:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(path if data is None else io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _decode(path: Path, max_pixels: int, data: bytes | None = None) -> tuple[np.ndarray, str, str]:
    """The stored samples (rows, cols) or (rows, cols, S), Pillow's mode and the format; errors name the file."""
    try:
        img = _open_pil(path, data)
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except IsADirectoryError:
        raise UnreadableImageError(path, "is a folder, not a file") from None
    except Exception as exc:  # Pillow raises many kinds for a bad header
        raise UnreadableImageError(path, f"cannot parse PNG/JPEG: {describe(exc)}") from exc
    with img:
        fmt = (img.format or "?").upper()
        cols, rows = img.size
        check_budget(path, int(rows), int(cols), 1, max_pixels)  # from the header, before decoding
        mode = img.mode
        try:
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La"):
                img = img.convert("RGBA" if mode in ("PA",) else "RGB")
            elif mode == "LA":
                img = img.getchannel("L")
            elif mode not in ("1", "L", "I;16", "I;16B", "I;16L", "I", "F", "RGB", "RGBA"):
                raise UnsupportedImageError(path, f"unsupported {fmt} pixel mode {mode!r}")
            data = np.asarray(img)
        except ImageError:
            raise
        except Exception as exc:  # truncated or corrupt data
            raise UnreadableImageError(path, f"cannot decode {fmt} image data: {describe(exc)}") from exc
    if data.ndim not in (2, 3) or data.shape[0] != rows or data.shape[1] != cols:
        raise UnreadableImageError(path, f"decoded array of shape {data.shape} does not match the header's {rows}x{cols}")
    return data, mode, fmt


def _conversion(path: Path, data: np.ndarray, mode: str) -> tuple[np.ndarray, dict]:
    """How the samples become gray (the same parameters :func:`semtile.io.gray.gray_block` takes)."""
    conv = {"mode": "int", "scale": 1.0, "lut": None, "offset": 0.0, "invert": False}
    if data.dtype == np.bool_:
        conv["mode"] = "bool"
    elif mode == "I" or data.dtype == np.int32:
        # 16-bit PNGs open as "I" in some Pillow versions: scaled like uint16
        if data.size and (int(data.min()) < 0 or int(data.max()) > 65535):
            conv.update(mode="float")
            data = data.astype(np.float32)
        else:
            data = data.astype(np.uint16)
            conv["scale"] = 1.0 / 65535.0
    elif data.dtype.kind == "u":
        conv["scale"] = 1.0 / float(np.iinfo(data.dtype).max)
    elif data.dtype.kind == "f":
        conv["mode"] = "float"
    else:
        raise UnsupportedImageError(path, f"unsupported sample type {data.dtype}")
    if data.ndim == 3 and data.shape[-1] not in (3, 4):
        raise UnsupportedImageError(path, f"image with {data.shape[-1]} samples per pixel")
    return data, conv


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The stored samples of a PNG/JPEG: (rows, cols) or (rows, cols, 3|4); palette images as RGB, ``LA`` as gray."""
    return _decode(Path(path), int(max_pixels))[0]


def read_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A PNG/JPEG mask as a 2-D array: gray as stored, colour as its largest channel (non-zero where any is)."""
    data = read_image(path, max_pixels)
    if data.ndim == 3:
        data = data[..., :3].max(axis=-1)
    return data


def open_png_scan(path: str | Path, *, page: int = 0, databar_rows: int | None = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, data: bytes | None = None):
    """Open a PNG or JPEG as a :class:`~semtile.io.scan.Scan` (what :func:`semtile.io.tiff.open_scan` returns).

    ``page`` must be 0 (the first frame of an animated PNG). ``databar_rows``:
    as for TIFFs (None: detected in the pixels; 0: no bar). The pixels are
    decoded at open and kept in memory until :meth:`Scan.close`; ``data``: the file's bytes, already read.
    """
    path = Path(path)
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if page != 0:
        raise UnsupportedImageError(path, f"page {page} requested but a PNG/JPEG has one page (0)")
    data, mode, fmt = _decode(path, max_pixels, data)
    data, convert = _conversion(path, data, mode)
    rows, cols = int(data.shape[0]), int(data.shape[1])
    row_bytes = max(1, cols * (data.shape[2] if data.ndim == 3 else 1) * max(4, data.dtype.itemsize))
    band = int(min(rows, max(1, TARGET_CHUNK_BYTES // row_bytes)))
    raw = da.from_array(data, chunks=(band, -1) + ((-1,) if data.ndim == 3 else ()))
    info = ScanInfo(path=path, frame_shape=(rows, cols), dtype=data.dtype.name,
                    photometric="PALETTE" if mode in ("P", "PA") else ("RGB" if data.ndim == 3 else "MINISBLACK"),
                    page=0, n_pages=1, pixel_size_m=None, pixel_size_source=None, vendor=None,
                    databar_rows=0, databar_source="none")
    scan = ArrayScan(raw, info, convert, fmt)
    scan.decoded = data
    if databar_rows is not None:
        if databar_rows >= rows:
            raise ImageTooSmallError(path, f"databar_rows={databar_rows} leaves no image rows: the frame has {rows} rows")
        bar, source = int(databar_rows), "option"
    else:
        bar, source = detect_scan_databar(scan, path, rows), "detected"
    scan.info = dataclasses.replace(scan.info, databar_rows=bar, databar_source=source)
    return scan


class ArrayScan(Scan):
    """A scan whose samples were decoded whole (PNG, JPEG): no file stays open."""

    def __init__(self, raw: da.Array, info: ScanInfo, convert: dict, fmt: str):
        super().__init__(None, raw, info, convert)  # type: ignore[arg-type]
        self.format = fmt

    def close(self) -> None:
        """Nothing is open: the decoded pixels go with the object."""

    def __repr__(self) -> str:
        i = self.info
        return (f"Scan({str(i.path)!r}, {self.format}, frame={i.frame_shape}, dtype={i.dtype}, "
                f"databar_rows={i.databar_rows})")
