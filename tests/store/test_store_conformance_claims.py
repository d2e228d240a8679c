"""What every result-store backend must do with claims, completion records and temporaries.

Part of the conformance suite (``test_store_conformance.py`` holds the backends and the rest): every
backend in BACKENDS runs these. Claims and writes from several processes are tested with real
processes (multiprocessing, spawn).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import zarr
from test_store_conformance import BACKENDS, BY_ID, assert_same, make_result, put, snapshot

from semtile.errors import SemtileError
from semtile.store.directory import HIDDEN


@pytest.fixture(params=BACKENDS, ids=lambda b: b.id)
def backend(request):
    return request.param


@pytest.fixture
def store(backend, tmp_path):
    return backend.open(tmp_path / "results", "a")



def test_a_claim_is_kept_across_objects_and_name_for_is_its_alias(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    a, b = tmp_path / "a" / "scan.tif", tmp_path / "b" / "scan.tif"
    name_a = store.claim(a)
    assert store.claim(a) == store.name_for(a) == store.claim(tmp_path / "b" / ".." / "a" / "scan.tif") == name_a
    name_b = store.name_for(b)
    assert name_b != name_a
    other = backend.open(tmp_path / "results", "a")  # another process or run: the same answers
    assert other.claim(b) == name_b and other.claim(a) == name_a
    assert other.claim(tmp_path / "c" / "scan.tif") not in (name_a, name_b)
    assert store.names() == []  # a claimed name is no result
    with pytest.raises(SemtileError, match="read-only"):
        backend.open(tmp_path / "results", "r").claim(tmp_path / "d.tif")


def test_find_and_record(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    source = tmp_path / "scan.tif"
    assert store.find(source) is None
    name = store.claim(source)
    assert store.find(source) is None and store.record(name) is None  # claimed, not written
    result = make_result(source, seed=2)
    store.write(name, result)
    reader = backend.open(tmp_path / "results", "r")
    assert store.find(source) == reader.find(source) == name
    assert reader.record(name) == result.record == reader.read(name).record
    assert reader.find(tmp_path / "other.tif") is None
    for missing in ("nope", "", "..", HIDDEN, "zarr.json"):
        assert reader.record(missing) is None
    without = make_result(source, seed=3)
    without.record = None
    store.write(name, without)
    assert store.record(name) is None and store.find(source) == name
    store.write("direct", make_result(tmp_path / "direct.tif"))  # written under a name never claimed
    assert backend.open(tmp_path / "results", "r").find(tmp_path / "direct.tif") == "direct"


@pytest.mark.parametrize("at", ["first_array", "publish"])
def test_zarr_itself_never_lists_a_temporary(backend, store, tmp_path, monkeypatch, at):
    name, _ = put(store, tmp_path / "a.tif")
    seen = []

    def look():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns of the folder without Zarr metadata that it passes over
            root = zarr.open_group(str(store.path), mode="r")
            seen.append((sorted(root.group_keys()), sorted(key for key, _ in root.members(max_depth=None))))

    backend.interrupt(monkeypatch, look, at)
    store.write(store.claim(tmp_path / "b.tif"), make_result(tmp_path / "b.tif", seed=1))
    monkeypatch.undo()
    assert len(seen) == 1
    keys, members = seen[0]
    assert keys == [name]
    assert members and all(key == name or key.startswith(f"{name}/") for key in members)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_clean_stale_removes_dead_writers_temporaries_and_keeps_live_ones(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    name, result = put(store, tmp_path / "a.tif")
    released = backend.temporary(store, "released", 0)  # its run ended
    expired = backend.temporary(store, "expired", 0)  # its run stopped beating
    live = backend.temporary(store, "held", 25 * 3600)  # a live lease: kept however old
    legacy_old = backend.temporary(store, "legacy", 25 * 3600)
    legacy_new = backend.temporary(store, "legacy", 3600)  # an older version may still write it
    reader = backend.open(store.path, "r")
    assert reader.names() == [name]
    with pytest.raises(SemtileError, match="read-only"):
        reader.clean_stale()
    assert store.clean_stale() == 3
    assert not released.exists() and not expired.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists()
    assert store.clean_stale() == 0
    assert store.names() == [name]
    assert_same(store.read(name), result)


def _write_and_hang(backend_id: str, path: str, source: str, started) -> None:
    """In another process: start writing a result, and stop for good once its first array is stored."""
    real = zarr.Group.create_array

    def create_array(self, *args, **kwargs):
        array = real(self, *args, **kwargs)
        started.set()
        time.sleep(3600)
        return array

    zarr.Group.create_array = create_array
    # The OME-Zarr store writes a whole result's arrays straight to files (store/shards.py), not through Zarr.
    import semtile.store.ome_layout as layout

    sharded = layout.write_sharded

    def write_sharded(*args, **kwargs):
        sharded(*args, **kwargs)
        started.set()
        time.sleep(3600)

    layout.write_sharded = write_sharded
    os.environ["SEMTILE_LEASE_SECONDS"] = "3"  # its lease expires 3 s after it is killed
    store = BY_ID[backend_id].open(Path(path), "a")
    store.write(store.claim(source), make_result(Path(source)))


def test_a_killed_writer_leaves_nothing_after_clean_stale(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    name, result = put(store, tmp_path / "a.tif")
    store.claim(tmp_path / "b.tif")
    before = snapshot(store.path)
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    writer = ctx.Process(target=_write_and_hang, args=(backend.id, str(store.path), str(tmp_path / "b.tif"), started))
    writer.start()
    try:
        assert started.wait(120), "the writer did not start"
        assert set(snapshot(store.path)) > set(before)  # its temporary
        assert store.clean_stale() == 0  # the writer runs: its temporary stays
        assert set(snapshot(store.path)) > set(before)
        assert backend.open(store.path, "r").names() == [name]
    finally:
        writer.kill()  # SIGKILL: no clean-up of its own
        writer.join(60)
    assert store.clean_stale() == 0  # its lease has not expired yet
    time.sleep(3.5)
    assert store.clean_stale() >= 1
    assert snapshot(store.path) == before
    assert store.names() == [name] and store.find(tmp_path / "b.tif") is None
    assert_same(store.read(name), result)


def _claim_and_write(backend_id: str, path: str, sources: list, shared: str, seed: int, barrier, queue) -> None:
    """In another process: claim ``sources`` and ``shared`` at the same moment as the other process, write all."""
    store = BY_ID[backend_id].open(Path(path), "a")
    barrier.wait(120)
    names = [store.claim(source) for source in sources]
    shared_name = store.claim(shared)
    barrier.wait(120)
    store.write(shared_name, make_result(Path(shared), seed=seed))  # both processes write this name
    for i, (source, name) in enumerate(zip(sources, names)):
        store.write(name, make_result(Path(source), seed=seed + 1 + i))
    queue.put((seed, names, shared_name))


def test_two_processes_claim_same_stem_files_and_write_at_once(backend, tmp_path):
    path = tmp_path / "results"
    backend.open(path, "a")
    sources = {seed: [str(tmp_path / f"{seed}-{k}" / "scan.tif") for k in range(4)] for seed in (10, 20)}
    shared = str(tmp_path / "shared" / "scan.tif")
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_claim_and_write, args=(backend.id, str(path), sources[seed], shared, seed, barrier,
                                                          queue)) for seed in sources]
    for worker in workers:
        worker.start()
    answers = {seed: (names, shared_name) for seed, names, shared_name in (queue.get(timeout=300) for _ in workers)}
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    names = answers[10][0] + answers[20][0]
    shared_name = answers[10][1]
    assert answers[20][1] == shared_name  # the same file: the same name, though claimed at once
    assert len({n.casefold() for n in [*names, shared_name]}) == 9  # different files: different names
    store = backend.open(path, "r")
    assert store.names() == sorted([*names, shared_name])
    for seed, (written, _) in answers.items():
        for i, (source, name) in enumerate(zip(sources[seed], written)):
            assert store.find(source) == name
            assert_same(store.read(name), make_result(Path(source), seed=seed + 1 + i))
    winner = store.read(shared_name)  # two writers of one name: one complete result, either one
    assert winner.record["seed"] in (10, 20)
    assert_same(winner, make_result(Path(shared), seed=winner.record["seed"]))
    again = backend.open(path, "a")
    assert [again.claim(s) for s in sources[10]] == answers[10][0] and again.claim(shared) == shared_name
    assert again.clean_stale() == 0
    assert not list((path / HIDDEN / "tmp").iterdir())  # no temporary left behind
