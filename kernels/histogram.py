"""Per-row histograms (Numba): of 8-bit samples in one pass, and their sums from each row to the bottom.

``row_histograms_u8`` gives the same counts as ``np.bincount`` of
``row * 256 + value``, without the index array (eight bytes a sample) that
that route builds.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["row_histograms_u8", "suffix_sums"]


@numba.njit(nogil=True, cache=True)
def _row_histograms(band, hist):
    rows, cols = band.shape
    for r in range(rows):
        for c in range(cols):
            hist[r, band[r, c]] += 1


def row_histograms_u8(band: np.ndarray) -> np.ndarray:
    """The ``(rows, 256)`` int64 histogram of each row of the 2-D uint8 array ``band``."""
    if band.ndim != 2 or band.dtype != np.uint8:
        raise ValueError(f"row_histograms_u8 needs a 2-D uint8 array, got {band.dtype} of shape {band.shape}")
    hist = np.zeros((band.shape[0], 256), dtype=np.int64)
    if band.size:
        _row_histograms(band, hist)
    return hist


@numba.njit(nogil=True, cache=True)
def _suffix_sums(hist, below, out):
    rows, bins = hist.shape
    for b in range(bins):
        out[rows - 1, b] = hist[rows - 1, b] + below[b]
    for r in range(rows - 2, -1, -1):
        for b in range(bins):
            out[r, b] = out[r + 1, b] + hist[r, b]


def suffix_sums(hist: np.ndarray, below: np.ndarray) -> np.ndarray:
    """``out[r] = below + hist[r:].sum(axis=0)`` for each row ``r`` of the 2-D int64 ``hist`` (``below``: one
    row of it); NumPy's cumsum down the rows walks across them and costs ten times as much."""
    if hist.ndim != 2 or hist.dtype != np.int64 or below.shape != hist.shape[1:] or below.dtype != np.int64:
        raise ValueError(f"suffix_sums needs a 2-D int64 array and one int64 row of it, got {hist.dtype} "
                         f"{hist.shape} and {below.dtype} {below.shape}")
    out = np.empty_like(hist)
    if hist.shape[0]:
        _suffix_sums(np.ascontiguousarray(hist), np.ascontiguousarray(below), out)
    return out
