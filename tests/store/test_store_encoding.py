"""How the store keeps arrays: uint8 probability by default, the image no wider than the input, checksums that
catch damaged bytes on disk, pyramids from the Numba kernels, and stores written before that still read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_store_conformance import make_result

from semtile.kernels.pyramid import halve_max, halve_mean_float, halve_mean_int
from semtile.results import open_results
from semtile.store import OmeZarrStore, decode_probability, encode_probability_u8, open_store
from semtile.store.encoding import encode_mask

OLD_STORE = Path(__file__).parent / "fixtures" / "old_store"  # written by semtile before uint8 masks (see its script)


def _blocks(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four corners of every 2 x 2 block, an odd last row or column repeated: the oracle's input."""
    rows, cols = a.shape[-2:]
    a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, rows % 2), (0, cols % 2)], mode="edge")
    return a[..., 0::2, 0::2], a[..., 0::2, 1::2], a[..., 1::2, 0::2], a[..., 1::2, 1::2]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 33), (2, 2)])
def test_pyramid_kernels_equal_a_numpy_oracle(shape):
    rng = np.random.default_rng(sum(shape))
    for dtype in (np.uint8, np.uint16):
        a = rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
        q = [b.astype(np.int64) for b in _blocks(a)]
        oracle = ((q[0] + q[1] + q[2] + q[3] + 2) // 4).astype(dtype)  # the mean, rounded half up
        got = halve_mean_int(a)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, oracle)
    labels = rng.random(shape) > 0.8
    np.testing.assert_array_equal(halve_max(labels), np.maximum.reduce(_blocks(labels)))
    np.testing.assert_array_equal(halve_max(labels.astype(np.uint8)), np.maximum.reduce(_blocks(labels)).astype(np.uint8))
    for dtype in (np.float32, np.float16):
        m = rng.random((3, *shape)).astype(dtype)
        f = [b.astype(np.float32) for b in _blocks(m)]
        oracle = (((f[0] + f[1]) + (f[2] + f[3])) * np.float32(0.25)).astype(dtype)
        np.testing.assert_array_equal(halve_mean_float(m), oracle)
        np.testing.assert_array_equal(halve_mean_float(m[1]), oracle[1])


def test_the_uint8_probability_convention():
    p = np.array([[-0.5, 0.0, 0.5 / 255, 0.499, 0.5, 0.999, 1.0, 3.0, np.nan]], np.float32)
    q = encode_probability_u8(p)
    assert q.dtype == np.uint8
    assert q.tolist() == [[0, 0, 0, 127, 128, 255, 255, 255, 0]]  # round(p * 255), clipped, NaN as 0
    np.testing.assert_allclose(decode_probability(q), q / 255, rtol=0, atol=1e-7)
    big = np.random.default_rng(0).random((2500, 9), dtype=np.float32)  # in bands: the same bytes
    np.testing.assert_array_equal(encode_probability_u8(big), np.rint(big * 255).astype(np.uint8))


@pytest.mark.parametrize("mask_dtype", [None, "uint8", "float16", "float32"])
def test_every_mask_dtype_reads_back_as_the_probability(tmp_path, mask_dtype):
    store = OmeZarrStore(tmp_path / "r.zarr")
    result = make_result(tmp_path / "scan.tif", shape=(70, 90))
    result.mask_dtype = mask_dtype
    store.write(store.claim(result.source), result)
    stored = store.read("scan")
    dtype = mask_dtype or "uint8"
    assert np.asarray(stored.stored("mask")[...]).dtype == np.dtype(dtype)
    mask = np.asarray(stored.mask[...])
    assert mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    step = {"uint8": 0.5 / 255, "float16": 2.0**-12, "float32": 0.0}[dtype]
    np.testing.assert_allclose(mask, result.mask, rtol=0, atol=step + 1e-7)
    np.testing.assert_array_equal(mask, decode_probability(encode_mask(result.mask, dtype), 255 if dtype == "uint8" else 1))
    image = open_results(tmp_path / "r.zarr")["scan"]
    assert image.mask.dtype == np.float32
    np.testing.assert_array_equal(image.mask.compute(), mask)
    assert image.mask_stored.dtype == np.dtype(dtype) and image.storage["mask"]["dtype"] == dtype


def test_an_8_bit_scan_is_stored_as_uint8_and_reads_back_exactly(tmp_path):
    store = OmeZarrStore(tmp_path / "r.zarr")
    result = make_result(tmp_path / "scan.tif", shape=(1100, 600))
    for dtype, stored in (("uint8", np.uint8), ("uint16", np.uint16), (None, np.uint16)):
        result.attrs["provenance"]["input"]["dtype"] = dtype
        store.write("scan", result)
        group = zarr.open_group(str(tmp_path / "r.zarr" / "scan"), mode="r")
        assert group["0"].dtype == group["1"].dtype == stored
        np.testing.assert_allclose(np.asarray(store.read("scan").image[...]), result.image, rtol=0, atol=1e-6)
        image = open_results(tmp_path / "r.zarr")["scan"]
        assert image.storage["image"]["scale"] == (255 if stored == np.uint8 else 65535)
        level = image.level(1).compute()
        assert level.dtype == np.float32 and abs(level.mean() - result.image.mean()) < 2e-3


def _damage(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["chunk", "shard index"])
def test_flipped_bytes_on_disk_fail_the_read(tmp_path, where):
    store = OmeZarrStore(tmp_path / "r.zarr")
    result = make_result(tmp_path / "scan.tif", shape=(700, 600))
    store.write(store.claim(result.source), result)
    shard = tmp_path / "r.zarr" / "scan" / "mask" / "c" / "0" / "0"
    assert shard.is_file() and not list((tmp_path / "r.zarr" / "scan" / "mask" / "c").glob("*/1"))  # one shard
    np.asarray(store.read("scan").mask[...])  # reads while intact
    _damage(shard, 40 if where == "chunk" else shard.stat().st_size - 10)  # a chunk's bytes, or the index
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        np.asarray(store.read("scan").mask[...])
    image = tmp_path / "r.zarr" / "scan" / "0" / "c" / "0" / "0"
    _damage(image, image.stat().st_size // 3)
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        np.asarray(store.read("scan").image[...])


def test_a_store_written_before_reads_and_takes_new_results(tmp_path):
    store_path = tmp_path / "old.zarr"
    shutil.copytree(OLD_STORE, store_path)
    old = zarr.open_group(str(store_path / "old_scan"), mode="r")
    assert old["mask"].dtype == np.float32 and old["0"].dtype == np.uint16  # the earlier layout
    for mode in ("r", "a"):
        stored = open_store(store_path, mode=mode).read("old_scan")
        mask = np.asarray(stored.mask[...])
        np.testing.assert_array_equal(mask, old["mask"][...])  # float32 as it was written, exactly
        assert mask[0, 0] == np.float32(0.123456) and np.asarray(stored.stored("mask")[...]).dtype == np.float32
        np.testing.assert_allclose(np.asarray(stored.image[...]), old["0"][...] / 65535, rtol=0, atol=1e-7)
    results = open_results(store_path)
    image = results["old_scan"]
    assert image.levels == ["0", "1"] and image.level(1).shape == (150, 140) and image.storage == {}
    assert image.preview(100).gray.max() <= 1.0
    store = open_store(store_path)
    new = make_result(tmp_path / "new.tif", shape=(50, 60))
    store.write(store.claim(new.source), new)  # a new result beside the old one: both read
    again = open_results(store_path)
    assert again.names == ["new", "old_scan"]
    assert again["new"].mask_stored.dtype == np.uint8 and again["old_scan"].mask_stored.dtype == np.float32
    assert again["new"].mask.dtype == again["old_scan"].mask.dtype == np.float32


def _chunks_of(shard: Path, n_chunks: int) -> dict:
    """A shard's chunks by their place in its index: index (offset, length) pairs at the end, then its crc32c."""
    data = shard.read_bytes()
    index = np.frombuffer(data[-(16 * n_chunks + 4):-4], dtype="<u8").reshape(n_chunks, 2)
    return {i: data[int(o): int(o) + int(n)] for i, (o, n) in enumerate(index) if o != 2**64 - 1}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_shards_written_directly_are_the_bytes_zarr_writes(tmp_path, dtype):
    from semtile.store.encoding import ZSTD_LEVEL, array_layout
    from semtile.store.shards import write_sharded

    data = (np.random.default_rng(3).random((37, 50)) * 200 + 1).astype(dtype)  # no chunk equal to the fill value
    layout = {**array_layout(data.shape, sharded=True), "chunks": (8, 16), "shards": (16, 32)}  # 3 x 2 shards
    write_sharded(tmp_path / "direct", {"a": (data, layout, ("y", "x"))}, level=ZSTD_LEVEL, checksum=True)
    reference = zarr.open_group(str(tmp_path / "zarr"), mode="w", zarr_format=3)
    reference.create_array("a", shape=data.shape, dtype=data.dtype, fill_value=0, dimension_names=("y", "x"),
                           **layout)[...] = data
    direct, by_zarr = tmp_path / "direct" / "a", tmp_path / "zarr" / "a"
    import json

    assert json.loads((direct / "zarr.json").read_text()) == json.loads((by_zarr / "zarr.json").read_text())
    shards = sorted(p.relative_to(by_zarr) for p in by_zarr.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(shards) == 6 and shards == sorted(p.relative_to(direct) for p in direct.rglob("*")
                                                 if p.is_file() and p.name != "zarr.json")
    for shard in shards:  # the same chunk bytes for every chunk (zarr may place them in another order)
        assert _chunks_of(direct / shard, 2 * 2) == _chunks_of(by_zarr / shard, 2 * 2), shard
    np.testing.assert_array_equal(zarr.open_array(str(direct))[...], data)
