"""Blend overlapping tile predictions into a whole-image canvas.

Tiles are accumulated as ``canvas += window * tile`` and
``weight_canvas += window``; the stitched image is ``canvas / weight_canvas``.
Accumulation can be done batch by batch (one :func:`accumulate_tiles` call per
batch) and normalised once at the end with :func:`normalise_canvas`.

The Numba kernel is parallel over *output rows*: every canvas row is written
by exactly one thread, which visits, in a fixed order, the tiles covering that
row. No two threads ever update the same pixel, so there are no lost updates
and the result does not depend on the number of threads. The tiles covering a
row are found by binary search over the tile row origins sorted once per call
(``O(n log n)`` for ``n`` tiles), so repeated calls stay cheap.

For origins sorted by row (such as a row-major tile grid) the kernel adds the
contributions to each pixel in the same order as the NumPy reference, so the
two agree bit for bit; otherwise they agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "accumulate_tiles",
    "accumulate_weights",
    "normalise_canvas",
    "stitch_tiles",
    "accumulate_tiles_reference",
    "stitch_tiles_reference",
]


# -- Numba kernels (private) ------------------------------------------------


@njit(cache=True, nogil=True)
def _lower_bound(a, value):
    """First index ``i`` with ``a[i] >= value`` in sorted ``a`` (len if none)."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(parallel=True, cache=True, nogil=True)
def _accumulate_rows(canvas, weight_canvas, add_weights, tiles, order, oy_sorted, ox_sorted, window):
    """Add ``window * tiles[k]`` (and ``window``, if ``add_weights``) at each origin, row-parallel.

    ``oy_sorted``/``ox_sorted`` are the origins permuted by ``order`` (a stable
    argsort of the row origins); ``tiles[order[s]]`` sits at
    ``(oy_sorted[s], ox_sorted[s])``. Without ``add_weights``,
    ``weight_canvas`` is never touched (a placeholder may be passed).
    """
    height, width = canvas.shape
    th, tw = window.shape
    n = order.shape[0]
    if n == 0:
        return
    r_lo = max(oy_sorted[0], 0)
    r_hi = min(oy_sorted[n - 1] + th, height)
    for r in prange(r_lo, r_hi):
        crow = canvas[r]
        # Tiles covering row r are those with r - th < oy <= r.
        a = _lower_bound(oy_sorted, r - th + 1)
        b = _lower_bound(oy_sorted, r + 1)
        for s in range(a, b):
            ox = ox_sorted[s]
            c0 = max(ox, 0)
            c1 = min(ox + tw, width)
            if c1 <= c0:
                continue
            ty = r - oy_sorted[s]
            # 1-D views with non-negative offsets let LLVM vectorise the loop.
            cr = crow[c0:c1]
            tr = tiles[order[s], ty, c0 - ox : c1 - ox]
            wn = window[ty, c0 - ox : c1 - ox]
            if add_weights:
                wr = weight_canvas[r, c0:c1]
                for i in range(c1 - c0):
                    wv = wn[i]
                    cr[i] += wv * tr[i]
                    wr[i] += wv
            else:
                for i in range(c1 - c0):
                    cr[i] += wn[i] * tr[i]


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _normalise_rows(canvas, weight_canvas, out):
    # error_model="numpy": no ZeroDivisionError branch, so the loop vectorises;
    # the quotient is computed everywhere and discarded where w <= 0.
    height, width = canvas.shape
    zero = np.float32(0.0)
    for r in prange(height):
        crow = canvas[r]
        wrow = weight_canvas[r]
        orow = out[r]
        for c in range(width):
            w = wrow[c]
            q = crow[c] / w
            orow[c] = q if w > zero else zero


#: Placeholder passed to the kernel when no weights are accumulated (never touched).
_NO_WEIGHTS = np.zeros((1, 1), dtype=np.float32)


# -- validation helpers -----------------------------------------------------


def _check_canvas(name: str, a: object) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is updated in place)")
    return a


def _check_ro(a: object, name: str) -> np.ndarray:
    """Like :func:`_check_canvas` for an input that is only read."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_inputs(
    canvas: object,
    weight_canvas: object,
    tiles: object,
    origins: object,
    window: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    canvas = _check_canvas("canvas", canvas)
    if weight_canvas is not None:
        weight_canvas = _check_canvas("weight_canvas", weight_canvas)
        if weight_canvas.shape != canvas.shape:
            raise ValueError(
                f"weight_canvas shape {weight_canvas.shape} must equal canvas shape {canvas.shape}"
            )
        if np.shares_memory(canvas, weight_canvas):
            raise ValueError("canvas and weight_canvas must not share memory")
    tiles = _check_tiles(tiles)
    window = _check_window(window, tiles.shape[1:])
    origins = _check_origins(origins, tiles.shape[0])
    return canvas, weight_canvas, tiles, origins, window


def _check_tiles(tiles: object) -> np.ndarray:
    if not isinstance(tiles, np.ndarray):
        raise TypeError(f"tiles must be a numpy.ndarray, got {type(tiles).__name__}")
    if tiles.dtype != np.float32:
        raise TypeError(f"tiles must have dtype float32, got {tiles.dtype}")
    if tiles.ndim == 4:
        if tiles.shape[1] != 1:
            raise ValueError(
                f"4-D tiles must have shape (n, 1, T, T) (one channel), got {tiles.shape}"
            )
        tiles = tiles[:, 0]
    elif tiles.ndim != 3:
        raise ValueError(f"tiles must have shape (n, T, T) or (n, 1, T, T), got {tiles.shape}")
    if tiles.shape[1] < 1 or tiles.shape[2] < 1:
        raise ValueError(f"tiles must have a non-empty tile shape, got {tiles.shape}")
    return np.ascontiguousarray(tiles)


def _check_window(window: object, tile_shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(window, np.ndarray):
        raise TypeError(f"window must be a numpy.ndarray, got {type(window).__name__}")
    if window.dtype != np.float32:
        raise TypeError(f"window must have dtype float32, got {window.dtype}")
    if window.ndim != 2:
        raise ValueError(f"window must be 2-D (T, T), got shape {window.shape}")
    if window.shape != tuple(tile_shape):
        raise ValueError(
            f"window shape {window.shape} must equal the tile shape {tuple(tile_shape)}"
        )
    return np.ascontiguousarray(window)


def _check_origins(origins: object, n: int) -> np.ndarray:
    if not isinstance(origins, np.ndarray):
        raise TypeError(f"origins must be a numpy.ndarray, got {type(origins).__name__}")
    if not np.issubdtype(origins.dtype, np.integer):
        raise TypeError(f"origins must have an integer dtype (int64), got {origins.dtype}")
    if origins.ndim != 2 or origins.shape[1] != 2:
        raise ValueError(f"origins must have shape (n, 2) of (row, col), got {origins.shape}")
    if origins.shape[0] != n:
        raise ValueError(
            f"origins has {origins.shape[0]} rows but tiles has {n} tiles; they must match"
        )
    return np.ascontiguousarray(origins, dtype=np.int64)


def _check_shape(shape: object) -> tuple[int, int]:
    try:
        h, w = shape  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (H, W), got {shape!r}") from None
    for name, v in (("H", h), ("W", w)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"shape {name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"shape must be positive, got {tuple(shape)}")  # type: ignore[arg-type]
    return int(h), int(w)


# -- public API -------------------------------------------------------------


def accumulate_tiles(
    canvas: np.ndarray,
    weight_canvas: np.ndarray | None,
    tiles: np.ndarray,
    origins: np.ndarray,
    window: np.ndarray,
) -> None:
    """Add weighted tiles into a canvas, in place (Numba, row-parallel).

    Parameters
    ----------
    canvas : numpy.ndarray
        float32, shape ``(H, W)``, C-contiguous; receives ``window * tile``.
    weight_canvas : numpy.ndarray or None
        float32, shape ``(H, W)``, C-contiguous; receives ``window``. None
        adds the weighted tiles only: several maps blended with the same
        window and origins share one weight canvas, accumulated once.
    tiles : numpy.ndarray
        float32, shape ``(n, T, T)`` or ``(n, 1, T, T)``.
    origins : numpy.ndarray
        Integer (int64), shape ``(n, 2)``: top-left ``(row, col)`` of each
        tile in image coordinates. May be negative or reach past the image;
        the parts of a tile outside the image are ignored.
    window : numpy.ndarray
        float32, shape ``(T, T)``: per-pixel blending weight.

    Raises
    ------
    TypeError
        If an argument is not an array or has the wrong dtype.
    ValueError
        If shapes are wrong or inconsistent, the canvases are not
        C-contiguous and writeable, or they share memory.

    Notes
    -----
    Race-free and deterministic: each canvas row is written by one thread.
    Safe to call once per batch; the per-call overhead is ``O(n log n)``.
    """
    canvas, weight_canvas, tiles, origins, window = _check_inputs(
        canvas, weight_canvas, tiles, origins, window
    )
    if tiles.shape[0] == 0:
        return
    order = np.argsort(origins[:, 0], kind="stable")
    oy_sorted = np.ascontiguousarray(origins[order, 0])
    ox_sorted = np.ascontiguousarray(origins[order, 1])
    add_weights = weight_canvas is not None
    if not add_weights:
        weight_canvas = _NO_WEIGHTS
    _accumulate_rows(
        canvas, weight_canvas, add_weights, tiles, order.astype(np.int64), oy_sorted, ox_sorted, window
    )


def accumulate_weights(shape: tuple[int, int], origins: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The weight canvas of tiles at ``origins``: a new float32 ``(H, W)`` array, ``window`` summed at each.

    The same sums, in the same order, as :func:`accumulate_tiles` adds into its
    ``weight_canvas`` when it is given the tiles of ``origins`` batch after
    batch in that order: bit for bit the same canvas, without a tile in hand.
    """
    h, w = _check_shape(shape)
    window = _check_window(window, np.shape(window))
    origins = _check_origins(origins, np.shape(origins)[0] if np.ndim(origins) == 2 else -1)
    weights = np.zeros((h, w), dtype=np.float32)
    if origins.shape[0] == 0:
        return weights
    order = np.argsort(origins[:, 0], kind="stable")
    one = np.ones((1, *window.shape), dtype=np.float32)  # window * 1 is the window exactly
    _accumulate_rows(weights, _NO_WEIGHTS, False, one, np.zeros(len(order), dtype=np.int64),
                     np.ascontiguousarray(origins[order, 0]), np.ascontiguousarray(origins[order, 1]), window)
    return weights


def normalise_canvas(
    canvas: np.ndarray,
    weight_canvas: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Divide the accumulated canvas by the accumulated weights.

    Parameters
    ----------
    canvas : numpy.ndarray
        float32, shape ``(H, W)``.
    weight_canvas : numpy.ndarray
        float32, shape ``(H, W)``.
    out : numpy.ndarray, optional
        float32 ``(H, W)`` C-contiguous destination; may be ``canvas`` itself.
        A new array is allocated when omitted.

    Returns
    -------
    numpy.ndarray
        ``canvas / weight_canvas`` where ``weight_canvas > 0``, else 0.

    Raises
    ------
    TypeError, ValueError
        On wrong dtypes or shapes.
    """
    canvas = _check_ro(canvas, "canvas")
    weight_canvas = _check_ro(weight_canvas, "weight_canvas")
    if weight_canvas.shape != canvas.shape:
        raise ValueError(
            f"weight_canvas shape {weight_canvas.shape} must equal canvas shape {canvas.shape}"
        )
    if out is None:
        out = np.empty(canvas.shape, dtype=np.float32)
    else:
        out = _check_canvas("out", out)
        if out.shape != canvas.shape:
            raise ValueError(f"out shape {out.shape} must equal canvas shape {canvas.shape}")
    _normalise_rows(canvas, weight_canvas, out)
    return out


def stitch_tiles(
    tiles: np.ndarray,
    origins: np.ndarray,
    window: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Blend tiles into a new ``(H, W)`` image (Numba).

    Parameters
    ----------
    tiles : numpy.ndarray
        float32, shape ``(n, T, T)`` or ``(n, 1, T, T)``.
    origins : numpy.ndarray
        Integer, shape ``(n, 2)``: top-left ``(row, col)`` of each tile.
    window : numpy.ndarray
        float32, shape ``(T, T)``.
    shape : tuple of int
        Image shape ``(H, W)``, both positive.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``: weighted mean of the tiles; 0 where no tile lands.
    """
    h, w = _check_shape(shape)
    canvas = np.zeros((h, w), dtype=np.float32)
    weight_canvas = np.zeros((h, w), dtype=np.float32)
    accumulate_tiles(canvas, weight_canvas, tiles, origins, window)
    return normalise_canvas(canvas, weight_canvas, out=canvas)


def accumulate_tiles_reference(
    canvas: np.ndarray,
    weight_canvas: np.ndarray | None,
    tiles: np.ndarray,
    origins: np.ndarray,
    window: np.ndarray,
) -> None:
    """Plain NumPy version of :func:`accumulate_tiles` (test oracle).

    Same parameters and validation as :func:`accumulate_tiles`; loops over
    the tiles in the given order, clips each to the image and adds in place.
    """
    canvas, weight_canvas, tiles, origins, window = _check_inputs(
        canvas, weight_canvas, tiles, origins, window
    )
    height, width = canvas.shape
    th, tw = window.shape
    for k in range(tiles.shape[0]):
        oy, ox = int(origins[k, 0]), int(origins[k, 1])
        r0, r1 = max(oy, 0), min(oy + th, height)
        c0, c1 = max(ox, 0), min(ox + tw, width)
        if r0 >= r1 or c0 >= c1:
            continue
        win = window[r0 - oy : r1 - oy, c0 - ox : c1 - ox]
        canvas[r0:r1, c0:c1] += win * tiles[k, r0 - oy : r1 - oy, c0 - ox : c1 - ox]
        if weight_canvas is not None:
            weight_canvas[r0:r1, c0:c1] += win


def stitch_tiles_reference(
    tiles: np.ndarray,
    origins: np.ndarray,
    window: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Plain NumPy version of :func:`stitch_tiles` (test oracle)."""
    h, w = _check_shape(shape)
    canvas = np.zeros((h, w), dtype=np.float32)
    weight_canvas = np.zeros((h, w), dtype=np.float32)
    accumulate_tiles_reference(canvas, weight_canvas, tiles, origins, window)
    out = np.zeros((h, w), dtype=np.float32)
    np.divide(canvas, weight_canvas, out=out, where=weight_canvas > 0)
    return out
