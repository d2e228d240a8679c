"""Mergers: tile outputs in, whole-image maps out.

A merger receives the outputs of a tile grid batch by batch, as named maps
(``mask`` today; heat maps, anomaly and cluster maps later), each of shape
``(n, T, T)`` or ``(n, C, T, T)`` for ``n`` tiles at their grid origins, and
gives back one ``(H, W)`` or ``(C, H, W)`` map per name. Every map of one
merger is blended with the same raised-cosine window (a partition of unity,
so there are no seams and no tile-wise normalisation) and divided by the same
accumulated weights.

Three implementations of one interface:

* :class:`BlendMerger`: canvases in memory (numpy, the Numba kernel);
* :class:`~semtile.inference.merge_device.DeviceMerger`: canvases on the
  engine's torch device (the GPU), so tile maps never leave it;
* :class:`~semtile.inference.regions.RegionMerger`: out of core, tile block by
  tile block into partial sums on disk, read back region by region.

A merger takes the tiles in its own :attr:`Merger.order` (row-major, or
block by block out of core). :func:`semtile.inference.mergers.make_merger`
builds the one that :func:`~semtile.inference.strategy.merge_strategy` chose.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict

import numpy as np

from semtile.inference.split import TileGrid
from semtile.kernels.stitch import accumulate_tiles, accumulate_weights, normalise_canvas
from semtile.kernels.window import blend_window

__all__ = ["Merger", "BlendMerger"]


class Merger(ABC):
    """Blends named per-tile maps of one tile grid into whole-image maps."""

    def __init__(self, grid: TileGrid):
        self.grid = grid

    @property
    def order(self) -> np.ndarray:
        """Grid indices of the tiles in the order :meth:`add` takes them (default: row-major)."""
        return np.arange(len(self.grid), dtype=np.int64)

    def batches(self, batch_size: int) -> list[tuple[int, int]]:
        """(first, count) of the batches of at most ``batch_size`` tiles a runner feeds this merger."""
        n = len(self.order)
        return [(f, min(batch_size, n - f)) for f in range(0, n, batch_size)]

    @abstractmethod
    def add(self, first: int, **maps: np.ndarray) -> None:
        """Add the maps of tiles ``order[first .. first + n - 1]`` of the grid.

        Each keyword is one named output, float32 ``(n, T, T)`` or ``(n, C, T, T)``;
        every call names the same outputs.
        """

    @abstractmethod
    def finish(self) -> dict[str, np.ndarray]:
        """The blended maps, ``(H, W)`` or ``(C, H, W)`` float32 each (array-likes out of core); the merger is spent."""


#: Weight canvases by grid: scans of one size share theirs, so each scan's blend only adds its tiles. Kept up
#: to this many bytes in all, most recently used first; a canvas larger than a quarter of it is not kept.
_WEIGHTS: OrderedDict = OrderedDict()
_WEIGHTS_BYTES = 64 * 2**20
_WEIGHTS_LOCK = threading.Lock()


def grid_weights(grid: TileGrid, window: np.ndarray) -> np.ndarray:
    """The (read-only) weight canvas of ``grid``'s tiles in row-major order, the order a BlendMerger adds them."""
    origins = grid.origins
    key = (tuple(grid.shape), grid.tile, grid.halo, origins.tobytes())
    with _WEIGHTS_LOCK:
        weights = _WEIGHTS.get(key)
        if weights is not None:
            _WEIGHTS.move_to_end(key)
            return weights
    weights = accumulate_weights(grid.shape, origins, window)
    weights.flags.writeable = False
    if weights.nbytes <= _WEIGHTS_BYTES // 4:
        with _WEIGHTS_LOCK:
            _WEIGHTS[key] = weights
            while sum(w.nbytes for w in _WEIGHTS.values()) > _WEIGHTS_BYTES:
                _WEIGHTS.popitem(last=False)
    return weights


class BlendMerger(Merger):
    """In-memory blending: one float32 canvas per map (and channel), divided by the grid's weight canvas."""

    def __init__(self, grid: TileGrid):
        super().__init__(grid)
        self.window = blend_window(grid.tile, grid.halo)
        self._origins = grid.origins
        self._weights = grid_weights(grid, self.window)
        self._canvases: dict[str, np.ndarray] = {}
        self._added = 0  # tiles added so far

    def _canvas(self, name: str, tiles: np.ndarray) -> np.ndarray:
        canvas = self._canvases.get(name)
        shape = (tiles.shape[1], *self.grid.shape) if tiles.ndim == 4 else self.grid.shape
        if canvas is None:
            if self._added:  # a map that missed earlier batches would be blended from part of the tiles
                raise ValueError(f"map {name!r} appeared after the first batch; name every map in every call")
            canvas = self._canvases[name] = np.zeros(shape, dtype=np.float32)
        elif canvas.shape != shape:
            raise ValueError(f"map {name!r} changed shape from {canvas.shape[:-2]} to {shape[:-2]} channels")
        return canvas

    def add(self, first: int, **maps: np.ndarray) -> None:
        if not maps:
            raise ValueError("add() needs at least one named map")
        n = len(next(iter(maps.values())))
        origins = self._origins[first: first + n]
        if len(origins) != n:
            raise ValueError(f"tiles {first}..{first + n - 1} are outside the grid of {len(self.grid)} tiles")
        for name, tiles in maps.items():
            if len(tiles) != n:
                raise ValueError(f"map {name!r} has {len(tiles)} tiles, the others {n}")
            canvas = self._canvas(name, tiles)
            planes = [(canvas, tiles)] if tiles.ndim == 3 else [(canvas[c], tiles[:, c]) for c in range(tiles.shape[1])]
            for plane, plane_tiles in planes:
                accumulate_tiles(plane, None, plane_tiles, origins, self.window)  # the weights are the grid's
        self._added += n

    def finish(self) -> dict[str, np.ndarray]:
        if self._canvases and self._added != len(self._origins):
            # The weights are those of the whole grid: a partial blend would be divided by tiles it never had.
            raise ValueError(f"{self._added} tiles added to a grid of {len(self._origins)}: add every tile once")
        out = {}
        for name, canvas in self._canvases.items():
            planes = [canvas] if canvas.ndim == 2 else list(canvas)
            for plane in planes:
                normalise_canvas(plane, self._weights, out=plane)
            out[name] = canvas
        self._canvases, self._weights = {}, None
        return out
