"""The torch blend (for canvases on the GPU) against the Numba kernel, on the CPU and, where there is one, a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semtile.inference.merge import BlendMerger
from semtile.inference.merge_device import DeviceMerger
from semtile.inference.split import TileGrid
from semtile.kernels.stitch import stitch_tiles
from semtile.kernels.stitch_torch import accumulate_tiles_torch, flat_canvas, normalise_canvas_torch
from semtile.kernels.window import blend_window

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                   reason="needs a CUDA device")])]


def _random_case(rng, n=23, side=32, shape=(70, 95)):
    tiles = rng.random((n, side, side), dtype=np.float32)
    # Origins inside, partly outside (negative, past the edge) and wholly outside the image.
    origins = np.stack([rng.integers(-side, shape[0] + 4, n), rng.integers(-side, shape[1] + 4, n)], 1)
    window = rng.random((side, side), dtype=np.float32) + 0.05
    return tiles, origins.astype(np.int64), window, shape


@pytest.mark.parametrize("device", DEVICES)
def test_torch_blend_equals_numba(device):
    rng = np.random.default_rng(3)
    tiles, origins, window, shape = _random_case(rng)
    want = stitch_tiles(tiles, origins, window, shape)
    canvas, weights = flat_canvas(shape, device), flat_canvas(shape, device)
    t = torch.from_numpy(tiles).to(device)
    o = torch.from_numpy(origins).to(device)
    w = torch.from_numpy(window).to(device)
    for first in range(0, len(tiles), 5):  # batch by batch, as the runner adds them
        accumulate_tiles_torch(canvas, weights, t[first: first + 5], o[first: first + 5], w, shape)
    got = normalise_canvas_torch(canvas, weights, shape).cpu().numpy()
    assert got.shape == shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.array_equal(got == 0, want == 0)  # uncovered pixels are 0 in both


def test_torch_blend_validates():
    shape = (10, 12)
    canvas = flat_canvas(shape, "cpu")
    tiles = torch.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="window shape"):
        accumulate_tiles_torch(canvas, None, tiles, torch.zeros((2, 2), dtype=torch.int64), torch.ones(3, 3), shape)
    with pytest.raises(ValueError, match="origins must be"):
        accumulate_tiles_torch(canvas, None, tiles, torch.zeros((3, 2), dtype=torch.int64), torch.ones(4, 4), shape)
    with pytest.raises(ValueError, match="flat canvas of 121 elements"):
        accumulate_tiles_torch(torch.zeros(120), None, tiles, torch.zeros((2, 2), dtype=torch.int64),
                               torch.ones(4, 4), shape)
    with pytest.raises(ValueError, match="must be positive"):
        flat_canvas((0, 3), "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_device_merger_equals_blend_merger(device):
    """Same grid, same tiles, batch by batch, one map and a 3-channel map: GPU merge == CPU merge within 1e-5."""
    grid = TileGrid((150, 211), 64, 8)
    rng = np.random.default_rng(11)
    masks = rng.random((len(grid), 64, 64), dtype=np.float32)
    heat = rng.random((len(grid), 3, 64, 64), dtype=np.float32)
    cpu, gpu = BlendMerger(grid), DeviceMerger(grid, device)
    for first in range(0, len(grid), 4):
        cpu.add(first, mask=masks[first: first + 4], heat=heat[first: first + 4])
        # Tiles handed over as device tensors (as a GPU engine does) and as numpy.
        gpu.add(first, mask=torch.from_numpy(masks[first: first + 4]).to(device), heat=heat[first: first + 4])
    want, got = cpu.finish(), gpu.finish()
    assert set(got) == {"mask", "heat"} and got["mask"].shape == grid.shape and got["heat"].shape == (3, *grid.shape)
    for name in want:
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)


def test_device_merger_refuses_what_blend_merger_refuses():
    grid = TileGrid((100, 100), 32, 4)
    merger = DeviceMerger(grid, "cpu")
    tiles = np.zeros((2, 32, 32), np.float32)
    merger.add(0, mask=tiles)
    with pytest.raises(ValueError, match="appeared after the first batch"):
        merger.add(2, mask=tiles, other=tiles)
    with pytest.raises(ValueError, match="outside the grid"):
        merger.add(len(grid) - 1, mask=tiles)


def test_window_is_the_cpu_window():
    grid = TileGrid((100, 100), 32, 4)
    assert np.array_equal(DeviceMerger(grid, "cpu").window.numpy(), blend_window(32, 4))
