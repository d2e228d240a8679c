"""Zarr v3 arrays written at compressor speed: sharded arrays encoded here, their chunks compressed on a pool.

For results written whole, zarr-python's write path costs several times the
compression itself (an event loop, a metadata round trip and a task per
chunk). :func:`write_sharded` writes an array's ``zarr.json`` and shard files
directly, in the format of the zarr v3 ``sharding_indexed`` codec that
``array_layout`` describes: each inner chunk (padded with the fill value 0 to
the chunk shape, C order, little endian) is zstd-compressed and followed by
its crc32c; the shard ends with the index (offset, length per chunk, uint64
little endian, C order; 2**64 - 1 for a chunk wholly outside the array)
and the index's crc32c. :func:`write_group` writes a group's ``zarr.json`` and
:func:`write_plain` a small array as one unsharded chunk, as zarr-python does
(its own calls cost a few ms each, more than the data). Chunks of every array of a result are compressed
together on a thread pool (zstd and crc32c release the GIL). Any zarr v3
reader reads these arrays (zarr-python, zarrs, tensorstore); the store's
tests read them back with zarr-python and compare the metadata with what
zarr-python itself writes.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import Zstd

from semtile.store.written import write_file

__all__ = ["array_metadata", "write_sharded", "writer_threads", "write_group", "write_plain"]

_MISSING = 2**64 - 1
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def writer_threads() -> int:
    """Threads that compress chunks: ``SEMTILE_WRITE_THREADS``, else one per CPU this process may use."""
    configured = os.environ.get("SEMTILE_WRITE_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor | None:
    """The compressing pool; None with one thread: chunks are then compressed inline (a task per chunk on a
    single thread only adds hand-offs)."""
    global _POOL
    if writer_threads() == 1:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=writer_threads(), thread_name_prefix="semtile-compress")
        return _POOL


class _Done:
    """A chunk compressed inline, with the pool's ``result()``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _submit(pool: ThreadPoolExecutor | None, fn, *args):
    return _Done(fn(*args)) if pool is None else pool.submit(fn, *args)


def _bytes_codec(dtype: np.dtype) -> dict:
    return {"name": "bytes"} if dtype.itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}


def _chunk_codecs(dtype: np.dtype, level: int, checksum: bool) -> list[dict]:
    """A chunk's codecs: bytes, zstd at ``level``, and crc32c when ``checksum``."""
    codecs = [_bytes_codec(dtype), {"name": "zstd", "configuration": {"level": level, "checksum": False}}]
    return [*codecs, {"name": "crc32c"}] if checksum else codecs


def _array_document(shape: tuple[int, ...], dtype: np.dtype, grid: tuple[int, ...], codecs: list[dict],
                    dimension_names: tuple[str, ...]) -> dict:
    """An array's ``zarr.json`` (fill value 0, chunks of ``grid``), its keys in zarr-python's order."""
    fill = 0.0 if dtype.kind == "f" else (False if dtype.kind == "b" else 0)
    return {"shape": list(shape), "data_type": "bool" if dtype.kind == "b" else dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(grid)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": codecs, "attributes": {}, "dimension_names": list(dimension_names),
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def array_metadata(shape: tuple[int, ...], dtype, *, chunks: tuple[int, ...], shards: tuple[int, ...], level: int,
                   checksum: bool, dimension_names: tuple[str, ...]) -> dict:
    """The ``zarr.json`` of a sharded array (fill value 0), as zarr-python writes it for ``array_layout``."""
    dtype = np.dtype(dtype)
    index = [{"name": "bytes", "configuration": {"endian": "little"}}, *([{"name": "crc32c"}] if checksum else [])]
    sharding = {"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(chunks), "codecs": _chunk_codecs(dtype, level, checksum), "index_codecs": index,
        "index_location": "end"}}
    return _array_document(shape, dtype, shards, [sharding], dimension_names)


_LOCAL = threading.local()  # per compressing thread: one zero-padded buffer per chunk shape and dtype


def _contiguous_chunk(block: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    """``block`` as a C-ordered little-endian chunk of shape ``chunks``, padded with the fill value 0: the block
    itself when it already is one, else a copy into this thread's buffer (valid until its next call)."""
    dtype = block.dtype.newbyteorder("<")
    if block.shape == tuple(chunks) and block.dtype == dtype and block.flags.c_contiguous:
        return block
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    key = (tuple(chunks), dtype.str)
    buffer = buffers.get(key)
    if buffer is None:
        buffer = buffers[key] = np.zeros(chunks, dtype=dtype)
    inside = tuple(slice(0, s) for s in block.shape)
    buffer[inside] = block
    if block.shape != tuple(chunks):  # an edge chunk: the rest of the buffer back to the fill value
        for axis, (s, c) in enumerate(zip(block.shape, chunks)):
            if s < c:
                buffer[(*inside[:axis], slice(s, c))] = 0
    return buffer


def _encode_chunk(block: np.ndarray, chunks: tuple[int, ...], level: int, checksum: bool) -> list[bytes]:
    """The stored bytes of one chunk, as parts to write in order: the zstd frame, then its crc32c."""
    data = Zstd(level=level).encode(_contiguous_chunk(block, chunks))
    return [data, struct.pack("<I", google_crc32c.value(data))] if checksum else [data]


def _grid(shape: tuple[int, ...], step: tuple[int, ...]):
    """Every block origin of a regular grid of ``step`` over ``shape``, C order."""
    return itertools.product(*(range(0, int(s), int(c)) for s, c in zip(shape, step)))


def write_sharded(folder: Path, arrays: dict[str, tuple[np.ndarray, dict, tuple[str, ...]]], *, level: int,
                  checksum: bool) -> None:
    """Write each ``key -> (data, layout, dimension_names)`` as the sharded array ``folder/key``.

    ``layout``: ``array_layout(...)`` of the array (its ``chunks`` and ``shards``).
    All chunks of all arrays are compressed on the writer pool at once.
    """
    jobs = []  # (key, shard origin, chunk origins, futures)
    pool = _pool()
    for key, (data, layout, dims) in arrays.items():
        data = np.asarray(data)
        chunks, shards = tuple(layout["chunks"]), tuple(layout["shards"])
        target = folder / key
        target.mkdir(parents=True, exist_ok=True)
        meta = array_metadata(data.shape, data.dtype, chunks=chunks, shards=shards, level=level, checksum=checksum,
                              dimension_names=dims)
        write_file(target / "zarr.json", [json.dumps(meta).encode("utf-8")])
        for shard in _grid(data.shape, shards):
            futures = {}
            for local in _grid(shards, chunks):
                start = tuple(s + o for s, o in zip(shard, local))
                if any(b >= n for b, n in zip(start, data.shape)):
                    continue  # wholly outside the array: no chunk, a missing entry in the index
                block = data[tuple(slice(b, b + c) for b, c in zip(start, chunks))]
                futures[local] = _submit(pool, _encode_chunk, block, chunks, level, checksum)
            jobs.append((target, shard, shards, chunks, futures))
    for target, shard, shards, chunks, futures in jobs:
        counts = tuple(s // c for s, c in zip(shards, chunks))
        index = np.full((*counts, 2), _MISSING, dtype="<u8")
        parts, offset = [], 0
        for local in _grid(shards, chunks):
            future = futures.get(local)
            if future is None:
                continue
            chunk = future.result()
            size = sum(len(p) for p in chunk)
            index[tuple(o // c for o, c in zip(local, chunks))] = (offset, size)
            parts += chunk
            offset += size
        index_bytes = index.tobytes()
        parts.append(index_bytes)
        if checksum:
            parts.append(struct.pack("<I", google_crc32c.value(index_bytes)))
        path = target / "c" / Path(*(str(o // s) for o, s in zip(shard, shards)))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, parts)


def write_group(folder: Path, attributes: dict) -> None:
    """The ``zarr.json`` of a group with ``attributes`` (JSON-ready), as zarr-python writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    write_file(folder / "zarr.json", [json.dumps(document).encode("utf-8")])


def write_plain(folder: Path, data: np.ndarray, *, level: int, checksum: bool,
                dimension_names: tuple[str, ...]) -> None:
    """A small array as one unsharded chunk (bytes, zstd, crc32c), as zarr-python writes it."""
    data = np.ascontiguousarray(data)
    meta = _array_document(data.shape, data.dtype, data.shape, _chunk_codecs(data.dtype, level, checksum),
                           dimension_names)
    folder.mkdir(parents=True, exist_ok=True)
    write_file(folder / "zarr.json", [json.dumps(meta).encode("utf-8")])
    chunk = folder / "c" / Path(*(["0"] * max(1, data.ndim)))
    chunk.parent.mkdir(parents=True, exist_ok=True)
    write_file(chunk, _encode_chunk(data, data.shape, level, checksum))
