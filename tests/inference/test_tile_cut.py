"""Tiles cut from a frame padded once equal the windows read with reflection, for one grid or several; a scan
prepared in memory gives exactly the result of the same scan through a scratch copy."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from semtile.engines.base import Engine, EngineOutput
from semtile.execution.local import ProcessOptions, analyse_scan
from semtile.inference.segment import SegmentPass
from semtile.inference.split import TileGrid, read_windows
from semtile.kernels.tiles import cut_tiles, interior, padded_frame, reflect_borders
from semtile.models.io import load_bundle


@pytest.mark.parametrize("shape", [(900, 1280), (17, 300), (16, 16), (100, 37), (1, 5)])
def test_cut_tiles_equal_reflected_windows(shape):
    image = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    grids = [(256, 32), (64, 8), (32, 0)]
    pad, frame = padded_frame(shape, grids)
    padded = np.full(frame, np.nan, dtype=np.float32)
    interior(padded, shape, pad)[...] = image
    reflect_borders(padded, shape, pad)
    assert not np.isnan(padded).any()
    for tile, halo in grids:
        grid = TileGrid(shape, tile, halo)
        out = np.empty((len(grid), tile, tile), np.float32)
        cut_tiles(padded, grid.origins, tile, pad, out)
        assert np.array_equal(out, read_windows(image, grid.origins, tile)), (shape, tile, halo)


class NullEngine(Engine):
    name, precision = "null", "f32"

    def __init__(self, labels):
        self.labels = labels

    def run(self, tiles):
        return EngineOutput(class_logits=np.zeros((len(tiles), self.labels), np.float32), mask_probs=tiles * 0.9)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "rgb"])
def test_in_memory_equals_the_scratch_copy(tiny_bundle, tmp_path, dtype):
    rng = np.random.default_rng(5)
    frame = rng.random((150, 170))
    frame[-12:] = 0.05  # a data bar: a white rule over a dark body
    frame[-12] = 1.0
    data = {"uint8": (frame * 255).astype(np.uint8), "uint16": (frame * 65535).astype(np.uint16),
            "float32": (frame * 3 - 1).astype(np.float32),
            "rgb": np.repeat((frame * 255).astype(np.uint8)[..., None], 3, axis=2)}[dtype]
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, data, photometric="rgb" if dtype == "rgb" else "minisblack")
    bundle = load_bundle(tiny_bundle)
    results = []
    for region_pixels in (None, 0):  # in memory, then through a scratch copy
        options = ProcessOptions(tile=64, halo=8, batch_size=3,
                                 **({} if region_pixels is None else {"region_pixels": region_pixels}))
        passes = [SegmentPass.of_engine(NullEngine(len(bundle.labels)), bundle, options)]
        results.append(analyse_scan(path, passes, options, tmp_path)[0])
    memory, scratch = results
    assert memory.attrs["databar_rows"] == scratch.attrs["databar_rows"] == 12
    assert np.array_equal(np.asarray(memory.image), np.asarray(scratch.image))
    assert np.array_equal(memory.mask, scratch.mask) and memory.adhesive_ratio == scratch.adhesive_ratio
    assert memory.attrs["provenance"]["input"]["sha256"] == scratch.attrs["provenance"]["input"]["sha256"]
