"""Pyramid levels: 2 x 2 block reductions of an image, a label image or a float map (Numba, no Python objects).

Every kernel halves ``(rows, cols)`` to ``(ceil(rows / 2), ceil(cols / 2))``;
an odd last row or column is repeated (so its blocks are that row or column
twice). They run without the GIL, so several writer threads build levels at once.

* :func:`halve_mean_int`: unsigned integer levels (uint8 or uint16 images),
  ``(a + b + c + d + 2) // 4``: the block mean rounded half up, in integers,
  so that a pyramid built whole and one built region by region are the same bytes.
* :func:`halve_max`: labels (any integer or bool type), the block maximum.
* :func:`halve_mean_float`: float maps, the block mean in float32
  ``((a + b) + (c + d)) * 0.25``, cast back to the input's type; over the
  last two axes of a 2-D or 3-D array.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["halve_mean_int", "halve_max", "halve_mean_float", "halved_shape"]


def halved_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the next level: the last two sides halved, rounding up."""
    return (*shape[:-2], (shape[-2] + 1) // 2, (shape[-1] + 1) // 2)


@numba.njit(nogil=True, cache=True)
def _mean_int(a, out):
    rows, cols = a.shape
    for i in range(out.shape[0]):
        r0 = 2 * i
        r1 = min(r0 + 1, rows - 1)
        for j in range(out.shape[1]):
            c0 = 2 * j
            c1 = min(c0 + 1, cols - 1)
            s = np.uint32(a[r0, c0]) + np.uint32(a[r0, c1]) + np.uint32(a[r1, c0]) + np.uint32(a[r1, c1])
            out[i, j] = (s + np.uint32(2)) // np.uint32(4)


@numba.njit(nogil=True, cache=True)
def _max(a, out):
    rows, cols = a.shape
    for i in range(out.shape[0]):
        r0 = 2 * i
        r1 = min(r0 + 1, rows - 1)
        for j in range(out.shape[1]):
            c0 = 2 * j
            c1 = min(c0 + 1, cols - 1)
            out[i, j] = max(max(a[r0, c0], a[r0, c1]), max(a[r1, c0], a[r1, c1]))


@numba.njit(nogil=True, cache=True)
def _mean_float(a, out):
    planes, rows, cols = a.shape
    quarter = np.float32(0.25)
    for p in range(planes):
        for i in range(out.shape[1]):
            r0 = 2 * i
            r1 = min(r0 + 1, rows - 1)
            for j in range(out.shape[2]):
                c0 = 2 * j
                c1 = min(c0 + 1, cols - 1)
                top = np.float32(a[p, r0, c0]) + np.float32(a[p, r0, c1])
                bottom = np.float32(a[p, r1, c0]) + np.float32(a[p, r1, c1])
                out[p, i, j] = (top + bottom) * quarter


def halve_mean_int(a: np.ndarray) -> np.ndarray:
    """The next level of an unsigned integer image: 2 x 2 block means rounded half up, same dtype."""
    a = np.ascontiguousarray(a)
    if a.ndim != 2 or a.dtype.kind != "u" or a.dtype.itemsize > 2:
        raise ValueError(f"halve_mean_int takes a 2-D uint8 or uint16 array, not {a.ndim}-D {a.dtype}")
    out = np.empty(halved_shape(a.shape), a.dtype)
    if a.size:
        _mean_int(a, out)
    return out


def halve_max(a: np.ndarray) -> np.ndarray:
    """The next level of a label image: 2 x 2 block maxima, same dtype."""
    a = np.ascontiguousarray(a)
    if a.ndim != 2:
        raise ValueError(f"halve_max takes a 2-D array, not {a.ndim}-D")
    view = a.view(np.uint8) if a.dtype == np.bool_ else a
    out = np.empty(halved_shape(a.shape), view.dtype)
    if a.size:
        _max(view, out)
    return out.view(np.bool_) if a.dtype == np.bool_ else out


def halve_mean_float(a: np.ndarray) -> np.ndarray:
    """The next level of a float map (2-D, or 3-D with planes first): block means in float32, same dtype."""
    a = np.ascontiguousarray(a)
    if a.ndim not in (2, 3) or a.dtype.kind != "f":
        raise ValueError(f"halve_mean_float takes a 2-D or 3-D float array, not {a.ndim}-D {a.dtype}")
    planes = a if a.ndim == 3 else a[None]
    if planes.dtype == np.float16:  # summed in float32 either way; Numba has no float16 arithmetic
        planes = planes.astype(np.float32)
    out = np.empty(halved_shape(planes.shape), np.float32 if a.dtype == np.float16 else a.dtype)
    if a.size:
        _mean_float(planes, out)
    out = out.astype(a.dtype, copy=False)
    return out if a.ndim == 3 else out[0]
