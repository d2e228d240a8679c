"""Out-of-core blending from per-block partial sums equals the in-memory merger, boundaries included."""

import numpy as np
import pytest

from semtile.inference.one_image import run_array
from semtile.inference.regions import RegionPlan, accumulate_block, assemble_region, save_block
from semtile.inference.split import TileGrid


def _infer(tiles):
    # Position-dependent inside the tile (as a network's output is): seams would show if blending were wrong.
    ramp = np.linspace(0.0, 1.0, tiles.shape[-1], dtype=np.float32)
    return {"mask": np.tanh(3 * tiles) * ramp[None, None, :] + ramp[None, :, None] ** 2,
            "heat": np.stack([tiles, 1 - tiles ** 2], axis=1),
            "logits": tiles.mean(axis=(1, 2))[:, None] * np.arange(3, dtype=np.float32)}


@pytest.mark.parametrize("shape,tile,halo,block_pixels,region", [
    ((301, 517), 32, 4, 48, 64),     # blocks of 2x2 tiles, regions cutting through blocks
    ((256, 256), 64, 8, 200, 96),    # one tile row per block ... several regions per block
    ((97, 1000), 32, 8, 16, 512),    # one tile per block, regions wider than blocks
    ((40, 41), 32, 0, 32, 16),       # no halo
])
def test_partial_sums_equal_the_in_memory_merger(tmp_path, shape, tile, halo, block_pixels, region):
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    grid = TileGrid(shape, tile, halo)
    expected = run_array(image, grid, _infer, batch_size=5, collect=("logits",))

    plan = RegionPlan.for_grid(grid, region=region, block_pixels=block_pixels)
    assert sorted(np.concatenate([b.tile_indices(grid) for b in plan.blocks]).tolist()) == list(range(len(grid)))
    logits = np.empty_like(expected["logits"])
    for block in plan.blocks:
        sums = accumulate_block(image, plan, block, _infer, batch_size=3, collect=("logits",))
        logits[block.tile_indices(grid)] = sums.collected["logits"]
        save_block(tmp_path, sums)
    mask = np.full(shape, np.nan, dtype=np.float32)
    heat = np.full((2, *shape), np.nan, dtype=np.float32)
    for i, (y0, y1, x0, x1) in enumerate(plan.regions):
        maps = assemble_region(tmp_path, plan, i, names=("mask", "heat"))
        mask[y0:y1, x0:x1] = maps["mask"]
        heat[:, y0:y1, x0:x1] = maps["heat"]
    assert np.abs(mask - expected["mask"]).max() <= 1e-6
    assert np.abs(heat - expected["heat"]).max() <= 1e-6
    np.testing.assert_array_equal(logits, expected["logits"])


def test_regions_tile_the_image_and_blocks_reach_only_their_neighbourhood():
    grid = TileGrid((1000, 1300), 64, 8)
    plan = RegionPlan.for_grid(grid, region=256, block_pixels=192)
    covered = np.zeros(grid.shape, dtype=np.int64)
    for y0, y1, x0, x1 in plan.regions:
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()
    # A block's canvas reaches one halo beyond its cores, never a whole region further.
    for block in plan.blocks:
        y0, y1, x0, x1 = block.extent
        assert y1 - y0 <= plan.block_tiles * grid.core + 2 * grid.halo
        assert len(plan.regions_of(block.index)) <= 9


def test_saving_a_block_twice_leaves_the_same_bytes(tmp_path):
    image = np.random.default_rng(1).random((100, 90), dtype=np.float32)
    plan = RegionPlan.for_grid(TileGrid(image.shape, 32, 4), region=64, block_pixels=48)
    block = plan.blocks[1]
    save_block(tmp_path, accumulate_block(image, plan, block, _infer, collect=("logits",)))
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save_block(tmp_path, accumulate_block(image, plan, block, _infer, collect=("logits",)))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
