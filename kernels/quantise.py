"""Values in [0, 1] stored as integers: ``round(clip(v, 0, 1) * scale)`` in one pass (Numba, no Python objects).

NaN becomes 0, values below 0 become 0 and above 1 (infinities too) become
``scale``; the product is taken in float32 and rounded half to even
(``np.rint``), exactly as the NumPy chain ``nan_to_num``, ``clip``,
``* float32(scale)``, ``rint`` does, so both give the same bytes.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["quantise_unit"]


@numba.njit(nogil=True, cache=True)
def _quantise(v, scale, out):
    rows, cols = v.shape
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for r in range(rows):
        for c in range(cols):
            x = v[r, c]
            if not x > zero:  # NaN and everything at or below 0
                x = zero
            elif x > one:
                x = one
            out[r, c] = np.rint(x * scale)


def quantise_unit(v: np.ndarray, scale: float, out: np.ndarray) -> np.ndarray:
    """``out[...] = round(clip(v, 0, 1) * scale)`` (NaN as 0); ``v`` 2-D float32, ``out`` 2-D uint8 or uint16 of
    ``v``'s shape with ``scale`` at most its maximum. Returns ``out``."""
    if v.ndim != 2 or v.dtype != np.float32:
        raise ValueError(f"quantise_unit needs a 2-D float32 array, got {v.dtype} of shape {v.shape}")
    if out.shape != v.shape or out.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"quantise_unit writes a uint8 or uint16 array of shape {v.shape}, got {out.dtype} "
                         f"of shape {out.shape}")
    if not 0 < scale <= np.iinfo(out.dtype).max:
        raise ValueError(f"scale {scale} does not fit {out.dtype}")
    _quantise(v, np.float32(scale), out)
    return out
