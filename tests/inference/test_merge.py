"""Mergers against the plain-numpy stitching oracle, for several maps and channels at once."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.inference.merge import BlendMerger
from semtile.inference.one_image import run_array
from semtile.inference.split import TileGrid, read_windows
from semtile.kernels.stitch import stitch_tiles_reference
from semtile.kernels.window import blend_window


@pytest.mark.parametrize("shape,tile,halo,batch", [((100, 130), 32, 8, 5), ((47, 300), 64, 16, 1), ((20, 20), 32, 0, 3)])
def test_blend_merger_matches_reference_for_every_map(shape, tile, halo, batch):
    grid = TileGrid(shape, tile, halo)
    rng = np.random.default_rng(0)
    mask = rng.random((len(grid), tile, tile), dtype=np.float32)
    heat = rng.random((len(grid), 3, tile, tile), dtype=np.float32)  # a map with channels
    merger = BlendMerger(grid)
    for first in range(0, len(grid), batch):
        merger.add(first, mask=mask[first: first + batch], heat=heat[first: first + batch])
    maps = merger.finish()
    window = blend_window(tile, halo)
    np.testing.assert_array_equal(maps["mask"], stitch_tiles_reference(mask, grid.origins, window, shape))
    assert maps["heat"].shape == (3, *shape)
    for c in range(3):
        np.testing.assert_allclose(maps["heat"][c], stitch_tiles_reference(heat[:, c], grid.origins, window, shape),
                                   rtol=1e-6, atol=1e-6)


def test_constant_tiles_merge_to_the_constant():
    grid = TileGrid((90, 70), 32, 8)
    merger = BlendMerger(grid)
    merger.add(0, mask=np.full((len(grid), 32, 32), 0.25, np.float32))
    np.testing.assert_allclose(merger.finish()["mask"], 0.25, rtol=1e-6)


def test_blend_merger_rejects_inconsistent_maps():
    grid = TileGrid((64, 64), 32, 8)
    merger = BlendMerger(grid)
    tiles = np.zeros((2, 32, 32), np.float32)
    merger.add(0, mask=tiles)
    with pytest.raises(ValueError, match="appeared after the first batch"):
        merger.add(2, mask=tiles, heat=tiles)
    with pytest.raises(ValueError, match="outside the grid"):
        merger.add(len(grid) - 1, mask=tiles)
    with pytest.raises(ValueError, match="has 1 tiles"):
        merger.add(2, mask=tiles, other=tiles[:1])
    with pytest.raises(ValueError, match="at least one"):
        merger.add(2)


def test_a_blend_missing_tiles_is_refused_and_grids_of_one_shape_share_their_weights():
    grid = TileGrid((100, 130), 32, 8)
    tiles = np.random.default_rng(1).random((len(grid), 32, 32), dtype=np.float32)
    merger = BlendMerger(grid)
    merger.add(0, mask=tiles[:-1])
    with pytest.raises(ValueError, match="add every tile once"):  # divided by weights it never had: wrong
        merger.finish()
    first, second = BlendMerger(grid), BlendMerger(TileGrid((100, 130), 32, 8))
    assert second._weights is first._weights and not first._weights.flags.writeable
    import semtile.inference.merge as merge

    big = TileGrid((2100, 2100), 256, 32)  # 17.6 MB of weights: more than a quarter of what is kept
    assert BlendMerger(big)._weights is not BlendMerger(big)._weights
    assert sum(w.nbytes for w in merge._WEIGHTS.values()) <= merge._WEIGHTS_BYTES
    for merger in (first, second):
        merger.add(0, mask=tiles)
    np.testing.assert_array_equal(first.finish()["mask"], second.finish()["mask"])


def test_run_array_merges_maps_and_collects_vectors_in_tile_order():
    rng = np.random.default_rng(3)
    image = rng.random((70, 90)).astype(np.float32)
    grid = TileGrid(image.shape, 32, 8)

    def infer(tiles):
        return {"mask": tiles * 2.0, "mean": tiles.mean(axis=(1, 2))[:, None]}

    out = run_array(image, grid, infer, batch_size=4, collect=("mean",))
    np.testing.assert_allclose(out["mask"], image * 2.0, rtol=1e-6)  # identity maps blend back exactly
    expected = read_windows(image, grid.origins, 32).mean(axis=(1, 2))[:, None]
    np.testing.assert_allclose(out["mean"], expected, rtol=1e-6)
