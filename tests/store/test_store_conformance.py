"""What every result-store backend must do. A new backend adds itself to BACKENDS.

Each backend gives: ``open(path, mode)``; ``interrupt(monkeypatch, hook,
at)``, which makes ``hook()`` run inside ``write`` (to look at the store
mid-write, or to make the write fail) at two points: ``"first_array"``, once
the first array of a result is stored, and ``"publish"``, once all of it is
stored, just before it becomes visible; and ``temporary(store, lease,
age_s)``, which leaves in ``store`` what a writer whose lease is ``lease``
(``"held"``, ``"expired"``, ``"released"``, or ``"legacy"``: named by an older
version, by host and pid) would have left mid-write ``age_s`` seconds ago.
The suite assumes one folder per store with the result of ``name`` under
``path/name``; everything else in the store folder must be left byte-identical.
Claims, completion records and temporaries are tested in
``test_store_conformance_claims.py``, over the same BACKENDS.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from semtile.errors import SemtileError
from semtile.store import (
    ImageResult,
    OmeZarrStore,
    ResultStore,
    ZarrDirectoryStore,
    decode_probability,
    encode_probability_u8,
)
from semtile.store.base import RESERVED_NAMES
from semtile.store.directory import HIDDEN, DirectoryStore, temporary_name


@dataclass(frozen=True)
class Backend:
    id: str
    open: Callable[[Path, str], ResultStore]
    interrupt: Callable[[pytest.MonkeyPatch, Callable[[], None], str], None]
    temporary: Callable[[ResultStore, str, float], Path]


def _directory_interrupt(monkeypatch, hook, at):
    if at == "publish":
        publish = DirectoryStore._publish

        def publishing(self, *args):
            hook()
            return publish(self, *args)

        monkeypatch.setattr(DirectoryStore, "_publish", publishing)
        return
    real, stores = zarr.Group.create_array, set()

    def create_array(self, *args, **kwargs):
        array = real(self, *args, **kwargs)
        root = str(getattr(self.store_path.store, "root", id(self.store_path.store)))
        if root not in stores:  # the first array of this result (a result is written as one Zarr store)
            stores.add(root)
            hook()
        return array

    monkeypatch.setattr(zarr.Group, "create_array", create_array)
    # The OME-Zarr store writes a whole result's arrays straight to files (store/shards.py), not through Zarr.
    import semtile.store.ome_layout as layout

    sharded = layout.write_sharded

    def write_sharded(folder, *args, **kwargs):
        sharded(folder, *args, **kwargs)
        if str(folder) not in stores:
            stores.add(str(folder))
            hook()

    monkeypatch.setattr(layout, "write_sharded", write_sharded)


_HELD: list = []  # leases held by this test process for its "held" temporaries


def _directory_temporary(store, lease, age_s=0.0):
    """A result half written ``age_s`` seconds ago by a writer whose lease is ``lease``."""
    from semtile.store.lease import RunLease

    tmp = store.path / HIDDEN / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    if lease == "legacy":
        name = temporary_name("partial", host="another-host", pid=1)
    else:
        holder = RunLease(store.path / HIDDEN, "test")
        if lease == "held":
            _HELD.append(holder)
        elif lease == "expired":
            holder.release()
            holder.path.write_text('{"seconds": 5}')
            os.utime(holder.path, (time.time() - 60, time.time() - 60))
        else:
            holder.release()
        name = f"partial~{holder.token}~{uuid.uuid4().hex[:12]}"
    path = tmp / name
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.create_array("mask", data=np.zeros((4, 4), np.float32))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


BACKENDS = [
    Backend("zarr-directory", lambda path, mode="a": ZarrDirectoryStore(path, mode=mode), _directory_interrupt,
            _directory_temporary),
    Backend("ome-zarr", lambda path, mode="a": OmeZarrStore(path, mode=mode), _directory_interrupt,
            _directory_temporary),
]
BY_ID = {b.id: b for b in BACKENDS}


@pytest.fixture(params=BACKENDS, ids=lambda b: b.id)
def backend(request) -> Backend:
    return request.param


@pytest.fixture
def store(backend, tmp_path) -> ResultStore:
    return backend.open(tmp_path / "results", "a")


def make_result(source: Path, seed: int = 0, shape=(37, 53), labels=(0, 1, 2, 3)) -> ImageResult:
    rng = np.random.default_rng(seed)
    mask = rng.random(shape, dtype=np.float32)
    probs = rng.random(len(labels)).astype(np.float32)
    image = (rng.integers(0, 256, shape) / 255).astype(np.float32)  # an 8-bit scan in [0, 1]
    return ImageResult(source=Path(source), mask=mask, binary_mask=mask >= 0.5, class_probs=probs / probs.sum(),
                       labels=list(labels), label=labels[seed % len(labels)],
                       adhesive_ratio=float((mask >= 0.5).mean()), image=image,
                       record={"format": "test/1", "seed": seed,
                               "input": {"size": np.int64(10 + seed), "sha256": "cd" * 32}},  # numpy too
                       attrs={"tiles": 6 + seed, "pixel_size_m": 1.5e-9, "frame_shape": [40, 53], "note": "ü ok",
                              "provenance": {"input": {"path": str(source), "sha256": "ab" * 32},
                                             "parameters": {"tile": 64, "halo": 8, "threshold": 0.5, "x": None},
                                             "versions": {"zarr": zarr.__version__}}})


def assert_same(stored, result: ImageResult):
    mask, binary, probs = (np.asarray(a[...]) for a in (stored.mask, stored.binary_mask, stored.class_probs))
    assert mask.dtype == np.float32 and binary.dtype == np.bool_ and probs.dtype == np.float32
    np.testing.assert_array_equal(mask, at_stored_precision(stored, result.mask))
    np.testing.assert_array_equal(binary, result.binary_mask)
    np.testing.assert_array_equal(probs, result.class_probs)
    assert stored.label == result.label and stored.labels == list(result.labels)
    assert stored.adhesive_ratio == result.adhesive_ratio
    assert without_storage(stored.attrs) == result.attrs
    assert stored.source == Path(result.source).resolve()
    assert stored.record == result.record
    try:
        image = stored.image
    except SemtileError:  # a format that keeps no image
        return
    assert image.shape == result.mask.shape and np.asarray(image).dtype == np.float32
    np.testing.assert_allclose(np.asarray(image[...]), result.image, rtol=0, atol=1e-5)


def at_stored_precision(stored, mask) -> np.ndarray:
    """``mask`` as the store keeps it, read back: uint8 ``round(p * 255) / 255``, floats in their dtype."""
    dtype = np.asarray(stored.stored("mask")[:1, :1]).dtype
    if dtype == np.uint8:
        return decode_probability(encode_probability_u8(mask))
    return np.asarray(mask).astype(dtype).astype(np.float32)


def without_storage(attrs: dict) -> dict:
    """Attributes as given, without what the store adds to the provenance (how it stored the arrays)."""
    attrs = dict(attrs)
    if isinstance(attrs.get("provenance"), dict):
        attrs["provenance"] = {k: v for k, v in attrs["provenance"].items() if k != "storage"}
    return attrs


def snapshot(root: Path, skip: str | None = None) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, except those of the result ``skip``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (skip is None or p.relative_to(root).parts[0] != skip)}


def put(store: ResultStore, source: Path, seed: int = 0) -> tuple[str, ImageResult]:
    name, result = store.claim(source), make_result(source, seed)
    store.write(name, result)
    return name, result


@pytest.mark.parametrize("labels", [(0, 1, 2, 3), ("dry", "wet")])
def test_write_then_read_back(store, tmp_path, labels):
    result = make_result(tmp_path / "in" / "scan.tif", seed=3, labels=labels)
    name = store.name_for(result.source)
    store.write(name, result)
    assert store.names() == [name] and name in store and "other" not in store
    assert_same(store.read(name), result)
    assert store.read(name).mask.shape == result.mask.shape  # lazily: shape without reading


def test_numpy_numbers_in_attrs_and_record_come_back_as_python_numbers(store, tmp_path):
    result = make_result(tmp_path / "np.tif", labels=(0, 1))
    result.attrs.update(databar_rows=np.int64(24), pixel_size_m=np.float32(2e-9), shape=(np.int32(3), 4),
                        flags=np.array([True, False]))
    result.label = np.int64(1)
    store.write(store.claim(result.source), result)
    stored = store.read("np")
    assert stored.label == 1 and type(stored.label) is int
    assert stored.attrs["databar_rows"] == 24 and type(stored.attrs["databar_rows"]) is int
    assert stored.attrs["shape"] == [3, 4] and stored.attrs["flags"] == [True, False]
    assert stored.attrs["pixel_size_m"] == pytest.approx(2e-9)
    assert store.record("np") == result.record and type(store.record("np")["input"]["size"]) is int


def test_large_masks_round_trip(store, tmp_path):
    result = make_result(tmp_path / "big.tif", shape=(1030, 700))
    store.write(store.name_for(result.source), result)
    assert_same(store.read("big"), result)


ODD = ["scan one.tif", "日本語.tif", "中文.tif", "a.b.c.tif", "zarr.json.tif", "ZARR.JSON.tif", "zarr.json",
       ".zattrs", ".zattrs.tif", ".zgroup.tif", ".tif", "..tif", "-.tif", "__init__.tif", "con.tif", "image.tif",
       "Scan One.tif", "x" * 250 + ".tif", "tab\there.tif", "semi;colon $&.tif", "labels.tif", "OME.tif", "ome",
       ".semtile.tif", "0.tif"]


def test_odd_file_names_get_safe_distinct_names(backend, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    store = backend.open(tmp_path / "results", "a")
    written = {}
    for i, file_name in enumerate(ODD):
        (folder / file_name).write_bytes(b"")
        name, result = put(store, folder / file_name, seed=i)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and len(name) <= 255, name
        assert name.casefold() not in RESERVED_NAMES, name
        written[name] = result
    assert len({n.casefold() for n in written}) == len(ODD)  # distinct even where case is ignored
    reopened = backend.open(tmp_path / "results", "r")  # the store's own metadata survived every name
    assert reopened.names() == sorted(written)
    for name, result in written.items():
        assert_same(reopened.read(name), result)


def test_same_stem_from_two_folders_gets_two_names_and_reruns_keep_theirs(backend, tmp_path):
    a, b, c = tmp_path / "a" / "scan.tif", tmp_path / "b" / "scan.tif", tmp_path / "c" / "scan.tif"
    store = backend.open(tmp_path / "results", "a")
    name_a, _ = put(store, a)
    assert store.name_for(b) != name_a  # reserved, though never written
    name_c, _ = put(store, c, seed=1)
    assert store.name_for(a) == name_a and store.name_for(c) == name_c
    assert len({name_a, store.name_for(b), name_c}) == 3
    for order in ([c, a, b], [b, c, a]):  # a new session, any order: each file keeps its name
        again = backend.open(tmp_path / "results", "a")
        names = {p: again.name_for(p) for p in order}
        assert names[a] == name_a and names[c] == name_c and names[b] not in (name_a, name_c)


def test_rewriting_a_name_replaces_only_it(store, tmp_path):
    name_a, _ = put(store, tmp_path / "a.tif", seed=1)
    name_b, result_b = put(store, tmp_path / "b.tif", seed=2)
    before = snapshot(store.path, skip=name_a)
    newer = make_result(tmp_path / "a.tif", seed=5)
    store.write(name_a, newer)
    assert snapshot(store.path, skip=name_a) == before  # no other file touched, nothing left behind
    assert store.names() == sorted([name_a, name_b])
    assert_same(store.read(name_a), newer)
    assert_same(store.read(name_b), result_b)


@pytest.mark.parametrize("at", ["first_array", "publish"])
def test_a_failed_write_leaves_the_store_as_it_was(backend, store, tmp_path, monkeypatch, at):
    name, old = put(store, tmp_path / "a.tif", seed=1)
    new = store.claim(tmp_path / "b.tif")  # the claim stays, whether or not its result is ever written
    before = snapshot(store.path)

    def fail():
        raise OSError("disk full (injected)")

    backend.interrupt(monkeypatch, fail, at)
    with pytest.raises(OSError, match="injected"):
        store.write(name, make_result(tmp_path / "a.tif", seed=2))  # replacing
    with pytest.raises(OSError, match="injected"):
        store.write(new, make_result(tmp_path / "b.tif", seed=3))  # a new name
    monkeypatch.undo()
    assert snapshot(store.path) == before
    assert store.names() == [name] and new not in store
    assert_same(store.read(name), old)
    assert backend.open(store.path, "r").names() == [name]
    assert store.find(tmp_path / "b.tif") is None and store.find(tmp_path / "a.tif") == name
    assert store.clean_stale() == 0  # a failed write leaves no temporary behind


@pytest.mark.parametrize("at", ["first_array", "publish"])
def test_readers_never_see_a_partial_result(backend, store, tmp_path, monkeypatch, at):
    name, old = put(store, tmp_path / "a.tif", seed=1)
    new_name = store.name_for(tmp_path / "b.tif")
    complete, seen = {name: old}, []

    def look():  # another reader, in the middle of a write
        reader = backend.open(store.path, "r")
        seen.append(reader.names())
        for n in reader.names():
            assert_same(reader.read(n), complete[n])  # the previous result, complete
        with pytest.raises(SemtileError):
            reader.read(new_name)

    backend.interrupt(monkeypatch, look, at)
    newer = make_result(tmp_path / "a.tif", seed=4)
    store.write(name, newer)
    complete[name] = newer
    store.write(new_name, make_result(tmp_path / "b.tif", seed=2))
    monkeypatch.undo()
    assert seen == [[name], [name]]  # mid-write, no temporary entry is listed
    assert store.names() == sorted([name, new_name])
    assert_same(store.read(name), newer)


def test_reopening_sees_the_same_results(backend, tmp_path):
    store = backend.open(tmp_path / "results", "a")
    written = dict(put(store, tmp_path / f"{k}.tif", seed=k) for k in range(3))
    for mode in ("r", "a"):
        again = backend.open(tmp_path / "results", mode)
        assert again.names() == store.names() == sorted(written)
        for name, result in written.items():
            assert name in again
            assert_same(again.read(name), result)


@pytest.mark.parametrize("missing", ["nope", "", ".", "..", "../results", "a/mask", ".partial-a", "zarr.json",
                                     "labels", HIDDEN, f"{HIDDEN}/tmp", "0"])
def test_reading_a_missing_name_raises_naming_it(store, tmp_path, missing):
    put(store, tmp_path / "a.tif")
    with pytest.raises(SemtileError) as info:
        store.read(missing)
    assert repr(missing) in str(info.value)
    assert missing not in store


@pytest.mark.parametrize("mode", ["r", "a"])
def test_opening_a_plain_file_raises(backend, tmp_path, mode):
    path = tmp_path / "results.zarr"
    path.write_bytes(b"not a store")
    with pytest.raises(SemtileError, match=re.escape(str(path))):
        backend.open(path, mode)
    assert path.read_bytes() == b"not a store"


def test_read_only_opening_creates_nothing(backend, tmp_path):
    with pytest.raises(SemtileError, match=re.escape(str(tmp_path / "absent"))):
        backend.open(tmp_path / "absent", "r")
    assert not (tmp_path / "absent").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    for folder in ("empty", "other"):
        with pytest.raises(SemtileError, match=re.escape(str(tmp_path / folder))):
            backend.open(tmp_path / folder, "r")
    assert not any((tmp_path / "empty").iterdir())
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def at_each_root_write(monkeypatch, folder, action):
    """Call ``action()`` whenever Zarr is about to publish a root ``zarr.json`` directly under ``folder``.

    The hook runs inside Zarr's atomic write, once its temporary file exists beside the target: the
    moment another process would find the folder being filled.
    """
    import zarr.storage._local as local
    real, calls = local._atomic_write, []

    @contextlib.contextmanager
    def hooked(path, mode, exclusive=False):
        with real(path, mode, exclusive) as f:
            if Path(path).name == "zarr.json" and Path(path).parent.parent == folder:
                calls.append(Path(path))
                action()
            yield f

    monkeypatch.setattr(local, "_atomic_write", hooked)
    return calls


def test_a_new_root_is_readable_from_its_first_write(backend, tmp_path, monkeypatch):
    """A reader polling a store being created finds no store, or a marked one; never an unmarked root."""
    def read():
        if (tmp_path / "results").exists():
            assert (tmp_path / "results" / "zarr.json").is_file()
            backend.open(tmp_path / "results", "r")  # raises SemtileError if not yet a semtile store

    calls = at_each_root_write(monkeypatch, tmp_path, read)
    backend.open(tmp_path / "results", "a")
    assert calls
    read()


def test_two_writers_creating_one_store_at_once_both_open_it(backend, tmp_path, monkeypatch):
    """A second run that starts while the first is creating the store opens it (CI saw it refused as
    "a folder that is not a Zarr store"); both write into one store, and no staging folder is left."""
    second = []

    def start_second():
        if not second:
            second.append(None)
            second[0] = backend.open(tmp_path / "results", "a")

    calls = at_each_root_write(monkeypatch, tmp_path, start_second)
    first = backend.open(tmp_path / "results", "a")
    assert calls and second[0] is not None
    put(first, tmp_path / "a.tif")
    put(second[0], tmp_path / "b.tif")
    assert len(backend.open(tmp_path / "results", "r").names()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_an_empty_folder_becomes_a_store(backend, tmp_path):
    (tmp_path / "results").mkdir()
    put(backend.open(tmp_path / "results", "a"), tmp_path / "a.tif")
    assert backend.open(tmp_path / "results", "r").names()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_an_unmarked_zarr_root_is_adopted_for_writing_only(backend, tmp_path):
    """A bare Zarr group (a run of an older semtile killed while creating it) is marked on "a", refused on "r"."""
    zarr.open_group(str(tmp_path / "results"), mode="w-", zarr_format=3)
    with pytest.raises(SemtileError, match="not a semtile result store"):
        backend.open(tmp_path / "results", "r")
    put(backend.open(tmp_path / "results", "a"), tmp_path / "a.tif")
    assert backend.open(tmp_path / "results", "r").names()


def test_a_read_only_store_refuses_writes(backend, tmp_path):
    name, result = put(backend.open(tmp_path / "results", "a"), tmp_path / "a.tif")
    reader = backend.open(tmp_path / "results", "r")
    before = snapshot(reader.path)
    with pytest.raises(SemtileError, match="read-only"):
        reader.write(name, make_result(tmp_path / "a.tif", seed=9))
    assert snapshot(reader.path) == before
    assert_same(reader.read(name), result)


def test_writes_that_would_corrupt_the_store_are_refused(store, tmp_path):
    put(store, tmp_path / "a.tif")
    before = snapshot(store.path)
    for bad in ("", "../x", "a/b", ".hidden", "zarr.json", "labels", "OME", HIDDEN):
        with pytest.raises(SemtileError):
            store.write(bad, make_result(tmp_path / "b.tif"))
    shadowing = make_result(tmp_path / "b.tif")
    shadowing.attrs["label"] = "not the label"
    with pytest.raises(SemtileError, match="shadow"):
        store.write("b", shadowing)
    mismatched = make_result(tmp_path / "b.tif")
    mismatched.binary_mask = mismatched.binary_mask[:-1]
    with pytest.raises(SemtileError, match="shape"):
        store.write("b", mismatched)
    unjsonable = make_result(tmp_path / "b.tif")
    unjsonable.record = {"when": object()}
    with pytest.raises(SemtileError, match="record"):
        store.write("b", unjsonable)
    assert snapshot(store.path) == before

