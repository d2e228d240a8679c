"""Tile geometry and window reading.

A :class:`TileGrid` covers an image of ``shape = (H, W)`` with square windows
of size ``tile``. Windows are placed at a stride ``core = tile - 2*halo``;
window ``(i, j)`` has its top-left corner at ``(i*core - halo, j*core - halo)``
and its *core* (the window without its halo) at ``[i*core, (i+1)*core)`` by
``[j*core, (j+1)*core)``. The cores tile the plane, so every pixel of the image
lies in exactly one core.

:func:`read_windows` reads windows from any 2-D array that supports NumPy
slicing (``numpy.ndarray``, ``zarr.Array``...), one slice per window, and fills
the parts outside the image by reflection, exactly like
``numpy.pad(image, ..., mode="reflect")`` (repeated reflection when a window
is wider than the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semtile.kernels.window import default_halo  # the one halo rule, beside the window it shapes

__all__ = ["GridRule", "TileGrid", "default_halo", "read_windows", "reflect_index"]

def _check_int(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_tile_halo(tile: object, halo: object) -> tuple[int, int]:
    tile = _check_int("tile", tile)
    halo = _check_int("halo", halo)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    if tile - 2 * halo < 1:
        raise ValueError(f"core = tile - 2*halo must be >= 1, got tile={tile}, halo={halo}")
    if 4 * halo > tile:
        raise ValueError(
            f"4*halo must be <= tile (blending ramps must not overlap), "
            f"got tile={tile}, halo={halo}"
        )
    return tile, halo


@dataclass(frozen=True)
class TileGrid:
    """Regular grid of overlapping square windows over an image.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the valid image area, both >= 1.
    tile : int
        Window size ``T`` (square), >= 1.
    halo : int
        Overlap on each side, >= 0, with ``4*halo <= tile``; the stride is
        ``core = tile - 2*halo``.

    Raises
    ------
    TypeError
        If a value is not an integer.
    ValueError
        If a value is out of range.
    """

    shape: tuple[int, int]
    tile: int
    halo: int

    def __post_init__(self) -> None:
        try:
            h, w = self.shape
        except (TypeError, ValueError):
            raise ValueError(f"shape must be a pair (rows, cols), got {self.shape!r}") from None
        h = _check_int("shape[0]", h)
        w = _check_int("shape[1]", w)
        if h < 1 or w < 1:
            raise ValueError(f"shape must be positive, got {(h, w)}")
        tile, halo = _check_tile_halo(self.tile, self.halo)
        object.__setattr__(self, "shape", (h, w))
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "halo", halo)

    @property
    def core(self) -> int:
        """Stride between windows, ``tile - 2*halo``."""
        return self.tile - 2 * self.halo

    @property
    def n_rows(self) -> int:
        """Number of window rows, ``ceil(H / core)``."""
        return -(-self.shape[0] // self.core)

    @property
    def n_cols(self) -> int:
        """Number of window columns, ``ceil(W / core)``."""
        return -(-self.shape[1] // self.core)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def origins(self) -> np.ndarray:
        """int64 ``(n, 2)``: window top-left ``(i*core - halo, j*core - halo)``, row-major."""
        ys = np.arange(self.n_rows, dtype=np.int64) * self.core - self.halo
        xs = np.arange(self.n_cols, dtype=np.int64) * self.core - self.halo
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1)

    @property
    def core_boxes(self) -> np.ndarray:
        """int64 ``(n, 4)``: each window's core ``(y0, x0, y1, x1)`` clipped to the image.

        The boxes are disjoint and together cover the image exactly.
        """
        o = self.origins + self.halo
        h, w = self.shape
        y1 = np.minimum(o[:, 0] + self.core, h)
        x1 = np.minimum(o[:, 1] + self.core, w)
        return np.stack([o[:, 0], o[:, 1], y1, x1], axis=1)


@dataclass(frozen=True)
class GridRule:
    """A pass's tile and halo: derived and checked here once, then trusted by every runner and merger.

    ``multiple`` is the network's stride (``2**d``): the tile must be a multiple
    of it. ``aligned`` passes also need every tile to see the image in the same
    phase of that stride grid (``2 * halo`` a multiple of it): otherwise
    neighbouring tiles see the scan shifted and give different maps of the
    same pixels. Build one with :meth:`derive`.
    """

    tile: int
    halo: int
    multiple: int = 1

    @classmethod
    def derive(cls, tile: int, halo: int | None = None, *, multiple: int = 1, aligned: bool = False,
               what: str = "") -> GridRule:
        """The rule for ``tile`` and ``halo`` (``None``: :func:`default_halo`, moved onto the phase grid when
        ``aligned``); SemtileError naming ``what`` (e.g. ``--tile``, a model file) when a value is out of range."""
        from semtile.errors import SemtileError

        where = f"{what}: " if what else ""
        tile, multiple = _check_int("tile", tile), _check_int("multiple", multiple)
        if tile < 1 or tile % multiple:
            raise SemtileError(f"{where}--tile {tile} must be a multiple of {multiple} (2**d of the model)")
        step = max(1, multiple // 2)
        if halo is None:
            rule = default_halo(tile)
            halo = rule
            if aligned:
                up = -(-rule // step) * step
                halo = up if 4 * up <= tile else rule // step * step
        halo = _check_int("halo", halo)
        if halo < 0 or 4 * halo > tile:
            raise SemtileError(f"{where}--halo {halo} must be between 0 and tile/4 = {tile // 4}")
        if aligned and (2 * halo) % multiple:
            raise SemtileError(f"{where}halo {halo} must be a multiple of {step}: the network works on a grid of "
                               f"{multiple} pixels, and tiles shifted against it would not agree where they overlap")
        return cls(tile, halo, multiple)

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        """The tile grid of this rule over an image of ``shape`` (rows, cols)."""
        return TileGrid(tuple(int(s) for s in shape), self.tile, self.halo)


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map integer coordinates onto ``[0, n)`` like ``np.pad(mode='reflect')``."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def read_windows(source: Any, origins: np.ndarray, tile: int) -> np.ndarray:
    """Read square windows from a 2-D array, reflecting at the borders.

    Parameters
    ----------
    source : array-like
        2-D array with ``.shape`` and NumPy-style slicing
        (``numpy.ndarray``, ``zarr.Array``...). The windows of one row
        origin are read with a single slice ``source[y0:y1, x0:x1]`` within
        the image.
    origins : numpy.ndarray
        Integer, shape ``(n, 2)``: top-left ``(row, col)`` of each window; may
        be negative or reach past the image.
    tile : int
        Window size ``T``, >= 1.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, T, T)``. Window ``k`` equals
        ``np.pad(image, p, mode="reflect")[oy+p : oy+p+T, ox+p : ox+p+T]``
        for a large enough ``p``.

    Raises
    ------
    TypeError
        If ``tile`` is not an int, ``origins`` is not an integer array or
        ``source`` has no 2-D shape.
    ValueError
        If ``tile < 1``, ``origins`` is not ``(n, 2)`` or ``source`` is empty.
    """
    tile = _check_int("tile", tile)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    shape = getattr(source, "shape", None)
    if shape is None:
        raise TypeError(f"source must be a 2-D array with a shape, got {type(source).__name__}")
    if len(shape) != 2:
        raise ValueError(f"source must be 2-D, got shape {tuple(shape)}")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"source must not be empty, got shape {(h, w)}")
    if not isinstance(origins, np.ndarray):
        raise TypeError(f"origins must be a numpy.ndarray, got {type(origins).__name__}")
    if not np.issubdtype(origins.dtype, np.integer):
        raise TypeError(f"origins must have an integer dtype, got {origins.dtype}")
    if origins.ndim != 2 or origins.shape[1] != 2:
        raise ValueError(f"origins must have shape (n, 2) of (row, col), got {origins.shape}")

    out = np.empty((origins.shape[0], tile, tile), dtype=np.float32)
    offsets = np.arange(tile, dtype=np.int64)
    # Windows that share a row origin share one read of the band of rows they need:
    # a chunked store then decodes each chunk once per row of windows, not per window.
    for oy in np.unique(origins[:, 0]):
        members = np.flatnonzero(origins[:, 0] == oy)
        iy = reflect_index(int(oy) + offsets, h)
        y0, y1 = int(iy.min()), int(iy.max()) + 1
        ixs = [reflect_index(int(origins[k, 1]) + offsets, w) for k in members]
        x0 = min(int(ix.min()) for ix in ixs)
        x1 = max(int(ix.max()) for ix in ixs) + 1
        band = np.asarray(source[y0:y1, x0:x1])
        rows = iy - y0
        plain_rows = bool(np.all(np.diff(rows) == 1))
        for k, ix in zip(members, ixs):
            cols = ix - x0
            if plain_rows and np.all(np.diff(cols) == 1):
                out[k] = band[rows[0]: rows[0] + tile, cols[0]: cols[0] + tile]
            else:
                out[k] = band[np.ix_(rows, cols)]
    return out
