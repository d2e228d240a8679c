"""Detecting the burned-in data bar at the bottom of an SEM frame, from its pixels alone.

:func:`detect_databar` works on a plain array and knows nothing about files;
:mod:`semtile.io.tiff` calls it on the bottom band of a scan when neither the
caller nor the vendor metadata gives the bar's height.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DATABAR_SEARCH_FRACTION", "detect_databar"]

#: Fraction of the frame's rows, at the bottom, searched for a data bar.
DATABAR_SEARCH_FRACTION = 0.25


def detect_databar(
    frame_bottom: np.ndarray,
    *,
    uniform_fraction: float = 0.97,
    tolerance: float = 0.01,
    min_contrast: float = 0.25,
    min_body_fraction: float = 0.5,
    min_rows: int = 3,
) -> int:
    """Find a burned-in data bar at the bottom of a frame.

    A data bar is recognised by its frame line: its top row is uniform across
    the full width (a white line on FEI and semtile's synthetic scans, a
    black border row on Zeiss), the row above it is ordinary image content,
    and the bar below that line is mostly one background level that clearly
    differs from the line (black under FEI's white line, white under Zeiss'
    black row). Requiring that contrast keeps flat or saturated image regions
    from being taken for a bar. The top-most row that qualifies wins, so
    lines and boxes inside the bar do not matter.

    Bars without such a line (plain bars whose first row has the same level
    as their background) are not detected; give their height explicitly.

    Parameters
    ----------
    frame_bottom
        2-D array, the bottom band of a frame (e.g. its bottom quarter):
        floats in [0, 1] or unsigned/signed integers (scaled by their type's
        maximum) or bools.
    uniform_fraction
        Fraction of a row's pixels within ``tolerance`` of its median for the
        row to count as uniform.
    tolerance
        Gray-level tolerance, on the [0, 1] scale.
    min_contrast
        Least difference between the line's level and the bar background's.
    min_body_fraction
        Least fraction of the bar below the line at its background level.
    min_rows
        Least bar height, line included.

    Returns
    -------
    int
        Number of data-bar rows at the bottom of ``frame_bottom`` (0 if none).
    """
    band = np.asarray(frame_bottom)
    if band.ndim != 2:
        raise ValueError(f"detect_databar needs a 2-D array, got shape {band.shape}")
    if band.dtype.kind == "b":
        band = band.astype(np.float32)
    elif band.dtype.kind in "ui":
        band = band.astype(np.float32) / np.float32(np.iinfo(band.dtype).max)
    else:
        band = band.astype(np.float32, copy=False)
    n_rows = band.shape[0]
    if n_rows < min_rows + 1 or band.shape[1] == 0:
        return 0
    band = np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0)

    level = np.median(band, axis=1)
    uniform = np.mean(np.abs(band - level[:, None]) <= tolerance, axis=1) >= uniform_fraction

    # Per-row histograms (256 levels) summed from the bottom: the histogram of
    # rows r+1..end is suffix[r + 1].
    q = np.rint(band * 255).astype(np.intp)
    q += np.arange(n_rows, dtype=np.intp)[:, None] * 256
    hist = np.bincount(q.ravel(), minlength=n_rows * 256).reshape(n_rows, 256)
    suffix = np.cumsum(hist[::-1], axis=0)[::-1]
    bins = np.arange(256)
    tol_bins = max(1, int(round(tolerance * 255)))

    for r in range(1, n_rows - min_rows + 1):
        if not uniform[r]:
            continue
        above_is_content = not uniform[r - 1] or abs(level[r - 1] - level[r]) >= min_contrast
        if not above_is_content:
            continue
        body = suffix[r + 1]
        peak = int(np.argmax(body))
        near = np.abs(bins - peak) <= tol_bins
        body_fraction = body[near].sum() / body.sum()
        if body_fraction >= min_body_fraction and abs(peak / 255 - level[r]) >= min_contrast:
            return n_rows - r
    return 0
