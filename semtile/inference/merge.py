"""Mergers: tile outputs in, whole-image maps out.

A merger receives the outputs of a tile grid batch by batch, as named maps
(``mask`` today; heat maps, anomaly and cluster maps later), each of shape
``(n, T, T)`` or ``(n, C, T, T)`` for ``n`` tiles at their grid origins, and
gives back one ``(H, W)`` or ``(C, H, W)`` map per name. Every map of one
merger is blended with the same raised-cosine window (a partition of unity,
so there are no seams and no tile-wise normalisation) and divided by the same
accumulated weights.

:class:`BlendMerger` keeps its canvases in memory; an out-of-core merger
writing region by region into the result store implements the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from semtile.inference.split import TileGrid
from semtile.kernels.stitch import accumulate_tiles, normalise_canvas
from semtile.kernels.window import blend_window

__all__ = ["Merger", "BlendMerger"]


class Merger(ABC):
    """Blends named per-tile maps of one tile grid into whole-image maps."""

    def __init__(self, grid: TileGrid):
        self.grid = grid

    @abstractmethod
    def add(self, first: int, **maps: np.ndarray) -> None:
        """Add the maps of tiles ``first .. first + n - 1`` of the grid (row-major order).

        Each keyword is one named output, float32 ``(n, T, T)`` or ``(n, C, T, T)``;
        every call names the same outputs.
        """

    @abstractmethod
    def finish(self) -> dict[str, np.ndarray]:
        """The blended maps, ``(H, W)`` or ``(C, H, W)`` float32 each; the merger is spent."""


class BlendMerger(Merger):
    """In-memory blending: one float32 canvas per map (and channel) plus one weight canvas."""

    def __init__(self, grid: TileGrid):
        super().__init__(grid)
        self.window = blend_window(grid.tile, grid.halo)
        self._origins = grid.origins
        self._weights = np.zeros(grid.shape, dtype=np.float32)
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
        weights = self._weights
        for name, tiles in maps.items():
            if len(tiles) != n:
                raise ValueError(f"map {name!r} has {len(tiles)} tiles, the others {n}")
            canvas = self._canvas(name, tiles)
            planes = [(canvas, tiles)] if tiles.ndim == 3 else [(canvas[c], tiles[:, c]) for c in range(tiles.shape[1])]
            for plane, plane_tiles in planes:
                # The weights are the same for every map: accumulated with the first only.
                accumulate_tiles(plane, weights, plane_tiles, origins, self.window)
                weights = None
        self._added += n

    def finish(self) -> dict[str, np.ndarray]:
        out = {}
        for name, canvas in self._canvases.items():
            planes = [canvas] if canvas.ndim == 2 else list(canvas)
            for plane in planes:
                normalise_canvas(plane, self._weights, out=plane)
            out[name] = canvas
        self._canvases, self._weights = {}, None
        return out
