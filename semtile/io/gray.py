"""From a TIFF page's stored samples to lazy float32 gray in [0, 1].

:func:`choose_conversion` decides, once per page, how samples become gray
(integer scaling, palette lookup, RGB luminance, inversion); :func:`gray_block`
applies that to one dask block; :func:`to_dask` wraps the page's Zarr array in
bands of whole rows. :mod:`semtile.io.tiff` puts the three together.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from semtile.errors import UnsupportedImageError

__all__ = ["LUMA", "TARGET_CHUNK_BYTES", "choose_conversion", "gray_block", "to_dask"]

#: Decoded bytes aimed at per dask chunk (a band of whole rows).
TARGET_CHUNK_BYTES = 8 * 2**20

#: Rec. 601 luma weights, used for RGB and palette images.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def choose_conversion(
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
        if dtype.kind != "u" or dtype.itemsize > 2:
            raise UnsupportedImageError(
                path, f"palette image with {dtype.name} indices: only unsigned integers of 8 or 16 bits are supported"
            )
        try:
            with np.errstate(all="ignore"):  # a map of a malformed type: NaN and infinities become 0
                cmap = None if cmap is None else np.nan_to_num(np.asarray(cmap, np.float64), posinf=0.0, neginf=0.0)
        except (TypeError, ValueError):  # text, say
            cmap = None
        if cmap is None or cmap.ndim != 2 or cmap.shape[0] < 3 or cmap.shape[1] == 0:
            raise UnsupportedImageError(path, "palette image without a usable colour map")
        cmax = 255.0 if cmap.max() < 256 else 65535.0  # some writers store 8-bit maps
        lut = (LUMA @ cmap[:3]) / cmax
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


def to_dask(z: Any, axes: str) -> da.Array:
    """Wrap the page (a :class:`~semtile.io.guards.DecodedPage`) in dask bands of whole rows, samples last."""
    shape = tuple(int(s) for s in z.shape)
    zchunks = tuple(int(c) for c in z.chunks)
    y = axes.index("Y")
    rows = shape[y]
    row_bytes = int(np.prod([s for i, s in enumerate(shape) if i != y])) * max(4, z.dtype.itemsize)
    target = max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))
    step = zchunks[y]  # RowsPerStrip or tile length: whole stored chunks per band
    band = min(rows, max(step, math.ceil(target / step) * step))
    chunks = tuple(band if i == y else -1 for i in range(len(shape)))
    arr = da.from_array(z, chunks=chunks, name=f"semtile-page-{uuid.uuid4().hex}", lock=False,
                        asarray=True, fancy=False, meta=np.empty((0,) * len(shape), dtype=z.dtype))
    if axes == "SYX":
        arr = arr.transpose(1, 2, 0)
    return arr


def gray_block(
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
    x = block
    if x.ndim == 3:  # samples last: RGB(A), of any sample type
        x = x[..., :3].astype(np.float64) @ LUMA
    if mode == "bool":
        out = x.astype(np.float32)
    else:
        x = x.astype(np.float32)
        if mode == "float":
            x = np.where(np.isfinite(x), x, np.float32(offset))
        out = (x - np.float32(offset)) * np.float32(scale)
        np.clip(out, 0.0, 1.0, out=out)
    if invert:
        out = 1.0 - out
    return out.astype(np.float32, copy=False)
