"""Tests for semtile.kernels.window and semtile.kernels.stitch."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from semtile.inference.split import TileGrid
from semtile.kernels.stitch import (
    accumulate_tiles,
    accumulate_tiles_reference,
    accumulate_weights,
    normalise_canvas,
    stitch_tiles,
    stitch_tiles_reference,
)
from semtile.kernels.window import blend_profile, blend_window

SHAPES = [(37, 53), (101, 67), (250, 333), (5, 7)]
TILE_HALO = [(16, 3), (32, 8), (33, 5), (64, 0)]


def _random_tiles(n: int, tile: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, tile, tile), dtype=np.float32)


# --------------------------------------------------------------------------
# window
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tile,halo", TILE_HALO + [(8, 2), (9, 2), (3, 0), (1, 0)])
def test_window_shape_dtype_and_separable(tile: int, halo: int) -> None:
    w = blend_profile(tile, halo)
    win = blend_window(tile, halo)
    assert w.shape == (tile,) and w.dtype == np.float32
    assert win.shape == (tile, tile) and win.dtype == np.float32
    assert win.flags.c_contiguous
    np.testing.assert_allclose(win, np.outer(w, w), atol=1e-7)
    assert np.all(w > 0) and np.all(w <= 1)
    np.testing.assert_array_equal(w, w[::-1])
    if halo == 0:
        assert np.all(win == 1)
    else:
        assert np.all(w[2 * halo : tile - 2 * halo] == 1)


@pytest.mark.parametrize("tile,halo", [(16, 3), (32, 8), (33, 5), (64, 0), (8, 2), (256, 32)])
def test_window_partition_of_unity(tile: int, halo: int) -> None:
    core = tile - 2 * halo
    w = blend_profile(tile, halo).astype(np.float64)
    n = 6
    total = np.zeros(core * (n - 1) + tile)
    for i in range(n):
        total[i * core : i * core + tile] += w
    # interior: from the end of the first window's rising ramp to the start of
    # the last window's falling ramp
    interior = total[2 * halo : (n - 1) * core + tile - 2 * halo]
    np.testing.assert_allclose(interior, 1.0, atol=1e-6)
    # and in 2-D
    win = blend_window(tile, halo).astype(np.float64)
    total2 = np.zeros((core * 2 + tile,) * 2)
    for i in range(3):
        for j in range(3):
            total2[i * core : i * core + tile, j * core : j * core + tile] += win
    inner = total2[2 * halo : 2 * core + tile - 2 * halo, 2 * halo : 2 * core + tile - 2 * halo]
    np.testing.assert_allclose(inner, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "tile,halo,exc,match",
    [
        (0, 0, ValueError, "tile must be >= 1"),
        (8, -1, ValueError, "halo must be >= 0"),
        (8, 3, ValueError, "4\\*halo must be <= tile"),
        (4, 2, ValueError, "tile - 2\\*halo must be >= 1"),
        (8.0, 1, TypeError, "tile must be an int"),
        (8, True, TypeError, "halo must be an int"),
    ],
)
def test_window_validation(tile, halo, exc, match) -> None:
    with pytest.raises(exc, match=match):
        blend_window(tile, halo)
    with pytest.raises(exc, match=match):
        blend_profile(tile, halo)


# --------------------------------------------------------------------------
# stitch: numba vs numpy reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILE_HALO)
def test_stitch_matches_reference(shape, tile, halo) -> None:
    grid = TileGrid(shape, tile, halo)
    origins = grid.origins
    tiles = _random_tiles(len(grid), tile, seed=len(grid))
    window = blend_window(tile, halo)
    got = stitch_tiles(tiles, origins, window, shape)
    ref = stitch_tiles_reference(tiles, origins, window, shape)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILE_HALO)
def test_accumulate_in_batches_matches_reference(shape, tile, halo) -> None:
    grid = TileGrid(shape, tile, halo)
    origins = grid.origins
    tiles = _random_tiles(len(grid), tile, seed=1)
    window = blend_window(tile, halo)
    canvas = np.zeros(shape, np.float32)
    weights = np.zeros(shape, np.float32)
    batch = 3
    for s in range(0, len(grid), batch):
        accumulate_tiles(canvas, weights, tiles[s : s + batch], origins[s : s + batch], window)
    ref_c = np.zeros(shape, np.float32)
    ref_w = np.zeros(shape, np.float32)
    accumulate_tiles_reference(ref_c, ref_w, tiles, origins, window)
    np.testing.assert_allclose(canvas, ref_c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(weights, ref_w, rtol=0, atol=1e-6)
    assert np.all(weights > 0)  # every pixel covered
    got = normalise_canvas(canvas, weights)
    np.testing.assert_allclose(got, stitch_tiles_reference(tiles, origins, window, shape), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILE_HALO)
@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_weights_without_tiles_are_those_accumulated_batch_by_batch(shape, tile, halo, batch) -> None:
    grid = TileGrid(shape, tile, halo)
    origins, window = grid.origins, blend_window(tile, halo)
    tiles = _random_tiles(len(grid), tile, seed=2)
    canvas, weights = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for s in range(0, len(grid), batch):
        accumulate_tiles(canvas, weights, tiles[s : s + batch], origins[s : s + batch], window)
    got = accumulate_weights(shape, origins, window)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, weights)  # bit for bit: the same sums in the same order
    ref_w = np.zeros(shape, np.float32)
    accumulate_tiles_reference(np.zeros(shape, np.float32), ref_w, tiles, origins, window)
    np.testing.assert_allclose(got, ref_w, rtol=0, atol=1e-6)


def test_accepts_channel_axis() -> None:
    grid = TileGrid((40, 50), 16, 3)
    tiles = _random_tiles(len(grid), 16)
    window = blend_window(16, 3)
    a = stitch_tiles(tiles, grid.origins, window, grid.shape)
    b = stitch_tiles(tiles[:, None], grid.origins, window, grid.shape)
    np.testing.assert_array_equal(a, b)


def test_tiles_outside_image_are_ignored() -> None:
    tiles = np.ones((4, 8, 8), np.float32)
    origins = np.array([[-20, 0], [0, 30], [50, 50], [-8, -8]], np.int64)
    window = blend_window(8, 1)
    got = stitch_tiles(tiles, origins, window, (10, 12))
    ref = stitch_tiles_reference(tiles, origins, window, (10, 12))
    np.testing.assert_array_equal(got, ref)
    assert np.all(got == 0)


def test_uncovered_pixels_are_zero_and_empty_batch_is_noop() -> None:
    tiles = np.full((1, 4, 4), 3.0, np.float32)
    got = stitch_tiles(tiles, np.array([[1, 1]]), np.ones((4, 4), np.float32), (8, 8))
    assert np.all(got[1:5, 1:5] == 3.0)
    got[1:5, 1:5] = 0
    assert np.all(got == 0)
    canvas = np.zeros((8, 8), np.float32)
    weights = np.zeros((8, 8), np.float32)
    accumulate_tiles(
        canvas, weights, np.zeros((0, 4, 4), np.float32), np.zeros((0, 2), np.int64),
        np.ones((4, 4), np.float32),
    )
    assert not canvas.any() and not weights.any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILE_HALO)
def test_constant_prediction_has_no_seams(shape, tile, halo) -> None:
    grid = TileGrid(shape, tile, halo)
    value = np.float32(0.73)
    tiles = np.full((len(grid), tile, tile), value, np.float32)
    got = stitch_tiles(tiles, grid.origins, blend_window(tile, halo), shape)
    assert np.max(np.abs(got - value)) < 1e-6


# --------------------------------------------------------------------------
# races / determinism
# --------------------------------------------------------------------------


@pytest.fixture
def two_threads():
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(old)


def test_heavy_overlap_exact_and_deterministic(two_threads) -> None:
    # Integer tiles and a unit window make every sum exact in float32, so any
    # lost update shows up as an exact mismatch.
    rng = np.random.default_rng(7)
    n, tile, shape = 400, 24, (40, 45)
    origins = rng.integers(-10, 30, size=(n, 2)).astype(np.int64)
    tiles = rng.integers(0, 16, size=(n, tile, tile)).astype(np.float32)
    window = np.ones((tile, tile), np.float32)
    ref_c = np.zeros(shape, np.float32)
    ref_w = np.zeros(shape, np.float32)
    accumulate_tiles_reference(ref_c, ref_w, tiles, origins, window)
    assert ref_w.max() > 100  # many tiles pile onto the same pixels
    for _ in range(5):
        c = np.zeros(shape, np.float32)
        w = np.zeros(shape, np.float32)
        accumulate_tiles(c, w, tiles, origins, window)
        np.testing.assert_array_equal(c, ref_c)
        np.testing.assert_array_equal(w, ref_w)


def test_heavy_overlap_float_repeatable(two_threads) -> None:
    rng = np.random.default_rng(8)
    n, tile, halo, shape = 300, 32, 8, (61, 77)
    origins = rng.integers(-20, 70, size=(n, 2)).astype(np.int64)
    tiles = rng.random((n, tile, tile), dtype=np.float32)
    window = blend_window(tile, halo)
    ref = stitch_tiles_reference(tiles, origins, window, shape)
    first = stitch_tiles(tiles, origins, window, shape)
    np.testing.assert_allclose(first, ref, rtol=0, atol=1e-6)
    for _ in range(5):
        np.testing.assert_array_equal(stitch_tiles(tiles, origins, window, shape), first)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def _good():
    return (
        np.zeros((10, 10), np.float32),
        np.zeros((10, 10), np.float32),
        np.zeros((2, 4, 4), np.float32),
        np.zeros((2, 2), np.int64),
        np.ones((4, 4), np.float32),
    )


@pytest.mark.parametrize(
    "index,value,exc,match",
    [
        (0, np.zeros((10, 10), np.float64), TypeError, "canvas must have dtype float32"),
        (0, np.zeros((10, 10, 1), np.float32), ValueError, "canvas must be 2-D"),
        (0, np.zeros((10, 20), np.float32)[:, ::2], ValueError, "canvas must be C-contiguous"),
        (1, np.zeros((10, 11), np.float32), ValueError, "weight_canvas shape"),
        (1, [[0.0]], TypeError, "weight_canvas must be a numpy.ndarray"),
        (2, np.zeros((2, 4, 4), np.float64), TypeError, "tiles must have dtype float32"),
        (2, np.zeros((2, 2, 4, 4), np.float32), ValueError, "one channel"),
        (2, np.zeros((4, 4), np.float32), ValueError, "tiles must have shape"),
        (3, np.zeros((3, 2), np.int64), ValueError, "origins has 3 rows but tiles has 2"),
        (3, np.zeros((2, 3), np.int64), ValueError, "origins must have shape"),
        (3, np.zeros((2, 2), np.float64), TypeError, "origins must have an integer dtype"),
        (4, np.ones((5, 5), np.float32), ValueError, "window shape"),
        (4, np.ones((4, 4), np.float64), TypeError, "window must have dtype float32"),
    ],
)
def test_accumulate_validation(index, value, exc, match) -> None:
    for fn in (accumulate_tiles, accumulate_tiles_reference):
        args = list(_good())
        args[index] = value
        with pytest.raises(exc, match=match):
            fn(*args)


def test_accumulate_rejects_aliased_or_readonly_canvas() -> None:
    c, _, t, o, w = _good()
    with pytest.raises(ValueError, match="must not share memory"):
        accumulate_tiles(c, c, t, o, w)
    ro = np.zeros((10, 10), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="canvas must be writeable"):
        accumulate_tiles(ro, np.zeros((10, 10), np.float32), t, o, w)


def test_stitch_and_normalise_validation() -> None:
    _, _, t, o, w = _good()
    with pytest.raises(ValueError, match="shape must be positive"):
        stitch_tiles(t, o, w, (0, 5))
    with pytest.raises(ValueError, match="shape must be a pair"):
        stitch_tiles(t, o, w, (5,))
    with pytest.raises(TypeError, match="shape H must be an int"):
        stitch_tiles_reference(t, o, w, (5.0, 5))
    c = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="weight_canvas shape"):
        normalise_canvas(c, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="out shape"):
        normalise_canvas(c, c.copy(), out=np.zeros((5, 4), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        normalise_canvas(c, c.copy(), out=np.zeros((4, 4), np.float64))


def test_normalise_in_place_and_zero_weight() -> None:
    c = np.array([[2.0, 3.0], [4.0, 5.0]], np.float32)
    w = np.array([[2.0, 0.0], [0.5, -1.0]], np.float32)
    out = normalise_canvas(c, w, out=c)
    assert out is c
    np.testing.assert_array_equal(out, np.array([[1.0, 0.0], [8.0, 0.0]], np.float32))
