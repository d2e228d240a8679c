"""One image held in an array through one pass, or through any function of a batch of tiles: the same
split -> run -> merge path as :func:`~semtile.inference.run.stream_scans`, for one image.

:func:`run_pass` runs a pass's runner, blending in memory or out of core;
:func:`run_array` runs any function of a batch of tiles (training and search use it).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.inference.merge import BlendMerger, Merger
from semtile.inference.mergers import make_merger
from semtile.inference.options import ProcessOptions
from semtile.inference.passes import Pass, PassRunner
from semtile.inference.split import TileGrid, read_windows
from semtile.inference.strategy import REGIONS, merge_strategy

__all__ = ["run_pass", "run_array"]


def run_pass(image, p: Pass, *, region_pixels: int | None = None, block_pixels: int | None = None,
             scratch: Path | None = None, runner: PassRunner | None = None, info=None) -> tuple[dict, dict]:
    """Every tile of pass ``p``'s grid over ``image`` (2-D, sliceable: numpy or zarr) through its runner.

    Blended in memory, or out of core when the image has more than
    ``region_pixels`` pixels (partial sums under ``scratch``; each map then
    written region by region into a scratch Zarr array there). Returns
    ``(maps, vectors)``: the blended maps by name and the per-tile vectors in
    row-major tile order. ``info``: the scan's :class:`~semtile.io.scan.ScanInfo`, for
    :meth:`Pass.tile_source`.
    """
    runner = runner if runner is not None else p.runner()
    source = p.tile_source(image, info)
    shape = tuple(int(s) for s in image.shape[-2:])
    grid = p.rule.grid(shape)
    strategy = merge_strategy(shape[0] * shape[1], region_pixels=region_pixels if region_pixels is not None
                              else ProcessOptions().region_pixels, regions_possible=scratch is not None,
                              device=runner.device)
    blocks = None
    if strategy == REGIONS:
        blocks = Path(scratch) / f"blocks-{uuid.uuid4().hex[:8]}"
    merger = make_merger(strategy, grid, device=runner.device, stream=runner.stream, folder=blocks,
                         block_pixels=block_pixels)
    order = merger.order
    origins = grid.origins[order]
    vectors = {name: np.empty((len(grid), width), dtype=np.float32) for name, width in p.vector_widths().items()}
    merged = False
    for first, count in merger.batches(p.batch_size):
        out = runner.run(read_windows(source, origins[first: first + count], grid.tile))
        for name, values in out.vectors.items():
            vectors[name][order[first: first + count]] = values
        if out.maps:
            merger.add(first, **out.maps)
            merged = True
    maps = merger.finish() if merged else {}
    if strategy == REGIONS and maps:
        maps = _materialise(maps, merger.plan, Path(scratch))
        shutil.rmtree(blocks, ignore_errors=True)
    return maps, vectors


def _materialise(maps: dict, plan, scratch: Path) -> dict:
    """Out-of-core maps written region by region into scratch Zarr arrays (bounded memory)."""
    out = {}
    for name, blended in maps.items():
        target = zarr.create_array(str(scratch / f"{name}-{uuid.uuid4().hex[:8]}.zarr"), shape=blended.shape,
                                   dtype="float32", chunks=(*blended.shape[:-2], *(min(plan.region, s)
                                                                                   for s in blended.shape[-2:])),
                                   compressors=None, overwrite=True)
        for y0, y1, x0, x1 in plan.regions:
            target[..., y0:y1, x0:x1] = blended[y0:y1, x0:x1]
        out[name] = target
    return out


def run_array(image, grid: TileGrid, infer: Callable[[np.ndarray], Mapping[str, np.ndarray]], *,
              batch_size: int = 8, merger: Merger | None = None, collect: tuple[str, ...] = ()) -> dict:
    """Every tile of ``grid`` read from ``image`` (reflected at the edges) through ``infer``.

    Parameters
    ----------
    image : 2-D array-like the grid covers (numpy, zarr...).
    grid : the tile grid.
    infer : batch of tiles ``(n, T, T)`` -> named outputs; those of shape
        ``(n, T, T)`` or ``(n, C, T, T)`` that are not in ``collect`` go to ``merger``.
    batch_size : tiles per call of ``infer``.
    merger : receives the maps (default: a new :class:`BlendMerger`).
    collect : outputs gathered per tile instead, e.g. class logits ``(n, K)``.

    Returns
    -------
    dict: the merged maps, and each collected output stacked in tile order.
    """
    if batch_size < 1:
        raise SemtileError(f"batch size must be at least 1, got {batch_size}")
    merger = merger if merger is not None else BlendMerger(grid)
    origins = grid.origins
    gathered: dict[str, list] = {name: [] for name in collect}
    merged = False
    for first in range(0, len(origins), batch_size):
        outputs = infer(read_windows(image, origins[first: first + batch_size], grid.tile))
        maps = {name: value for name, value in outputs.items() if name not in gathered}
        for name in gathered:
            gathered[name].append(np.asarray(outputs[name]))
        if maps:
            merger.add(first, **maps)
            merged = True
    result = merger.finish() if merged else {}
    result.update({name: np.concatenate(parts) for name, parts in gathered.items()})
    return result
