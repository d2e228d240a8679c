"""Damaged results are seen: real flipped bytes and real truncated chunk files in real Zarr stores.

A bit flipped in place (with the file's modification time put back, as bit
rot leaves it) and a chunk file cut short are each found by
``open_results`` (that result fails with DamagedResultError naming the
array and the chunk; the others read), by the store's quick check a rerun
makes (a truncated file) and by ``semtile verify`` (both).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from semtile.errors import SemtileError
from semtile.results import open_results
from semtile.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
from damage import flip, truncate

from sample_results import write_results


def damaged(exc_info) -> None:
    assert type(exc_info.value).__name__ == "DamagedResultError"


@pytest.fixture()
def store(tmp_path) -> Path:
    return write_results(tmp_path, n=3, shape=(300, 600), failures=False)


def test_flipped_bytes_fail_that_result_on_read_and_the_others_read(store):
    chunk = store / "scan_1" / "0" / "c" / "0" / "0"  # the scan, full resolution: one shard
    clean = np.asarray(open_results(store)["scan_1"].image.compute())
    flip(chunk)
    results = open_results(store)
    with pytest.raises(SemtileError, match=r"scan_1: damaged result: array '0' chunk c/0/0: .*checksum") as info:
        results["scan_1"].image.compute()  # before manifests: values off by up to 2**11 steps, no error
    damaged(info)
    # the other results read, and the damaged one's other arrays too
    for name in ("scan_0", "scan_2"):
        assert np.isfinite(results[name].image.compute()).all()
    assert results["scan_1"].mask.compute().shape == clean.shape
    with pytest.raises(SemtileError, match="scan_1: damaged result"):
        results["scan_1"].stored.image[...]  # what explain reads: the raw array-like
    assert results.table.loc["scan_1", "status"] == "ok"  # size and time unchanged: only a read or verify sees it


def test_flipped_bytes_found_by_verify_not_by_the_quick_check(store):
    flip(store / "scan_2" / "labels" / "adhesive" / "0" / "c" / "0" / "0")
    opened = open_store(store, mode="r")
    assert opened.verify("scan_2") == []  # quick: bit rot keeps the size and time
    full = opened.verify("scan_2", full=True)
    assert "array 'labels/adhesive/0' chunk c/0/0: checksum" in full[0]
    assert [opened.verify(n, full=True) for n in ("scan_0", "scan_1")] == [[], []]


def test_truncated_chunk_fails_that_result_everywhere(store):
    truncate(store / "scan_0" / "0" / "c" / "0" / "0")  # the scan's image, level 0
    results = open_results(store)
    with pytest.raises(SemtileError, match=r"scan_0: damaged result: array '0' chunk c/0/0: \d+ bytes") as info:
        results["scan_0"].image.compute()
    damaged(info)
    assert results.table.loc["scan_0", "status"] == "damaged"
    assert results.table.loc["scan_1", "status"] == "ok"
    assert open_store(store, mode="r").verify("scan_0") != []  # the quick check a rerun makes sees it
    assert np.isfinite(results["scan_1"].image.compute()).all()


def test_results_without_a_manifest_still_read_and_undecodable_chunks_are_named(store):
    for name in ("scan_0", "scan_1", "scan_2"):
        (store / name / ".manifest.json").unlink()  # as written before manifests
    truncate(store / "scan_0" / "mask" / "c" / "0" / "0")
    flip(store / "scan_1" / "0" / "c" / "0" / "0")  # the scan: noise, stored nearly raw by zstd
    results = open_results(store)
    with pytest.raises(SemtileError, match=r"scan_0: damaged result: array 'mask' chunk c/0/0: does not decode"):
        results["scan_0"].mask.compute()
    with pytest.raises(SemtileError, match=r"scan_1: damaged result: array '0' chunk c/0/0: .*checksum"):
        results["scan_1"].image.compute()  # no manifest, but every chunk carries its crc32c
    opened = open_store(store, mode="r")
    assert opened.verify("scan_0", full=True) and opened.verify("scan_1", full=True)


def test_added_and_missing_files_and_damaged_metadata(store):
    opened = open_store(store, mode="r")
    (store / "scan_0" / "mask" / "c" / "0" / "0").unlink()  # would read as zeros
    assert "missing" in opened.verify("scan_0")[0]
    meta = store / "scan_1" / "zarr.json"
    data = json.loads(meta.read_text())
    data["attributes"]["semtile"]["adhesive_ratio"] = 0.123  # a digit changed: still valid JSON
    st = os.stat(meta)
    text = json.dumps(data)
    meta.write_text(text + " " * (st.st_size - len(text)) if len(text) < st.st_size else text)
    full = opened.verify("scan_1", full=True)
    assert any("zarr.json" in d for d in full) and any("adhesive ratio 0.123000 recorded" in d for d in full)
    with pytest.raises(SemtileError, match="scan_1: damaged result"):
        open_results(store)["scan_1"].mask.compute()


def test_add_maps_keeps_the_old_result_whole_and_seals_the_new(store):
    writer = open_store(store)
    before = (store / "scan_0" / ".manifest.json").read_bytes()
    writer.add_maps("scan_0", {"heat": np.ones((300, 600), np.float32)}, {"by": "test"})
    assert (store / "scan_0" / ".manifest.json").read_bytes() != before
    assert writer.verify("scan_0", full=True) == []
    assert "heat/0/zarr.json" in json.loads((store / "scan_0" / ".manifest.json").read_text())["files"]


def test_add_maps_over_a_rotten_chunk_keeps_it_visible(store):
    flip(store / "scan_1" / "0" / "c" / "0" / "0")
    writer = open_store(store)
    writer.add_maps("scan_1", {"heat": np.ones((300, 600), np.float32)})
    found = writer.verify("scan_1", full=True)
    assert found and "array '0' chunk c/0/0: checksum" in found[0]  # not blessed by the new manifest


def test_the_manifest_takes_the_writers_checksums_and_they_are_those_of_the_files(store):
    """A whole write seals with the CRC-32C of the bytes it handed to the system (no read-back): each is the
    checksum of the file on disk, and a seal that reads every file back gives the same manifest."""
    import google_crc32c

    from semtile.store.verify import read_manifest, seal

    folder = store / "scan_0"
    manifest = read_manifest(folder)
    assert manifest["checksum"] == "crc32c"
    assert len(manifest["files"]) >= 10
    for rel, (size, _, crc) in manifest["files"].items():
        data = (folder / rel).read_bytes()
        assert (size, crc) == (len(data), google_crc32c.value(data)), rel
    (folder / ".manifest.json").unlink()
    assert seal(folder)["files"] == manifest["files"]


@pytest.mark.parametrize("say", [True, False])
def test_manifests_of_crc32_still_check_and_find_damage(store, say):
    """Stores sealed before CRC-32C (zlib's CRC-32, and before that no ``checksum`` key) keep being checked."""
    import zlib

    from semtile.store.verify import read_manifest

    folder = store / "scan_1"
    manifest = read_manifest(folder)
    for rel, entry in manifest["files"].items():
        entry[2] = zlib.crc32((folder / rel).read_bytes())
    manifest["checksum"] = "crc32"
    if not say:
        del manifest["checksum"]
    (folder / ".manifest.json").write_text(json.dumps(manifest))
    opened = open_store(store, mode="r")
    assert opened.verify("scan_1", full=True) == []
    assert np.isfinite(open_results(store)["scan_1"].image.compute()).all()
    flip(folder / "labels" / "adhesive" / "0" / "c" / "0" / "0")
    assert "checksum" in open_store(store, mode="r").verify("scan_1", full=True)[0]
    (folder / ".manifest.json").write_text(json.dumps({**manifest, "checksum": "md5"}))
    assert "manifest checksum 'md5'" in open_store(store, mode="r").verify("scan_1")[0]
