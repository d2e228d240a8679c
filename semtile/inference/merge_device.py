"""A merger whose canvases live on a torch device (the GPU): tile maps never leave it.

:class:`DeviceMerger` is :class:`~semtile.inference.merge.BlendMerger` on a
torch device: same raised-cosine window, same accumulate-then-divide, with the
torch kernel of :mod:`semtile.kernels.stitch_torch`. An engine that keeps its
outputs on the GPU hands the tile maps over as device tensors; only the
finished whole-image maps are copied back, once per scan. Numpy tiles are
accepted too (copied to the device), so the merger works behind any engine.

``stream``: the CUDA stream the engine computes on. Running the blend on the
same stream orders it after the batch that produced the tiles and before the
engine reuses that batch's buffers, with no synchronisation of the host.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from semtile.inference.merge import Merger
from semtile.inference.split import TileGrid
from semtile.kernels.stitch_torch import accumulate_tiles_torch, flat_canvas, normalise_canvas_torch
from semtile.kernels.window import blend_window

__all__ = ["DeviceMerger"]


class DeviceMerger(Merger):
    """Blending on a torch device; :meth:`finish` returns float32 numpy maps."""

    def __init__(self, grid: TileGrid, device="cuda", stream=None):
        super().__init__(grid)
        self.device = torch.device(device)
        self.stream = stream
        with self._on_stream():
            self.window = torch.from_numpy(blend_window(grid.tile, grid.halo)).to(self.device)
            self._origins = torch.from_numpy(np.ascontiguousarray(grid.origins, dtype=np.int64)).to(self.device)
            self._weights = flat_canvas(grid.shape, self.device)
        self._canvases: dict[str, torch.Tensor] = {}
        self._added = 0

    def _on_stream(self):
        if self.stream is not None and self.device.type == "cuda":
            return torch.cuda.stream(self.stream)
        return contextlib.nullcontext()

    def add(self, first: int, **maps) -> None:
        if not maps:
            raise ValueError("add() needs at least one named map")
        n = len(next(iter(maps.values())))
        if first < 0 or first + n > len(self.grid):
            raise ValueError(f"tiles {first}..{first + n - 1} are outside the grid of {len(self.grid)} tiles")
        with self._on_stream(), torch.inference_mode():
            origins = self._origins[first: first + n]
            weights = self._weights
            for name, tiles in maps.items():
                if len(tiles) != n:
                    raise ValueError(f"map {name!r} has {len(tiles)} tiles, the others {n}")
                tiles = torch.as_tensor(tiles).to(self.device, non_blocking=True)
                channels = tiles.shape[1] if tiles.ndim == 4 and tiles.shape[1] != 1 else 0
                canvas = self._canvases.get(name)
                if canvas is None:
                    if self._added:
                        raise ValueError(f"map {name!r} appeared after the first batch; name every map in every call")
                    canvas = self._canvases[name] = flat_canvas(self.grid.shape, self.device, channels)
                elif (canvas.shape[0] if canvas.ndim == 2 else 0) != channels:
                    raise ValueError(f"map {name!r} changed its number of channels")
                planes = [(canvas, tiles)] if not channels else [(canvas[c], tiles[:, c]) for c in range(channels)]
                for plane, plane_tiles in planes:
                    accumulate_tiles_torch(plane, weights, plane_tiles, origins, self.window, self.grid.shape)
                    weights = None  # the weights are the same for every map: added with the first only
        self._added += n

    def finish(self) -> dict[str, np.ndarray]:
        out = {}
        with self._on_stream(), torch.inference_mode():
            for name, canvas in self._canvases.items():
                blended = normalise_canvas_torch(canvas, self._weights, self.grid.shape)
                out[name] = blended.cpu().numpy()  # the one copy back: the finished map
        self._canvases, self._weights = {}, None
        return out
