"""The OME-Zarr result's pyramids: level shapes, NGFF multiscales metadata, and each level from the one below.

Levels are built from the level below *as stored* (quantised), with the
Numba kernels of :mod:`kernels.pyramid`, so that a pyramid built whole in
memory and one built region by region or band by band are the same bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from semtile.kernels.pyramid import halve_max, halve_mean_float, halve_mean_int

__all__ = ["MIN_LEVEL_SIDE", "level_shapes", "multiscale", "map_multiscale", "next_level", "reduce_in_bands"]

#: Levels are halved until the smaller side is at most this: the top level stays a viewer's cheap overview
#: (at most 512 on its short side), and scans that small (a 480 x 640 demo scan) keep no pyramid at all.
MIN_LEVEL_SIDE = 512


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The shape of every pyramid level: halved (rounding up) until the smaller side is at most 512."""
    shapes = [tuple(int(s) for s in shape)]
    while min(shapes[-1]) > MIN_LEVEL_SIDE:
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def multiscale(n_levels: int, pixel_size_m: Any, reduce: str) -> dict:
    """NGFF 0.5 multiscales (axes y, x) for ``n_levels``, scales in micrometers where the pixel size is known."""
    known = isinstance(pixel_size_m, (int, float)) and not isinstance(pixel_size_m, bool) \
        and math.isfinite(pixel_size_m) and pixel_size_m > 0
    step = float(pixel_size_m) * 1e6 if known else 1.0
    axes = [{"name": axis, "type": "space", **({"unit": "micrometer"} if known else {})} for axis in ("y", "x")]
    datasets = []
    for k in range(n_levels):
        transforms = [{"type": "scale", "scale": [step * 2**k] * 2}]
        if k:
            transforms.append({"type": "translation", "translation": [step * (2**k - 1) / 2] * 2})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    return {"axes": axes, "datasets": datasets, "type": reduce,
            "metadata": {"method": f"2x2 block {reduce}"}}


def map_multiscale(name: str, n_levels: int, pixel_size: Any, channels: int | None) -> dict:
    """NGFF multiscales of a map: the image's, with a channel axis first for (C, rows, cols) maps."""
    ms = multiscale(n_levels, pixel_size, "mean")
    if channels is not None:
        ms["axes"] = [{"name": "c", "type": "channel"}, *ms["axes"]]
        for d in ms["datasets"]:
            for t in d["coordinateTransformations"]:
                key = "scale" if t["type"] == "scale" else "translation"
                t[key] = [1.0 if key == "scale" else 0.0, *t[key]]
    return {"name": name, **ms}


def next_level(prev: np.ndarray, reduce: str) -> np.ndarray:
    """Level k+1 from level k as stored: "mean" (a uint8/uint16 image), "max" (labels) or "map" (a float map)."""
    prev = np.asarray(prev)
    if reduce == "max":
        return halve_max(prev)
    if reduce == "map":
        return halve_mean_float(prev)
    return halve_mean_int(prev)


def reduce_in_bands(source, target, reduce: str, band_rows: int) -> None:
    """``target`` = the next level of ``source``, ``band_rows`` target rows at a time (bounded memory).

    ``band_rows`` is a multiple of ``target``'s chunk (or shard) rows, so each band writes whole chunks.
    """
    for t in range(0, target.shape[-2], band_rows):
        block = np.asarray(source[..., 2 * t: 2 * (t + band_rows), :])
        target[..., t: t + band_rows, :] = next_level(block, reduce)
