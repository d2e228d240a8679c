"""How result arrays are stored: their dtypes, how to decode them, and the codec chain of every array.

The probability mask is stored as ``uint8`` by default: ``round(p * 255)``,
clipped to [0, 255] (NaN as 0), read back as ``stored / 255``
(:func:`encode_probability_u8`, :func:`decode_probability`; the GPU path
produces the same bytes). ``float16`` and ``float32`` are kept on request
(``--mask-dtype``). The image is stored no wider than the input: ``uint8``
(``round(v * 255)``) for 8-bit scans, else ``uint16`` (``round(v * 65535)``).
What was chosen is written into every result's attributes
(``semtile.storage``: dtype and scale of each array, codec, level, chunk and
shard shapes), so readers decode any store, old or new.

Every array's codec chain: bytes, zstd (:data:`ZSTD_LEVEL`), crc32c, so that a
damaged chunk fails its read instead of returning wrong numbers; inside zarr v3
shards (one shard per array up to :data:`SHARD_SIDE` pixels a side), whose
index carries crc32c too. The numbers behind the choices are in
``benchmarks/store_write.py`` and docs/formats.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

from semtile.kernels.quantise import quantise_unit

__all__ = ["MASK_DTYPES", "DEFAULT_MASK_DTYPE", "PROBABILITY_SCALE", "ZSTD_LEVEL", "CHUNK", "SHARD_SIDE",
           "encode_probability_u8", "encode_mask", "decode_probability", "mask_scale", "image_storage",
           "quantise_image", "array_layout", "storage_facts", "stored_scale", "check_mask_dtype"]

MASK_DTYPES = ("uint8", "float16", "float32")
DEFAULT_MASK_DTYPE = "uint8"
#: A stored uint8 probability ``q`` is ``q / PROBABILITY_SCALE``.
PROBABILITY_SCALE = 255
#: zstd level of every array, by measurement (docs/benchmarks.md, "Host pipeline"): on real stores level 3 saves
#: at most 3% against level 1 (on the README demo it is 1% larger) at half the speed (benchmarks/store_write.py).
ZSTD_LEVEL = 1
CHUNK = 512  # inner chunk side: what a viewer or a partial read fetches
SHARD_SIDE = 4096  # results written whole: one shard per array up to this side (a 16 MP scan is one file)
_BAND = 1024


def encode_probability_u8(p: np.ndarray) -> np.ndarray:
    """``round(p * 255)`` clipped to [0, 255] as uint8 (NaN as 0): the stored probability. uint8 input is kept."""
    p = np.asarray(p)
    if p.dtype == np.uint8:
        return p
    out = np.empty(p.shape, np.uint8)
    rows = p.shape[0] if p.ndim else 1
    for r in range(0, rows, _BAND):  # in bands of rows: no full-size float temporaries
        part = p[r: r + _BAND] if p.ndim else p
        _quantise_band(np.array(part, dtype=np.float32, ndmin=0), PROBABILITY_SCALE, out[r: r + _BAND] if p.ndim else out)
    return out


def check_mask_dtype(dtype: Any) -> str:
    """``dtype`` as one of :data:`MASK_DTYPES` (a ValueError naming the choices otherwise)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in MASK_DTYPES:
        raise ValueError(f"mask dtype {dtype!r}: expected one of {', '.join(MASK_DTYPES)}")
    return name


def encode_mask(p: np.ndarray, dtype: str) -> np.ndarray:
    """The probability mask ``p`` as stored in ``dtype`` (uint8: :func:`encode_probability_u8`; floats: cast).

    A uint8 ``p`` is taken as already encoded; stored as float it is decoded first.
    """
    dtype = check_mask_dtype(dtype)
    p = np.asarray(p)
    if dtype == "uint8":
        return encode_probability_u8(p)
    if p.dtype == np.uint8:
        p = decode_probability(p, PROBABILITY_SCALE)
    return p.astype(dtype, copy=False)


def mask_scale(dtype: str) -> int:
    """The scale of a stored mask: 255 for uint8, 1 for floats."""
    return PROBABILITY_SCALE if np.dtype(dtype) == np.uint8 else 1


def decode_probability(stored: np.ndarray, scale: float = PROBABILITY_SCALE) -> np.ndarray:
    """A stored mask back as the probability in [0, 1], float32 (``stored / scale``; floats of scale 1 as they are)."""
    stored = np.asarray(stored)
    if stored.dtype.kind == "f" and scale == 1:
        return stored.astype(np.float32, copy=False)
    return stored.astype(np.float32) * np.float32(1.0 / scale)


def stored_scale(dtype: Any) -> int:
    """The scale a stored image level of ``dtype`` was quantised by: 255 (uint8) or 65535 (uint16)."""
    return 255 if np.dtype(dtype) == np.uint8 else 65535


def image_storage(input_dtype: Any) -> np.dtype:
    """The stored image's dtype for an input of sample type ``input_dtype``: uint8 for 8-bit (and bool), else uint16.

    Unknown (None) is uint16, which keeps every input that semtile reads to within half a step of 1/65535.
    """
    try:
        kind = np.dtype(input_dtype) if input_dtype is not None else None
    except TypeError:
        kind = None
    return np.dtype(np.uint8) if kind is not None and kind.itemsize == 1 and kind.kind in "uib" else np.dtype(np.uint16)


def quantise_image(v: np.ndarray, dtype: Any) -> np.ndarray:
    """The normalised image ``v`` (float, [0, 1]) as stored: ``round(v * scale)`` in ``dtype`` (uint8 or uint16).

    Integer input of that dtype is taken as already quantised.
    """
    dtype = np.dtype(dtype)
    v = np.asarray(v) if not hasattr(v, "__getitem__") or isinstance(v, np.ndarray) else v
    if getattr(v, "dtype", None) == dtype:
        return np.asarray(v[...] if not isinstance(v, np.ndarray) else v)
    out = np.empty(tuple(v.shape), dtype)
    for r in range(0, v.shape[0], _BAND):  # in bands of rows: a lazily read array is read a band at a time
        _quantise_band(np.asarray(v[r: r + _BAND], dtype=np.float32), stored_scale(dtype), out[r: r + _BAND])
    return out


def _quantise_band(band: np.ndarray, scale: int, out: np.ndarray) -> None:
    """``out = round(clip(band, 0, 1) * scale)``, NaN as 0: the Numba kernel for 2-D bands, NumPy otherwise."""
    if band.ndim == 2:
        quantise_unit(np.ascontiguousarray(band), scale, out)
        return
    band = np.array(np.nan_to_num(band, nan=0.0), dtype=np.float32)  # an array even for a 0-d input
    np.clip(band, 0.0, 1.0, out=band)
    band *= np.float32(scale)
    out[...] = np.rint(band)


def array_layout(shape: tuple[int, ...], *, sharded: bool, checksum: bool = True) -> dict:
    """``create_array`` keywords for an array of ``shape``: chunks, shards (results written whole) and codecs.

    Written whole (``sharded``): inner chunks of :data:`CHUNK` a side in one
    shard up to :data:`SHARD_SIDE`; staged for writing region by region: plain
    chunks (each region writes whole chunks, so no two writers share a file).
    Leading axes (a map's channels) are one chunk.
    """
    shape = tuple(int(s) for s in shape)
    lead, sides = shape[:-2], shape[-2:]
    chunks = (*lead, *(max(1, min(s, CHUNK)) for s in sides))
    compressors = (ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()) if checksum else (ZstdCodec(level=ZSTD_LEVEL),)
    out: dict = {"chunks": chunks, "compressors": compressors, "serializer": BytesCodec()}
    if sharded and len(sides) == 2:
        out["shards"] = (*lead, *(min(SHARD_SIDE, c * math.ceil(s / c)) for s, c in zip(sides, chunks[-2:])))
    return out


def storage_facts(*, image_dtype: Any, mask_dtype: str, sharded: bool, checksum: bool = True) -> dict:
    """What a result's attributes record about how it is stored (``semtile.storage``; also in its provenance)."""
    image_dtype = np.dtype(image_dtype)
    return {"image": {"dtype": image_dtype.name, "scale": stored_scale(image_dtype),
                      "decode": f"value / {stored_scale(image_dtype)}"},
            "mask": {"dtype": mask_dtype, "scale": mask_scale(mask_dtype),
                     "decode": "probability = stored / 255" if mask_dtype == "uint8" else "probability = stored"},
            "labels": {"dtype": "uint8"},
            "codec": {"name": "zstd", "level": ZSTD_LEVEL, "checksum": "crc32c" if checksum else None},
            "chunk": CHUNK, "shard": SHARD_SIDE if sharded else None}
