"""The runner: the tiles of many scans through a list of passes, batch by batch, into mergers.

Two stages run at once, joined by a bounded queue, so that no runner waits on files:

* **prepare** (a thread, fed by a pool of ``ProcessOptions.threads`` threads
  that read scans ahead): each scan's file is read once into memory and its
  sha256 taken from those bytes (:mod:`semtile.io.source`); the page is
  decoded from them, the data bar dropped, and the valid area normalised
  straight into a frame padded for every pass's grid, its edges reflected
  once (:mod:`semtile.kernels.tiles`). Each pass's tiles are then copied from
  that frame into its preallocated batch buffers. Batches run across scans:
  the tail of one scan's tiles shares a batch with the head of the next.
  A scan of more than ``ProcessOptions.region_pixels`` pixels keeps a
  normalised copy in a scratch Zarr array instead (NaN where nothing was
  written: a chunk missing from scratch fails the scan, never reads as 0).
* **infer** (the calling thread): each batch through its pass's runner; the
  maps into the scan's merger for that pass, the per-tile vectors in tile order.

Each job's ``timings`` name its stages: ``decode`` (read, hash, decode, data
bar), ``normalise``, ``tile``, the passes' runners (``infer``...), ``blend``;
the caller adds ``judge`` and the store's ``pyramid``, ``encode`` and ``write``.

:mod:`semtile.inference.one_image` is the same split -> run -> merge path for
one image held in an array.

One bad scan is marked failed and skipped; the others go on.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semtile.errors import ImageError, ImageTooSmallError
from semtile.inference.merge import Merger
from semtile.inference.mergers import make_merger
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.passes import Pass, PassRunner
from semtile.inference.scratch import ScratchImage, ScratchMissingError, normalised_copy, scratch_copy
from semtile.inference.split import TileGrid, read_windows
from semtile.inference.strategy import merge_strategy
from semtile.io.source import SourceIdentity, hash_source, read_source
from semtile.io.tiff import ScanInfo, open_scan
from semtile.kernels.tiles import cut_tiles, interior, padded_frame, reflect_borders
from semtile.logs import get_logger

__all__ = ["MIN_SIDE", "ProcessOptions", "ScanJob", "stream_scans", "infer_timing_key",
           "normalised_copy", "ScratchImage", "ScratchMissingError", "MEMORY_FILE_BYTES"]

log = get_logger("semtile.process")

#: Batches of tiles prepared ahead of the runners. Scans are read ahead on the pool; more batches than this only
#: widen the set of buffers in use, which two host processes sharing a cache pay for (benchmarks/host.py: 1 to 2
#: processes, efficiency 0.89-0.91 with 4, 0.92-0.96 with 2).
QUEUE_DEPTH = 2
#: Files up to this size are read whole into memory (hashed and decoded from those bytes); larger ones are
#: hashed first and read lazily.
MEMORY_FILE_BYTES = 512 * 2**20


def infer_timing_key(index: int, p: Pass) -> str:
    """The timing a pass's runner time is recorded under: ``infer`` for the first pass, else the pass's name."""
    return "infer" if index == 0 else p.name


@dataclass(eq=False)
class ScanJob:
    """One scan on its way through the stages; ``maps`` and ``vectors`` (by pass name) are complete at its end."""

    index: int
    path: Path
    info: ScanInfo | None = None
    grids: dict[str, TileGrid] = field(default_factory=dict)
    mergers: dict[str, Merger] = field(default_factory=dict)
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # pass -> name -> (tiles, K)
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # pass -> name -> blended map
    image: np.ndarray | ScratchImage | None = None  # the normalised valid area (memory or scratch), until release()
    error: str | None = None
    error_kind: str = ""
    scratch: Path | None = None
    #: The input as read: its sha256 is of the bytes the result is made from; checked again before commit.
    identity: SourceIdentity | None = None
    rehash: bool = False  # the input was hashed apart from its pixels (a large file): hash it again at commit
    padded: np.ndarray | None = None  # the normalised image in a frame padded for every pass's grid (memory)
    pad: int = 0
    timings: dict = field(default_factory=lambda: {"decode": 0.0, "normalise": 0.0, "tile": 0.0, "infer": 0.0,
                                                   "blend": 0.0})
    started: float = field(default_factory=time.perf_counter)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc.reason if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
            self.error_kind = type(exc).__name__
            if not isinstance(exc, ImageError):  # unforeseen: keep the traceback in the log
                log.error("image_error", path=str(self.path), error=self.error, exc_info=exc)

    def release(self) -> None:
        """Drop the image and its scratch copy (call once its result is written or abandoned)."""
        self.image = self.padded = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.info.valid_shape


@dataclass
class _Batch:
    index: int  # which pass
    tiles: np.ndarray  # (n, T, T): the first n rows of ``buffer``
    parts: list  # (job, first tile index in the job's merger order, first row in the batch, count)
    buffer: np.ndarray | None = None  # the preallocated buffer, back to its pool once the batch is merged


@dataclass
class _End:
    job: ScanJob


def _prepare(job: ScanJob, passes: Sequence[Pass], runners: Sequence[PassRunner], options: ProcessOptions,
             scratch: Path) -> ScanJob:
    """Read the scan and normalise its valid area (in memory, or in scratch when it is large); a grid and merger
    per pass. A failure is the job's error."""
    try:
        t0 = time.perf_counter()
        try:
            size = os.stat(job.path).st_size
        except OSError:
            size = 0  # read_source says why
        data = None
        if size <= MEMORY_FILE_BYTES:
            source = read_source(job.path)
            data, job.identity = source.data, source.identity
        else:
            job.identity, job.rehash = hash_source(job.path), True
        with open_scan(job.path, page=options.page, databar_rows=options.databar_rows,
                       max_pixels=options.max_pixels, data=data, decode_limit=options.region_pixels) as scan:
            # Too large to decode whole, it was read lazily from the file: hash it again at commit.
            job.rehash = job.rehash or scan.decoded is None
            info = job.info = scan.info
            rows, cols = info.valid_shape
            if rows < MIN_SIDE or cols < MIN_SIDE:
                raise ImageTooSmallError(job.path, f"valid area {rows}x{cols} pixels is smaller than "
                                                   f"{MIN_SIDE}x{MIN_SIDE}")
            t1 = time.perf_counter()
            job.timings["decode"] += t1 - t0
            if scan.decoded is not None and rows * cols <= options.region_pixels:
                job.pad, frame = padded_frame((rows, cols), [(p.rule.tile, p.rule.halo) for p in passes])
                job.padded = np.empty(frame, dtype=np.float32)
                job.image = scan.valid_into(interior(job.padded, (rows, cols), job.pad))
                reflect_borders(job.padded, (rows, cols), job.pad)
            else:
                job.scratch = scratch / f"{job.path.stem[:40]}-{uuid.uuid4().hex[:8]}.zarr"
                core = passes[0].rule.tile - 2 * passes[0].rule.halo
                _, normalised = scratch_copy(scan, job.path, job.scratch, core)
                job.image = ScratchImage(normalised, job.scratch)
            job.timings["normalise"] += time.perf_counter() - t1
        for p, runner in zip(passes, runners):
            grid = job.grids[p.name] = p.rule.grid(job.shape)
            strategy = merge_strategy(0, regions_possible=False, device=runner.device)
            job.mergers[p.name] = make_merger(strategy, grid, device=runner.device, stream=runner.stream)
            # Preallocated: each batch fills its rows, so a scan of any number of tiles costs O(tiles).
            job.vectors[p.name] = {name: np.empty((len(grid), width), dtype=np.float32)
                                   for name, width in p.vector_widths().items()}
    except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
        job.fail(exc)
        job.release()
    return job


def _cut(job: ScanJob, source, origins: np.ndarray, tile: int, out: np.ndarray) -> None:
    """The windows at ``origins`` into ``out``: copies from the padded frame (``source`` is the job's image), or
    reads of ``source`` (the scratch copy, or a pass's view of the image) reflected at the edges."""
    t0 = time.perf_counter()
    if job.padded is not None and source is job.image:
        cut_tiles(job.padded, origins, tile, job.pad, out)
    else:
        out[...] = read_windows(source, origins, tile)
    job.timings["tile"] += time.perf_counter() - t0


def _produce(paths: list[Path], passes: Sequence[Pass], runners: Sequence[PassRunner], options: ProcessOptions,
             scratch: Path, out: queue.Queue, stop: threading.Event, free: list[queue.Queue]) -> None:
    """Prepare scans ahead on a pool and, in input order, emit full batches of tiles (per pass, across scans), then
    job ends. Batches are cut into buffers from ``free`` (per pass); the consumer gives each back once merged."""
    sizes = [p.batch_size for p in passes]
    tiles = [p.rule.tile for p in passes]
    parts: list[list] = [[] for _ in passes]
    filled = [0 for _ in passes]
    waiting_ends: list[ScanJob] = []

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def take_buffer(i: int) -> np.ndarray | None:
        while not stop.is_set():
            try:
                return free[i].get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    buffers = [take_buffer(i) for i in range(len(passes))]

    def emit(i: int) -> None:
        if filled[i]:
            put(_Batch(index=i, tiles=buffers[i][:filled[i]], parts=parts[i], buffer=buffers[i]))
            buffers[i] = take_buffer(i)
            parts[i], filled[i] = [], 0

    def ends() -> None:
        # A job ends once no partial batch of any pass holds its tiles.
        held = {id(part[0]) for pass_parts in parts for part in pass_parts}
        for job in [j for j in waiting_ends if id(j) not in held]:
            waiting_ends.remove(job)
            put(_End(job))

    threads = options.threads
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="semtile-read")
    ahead: collections.deque = collections.deque()
    todo = iter(enumerate(paths))

    def refill() -> None:  # a bounded look-ahead: memory stays a few scans per thread
        while len(ahead) < 2 * threads and (nxt := next(todo, None)) is not None:
            ahead.append(pool.submit(_prepare, ScanJob(nxt[0], nxt[1]), passes, runners, options, scratch))

    try:
        refill()
        while ahead:
            if stop.is_set():
                return
            job = ahead.popleft().result()
            refill()
            if job.error is None:
                try:
                    for i, p in enumerate(passes):
                        source = p.tile_source(job.image, job.info)  # the image itself, or a pass's own view
                        merger = job.mergers[p.name]
                        origins = job.grids[p.name].origins[merger.order]
                        done = 0
                        while done < len(origins) and not stop.is_set():
                            take = min(sizes[i] - filled[i], len(origins) - done)
                            _cut(job, source, origins[done: done + take], tiles[i],
                                 buffers[i][filled[i]: filled[i] + take])
                            parts[i].append((job, done, filled[i], take))
                            filled[i] += take
                            done += take
                            if filled[i] == sizes[i]:
                                emit(i)
                                ends()
                except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
                    job.fail(exc)
            waiting_ends.append(job)
            ends()
        for i in range(len(passes)):
            emit(i)
        ends()
    finally:
        stop_pool(pool, ahead)
        put(None)


def stop_pool(pool: ThreadPoolExecutor, ahead: collections.deque) -> None:
    """Stop the read pool: scans not started are dropped, and those prepared and never used release their data."""
    for future in ahead:
        future.cancel()
    pool.shutdown(wait=True)
    for future in ahead:
        if not future.cancelled() and future.exception() is None:
            future.result().release()


def _end(job: ScanJob) -> ScanJob:
    if job.error is None:
        t0 = time.perf_counter()
        try:
            job.maps = {name: merger.finish() for name, merger in job.mergers.items()}
        except Exception as exc:  # noqa: BLE001 - one scan's failure must not stop the others
            job.fail(exc)
        job.timings["blend"] += time.perf_counter() - t0
    job.mergers = {}
    if job.error is not None:
        job.release()
    return job


def stream_scans(paths: list[Path], passes: Sequence[Pass], options: ProcessOptions,
                 scratch: Path) -> Iterator[ScanJob]:
    """Run the prepare and infer stages; yield each job, in input order, when its last tile is merged.

    A yielded job holds ``maps`` and ``vectors`` by pass name and ``image``
    (the normalised scan, in memory or in scratch, kept until the caller's
    ``job.release()``), its input's ``identity``, or ``error``.
    """
    runners = [p.runner() for p in passes]
    items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    # Batch buffers, preallocated: enough for the queue, the batches in flight and the one being cut.
    free: list[queue.Queue] = []
    for p, runner in zip(passes, runners):
        pool: queue.Queue = queue.LifoQueue()  # the buffer merged last is reused first: still in cache
        for _ in range(QUEUE_DEPTH + max(1, runner.in_flight) + 2):
            pool.put(np.empty((p.batch_size, p.rule.tile, p.rule.tile), dtype=np.float32))
        free.append(pool)
    producer = threading.Thread(target=_produce, args=(paths, passes, runners, options, scratch, items, stop, free),
                                name="semtile-prepare", daemon=True)
    producer.start()
    # Per pass, batches submitted and not yet collected, oldest first: (batch, live parts, handle, t0).
    pending: list[collections.deque] = [collections.deque() for _ in passes]
    timing = [infer_timing_key(i, p) for i, p in enumerate(passes)]

    def give_back(item: _Batch) -> None:
        if item.buffer is not None:
            free[item.index].put(item.buffer)

    # Per pass, when its last collected batch came back. A batch submitted behind others starts no earlier, so
    # its share of ``infer`` counts from then: batches in flight are not counted twice.
    done = [0.0 for _ in passes]

    def collect_oldest(i: int) -> None:
        item, live, handle, t0 = pending[i].popleft()
        try:
            merge(i, item, live, handle, max(t0, done[i]))
        finally:
            give_back(item)  # merged (or failed): its rows may be cut again

    def merge(i: int, item: _Batch, live: list, handle, t0: float) -> None:
        p = passes[i]
        try:
            out = runners[i].collect(handle)
        except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
            for job, *_ in live:
                job.fail(exc)
            return
        t1 = done[i] = time.perf_counter()
        n = len(item.tiles)
        for job, first, row, count in live:
            if job.error is not None:
                continue
            merger = job.mergers[p.name]
            if out.maps:
                merger.add(first, **{k: v[row: row + count] for k, v in out.maps.items()})
            where = merger.order[first: first + count]
            for name, values in out.vectors.items():
                job.vectors[p.name][name][where] = values[row: row + count]
            job.timings[timing[i]] = job.timings.get(timing[i], 0.0) + (t1 - t0) * count / n
        t2 = time.perf_counter()
        for job, _, _, count in live:
            job.timings["blend"] += (t2 - t1) * count / n

    def holds(job: ScanJob) -> bool:
        return any(part[0] is job for queue_ in pending for entry in queue_ for part in entry[1])

    # Jobs whose last batch has been submitted, in input order. One is finished once no pending batch holds it;
    # its last batches are not waited for at once, so that a runner with batches in flight is given the next
    # scan's batch first and never waits on the end of a scan.
    ending: collections.deque = collections.deque()

    def finished() -> Iterator[ScanJob]:
        while ending and not holds(ending[0]):
            yield _end(ending.popleft())

    try:
        while (item := items.get()) is not None:
            if isinstance(item, _End):
                ending.append(item.job)
                if not any(pending):
                    yield from finished()
                elif len(ending) > QUEUE_DEPTH:  # memory stays bounded: wait for the oldest's last batches
                    while holds(ending[0]):
                        for i in range(len(passes)):
                            if any(part[0] is ending[0] for entry in pending[i] for part in entry[1]):
                                collect_oldest(i)
                    yield from finished()
                continue
            live = [part for part in item.parts if part[0].error is None]
            if not live:
                give_back(item)
                continue
            i = item.index
            t0 = time.perf_counter()
            try:
                handle = runners[i].submit(item.tiles)
            except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
                for job, *_ in live:
                    job.fail(exc)
                give_back(item)
                continue
            pending[i].append((item, live, handle, t0))
            if len(pending[i]) >= max(1, runners[i].in_flight):
                collect_oldest(i)
                yield from finished()
        for i in range(len(passes)):
            while pending[i]:
                collect_oldest(i)
        yield from finished()
    finally:
        stop.set()
        producer.join()
        for job in ending:  # ended and never yielded (the caller stopped early)
            job.release()
        while not items.empty():  # jobs prepared and never yielded (the caller stopped early)
            item = items.get_nowait()
            if isinstance(item, _End):
                item.job.release()
