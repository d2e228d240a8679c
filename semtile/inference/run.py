"""The runner: tiles of many scans through one engine, batch by batch, into mergers.

Two stages run at once, joined by a bounded queue, so that the engine never
waits on files:

* **prepare** (a thread): open each scan lazily (tifffile -> Zarr store ->
  Dask), drop the data bar, write the normalised image with Dask as a chunked
  Zarr array in a scratch store, read overlapping tiles from it with a halo
  (reflected at the edges) and pack them into batches. Batches run across
  scans: the tail of one scan's tiles shares a batch with the head of the next.
* **infer** (the calling thread): run each batch through the engine, hand each
  scan's tile maps to its merger and keep its tile class logits.

:func:`run_array` is the same split -> run -> merge path for one image held in
memory, with any function of a batch of tiles (training and search use it).

One bad scan is marked failed and skipped; the others go on.
"""

from __future__ import annotations

import collections
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import dask.array as da
import numpy as np
import zarr

from semtile.engines import Engine
from semtile.errors import ImageError, ImageTooSmallError, SemtileError
from semtile.inference.merge import BlendMerger, Merger
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.split import TileGrid, read_windows
from semtile.io.tiff import ScanInfo, open_scan
from semtile.logs import get_logger

__all__ = ["MIN_SIDE", "ProcessOptions", "TileJob", "stream_scans", "run_array"]

log = get_logger("semtile.process")

#: Batches of tiles prepared ahead of the engine.
QUEUE_DEPTH = 4
#: Columns of one chunk of the scratch array (its rows are one tile core): a row of
#: tiles is then a read of a few chunks, not of one chunk per tile.
SCRATCH_BAND_COLS = 4096
#: Scans up to this many pixels are prepared without Dask's thread pool.
SYNCHRONOUS_PREPARE_PIXELS = 16 * 2**20


@dataclass(eq=False)
class TileJob:
    """One scan on its way through the stages; ``maps`` and ``logits`` are complete at its end."""

    index: int
    path: Path
    info: ScanInfo | None = None
    grid: TileGrid | None = None
    merger: Merger | None = None
    logits: np.ndarray | None = None  # (tiles, labels), filled in tile order
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    image: zarr.Array | None = None  # the normalised valid area (scratch), until release()
    error: str | None = None
    error_kind: str = ""
    scratch: Path | None = None
    timings: dict = field(default_factory=lambda: {"read": 0.0, "infer": 0.0, "stitch": 0.0})
    started: float = field(default_factory=time.perf_counter)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc.reason if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
            self.error_kind = type(exc).__name__
            if not isinstance(exc, ImageError):  # unforeseen: keep the traceback in the log
                log.error("image_error", path=str(self.path), error=self.error, exc_info=exc)

    def release(self) -> None:
        """Drop the scratch copy of the image (call once its result is written or abandoned)."""
        self.image = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


@dataclass
class _Batch:
    tiles: np.ndarray  # (n, T, T)
    parts: list  # (job, first tile index in the job, first row in the batch, count)


@dataclass
class _End:
    job: TileJob


def _prepare(job: TileJob, options: ProcessOptions, scratch: Path, n_labels: int,
             make_merger: Callable[[TileGrid], Merger]) -> zarr.Array:
    """Open the scan and write its normalised valid area to a scratch Zarr array."""
    t0 = time.perf_counter()
    with open_scan(job.path, page=options.page, databar_rows=options.databar_rows,
                   max_pixels=options.max_pixels) as scan:
        job.info = info = scan.info
        rows, cols = info.valid_shape
        if rows < MIN_SIDE or cols < MIN_SIDE:
            raise ImageTooSmallError(job.path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
        job.grid = grid = TileGrid((rows, cols), options.tile, options.halo)
        # Chunked by tile core: tiles are then cheap rectangular reads whatever the TIFF's
        # own strip or tile layout. Uncompressed: it lives only for this run.
        job.scratch = scratch / f"{job.path.stem[:40]}-{uuid.uuid4().hex[:8]}.zarr"
        normalised = zarr.create_array(str(job.scratch), shape=(rows, cols), dtype="float32",
                                       chunks=(min(grid.core, rows), min(SCRATCH_BAND_COLS, cols)),
                                       compressors=None, overwrite=True)
        # Dask blocks aligned with the Zarr chunks: every chunk has exactly one writer.
        # Small scans are written on this thread: the engine already has the cores, and
        # handing a few dozen blocks to a thread pool costs more than it saves.
        small = rows * cols <= SYNCHRONOUS_PREPARE_PIXELS
        da.store(scan.valid().rechunk(normalised.chunks), normalised, lock=False,
                 scheduler="synchronous" if small else "threads")
    job.merger = make_merger(grid)
    job.image = normalised
    # Preallocated: each batch fills its rows, so a scan of any number of tiles costs O(tiles).
    job.logits = np.empty((len(grid), n_labels), dtype=np.float32)
    job.timings["read"] += time.perf_counter() - t0
    return normalised


def _produce(paths: list[Path], options: ProcessOptions, scratch: Path, n_labels: int,
             make_merger: Callable[[TileGrid], Merger], out: queue.Queue, stop: threading.Event) -> None:
    """Prepare scans in order and emit full batches of tiles (across scans), then job ends."""
    size, tile = options.batch_size, options.tile
    buffer = np.empty((size, tile, tile), dtype=np.float32)
    parts: list = []
    filled = 0
    waiting_ends: list[TileJob] = []

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def flush() -> None:
        nonlocal buffer, parts, filled
        if filled:
            put(_Batch(tiles=buffer[:filled], parts=parts))
            buffer = np.empty((size, tile, tile), dtype=np.float32)
            parts, filled = [], 0
        for job in waiting_ends:
            put(_End(job))
        waiting_ends.clear()

    try:
        for index, path in enumerate(paths):
            if stop.is_set():
                return
            job = TileJob(index, path)
            try:
                source = _prepare(job, options, scratch, n_labels, make_merger)
                origins = job.grid.origins
                done = 0
                while done < len(origins):
                    take = min(size - filled, len(origins) - done)
                    t0 = time.perf_counter()
                    buffer[filled: filled + take] = read_windows(source, origins[done: done + take], tile)
                    job.timings["read"] += time.perf_counter() - t0
                    parts.append((job, done, filled, take))
                    filled += take
                    done += take
                    if filled == size:
                        flush()
            except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
                job.fail(exc)
            waiting_ends.append(job)
            if not filled:
                flush()
        flush()
    finally:
        put(None)


def _end(job: TileJob) -> TileJob:
    if job.error is None:
        t0 = time.perf_counter()
        try:
            job.maps = job.merger.finish()
        except Exception as exc:  # noqa: BLE001
            job.fail(exc)
        job.timings["stitch"] += time.perf_counter() - t0
    job.merger = None
    if job.error is not None:
        job.release()
    return job


def stream_scans(paths: list[Path], engine: Engine, options: ProcessOptions, scratch: Path, *, n_labels: int,
                 make_merger: Callable[[TileGrid], Merger] = BlendMerger) -> Iterator[TileJob]:
    """Run the prepare and infer stages; yield each job, in input order, when its last tile is merged.

    A yielded job holds ``maps`` (``mask``: the blended adhesive probability),
    ``logits`` (one row per tile) and ``image`` (the normalised scan in scratch,
    kept until the caller's ``job.release()``), or ``error``.
    """
    items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(paths, options, scratch, n_labels, make_merger, items, stop),
                                name="semtile-prepare", daemon=True)
    producer.start()
    # Batches submitted to the engine and not yet collected, oldest first: (batch, live parts, handle, t0).
    pending: collections.deque = collections.deque()
    depth = max(1, engine.in_flight)

    def collect_oldest() -> None:
        item, live, handle, t0 = pending.popleft()
        try:
            out = engine.collect(handle)
        except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
            for job, *_ in live:
                job.fail(exc)
            return
        t1 = time.perf_counter()
        n = len(item.tiles)
        for job, first, row, count in live:
            if job.error is not None:
                continue
            job.merger.add(first, mask=out.mask_probs[row: row + count])
            job.logits[first: first + count] = out.class_logits[row: row + count]
            job.timings["infer"] += (t1 - t0) * count / n
        t2 = time.perf_counter()
        for job, _, _, count in live:
            job.timings["stitch"] += (t2 - t1) * count / n

    try:
        while (item := items.get()) is not None:
            if isinstance(item, _End):
                # Its last batches first: collect until no pending batch holds this job.
                while any(p[0] is item.job for entry in pending for p in entry[1]):
                    collect_oldest()
                yield _end(item.job)
                continue
            live = [p for p in item.parts if p[0].error is None]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                handle = engine.submit(item.tiles)
            except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
                for job, *_ in live:
                    job.fail(exc)
                continue
            pending.append((item, live, handle, t0))
            if len(pending) >= depth:
                collect_oldest()
        while pending:
            collect_oldest()
    finally:
        stop.set()
        producer.join()


def run_array(image, grid: TileGrid, infer: Callable[[np.ndarray], Mapping[str, np.ndarray]], *,
              batch_size: int = 8, merger: Merger | None = None, collect: tuple[str, ...] = ()) -> dict:
    """Every tile of ``grid`` read from ``image`` (reflected at the edges) through ``infer``.

    Parameters
    ----------
    image : 2-D array-like the grid covers (numpy, zarr...).
    grid : the tile grid.
    infer : batch of tiles ``(n, T, T)`` -> named outputs; those of shape
        ``(n, T, T)`` or ``(n, C, T, T)`` that are not in ``collect`` go to ``merger``.
    batch_size : tiles per call of ``infer``.
    merger : receives the maps (default: a new :class:`BlendMerger`).
    collect : outputs gathered per tile instead, e.g. class logits ``(n, K)``.

    Returns
    -------
    dict: the merged maps, and each collected output stacked in tile order.
    """
    if batch_size < 1:
        raise SemtileError(f"batch size must be at least 1, got {batch_size}")
    merger = merger if merger is not None else BlendMerger(grid)
    origins = grid.origins
    gathered: dict[str, list] = {name: [] for name in collect}
    merged = False
    for first in range(0, len(origins), batch_size):
        outputs = infer(read_windows(image, origins[first: first + batch_size], grid.tile))
        maps = {name: value for name, value in outputs.items() if name not in gathered}
        for name in gathered:
            gathered[name].append(np.asarray(outputs[name]))
        if maps:
            merger.add(first, **maps)
            merged = True
    result = merger.finish() if merged else {}
    result.update({name: np.concatenate(parts) for name, parts in gathered.items()})
    return result
