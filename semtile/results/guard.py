"""Reads of a stored result that fail that result, with a clear error, when its bytes are damaged.

Every array :class:`~semtile.results.reader.Results` hands out is wrapped
(:class:`Guarded`). On the result's first array, its files are checked
against the manifest written at commit (sizes, and the CRC of its small
metadata files: :func:`semtile.store.verify.check_files`, quick); each chunk
file a read touches is CRC-checked once against the manifest, unless the array
carries a ``crc32c`` codec, which Zarr checks itself. A read that fails to
decode is traced to its chunk. Either way the read raises
:class:`~semtile.errors.DamagedResultError` naming the store, the result, the
array and the chunk, and only that result fails.

Results written before manifests get the decode check only (see
:mod:`semtile.store.verify` for what that does not see).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from semtile.errors import DamagedResultError, SemtileError
from semtile.store.verify import (
    Damage,
    UnreadableManifest,
    bytes_checksum,
    check_files,
    checksum_kind,
    locate_chunk,
    read_manifest,
)

__all__ = ["ResultGuard", "Guarded"]

_SMALL_FILES = ("zarr.json", "provenance.json")  # read whole by every opener: their CRC costs nothing more


def _zarr_of(obj: Any):
    """The zarr array behind ``obj`` (itself, or the array a dtype-converting view reads), or None."""
    import zarr

    for candidate in (obj, getattr(obj, "_array", None)):
        if isinstance(candidate, zarr.Array):
            return candidate
    return None


def _has_crc32c(array) -> bool:
    try:
        return "crc32c" in json.dumps(array.metadata.to_dict(), default=str)
    except Exception:  # noqa: BLE001 - metadata that does not serialise: check by the manifest
        return False


class ResultGuard:
    """The damage checks of one opened result (thread-safe: dask reads chunks from several threads)."""

    def __init__(self, store: Path, name: str, folder: Path):
        self.store, self.name, self.folder = Path(store), name, Path(folder)
        self._lock = threading.Lock()
        self._checked = False
        self._damage: list[Damage] | None = None
        self._files: dict | None = None  # the manifest's files, or None without one
        self._kind = "crc32"  # the manifest's checksum
        self._crc_done: set[str] = set()
        self._crc32c: dict[str, bool] = {}

    # -- the whole result ------------------------------------------------------------------------------
    def damage(self) -> list[Damage]:
        """The damage the quick check finds (cached): missing, resized or added files, changed metadata."""
        with self._lock:
            if self._damage is None:
                self._damage = self._quick()
            return self._damage

    def _quick(self) -> list[Damage]:
        try:
            manifest = read_manifest(self.folder)
        except UnreadableManifest as exc:
            return [exc.damage]
        if manifest is None:
            return []
        self._files, self._kind = manifest["files"], checksum_kind(manifest)
        found = check_files(self.folder, full=False) or []
        for rel, (_, _, crc) in self._files.items():
            if rel.rsplit("/", 1)[-1] in _SMALL_FILES and not any(d.chunk and rel.endswith(d.chunk) for d in found):
                try:
                    now = bytes_checksum((self.folder / rel).read_bytes(), self._kind)
                except OSError:
                    continue  # reported by check_files
                if now != crc:
                    found.append(Damage("checksum differs from when written (metadata changed)", chunk=rel))
        return found

    def check(self) -> None:
        """DamagedResultError when the quick check found damage."""
        found = self.damage()
        if found:
            first = found[0]
            more = f" (and {len(found) - 1} more: semtile verify lists them)" if len(found) > 1 else ""
            raise DamagedResultError(self.store, self.name, first.reason + more, array=first.array, chunk=first.chunk)

    # -- one array ---------------------------------------------------------------------------------------
    def wrap(self, obj: Any, label: str) -> Guarded:
        self.check()
        return Guarded(obj, self, label)

    def check_region(self, z, key) -> None:
        """CRC of each chunk file the read ``key`` of the zarr array ``z`` touches, once, against the manifest."""
        if self._files is None or z is None or f"{z.path}/zarr.json" not in self._files:
            return  # no manifest, or an array added beside the result since (by hand or by another tool)
        path = z.path
        if path not in self._crc32c:
            self._crc32c[path] = _has_crc32c(z)
        if self._crc32c[path]:
            return
        for rel in _chunk_files(z, key):
            full = f"{path}/{rel}"
            if full in self._crc_done:
                continue
            expected = self._files.get(full)
            file = self.folder / full
            if expected is None:
                if file.exists():
                    raise DamagedResultError(self.store, self.name, "not written with the result (a file added since)",
                                             array=path, chunk=rel)
                continue  # a chunk of fill values: none was written
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                raise DamagedResultError(self.store, self.name, "missing", array=path, chunk=rel) from None
            now = bytes_checksum(data, self._kind)
            if len(data) != expected[0] or now != expected[2]:
                raise DamagedResultError(self.store, self.name,
                                         f"checksum {now:08x}, {expected[2]:08x} when written "
                                         f"({len(data)} bytes, {expected[0]} when written)", array=path, chunk=rel)
            with self._lock:
                self._crc_done.add(full)

    def failed(self, exc: BaseException, z, label: str, key) -> BaseException:
        """The error for a read of ``z`` that raised ``exc``: DamagedResultError naming the chunk, if damage is found."""
        path = z.path if z is not None else label
        if self._files is not None and z is not None:
            found = check_files(self.folder, full=True, under=z.path) or []
            if found:
                d = found[0]
                return DamagedResultError(self.store, self.name, d.reason, array=d.array or path, chunk=d.chunk)
        if z is not None:
            where = locate_chunk(z, key)
            if where is not None:
                return DamagedResultError(self.store, self.name, where[1], array=path, chunk=where[0])
        return exc


def _chunk_files(z, key) -> list[str]:
    """The chunk (or shard) files of ``z`` that the read ``key`` touches, as keys relative to the array."""
    shape = tuple(int(s) for s in z.shape)
    grid = tuple(int(s) for s in (getattr(z, "shards", None) or z.chunks))
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    ranges = []
    for k, (size, step) in enumerate(zip(shape, grid, strict=True)):
        part = key[k] if k < len(key) else slice(None)
        if isinstance(part, slice):
            start, stop, stride = part.indices(size)
            if stride < 0:
                start, stop = stop + 1, start + 1
        elif isinstance(part, (int, np.integer)):
            start = int(part) % size if size else 0
            stop = start + 1
        else:
            start, stop = 0, size
        ranges.append(range(start // step, max(start // step, math.ceil(stop / step))) if stop > start else range(0))
    out = []
    for coords in np.ndindex(*(len(r) for r in ranges)):
        c = tuple(r[i] for r, i in zip(ranges, coords, strict=True))
        out.append(z.metadata.encode_chunk_key(c))
    return out


class Guarded:
    """An array-like read through its :class:`ResultGuard`: shape, dtype, chunks and slicing as the array's."""

    def __init__(self, obj: Any, guard: ResultGuard, label: str):
        self._obj, self._guard, self._label = obj, guard, label
        self._z = _zarr_of(obj)

    shape = property(lambda self: tuple(self._obj.shape))
    dtype = property(lambda self: self._obj.dtype)
    ndim = property(lambda self: len(self.shape))

    @property
    def chunks(self):
        z = self._z
        return tuple(z.chunks) if z is not None else getattr(self._obj, "chunks", None)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        guard = self._guard
        try:
            guard.check_region(self._z, key)
            return self._obj[key]
        except (SemtileError, MemoryError):
            raise
        except Exception as exc:  # whatever a codec raises for bad bytes
            failure = guard.failed(exc, self._z, self._label, key)
            if failure is exc:
                raise
            raise failure from None

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self[...])
        return out if dtype is None else out.astype(dtype)

    def __getattr__(self, name: str):
        return getattr(self._obj, name)

    def __repr__(self) -> str:
        return f"<checked {self._obj!r}>"


def guard_opener(opener, guard: ResultGuard, labels):
    """``opener(key, ...)`` whose arrays come back guarded."""

    def opened(key, *args):
        return guard.wrap(opener(key, *args), labels(key, *args))

    return opened

