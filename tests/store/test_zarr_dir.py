"""The Zarr directory store in particular: its on-disk layout, old stores, crash leftovers.

New stores are OME-Zarr (``test_ome_zarr.py``); this format stays readable and writable for the stores
semtile wrote before, which ``open_store`` opens with it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_store_conformance import assert_same, make_result, snapshot

import semtile.store.directory as directory
from semtile.errors import SemtileError
from semtile.store import ZarrDirectoryStore, open_store


def legacy_write(path: Path, name: str, result, group_name: str | None = None) -> None:
    """What semtile wrote before the store had an interface (the layout existing stores have)."""
    root = zarr.open_group(str(path), mode="a")
    root.attrs.setdefault("semtile_store", 1)
    group = root.create_group(group_name or name)
    rows, cols = result.mask.shape
    chunks = (min(rows, 512), min(cols, 512))
    group.create_array("mask", data=result.mask.astype(np.float32, copy=False), chunks=chunks)
    group.create_array("binary_mask", data=result.binary_mask.astype(bool, copy=False), chunks=chunks)
    group.create_array("class_probs", data=result.class_probs.astype(np.float32, copy=False))
    group.attrs.update({"source_path": str(Path(result.source).resolve()), "labels": list(result.labels),
                        "label": result.label, "adhesive_ratio": float(result.adhesive_ratio), **result.attrs})


@pytest.mark.parametrize("shape", [(37, 53), (1030, 700)])
def test_layout_is_byte_identical_to_the_legacy_writer(tmp_path, shape):
    result = make_result(tmp_path / "scan one.tif", shape=shape)
    result.record = None  # what the legacy writer had: no completion record
    legacy_write(tmp_path / "old.zarr", "scan_one", result)
    store = ZarrDirectoryStore(tmp_path / "new.zarr")
    name = store.name_for(result.source)
    assert name == "scan_one"
    store.write(name, result)
    # the manifest (new: each file's size, mtime and CRC at commit) aside, the same bytes as the legacy writer's
    results = lambda path: {k: v for k, v in snapshot(path).items()  # noqa: E731
                            if not k.startswith(".semtile") and not k.endswith("/.manifest.json")}
    assert results(tmp_path / "new.zarr") == snapshot(tmp_path / "old.zarr")
    assert isinstance(open_store(tmp_path / "new.zarr"), ZarrDirectoryStore)
    mask = zarr.open_group(str(tmp_path / "new.zarr"), mode="r")[name]["mask"]
    assert mask.chunks == (min(shape[0], 512), min(shape[1], 512))


def test_a_legacy_store_with_crash_leftovers_reads_and_reruns(tmp_path):
    path, a, b = tmp_path / "r.zarr", tmp_path / "a" / "scan.tif", tmp_path / "b" / "scan.tif"
    old_a, old_b = make_result(a, seed=1), make_result(b, seed=2)
    old_a.record = old_b.record = None  # the legacy writer wrote none
    legacy_write(path, "scan", old_a)
    legacy_write(path, "scan-2", old_b)
    legacy_write(path, "scan", make_result(a, seed=3), group_name=".partial-scan-0123abcd")  # died before rename
    legacy_write(path, "scan", make_result(a, seed=4), group_name=".retired-scan-4567cdef")  # died after it
    zarr.open_group(str(path), mode="a").create_group("notes")  # someone else's group, no result
    store = open_store(path, mode="r")
    assert isinstance(store, ZarrDirectoryStore)
    assert store.names() == ["scan", "scan-2"]
    assert_same(store.read("scan"), old_a)
    assert_same(store.read("scan-2"), old_b)
    for name in (".partial-scan-0123abcd", ".retired-scan-4567cdef", "notes"):
        assert name not in store
        with pytest.raises(SemtileError, match="no result named"):
            store.read(name)
    writer = open_store(path)
    assert writer.find(a) == "scan" and writer.find(b) == "scan-2" and writer.record("scan") is None
    assert writer.name_for(b) == "scan-2" and writer.name_for(a) == "scan"
    assert writer.name_for(tmp_path / "notes.tif") == "notes-2"  # a stray entry is never taken over
    assert writer.claim(tmp_path / "c" / "scan.tif") == "scan-3"
    assert writer.clean_stale() == 0  # leftovers of unknown writers wait a day
    day_old = time.time() - 25 * 3600
    for leftover in (".partial-scan-0123abcd", ".retired-scan-4567cdef"):
        os.utime(path / leftover, (day_old, day_old))
    assert writer.clean_stale() == 2
    assert sorted(p.name for p in path.iterdir()) == [".semtile", "notes", "scan", "scan-2", "zarr.json"]
    assert_same(writer.read("scan"), old_a)


def test_a_file_named_like_the_store_metadata_keeps_the_store_whole(tmp_path):
    """Before the interface, an input named ``zarr.json.tif`` moved the root metadata aside."""
    store = ZarrDirectoryStore(tmp_path / "r.zarr")
    for stem in ("zarr.json", "ZARR.JSON", ".zgroup", ".zattrs"):
        source = tmp_path / f"{stem}.tif"
        store.write(store.name_for(source), make_result(source))
    assert zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["semtile_store"] == 1
    assert store.names() == ["ZARR.JSON-3", "zarr.json-2", "zattrs", "zgroup"]  # case-insensitively apart


def test_a_failed_rename_puts_the_previous_result_back(tmp_path, monkeypatch):
    store = ZarrDirectoryStore(tmp_path / "r.zarr")
    source = tmp_path / "scan.tif"
    old = make_result(source, seed=1)
    store.write(store.name_for(source), old)
    before = snapshot(tmp_path / "r.zarr")
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith("partial~"):
            raise OSError("rename failed (injected)")
        return real(src, dst)

    monkeypatch.setattr(directory.os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        store.write("scan", make_result(source, seed=2))
    monkeypatch.undo()
    assert snapshot(tmp_path / "r.zarr") == before
    assert_same(store.read("scan"), old)


def test_opening_checks_what_is_there(tmp_path):
    with pytest.raises(SemtileError, match="mode"):
        open_store(tmp_path / "r.zarr", mode="w")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")  # a Zarr group, but not ours
    with pytest.raises(SemtileError, match="not a semtile result store"):
        open_store(tmp_path / "foreign.zarr", mode="r")
    with pytest.raises(SemtileError, match="not a semtile result store"):
        ZarrDirectoryStore(tmp_path / "foreign.zarr", mode="r")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.tif").write_bytes(b"")
    with pytest.raises(SemtileError, match="refusing"):  # --out pointed at a folder of inputs
        open_store(images)
    assert [p.name for p in images.iterdir()] == ["a.tif"]
    (tmp_path / "empty").mkdir()
    assert open_store(tmp_path / "empty").names() == []
    assert open_store(tmp_path / "empty", mode="r").names() == []
