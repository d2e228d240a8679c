"""Extra maps in every result store: written with a result, added to a committed one, region by region.

Over the same BACKENDS as the conformance suite: ``ImageResult.maps`` round-trip,
``add_maps`` adds or replaces a map atomically (a failure at any point leaves
the old result byte-identical), and an OME-Zarr result staged with maps and
written region by region is the same bytes as one written whole.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from test_store_conformance import BACKENDS, assert_same, make_result, snapshot

from semtile.errors import SemtileError
from semtile.results import open_results
from semtile.store import OmeZarrStore
from semtile.store.directory import DirectoryStore
from semtile.store.ome_zarr import CHUNK, level_shapes, write_region


def _unlocked(files: dict) -> dict:
    """The files of a snapshot without add_maps' lock files (empty, left for the next caller)."""
    return {k: v for k, v in files.items() if not k.startswith(".semtile/locks/")}


@pytest.fixture(params=BACKENDS, ids=lambda b: b.id)
def backend(request):
    return request.param


def _with_maps(source, shape=(300, 270), seed=0):
    result = make_result(source, seed=seed, shape=shape)
    rng = np.random.default_rng(seed + 10)
    result.maps = {"anomaly": rng.random(shape, dtype=np.float32),
                   "heat": rng.random((3, *shape)).astype(np.float16)}
    result.map_attrs = {"anomaly": {"model_sha256": "ab" * 32, "threshold": 0.25}}
    return result


def test_maps_written_with_the_result_come_back(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    result = _with_maps(tmp_path / "scan.tif")
    name = store.claim(result.source)
    store.write(name, result)
    stored = store.read(name)
    assert_same(stored, result)  # the result's own fields and attrs are untouched by the maps
    assert sorted(stored.maps) == ["anomaly", "heat"]
    assert stored.maps["anomaly"]["threshold"] == 0.25 and stored.maps["anomaly"]["dtype"] == "float32"
    assert stored.maps["heat"]["dtype"] == "float16" and stored.maps["heat"]["shape"] == [3, 300, 270]
    for key, expected in result.maps.items():
        got = stored.map(key)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(np.asarray(got[...]), expected)
    with pytest.raises(SemtileError, match="no map 'other'"):
        stored.map("other")
    results = open_results(tmp_path / "results")  # the one reader finds them
    assert sorted(results[name].maps) == ["anomaly", "heat"]
    np.testing.assert_array_equal(results[name].map("anomaly").compute(), result.maps["anomaly"])
    assert results.table.loc[name, "maps"] == "anomaly, heat"


def test_ome_maps_are_pyramids_with_the_images_multiscales(tmp_path):
    store = OmeZarrStore(tmp_path / "r.zarr")
    result = _with_maps(tmp_path / "scan.tif", shape=(1100, 600))
    name = store.claim(result.source)
    store.write(name, result)
    group = zarr.open_group(str(tmp_path / "r.zarr" / name), mode="r")
    image_ms = group.attrs["ome"]["multiscales"][0]
    anomaly_ms = group["anomaly"].attrs["ome"]["multiscales"][0]
    assert anomaly_ms["datasets"] == image_ms["datasets"] and anomaly_ms["axes"] == image_ms["axes"]
    heat_ms = group["heat"].attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in heat_ms["axes"]] == ["c", "y", "x"]
    shapes = level_shapes((1100, 600))
    assert [group[f"anomaly/{k}"].shape for k in range(len(shapes))] == shapes
    a = result.maps["anomaly"]
    np.testing.assert_allclose(group["anomaly/1"][...], (a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2]
                                                          + a[1::2, 1::2]) / 4, rtol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ({"mask": np.zeros((300, 270))}, "cannot name a map"),
    ({"0": np.zeros((300, 270))}, "cannot name a map"),
    ({"a/b": np.zeros((300, 270))}, "cannot name a map"),
    ({"anomaly": np.zeros((300, 271))}, "the mask's shape"),
    ({"anomaly": np.array([["x"] * 270] * 300)}, "real numbers"),
])
def test_bad_maps_are_refused_before_anything_is_written(backend, tmp_path, bad, message):
    store = backend.open(tmp_path / "results", "a")
    result = make_result(tmp_path / "scan.tif", shape=(300, 270))
    result.maps = bad
    with pytest.raises(SemtileError, match=message):
        store.write(store.claim(result.source), result)
    assert store.names() == []
    store.write(store.claim(result.source), make_result(result.source, shape=(300, 270)))
    with pytest.raises(SemtileError, match=message):
        store.add_maps("scan", bad)


def test_add_maps_adds_and_replaces_without_touching_the_rest(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    result, other = _with_maps(tmp_path / "scan.tif"), make_result(tmp_path / "other.tif", seed=1)
    name = store.claim(result.source)
    store.write(name, result)
    store.write(store.claim(other.source), other)
    before_other = snapshot(store.path, skip=name)
    before = {p.relative_to(store.path / name): p.read_bytes() for p in (store.path / name).rglob("*") if p.is_file()}

    cluster = np.arange(300 * 270, dtype=np.float32).reshape(300, 270) / 1000
    store.add_maps(name, {"clusters": cluster}, {"method": "kmeans", "k": 4})
    stored = store.read(name)
    assert_same(stored, result)
    assert sorted(stored.maps) == ["anomaly", "clusters", "heat"]
    assert stored.maps["clusters"]["method"] == "kmeans" and stored.maps["anomaly"]["threshold"] == 0.25
    np.testing.assert_array_equal(np.asarray(stored.map("clusters")[...]), cluster)
    # Every file of the old result is still there with the same bytes, except the group's own metadata.
    after = {p.relative_to(store.path / name): p.read_bytes() for p in (store.path / name).rglob("*") if p.is_file()}
    changed = sorted(str(k) for k in before if after.get(k) != before[k])
    assert changed == [".manifest.json", "zarr.json"]  # each a new file renamed in: the old result's untouched
    assert _unlocked(snapshot(store.path, skip=name)) == before_other  # other results untouched

    store.add_maps(name, {"anomaly": np.ones((300, 270), np.float32)}, {"model_sha256": "cd" * 32})
    stored = store.read(name)
    assert stored.maps["anomaly"] == {"model_sha256": "cd" * 32, "dtype": "float32", "shape": [300, 270],
                                      "levels": stored.maps["anomaly"]["levels"]}
    assert np.asarray(stored.map("anomaly")[...]).min() == 1.0
    assert sorted(stored.maps) == ["anomaly", "clusters", "heat"]
    assert store.record(name) == result.record  # the completion record is kept: a rerun still skips it
    assert not list((store.path / ".semtile" / "tmp").iterdir())


@pytest.mark.parametrize("at", ["copy", "publish"])
def test_a_failed_add_maps_leaves_the_old_result_intact(backend, tmp_path, monkeypatch, at):
    store = backend.open(tmp_path / "results", "a")
    result = _with_maps(tmp_path / "scan.tif")
    name = store.claim(result.source)
    store.write(name, result)
    before = snapshot(store.path)
    seen = []

    def crash(*args, **kwargs):
        seen.append(sorted(store.read(name).maps))  # a reader mid-way sees the old result, whole
        raise OSError("disk full")

    if at == "publish":
        monkeypatch.setattr(DirectoryStore, "_publish", crash)
    else:
        monkeypatch.setattr(type(store), "_set_maps", crash)
    with pytest.raises(OSError, match="disk full"):
        store.add_maps(name, {"new": np.zeros((300, 270), np.float32), "anomaly": np.zeros((300, 270))})
    assert seen == [["anomaly", "heat"]]
    monkeypatch.undo()
    assert _unlocked(snapshot(store.path)) == before
    assert_same(store.read(name), result)
    np.testing.assert_array_equal(np.asarray(store.read(name).map("anomaly")[...]), result.maps["anomaly"])


def test_add_maps_needs_a_result_and_a_writable_store(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    with pytest.raises(SemtileError, match="no result named 'ghost'"):
        store.add_maps("ghost", {"a": np.zeros((2, 2))})
    result = make_result(tmp_path / "scan.tif")
    store.write(store.claim(result.source), result)
    with pytest.raises(SemtileError, match="non-empty"):
        store.add_maps("scan", {})
    with pytest.raises(SemtileError, match="read-only"):
        backend.open(tmp_path / "results", "r").add_maps("scan", {"a": np.zeros(result.mask.shape)})


def layout_free(meta: dict) -> dict:
    """A zarr.json without what differs between a sharded and a chunked layout (chunks, codecs, storage.shard)."""
    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if not (k == "shard" and "codec" in value)}
        return value
    meta = drop({k: v for k, v in meta.items() if k not in ("chunk_grid", "codecs")})
    provenance = ((meta.get("attributes") or {}).get("semtile") or {}).get("attrs", {}).get("provenance")
    if isinstance(provenance, dict):
        provenance.pop("sha256", None)  # of provenance.json, which records the shard too
    return meta


def test_maps_written_region_by_region_equal_a_whole_write(tmp_path):
    levels = 1
    shape = (CHUNK * 2**levels + 77, 2 * CHUNK * 2**levels + 5)
    result = make_result(tmp_path / "scan.tif", shape=shape)
    result.maps = {"anomaly": np.random.default_rng(2).random(shape, dtype=np.float32)}
    result.map_attrs = {"anomaly": {"threshold": 0.5}}
    store = OmeZarrStore(tmp_path / "r.zarr")
    store.write(store.claim(result.source), result)

    other = OmeZarrStore(tmp_path / "s.zarr")
    staged = other.stage(shape, result.attrs["pixel_size_m"], maps=["anomaly"])
    step = CHUNK * 2**levels
    for y0 in range(0, shape[0], step):
        for x0 in range(0, shape[1], step):
            sl = np.s_[y0: y0 + step, x0: x0 + step]
            write_region(staged, y0, x0, image=result.image[sl], binary_mask=result.binary_mask[sl],
                         mask=result.mask[sl], levels=levels, maps={"anomaly": result.maps["anomaly"][sl]})
    name = other.claim(result.source)
    parts = make_result(tmp_path / "scan.tif", shape=shape)
    parts.map_attrs = {"anomaly": {"threshold": 0.5}}
    other.commit(name, staged, parts, built_levels=levels)
    whole_dir, parts_dir = tmp_path / "r.zarr" / name, tmp_path / "s.zarr" / name
    # The same arrays, values and metadata; only the chunk grid differs (whole: one shard per array).
    metas = sorted(p.relative_to(whole_dir) for p in whole_dir.rglob("zarr.json"))
    assert metas == sorted(p.relative_to(parts_dir) for p in parts_dir.rglob("zarr.json"))
    assert len(level_shapes(shape)) >= 3
    for f in metas:
        whole_meta, parts_meta = (layout_free(json.loads((d / f).read_text())) for d in (whole_dir, parts_dir))
        assert whole_meta == parts_meta, f
        if whole_meta["node_type"] == "array":
            key = str(f.parent)
            np.testing.assert_array_equal(zarr.open_array(str(whole_dir / key))[...],
                                          zarr.open_array(str(parts_dir / key))[...], err_msg=key)
    assert other.read(name).maps["anomaly"]["threshold"] == 0.5
