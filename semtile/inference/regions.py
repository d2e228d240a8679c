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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from semtile.inference.merge import Merger
from semtile.inference.split import TileGrid, read_windows
from semtile.kernels.stitch import accumulate_tiles
from semtile.kernels.window import blend_window

__all__ = ["RegionPlan", "TileBlock", "BlockSums", "RegionMerger", "BlendedMap", "accumulate_block", "save_block",
           "load_block_part", "assemble", "assemble_region", "WEIGHTS"]

#: Name of the weight canvas among a block's saved partial sums.
WEIGHTS = "weights"


@dataclass(frozen=True)
class TileBlock:
    """Tiles ``rows x cols`` of the grid (half-open ranges) and the pixels their windows reach."""

    index: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    extent: tuple[int, int, int, int]  # (y0, y1, x0, x1), clipped to the image

    @property
    def tile_count(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])

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
    def for_grid(cls, grid: TileGrid, *, region: int, block_pixels: int | None = None) -> RegionPlan:
        """Blocks of about ``block_pixels`` (default :data:`BLOCK_PIXELS`) per side, whole tiles."""
        from semtile.inference.strategy import BLOCK_PIXELS

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


class RegionMerger(Merger):
    """The out-of-core merger: tiles block by block into partial sums saved under ``folder``.

    It takes the tiles of ``blocks`` (default: all of the plan's) block after
    block (:attr:`order`); each block's canvases (a numerator per map and one
    weight canvas, unnormalised) are saved as soon as its last tile is added,
    and ``on_block(index)`` is called. :meth:`finish` gives each map as a
    :class:`BlendedMap`, which reads any window of the blended map back from
    the saved partial sums of the blocks that reach it. Memory: one block of
    canvases at a time, whatever the scan's size.
    """

    def __init__(self, plan: RegionPlan, folder: str | Path | None, blocks: list[int] | None = None,
                 on_block: Callable[[int], None] | None = None, save: bool = True):
        super().__init__(plan.grid)
        self.plan, self.folder, self.on_block, self.save = plan, folder, on_block, save
        self.blocks = [plan.blocks[b] for b in (range(len(plan.blocks)) if blocks is None else blocks)]
        self._order = np.concatenate([b.tile_indices(plan.grid) for b in self.blocks]) if self.blocks else \
            np.zeros(0, dtype=np.int64)
        self._ends = np.cumsum([b.tile_count for b in self.blocks])
        self.window = blend_window(plan.grid.tile, plan.grid.halo)
        self._current = 0  # index into self.blocks of the block being filled
        self._added = 0
        self._sums: BlockSums | None = None
        self.saved: list[BlockSums] = []  # with save=False: every block's sums, kept in memory
        self._names: dict[str, int] = {}  # map -> channels (0: one plane)

    @property
    def order(self) -> np.ndarray:
        return self._order

    def batches(self, batch_size: int) -> list[tuple[int, int]]:
        """(first, count) of batches of at most ``batch_size`` tiles that never straddle two blocks."""
        out, start = [], 0
        for end in self._ends:
            out += [(f, min(batch_size, int(end) - f)) for f in range(start, int(end), batch_size)]
            start = int(end)
        return out

    def _open(self) -> BlockSums:
        if self._sums is None:
            block = self.blocks[self._current]
            y0, y1, x0, x1 = block.extent
            self._sums = BlockSums(block, {}, np.zeros((y1 - y0, x1 - x0), dtype=np.float32), {})
        return self._sums

    def _close(self) -> None:
        sums = self._sums
        if self.save:
            save_block(self.folder, sums)
        else:
            self.saved.append(sums)
        self._sums = None
        self._current += 1
        if self.on_block is not None:
            self.on_block(sums.block.index)

    def add(self, first: int, **maps) -> None:
        if not maps:
            raise ValueError("add() needs at least one named map")
        n = len(next(iter(maps.values())))
        if first != self._added:
            raise ValueError(f"tiles must come in order: expected tile {self._added} of the merger, got {first}")
        if first + n > len(self._order):
            raise ValueError(f"tiles {first}..{first + n - 1} are outside the merger's {len(self._order)} tiles")
        done = 0
        while done < n:
            sums = self._open()
            end = int(self._ends[self._current])
            take = min(n - done, end - (first + done))
            y0, _, x0, _ = sums.block.extent
            origins = self.grid.origins[self._order[first + done: first + done + take]] - \
                np.array([y0, x0], dtype=np.int64)
            add_weights = True
            for name, value in maps.items():
                value = np.ascontiguousarray(np.asarray(value[done: done + take]), dtype=np.float32)
                channels = value.shape[1] if value.ndim == 4 else 0
                if self._names.setdefault(name, channels) != channels:
                    raise ValueError(f"map {name!r} changed its number of channels")
                if name not in sums.maps:
                    shape = sums.weights.shape if not channels else (channels, *sums.weights.shape)
                    sums.maps[name] = np.zeros(shape, dtype=np.float32)
                planes = [(sums.maps[name], value)] if not channels else \
                    [(sums.maps[name][c], np.ascontiguousarray(value[:, c])) for c in range(channels)]
                for plane, plane_tiles in planes:
                    accumulate_tiles(plane, sums.weights if add_weights else None, plane_tiles, origins, self.window)
                    add_weights = False
            done += take
            if first + done == end:
                self._close()
        self._added += n

    def finish(self) -> dict:
        if self._added != len(self._order):
            raise ValueError(f"the merger got {self._added} of its {len(self._order)} tiles")
        return {name: BlendedMap(self.folder, self.plan, name, channels) for name, channels in self._names.items()}


class BlendedMap:
    """One blended map of an out-of-core merge, read window by window from the saved partial sums.

    ``shape`` is ``(H, W)`` (or ``(C, H, W)``); ``map[y0:y1, x0:x1]`` gives that
    window, float32, equal to :class:`~semtile.inference.merge.BlendMerger`'s
    up to the order of float32 additions. Small and picklable: a task on
    another worker reads the same window.
    """

    def __init__(self, folder: str | Path, plan: RegionPlan, name: str, channels: int = 0):
        self.folder, self.plan, self.name, self.channels = str(folder), plan, name, channels
        self.shape = (*((channels,) if channels else ()), *plan.grid.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        h, w = self.plan.grid.shape
        if key is Ellipsis:
            key = (slice(None), slice(None))
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) and k.step in (None, 1)
                                                                 for k in key)):
            raise TypeError(f"a blended map is read by a window [y0:y1, x0:x1], got {key!r}")
        (y0, y1, _), (x0, x1, _) = key[0].indices(h), key[1].indices(w)
        return assemble(self.folder, self.plan, (y0, y1, x0, x1), (self.name,))[self.name]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def accumulate_block(image, plan: RegionPlan, block: TileBlock,
                     infer: Callable[[np.ndarray], Mapping[str, np.ndarray]], *, batch_size: int = 8,
                     collect: tuple[str, ...] = ()) -> BlockSums:
    """Every tile of ``block`` read from ``image`` (reflected at its edges) through ``infer``, blended unnormalised.

    ``infer`` maps a batch ``(n, T, T)`` to named outputs: those in ``collect``
    are gathered per tile, the others are maps ``(n, T, T)`` or ``(n, C, T, T)``.
    """
    merger = RegionMerger(plan, None, blocks=[block.index], save=False)
    gathered: dict[str, list] = {name: [] for name in collect}
    origins = plan.grid.origins[merger.order]
    for first, count in merger.batches(batch_size):
        outputs = infer(read_windows(image, origins[first: first + count], plan.grid.tile))
        for name in gathered:
            gathered[name].append(np.asarray(outputs[name]))
        merger.add(first, **{k: v for k, v in outputs.items() if k not in gathered})
    sums = merger.saved[0]
    sums.collected = {name: np.concatenate(parts) for name, parts in gathered.items()}
    return sums


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
    """The blended maps of output region ``region_index`` of ``plan``, from the saved partial sums."""
    return assemble(folder, plan, plan.regions[region_index], names)


def assemble(folder: str | Path, plan: RegionPlan, region: tuple[int, int, int, int],
             names: tuple[str, ...] = ("mask",)) -> dict[str, np.ndarray]:
    """The blended maps of the window ``region`` (y0, y1, x0, x1), from the saved partial sums of the blocks
    that reach it."""
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
