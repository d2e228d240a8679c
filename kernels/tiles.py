"""Tiles cut from an image held in memory: the edge reflection done once, then plain strided copies.

A tile grid's windows reach ``halo`` pixels past the top-left of the image
and up to ``core - 1 + halo`` past its bottom-right. :func:`padded_frame`
gives the frame that holds them all (for one grid or several, e.g. the
passes of a run), the image at ``(pad, pad)``; the image is written into its interior
(:func:`interior`, e.g. by the normaliser, with no extra copy) and
:func:`reflect_borders` fills the rest exactly like
``numpy.pad(image, ..., mode="reflect")`` (repeated reflection where a
border is wider than the image). :func:`cut_tiles` then copies windows
straight into a caller's batch buffer.
"""

from __future__ import annotations

import numpy as np

__all__ = ["padded_frame", "interior", "reflect_borders", "cut_tiles"]


def padded_frame(shape: tuple[int, int], grids: list[tuple[int, int]]) -> tuple[int, tuple[int, int]]:
    """``(pad, (rows, cols))``: the frame holding every window of each grid ``(tile, halo)`` over an image of
    ``shape``, the image's top-left at ``(pad, pad)`` (``pad``: the largest halo)."""
    pad = max(halo for _, halo in grids)
    ends = [tuple(-(-int(n) // (tile - 2 * halo)) * (tile - 2 * halo) + halo for n in shape) for tile, halo in grids]
    return pad, (pad + max(e[0] for e in ends), pad + max(e[1] for e in ends))


def interior(padded: np.ndarray, shape: tuple[int, int], pad: int) -> np.ndarray:
    """The view of ``padded`` where the image of ``shape`` lies (its top-left at ``(pad, pad)``)."""
    return padded[pad: pad + shape[0], pad: pad + shape[1]]


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Coordinates mapped onto ``[0, n)`` like ``np.pad(mode='reflect')``."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def reflect_borders(padded: np.ndarray, shape: tuple[int, int], pad: int) -> np.ndarray:
    """Fill the border of ``padded`` around the image at :func:`interior` by reflection; returns ``padded``.

    Rows first (over the image's columns), then columns (over every row), as
    ``numpy.pad`` does, so the corners are the reflection of the reflection.
    """
    h, w = int(shape[0]), int(shape[1])
    rows, cols = padded.shape
    top, left = pad, pad
    bottom, right = rows - top - h, cols - left - w
    inner = slice(left, left + w)
    if top:
        padded[:top, inner] = padded[top + _reflect(np.arange(-top, 0), h), inner]
    if bottom:
        padded[top + h:, inner] = padded[top + _reflect(np.arange(h, h + bottom), h), inner]
    if left:
        padded[:, :left] = padded[:, left + _reflect(np.arange(-left, 0), w)]
    if right:
        padded[:, left + w:] = padded[:, left + _reflect(np.arange(w, w + right), w)]
    return padded


def cut_tiles(padded: np.ndarray, origins: np.ndarray, tile: int, pad: int, out: np.ndarray) -> np.ndarray:
    """Windows at ``origins`` (top-left in image coordinates, ``>= -pad``) copied from ``padded`` into ``out``
    (``(len(origins), tile, tile)``, e.g. rows of a preallocated batch); returns ``out``."""
    for k, (oy, ox) in enumerate(origins.tolist()):
        y, x = oy + pad, ox + pad
        out[k] = padded[y: y + tile, x: x + tile]
    return out
