"""Detecting the burned-in data bar at the bottom of an SEM frame, from its pixels alone.

:func:`detect_databar` works on a plain array and knows nothing about files;
:func:`semtile.io.scan.detect_scan_databar` (TIFF, PNG and JPEG scans) calls
:func:`detect_databar_blocks` on the bottom band of a scan, block by block
from the bottom up, when neither the caller nor the vendor metadata gives the
bar's height. Memory is that of one block plus a few numbers per row,
whatever the size of the band.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from semtile.kernels.histogram import row_histograms_u8, suffix_sums

__all__ = ["DATABAR_SEARCH_FRACTION", "detect_databar", "detect_databar_blocks"]

#: Fraction of the frame's rows, at the bottom, searched for a data bar.
DATABAR_SEARCH_FRACTION = 0.25

#: Blocks are cut into pieces of at most this many values and rows (the row
#: histograms cost 256 numbers a row), so any band is searched in bounded memory.
_PIECE_VALUES = 2**22
_PIECE_ROWS = 2**12


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
    if band.shape[1] == 0:
        return 0
    return detect_databar_blocks([band], band.shape[0], uniform_fraction=uniform_fraction, tolerance=tolerance,
                                 min_contrast=min_contrast, min_body_fraction=min_body_fraction,
                                 min_rows=min_rows)


def detect_databar_blocks(
    blocks: Iterable[np.ndarray],
    n_rows: int,
    *,
    uniform_fraction: float = 0.97,
    tolerance: float = 0.01,
    min_contrast: float = 0.25,
    min_body_fraction: float = 0.5,
    min_rows: int = 3,
) -> int:
    """:func:`detect_databar` of a band given as blocks of whole rows, the bottom block first.

    ``blocks`` stacked top to bottom (the reverse of their order) make the
    band of ``n_rows`` rows; only one block is held at a time. Nothing is
    read from ``blocks`` when the band is too short to hold a bar. The
    parameters and the result are those of :func:`detect_databar`.
    """
    if n_rows < min_rows + 1:
        return 0
    tol_bins = max(1, int(round(tolerance * 255)))
    bins = np.arange(256)
    below = np.zeros(256, dtype=np.int64)  # histogram of the rows under the current block
    pending = None  # (row, level, body histogram) of a uniform row whose upper neighbour is not read yet
    found = 0
    end = n_rows
    for piece in _pieces(blocks):
        k = piece.shape[0]
        start = end - k
        if start < 0:
            raise ValueError(f"the blocks hold more than n_rows={n_rows} rows")
        if piece.dtype == np.uint8:  # 8-bit samples are their own bins: no float copy of the band
            hist = row_histograms_u8(np.ascontiguousarray(piece))
        else:
            band = _unit_range(piece)
            q = np.rint(band * 255).astype(np.intp)
            q += np.arange(k, dtype=np.intp)[:, None] * 256
            hist = np.bincount(q.ravel(), minlength=k * 256).reshape(k, 256)
        level, uniform = _uniform_rows(piece, hist, tolerance, uniform_fraction)
        # suffix[i]: histogram of the band's rows start + i .. n_rows - 1
        suffix = suffix_sums(hist, below)

        def qualifies(r: int, line: float, above_level: float, above_uniform: bool, body: np.ndarray) -> bool:
            if not 1 <= r <= n_rows - min_rows:
                return False
            if above_uniform and abs(above_level - line) < min_contrast:
                return False  # the row above is no image content
            total = body.sum()
            if total == 0:
                return False
            peak = int(np.argmax(body))
            near = np.abs(bins - peak) <= tol_bins
            return body[near].sum() / total >= min_body_fraction and abs(peak / 255 - line) >= min_contrast

        if pending is not None:  # its upper neighbour is this block's last row
            r, line, body = pending
            if qualifies(r, line, level[-1], bool(uniform[-1]), body):
                found = n_rows - r
            pending = None
        # rows of this block, bottom up, so that the top-most qualifying row is found last
        for i in np.flatnonzero(uniform[1:])[::-1] + 1:
            body = suffix[i + 1] if i + 1 < k else below
            if qualifies(start + i, level[i], level[i - 1], bool(uniform[i - 1]), body):
                found = n_rows - (start + i)
        if uniform[0] and start >= 1:
            pending = (start, level[0], suffix[1] if k > 1 else below.copy())
        below = suffix[0]
        end = start
    return found


def _uniform_rows(piece: np.ndarray, hist: np.ndarray, tolerance: float, uniform_fraction: float):
    """Each row's median and whether it is uniform (``uniform_fraction`` of its values within ``tolerance`` of the
    median). The median is taken only of rows whose histogram could hold a uniform row (enough values within a
    few bins of each other): a superset, so the answer is exact, and ordinary image rows cost no sort (nor a
    conversion of their samples to [0, 1]: ``piece`` is as given)."""
    k, cols = piece.shape
    width = int(np.ceil(2 * tolerance * 255)) + 2  # bins [m - tol, m + tol] can reach, rounding included
    sums = np.cumsum(hist, axis=1)
    window = sums[:, width - 1:] - np.concatenate([np.zeros((k, 1), sums.dtype), sums[:, :-width]], axis=1)
    candidate = window.max(axis=1) / cols >= uniform_fraction
    level = np.full(k, np.nan, dtype=np.float32)
    uniform = np.zeros(k, dtype=bool)
    if candidate.any():
        rows = _unit_range(piece[candidate])
        level[candidate] = np.median(rows, axis=1)
        uniform[candidate] = np.mean(np.abs(rows - level[candidate][:, None]) <= tolerance, axis=1) >= uniform_fraction
    return level, uniform


def _pieces(blocks: Iterable[np.ndarray]):
    """The blocks cut into pieces of bounded size, the bottom piece first."""
    for block in blocks:
        block = np.asarray(block)
        if block.ndim != 2:
            raise ValueError(f"detect_databar_blocks needs 2-D blocks of rows, got shape {block.shape}")
        step = max(1, min(_PIECE_ROWS, _PIECE_VALUES // max(1, block.shape[1])))
        for stop in range(block.shape[0], 0, -step):
            yield block[max(0, stop - step): stop]


def _unit_range(band: np.ndarray) -> np.ndarray:
    """Samples as float32 in [0, 1] (integers by their type's maximum, NaN as 0)."""
    if band.dtype.kind == "b":
        band = band.astype(np.float32)
    elif band.dtype.kind in "ui":
        band = band.astype(np.float32) / np.float32(np.iinfo(band.dtype).max)
    else:
        band = band.astype(np.float32, copy=False)
    return np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0)
