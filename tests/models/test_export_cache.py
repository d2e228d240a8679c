"""The export cache (semtile.models.export.exported_bundle) under ``$SEMTILE_CACHE``."""

from __future__ import annotations

import pytest

import semtile.models.export as export
from semtile.models.io import load_bundle

TILE = 64


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """``$SEMTILE_CACHE`` in tmp_path and a count of the real exports that ``exported_bundle`` makes."""
    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path))
    calls = []
    real = export.export_bundle

    def counting(bundle, out, **kw):
        calls.append(out)
        return real(bundle, out, **kw)

    monkeypatch.setattr(export, "export_bundle", counting)
    return calls


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def test_first_call_exports_then_the_cache_is_reused(bundle, counted, tmp_path):
    folder = export.exported_bundle(bundle, tile=TILE, halo=8)
    assert folder.parent == tmp_path / "bundles" and len(counted) == 1
    manifest = export.read_bundle_manifest(folder)
    assert manifest["tile"] == TILE
    assert not folder.with_name(folder.name + ".partial").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    again = export.exported_bundle(bundle, tile=TILE, halo=8)
    assert again == folder and len(counted) == 1  # no second export
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    other = export.exported_bundle(bundle, tile=2 * TILE, halo=8)  # another tile is another entry
    assert other != folder and len(counted) == 2


def test_a_corrupted_cached_file_is_detected_and_reexported(bundle, counted):
    folder = export.exported_bundle(bundle, tile=TILE, halo=8)
    onnx_path = folder / "segmenter.onnx"
    good = onnx_path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(export.ModelError):
        export.read_bundle_manifest(folder)

    again = export.exported_bundle(bundle, tile=TILE, halo=8)
    assert again == folder and len(counted) == 2
    export.read_bundle_manifest(again)  # verifies every sha256
    assert onnx_path.read_bytes() == good  # the export is deterministic


def test_a_leftover_partial_folder_does_not_break_it(bundle, counted, tmp_path):
    key_folder = export.exported_bundle(bundle, tile=TILE, halo=8)
    staging = key_folder.with_name(key_folder.name + ".partial")
    # An interrupted earlier run: a half-written staging folder, and the cache entry gone.
    staging.mkdir()
    (staging / "segmenter.onnx").write_bytes(b"half a file")
    (staging / "bundle.json").write_text("{not json")
    for path in key_folder.iterdir():
        path.unlink()
    key_folder.rmdir()

    folder = export.exported_bundle(bundle, tile=TILE, halo=8)
    assert folder == key_folder and len(counted) == 2
    export.read_bundle_manifest(folder)
    assert not staging.exists()

    # A stray staging folder beside a valid entry is ignored: the entry is used as it is.
    staging.mkdir()
    (staging / "junk").write_text("x")
    assert export.exported_bundle(bundle, tile=TILE, halo=8) == folder and len(counted) == 2
