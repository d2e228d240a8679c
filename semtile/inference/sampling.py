"""Tiles drawn from the user's own scans: calibration data for int8 engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semtile.errors import ImageError, SemtileError
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.split import TileGrid, read_windows
from semtile.io.tiff import open_scan

__all__ = ["calibration_tiles"]


def calibration_tiles(scans: list[Path], options: ProcessOptions, count: int = 64, seed: int = 0) -> np.ndarray:
    """Tiles drawn at random from the user's own scans, to calibrate int8 engines.

    Unreadable scans are skipped here (the run reports them); raises when no
    scan yields a tile.
    """
    rng = np.random.default_rng(seed)
    chosen = [scans[i] for i in rng.permutation(len(scans))[: max(1, min(len(scans), 16))]]
    per_scan = max(1, -(-count // len(chosen)))
    tiles = []
    for path in chosen:
        try:
            with open_scan(path, page=options.page, databar_rows=options.databar_rows,
                   max_pixels=options.max_pixels) as scan:
                rows, cols = scan.info.valid_shape
                if min(rows, cols) < MIN_SIDE:
                    continue
                image = scan.valid()
                grid = TileGrid((rows, cols), options.tile, options.halo)
                pick = grid.origins[rng.permutation(len(grid))[:per_scan]]
                tiles.append(read_windows(image.compute() if image.nbytes < 2**28 else image, pick, options.tile))
        except ImageError:
            continue
    if not tiles:
        raise SemtileError("no readable scan to take calibration tiles from")
    return np.concatenate(tiles)[:count]
