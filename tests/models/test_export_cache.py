"""The export cache (semtile.models.export.export_model without ``out``) under ``$SEMTILE_CACHE``."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue

import pytest

import semtile.models.export as export
from semtile.models.io import load_bundle

TILE = 64


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """``$SEMTILE_CACHE`` in tmp_path and a count of the real exports that ``export_model`` makes."""
    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path))
    calls = []
    real = export._write

    def counting(model, out, *args):
        calls.append(out)
        return real(model, out, *args)

    monkeypatch.setattr(export, "_write", counting)
    return calls


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def test_first_call_exports_then_the_cache_is_reused(bundle, counted, tmp_path):
    folder = export.export_model(bundle, tile=TILE, halo=8)
    assert folder.parent == tmp_path / "exports" and len(counted) == 1
    manifest = export.read_export_manifest(folder)
    assert manifest["tile"] == TILE
    assert not folder.with_name(folder.name + ".partial").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    again = export.export_model(bundle, tile=TILE, halo=8)
    assert again == folder and len(counted) == 1  # no second export
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    other = export.export_model(bundle, tile=2 * TILE, halo=8)  # another tile is another entry
    assert other != folder and len(counted) == 2


def test_a_corrupted_cached_file_is_detected_and_reexported(bundle, counted):
    folder = export.export_model(bundle, tile=TILE, halo=8)
    onnx_path = folder / "segmenter.onnx"
    good = onnx_path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(export.ModelError):
        export.read_export_manifest(folder)

    again = export.export_model(bundle, tile=TILE, halo=8)
    assert again == folder and len(counted) == 2
    export.read_export_manifest(again)  # verifies every sha256
    assert onnx_path.read_bytes() == good  # the export is deterministic


def test_a_leftover_partial_folder_does_not_break_it(bundle, counted, tmp_path):
    key_folder = export.export_model(bundle, tile=TILE, halo=8)
    staging = key_folder.with_name(key_folder.name + ".partial")
    # An interrupted earlier run: a half-written staging folder, and the cache entry gone.
    staging.mkdir()
    (staging / "segmenter.onnx").write_bytes(b"half a file")
    (staging / "bundle.json").write_text("{not json")
    for path in key_folder.iterdir():
        path.unlink()
    key_folder.rmdir()

    folder = export.export_model(bundle, tile=TILE, halo=8)
    assert folder == key_folder and len(counted) == 2
    export.read_export_manifest(folder)
    assert not staging.exists()

    # A stray staging folder beside a valid entry is ignored: the entry is used as it is.
    staging.mkdir()
    (staging / "junk").write_text("x")
    assert export.export_model(bundle, tile=TILE, halo=8) == folder and len(counted) == 2


# -- two runs on a cold cache at once ----------------------------------------------------------


def _export_in_child(cache: str, use_lock: bool, barrier, results) -> None:
    """One "run": load the bundle, wait for the other, then ask the cache for the export."""
    os.environ["SEMTILE_CACHE"] = cache
    try:
        bundle = load_bundle()
        exports = []
        real = export._write

        def counting(model, out, *args):
            exports.append(str(out))
            return real(model, out, *args)

        export._write = counting
        if not use_lock:  # as on a file system without flock: only the atomic rename protects
            export._locked = lambda path: contextlib.nullcontext(False)
        barrier.wait(timeout=300)
        folder = export.export_model(bundle, tile=TILE, halo=8)
        results.put(("ok", str(folder), exports))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", f"{type(exc).__name__}: {exc}", []))


@pytest.mark.slow
@pytest.mark.parametrize("use_lock", [True, False], ids=["flock", "rename-only"])
def test_two_processes_on_a_cold_cache_share_one_verified_export(tmp_path, use_lock):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [ctx.Process(target=_export_in_child, args=(str(tmp_path), use_lock, barrier, results))
                for _ in range(2)]
    for child in children:
        child.start()
    try:
        got = [results.get(timeout=600) for _ in children]
    except queue.Empty:
        pytest.fail("a child process neither finished nor failed in time")
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    assert [status for status, _, _ in got] == ["ok", "ok"], got
    folders = {folder for _, folder, _ in got}
    assert len(folders) == 1
    folder = export.Path(folders.pop())
    assert folder.parent == tmp_path / "exports"
    assert export.read_export_manifest(folder)["tile"] == TILE  # every sha256 checked
    n_exports = sum(len(exports) for _, _, exports in got)
    assert n_exports == 1 if use_lock else 1 <= n_exports <= 2  # with the lock, the second waits and reuses
    # no staging folder is left behind, whoever won
    assert sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) == [folder.name]
