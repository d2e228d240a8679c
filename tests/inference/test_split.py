"""Tests for semtile.inference.split."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from semtile.inference.split import TileGrid, read_windows

SHAPES = [(37, 53), (101, 67), (250, 333), (5, 7), (5, 9), (2, 2), (1, 3)]
TILE_HALO = [(16, 3), (32, 8), (33, 5), (64, 0)]


def _image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _oracle(image: np.ndarray, origins: np.ndarray, tile: int) -> np.ndarray:
    pad = int(max(tile, np.abs(origins).max(initial=0))) + max(image.shape) + tile
    padded = np.pad(image, pad, mode="reflect")
    return np.stack(
        [padded[oy + pad : oy + pad + tile, ox + pad : ox + pad + tile] for oy, ox in origins]
    ).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILE_HALO)
def test_grid_geometry(shape, tile, halo) -> None:
    g = TileGrid(shape, tile, halo)
    core = tile - 2 * halo
    assert g.core == core
    assert g.n_rows == -(-shape[0] // core) and g.n_cols == -(-shape[1] // core)
    assert len(g) == g.n_rows * g.n_cols
    o = g.origins
    assert o.dtype == np.int64 and o.shape == (len(g), 2)
    expected = [(i * core - halo, j * core - halo) for i in range(g.n_rows) for j in range(g.n_cols)]
    np.testing.assert_array_equal(o, np.array(expected, np.int64).reshape(-1, 2))
    # every pixel lies in exactly one core, and each core lies inside its window
    count = np.zeros(shape, np.int32)
    for (y0, x0, y1, x1), (oy, ox) in zip(g.core_boxes, o):
        assert oy + halo == y0 and ox + halo == x0
        assert y1 <= oy + tile - halo and x1 <= ox + tile - halo
        count[y0:y1, x0:x1] += 1
    assert np.all(count == 1)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(shape=(0, 5), tile=8, halo=1), ValueError, "shape must be positive"),
        (dict(shape=(5,), tile=8, halo=1), ValueError, "shape must be a pair"),
        (dict(shape=(5, 5.0), tile=8, halo=1), TypeError, "shape\\[1\\] must be an int"),
        (dict(shape=(5, 5), tile=0, halo=0), ValueError, "tile must be >= 1"),
        (dict(shape=(5, 5), tile=8, halo=-1), ValueError, "halo must be >= 0"),
        (dict(shape=(5, 5), tile=8, halo=3), ValueError, "4\\*halo must be <= tile"),
        (dict(shape=(5, 5), tile=4, halo=2), ValueError, "core = tile - 2\\*halo must be >= 1"),
        (dict(shape=(5, 5), tile="8", halo=1), TypeError, "tile must be an int"),
    ],
)
def test_grid_validation(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        TileGrid(**kwargs)


def test_grid_normalises_and_is_frozen() -> None:
    g = TileGrid([np.int64(10), 12], np.int32(8), 2)
    assert g.shape == (10, 12) and type(g.shape[0]) is int and type(g.tile) is int
    with pytest.raises(AttributeError):
        g.tile = 4  # type: ignore[misc]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile,halo", TILE_HALO)
def test_read_windows_matches_np_pad_reflect(shape, tile, halo) -> None:
    image = _image(shape)
    g = TileGrid(shape, tile, halo)
    got = read_windows(image, g.origins, tile)
    assert got.shape == (len(g), tile, tile) and got.dtype == np.float32
    np.testing.assert_array_equal(got, _oracle(image, g.origins, tile))


def test_read_windows_arbitrary_origins() -> None:
    image = _image((23, 31), seed=3)
    rng = np.random.default_rng(0)
    origins = rng.integers(-60, 80, size=(200, 2)).astype(np.int64)
    got = read_windows(image, origins, 17)
    np.testing.assert_array_equal(got, _oracle(image, origins, 17))


def test_tiny_image_smaller_than_tile() -> None:
    image = _image((5, 9), seed=1)
    g = TileGrid((5, 9), 32, 8)
    assert len(g) == 1
    np.testing.assert_array_equal(g.origins, [[-8, -8]])
    got = read_windows(image, g.origins, 32)
    np.testing.assert_array_equal(got, _oracle(image, g.origins, 32))
    # the core region of the window is the image itself
    np.testing.assert_array_equal(got[0, 8:13, 8:17], image)


def test_read_windows_casts_integer_images() -> None:
    image = np.random.default_rng(2).integers(0, 65535, size=(40, 30)).astype(np.uint16)
    g = TileGrid(image.shape, 16, 4)
    got = read_windows(image, g.origins, 16)
    np.testing.assert_array_equal(got, _oracle(image.astype(np.float32), g.origins, 16))


@pytest.mark.parametrize("shape", [(101, 67), (5, 9)])
def test_read_windows_zarr_source(shape) -> None:
    image = _image(shape, seed=4)
    z = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=shape, chunks=(16, 16), dtype="float32"
    )
    z[:] = image
    g = TileGrid(shape, 32, 8)
    np.testing.assert_array_equal(
        read_windows(z, g.origins, 32), read_windows(image, g.origins, 32)
    )


class _CountingSource:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.shape = a.shape
        self.reads: list[tuple[slice, slice]] = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.a[key]


def test_read_windows_reads_each_row_of_windows_once_within_bounds() -> None:
    src = _CountingSource(_image((50, 40)))
    g = TileGrid(src.shape, 16, 4)
    read_windows(src, g.origins, 16)
    assert len(src.reads) == g.n_rows  # one band per row of windows, not one read per window
    for ys, xs in src.reads:
        assert 0 <= ys.start < ys.stop <= 50 and 0 <= xs.start < xs.stop <= 40
        assert ys.stop - ys.start <= 16


def test_read_windows_validation() -> None:
    image = _image((10, 10))
    o = np.zeros((1, 2), np.int64)
    with pytest.raises(ValueError, match="tile must be >= 1"):
        read_windows(image, o, 0)
    with pytest.raises(TypeError, match="tile must be an int"):
        read_windows(image, o, 4.0)
    with pytest.raises(ValueError, match="source must be 2-D"):
        read_windows(np.zeros((3, 3, 3)), o, 4)
    with pytest.raises(ValueError, match="source must not be empty"):
        read_windows(np.zeros((0, 3)), o, 4)
    with pytest.raises(TypeError, match="source must be a 2-D array"):
        read_windows([[1, 2]], o, 4)
    with pytest.raises(ValueError, match="origins must have shape"):
        read_windows(image, np.zeros((1, 3), np.int64), 4)
    with pytest.raises(TypeError, match="origins must have an integer dtype"):
        read_windows(image, np.zeros((1, 2)), 4)
