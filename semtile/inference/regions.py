"""Out-of-core blending: a large scan's maps region by region, from per-block partial sums.

The tile grid is cut into **tile blocks** of ``k x k`` tiles (each tile in
exactly one block) and the image into **output regions**, squares of a whole
number of store chunks. Two kinds of work, each of bounded memory whatever
the scan's size:

1. :func:`accumulate_block` (the engine's work): every tile of one block is
   blended into the block's own canvas, which covers the block's tile cores
   plus the halo its windows reach beyond them: a numerator per map and one
   weight canvas, *not* normalised. :func:`save_block` writes them as ``.npy``
   files (beside, then renamed into place: a block computed twice leaves the
   same bytes).
2. :func:`assemble_region`: the partial sums of the blocks that reach one
   region, added in block order and divided by the summed weights. Regions
   are whole store chunks, so every output chunk has exactly one writer.

Why partial sums rather than recomputing tiles: a region that ran every tile
its blend needs would also run the ring of neighbouring tiles whose halos
reach into it: for 2048-pixel regions of 256-pixel tiles (core 192), about
23 instead of 21.3 tiles a side, (23 / 21.3)**2 = 1.17 times the tiles (a
count, not a timing), and the engine is the cost. Partial sums cost one
uncompressed write and read of 8 bytes per pixel and map instead. The
blended maps equal :class:`~semtile.inference.merge.BlendMerger`'s up to the
order of float32 additions (|Δ| ~ 1e-7), at region boundaries too.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from semtile.inference.split import TileGrid, read_windows
from semtile.kernels.stitch import accumulate_tiles
from semtile.kernels.window import blend_window

__all__ = ["RegionPlan", "TileBlock", "BlockSums", "accumulate_block", "save_block", "load_block_part",
           "assemble_region", "WEIGHTS"]

#: Name of the weight canvas among a block's saved partial sums.
WEIGHTS = "weights"
#: Side of a tile block's cores, in pixels, aimed at: ~80 MB of canvases, ~64 MB of tiles per block.
BLOCK_PIXELS = 3072


@dataclass(frozen=True)
class TileBlock:
    """Tiles ``rows x cols`` of the grid (half-open ranges) and the pixels their windows reach."""

    index: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    extent: tuple[int, int, int, int]  # (y0, y1, x0, x1), clipped to the image

    def tile_indices(self, grid: TileGrid) -> np.ndarray:
        """Row-major grid indices of the block's tiles."""
        r = np.arange(*self.rows, dtype=np.int64)[:, None]
        c = np.arange(*self.cols, dtype=np.int64)[None, :]
        return (r * grid.n_cols + c).ravel()


@dataclass(frozen=True)
class RegionPlan:
    """How one scan's grid is cut into tile blocks and its image into output regions.

    ``block_tiles`` tiles per block side; ``region`` the output region side in
    pixels (a multiple of the store's chunk, so regions never share a chunk).
    """

    grid: TileGrid
    block_tiles: int
    region: int

    def __post_init__(self) -> None:
        if self.block_tiles < 1 or self.region < 1:
            raise ValueError(f"block_tiles and region must be >= 1, got {self.block_tiles}, {self.region}")

    @classmethod
    def for_grid(cls, grid: TileGrid, *, region: int, block_pixels: int | None = None) -> "RegionPlan":
        """Blocks of about ``block_pixels`` (default :data:`BLOCK_PIXELS`) per side, whole tiles."""
        return cls(grid, max(1, (block_pixels or BLOCK_PIXELS) // grid.core), region)

    @cached_property
    def blocks(self) -> list[TileBlock]:
        g, k = self.grid, self.block_tiles
        h, w = g.shape
        out = []
        for r0 in range(0, g.n_rows, k):
            for c0 in range(0, g.n_cols, k):
                r1, c1 = min(r0 + k, g.n_rows), min(c0 + k, g.n_cols)
                extent = (max(0, r0 * g.core - g.halo), min(h, r1 * g.core + g.halo),
                          max(0, c0 * g.core - g.halo), min(w, c1 * g.core + g.halo))
                out.append(TileBlock(len(out), (r0, r1), (c0, c1), extent))
        return out

    @cached_property
    def regions(self) -> list[tuple[int, int, int, int]]:
        """Output regions ``(y0, y1, x0, x1)``, row-major."""
        h, w = self.grid.shape
        s = self.region
        return [(y, min(y + s, h), x, min(x + s, w)) for y in range(0, h, s) for x in range(0, w, s)]

    def contributors(self, region: tuple[int, int, int, int]) -> list[int]:
        """Indices of the blocks whose canvases reach ``region``, in block order."""
        y0, y1, x0, x1 = region
        return [b.index for b in self.blocks
                if b.extent[0] < y1 and y0 < b.extent[1] and b.extent[2] < x1 and x0 < b.extent[3]]

    def regions_of(self, block: int) -> list[int]:
        """Indices of the regions block ``block`` reaches."""
        e = self.blocks[block].extent
        return [i for i, (y0, y1, x0, x1) in enumerate(self.regions)
                if e[0] < y1 and y0 < e[1] and e[2] < x1 and x0 < e[3]]


@dataclass
class BlockSums:
    """A block's unnormalised blend: ``maps`` (name -> ``(h, w)`` or ``(C, h, w)``), ``weights`` ``(h, w)``."""

    block: TileBlock
    maps: dict
    weights: np.ndarray
    collected: dict  # per-tile outputs gathered in tile order (e.g. class logits)


def accumulate_block(image, plan: RegionPlan, block: TileBlock,
                     infer: Callable[[np.ndarray], Mapping[str, np.ndarray]], *, batch_size: int = 8,
                     collect: tuple[str, ...] = ()) -> BlockSums:
    """Every tile of ``block`` read from ``image`` (reflected at its edges) through ``infer``, blended unnormalised.

    ``infer`` maps a batch ``(n, T, T)`` to named outputs: those in ``collect``
    are gathered per tile, the others are maps ``(n, T, T)`` or ``(n, C, T, T)``.
    """
    grid = plan.grid
    y0, y1, x0, x1 = block.extent
    window = blend_window(grid.tile, grid.halo)
    origins = grid.origins[block.tile_indices(grid)]
    local = origins - np.array([y0, x0], dtype=np.int64)  # canvas coordinates; what falls outside is clipped
    weights = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    maps: dict[str, np.ndarray] = {}
    gathered: dict[str, list] = {name: [] for name in collect}
    for first in range(0, len(origins), batch_size):
        tiles = read_windows(image, origins[first: first + batch_size], grid.tile)
        outputs = infer(tiles)
        add_weights = True
        for name, value in outputs.items():
            value = np.asarray(value)
            if name in gathered:
                gathered[name].append(value)
                continue
            value = np.ascontiguousarray(value, dtype=np.float32)
            if name not in maps:
                shape = weights.shape if value.ndim == 3 else (value.shape[1], *weights.shape)
                maps[name] = np.zeros(shape, dtype=np.float32)
            planes = [(maps[name], value)] if value.ndim == 3 else \
                [(maps[name][c], np.ascontiguousarray(value[:, c])) for c in range(value.shape[1])]
            for plane, plane_tiles in planes:
                accumulate_tiles(plane, weights if add_weights else None, plane_tiles,
                                 local[first: first + len(value)], window)
                add_weights = False
    collected = {name: np.concatenate(parts) for name, parts in gathered.items()}
    return BlockSums(block, maps, weights, collected)


def _block_file(folder: Path, block: int, name: str) -> Path:
    return Path(folder) / f"block-{block:06d}.{name}.npy"


def save_block(folder: str | Path, sums: BlockSums) -> None:
    """Write a block's partial sums under ``folder``: each file beside, then renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in {**sums.maps, WEIGHTS: sums.weights}.items():
        final = _block_file(folder, sums.block.index, name)
        staged = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(staged, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, array, allow_pickle=False)
            os.replace(staged, final)
        finally:
            staged.unlink(missing_ok=True)


def load_block_part(folder: str | Path, block: TileBlock, name: str,
                    region: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The part of a saved partial sum that lies in ``region``, and where it goes in the region."""
    array = np.load(_block_file(folder, block.index, name), mmap_mode="r", allow_pickle=False)
    by0, by1, bx0, bx1 = block.extent
    y0, y1, x0, x1 = region
    iy0, iy1, ix0, ix1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
    part = array[..., iy0 - by0: iy1 - by0, ix0 - bx0: ix1 - bx0]
    return np.asarray(part), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def assemble_region(folder: str | Path, plan: RegionPlan, region_index: int,
                    names: tuple[str, ...] = ("mask",)) -> dict[str, np.ndarray]:
    """The blended maps of one output region, from the saved partial sums of the blocks that reach it."""
    region = plan.regions[region_index]
    y0, y1, x0, x1 = region
    contributors = [plan.blocks[b] for b in plan.contributors(region)]
    weights = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for block in contributors:
        part, where = load_block_part(folder, block, WEIGHTS, region)
        weights[where] += part
    out = {}
    for name in names:
        total = None
        for block in contributors:
            part, where = load_block_part(folder, block, name, region)
            if total is None:
                total = np.zeros((*part.shape[:-2], y1 - y0, x1 - x0), dtype=np.float32)
            total[(..., *where)] += part
        # Where no tile reached (never, for a grid covering the image) the map is 0, as BlendMerger's.
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.where(weights > 0, total / weights, np.float32(0)).astype(np.float32, copy=False)
    return out
