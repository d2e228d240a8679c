"""Patch classification of a whole scan: the same tiled path, where a tile is a patch.

The scan is cut into a grid of patches with no halo (the patches tile the
image; the last row and column reach past the edge and are filled by
reflection, as every tiled read is) and each goes through the classifier:
one defect probability per patch, in grid order, and the grid's boxes.
"""

from __future__ import annotations

import numpy as np

from semtile.defects.anomaly import as_engine
from semtile.engines.base import DefectEngine
from semtile.errors import SemtileError
from semtile.models.io import LoadedModel

__all__ = ["classify_scan"]


def classify_scan(image, model_or_engine: LoadedModel | DefectEngine, *, tile: int | None = None,
                  batch_size: int = 64) -> dict:
    """Defect probability of every patch of a 2-D float image in [0, 1].

    Returns a dict: ``probability`` (rows, cols) float32 grid, ``boxes`` (n, 4)
    ``(y0, x0, y1, x1)`` of each patch clipped to the image (row-major, as the
    flattened grid), ``tile``.
    """
    from semtile.inference.one_image import run_array
    from semtile.inference.split import TileGrid

    engine = as_engine(model_or_engine, expect_anomaly=False)
    a = np.asarray(image)
    if a.ndim != 2 or min(a.shape) < 1 or not np.issubdtype(a.dtype, np.floating):
        raise SemtileError(f"patch classification: the image must be non-empty 2-D float gray, got {a.dtype} {a.shape}")
    tile = int(tile or engine.tile or engine.model.tile)
    if tile % engine.model.arch.multiple:
        raise SemtileError(f"patch classification: tile {tile} must be a multiple of {engine.model.arch.multiple}")
    grid = TileGrid(tuple(a.shape), tile, 0)
    out = run_array(a, grid, lambda tiles: {"probability": engine.run(tiles)}, batch_size=batch_size,
                    collect=("probability",))
    return {"probability": out["probability"].reshape(grid.n_rows, grid.n_cols).astype(np.float32),
            "boxes": grid.core_boxes, "tile": tile}
