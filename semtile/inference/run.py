"""The runner: the tiles of many scans through a list of passes, batch by batch, into mergers.

Two stages run at once, joined by a bounded queue, so that no runner waits on files:

* **prepare** (a thread): open each scan lazily (tifffile -> Zarr store ->
  Dask), drop the data bar, write the normalised image with Dask as a chunked
  Zarr array in a scratch store, and for every pass read the tiles of its own
  grid (tile and halo of its :class:`~semtile.inference.split.GridRule`,
  reflected at the edges) into that pass's batches. Batches run across scans:
  the tail of one scan's tiles shares a batch with the head of the next.
* **infer** (the calling thread): each batch through its pass's runner; the
  maps into the scan's merger for that pass, the per-tile vectors in tile order.

:func:`run_pass` is the same split -> run -> merge path for one image held in
an array, for one pass, in memory or out of core; :func:`run_array` the same
with any function of a batch of tiles (training and search use it).

One bad scan is marked failed and skipped; the others go on.
"""

from __future__ import annotations

import collections
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from semtile.errors import ImageError, ImageTooSmallError, SemtileError
from semtile.inference.merge import BlendMerger, Merger
from semtile.inference.mergers import make_merger
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.passes import Pass, PassRunner
from semtile.inference.split import TileGrid, read_windows
from semtile.inference.strategy import REGIONS, merge_strategy
from semtile.io.tiff import ScanInfo, open_scan
from semtile.logs import get_logger

__all__ = ["MIN_SIDE", "ProcessOptions", "ScanJob", "stream_scans", "run_pass", "run_array", "infer_timing_key",
           "normalised_copy"]

log = get_logger("semtile.process")

#: Batches of tiles prepared ahead of the runners.
QUEUE_DEPTH = 4
#: Columns of one chunk of the scratch array (its rows are one tile core): a row of
#: tiles is then a read of a few chunks, not of one chunk per tile.
SCRATCH_BAND_COLS = 4096
#: Scans up to this many pixels are prepared without Dask's thread pool.
SYNCHRONOUS_PREPARE_PIXELS = 16 * 2**20


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

    @property
    def shape(self) -> tuple[int, int]:
        return self.info.valid_shape


@dataclass
class _Batch:
    index: int  # which pass
    tiles: np.ndarray  # (n, T, T)
    parts: list  # (job, first tile index in the job's merger order, first row in the batch, count)


@dataclass
class _End:
    job: ScanJob


def normalised_copy(path: Path, options: ProcessOptions, target: Path, core: int, *, threads: bool | None = None):
    """Open the scan and write its normalised valid area to a new Zarr array at ``target``; (info, array).

    Chunked by tile core: tiles are then cheap rectangular reads whatever the TIFF's own
    strip or tile layout. Uncompressed: it lives only for this run.
    """
    with open_scan(path, page=options.page, databar_rows=options.databar_rows,
                   max_pixels=options.max_pixels) as scan:
        info = scan.info
        rows, cols = info.valid_shape
        if rows < MIN_SIDE or cols < MIN_SIDE:
            raise ImageTooSmallError(path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
        normalised = zarr.create_array(str(target), shape=(rows, cols), dtype="float32",
                                       chunks=(min(core, rows), min(SCRATCH_BAND_COLS, cols)),
                                       compressors=None, overwrite=True)
        # Dask blocks aligned with the Zarr chunks: every chunk has exactly one writer.
        # Small scans are written on this thread: the engine already has the cores, and
        # handing a few dozen blocks to a thread pool costs more than it saves.
        small = rows * cols <= SYNCHRONOUS_PREPARE_PIXELS if threads is None else not threads
        da.store(scan.valid().rechunk(normalised.chunks), normalised, lock=False,
                 scheduler="synchronous" if small else "threads")
    return info, normalised


def _prepare(job: ScanJob, passes: Sequence[Pass], runners: Sequence[PassRunner], options: ProcessOptions,
             scratch: Path) -> zarr.Array:
    """Open the scan, write its normalised valid area to scratch, and give it a grid and merger per pass."""
    t0 = time.perf_counter()
    job.scratch = scratch / f"{job.path.stem[:40]}-{uuid.uuid4().hex[:8]}.zarr"
    core = passes[0].rule.tile - 2 * passes[0].rule.halo
    job.info, normalised = normalised_copy(job.path, options, job.scratch, core)
    for p, runner in zip(passes, runners):
        grid = job.grids[p.name] = p.rule.grid(job.shape)
        strategy = merge_strategy(0, regions_possible=False, device=runner.device)
        job.mergers[p.name] = make_merger(strategy, grid, device=runner.device, stream=runner.stream)
        # Preallocated: each batch fills its rows, so a scan of any number of tiles costs O(tiles).
        job.vectors[p.name] = {name: np.empty((len(grid), width), dtype=np.float32)
                               for name, width in p.vector_widths().items()}
    job.image = normalised
    job.timings["read"] += time.perf_counter() - t0
    return normalised


def _produce(paths: list[Path], passes: Sequence[Pass], runners: Sequence[PassRunner], options: ProcessOptions,
             scratch: Path, out: queue.Queue, stop: threading.Event) -> None:
    """Prepare scans in order and emit full batches of tiles (per pass, across scans), then job ends."""
    sizes = [p.batch_size for p in passes]
    tiles = [p.rule.tile for p in passes]
    buffers = [np.empty((n, t, t), dtype=np.float32) for n, t in zip(sizes, tiles)]
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

    def emit(i: int) -> None:
        if filled[i]:
            put(_Batch(index=i, tiles=buffers[i][:filled[i]], parts=parts[i]))
            buffers[i] = np.empty((sizes[i], tiles[i], tiles[i]), dtype=np.float32)
            parts[i], filled[i] = [], 0

    def ends() -> None:
        # A job ends once no partial batch of any pass holds its tiles.
        held = {id(part[0]) for pass_parts in parts for part in pass_parts}
        for job in [j for j in waiting_ends if id(j) not in held]:
            waiting_ends.remove(job)
            put(_End(job))

    try:
        for index, path in enumerate(paths):
            if stop.is_set():
                return
            job = ScanJob(index, path)
            try:
                source = _prepare(job, passes, runners, options, scratch)
                for i, p in enumerate(passes):
                    merger = job.mergers[p.name]
                    origins = job.grids[p.name].origins[merger.order]
                    done = 0
                    while done < len(origins):
                        take = min(sizes[i] - filled[i], len(origins) - done)
                        t0 = time.perf_counter()
                        buffers[i][filled[i]: filled[i] + take] = read_windows(source, origins[done: done + take],
                                                                              tiles[i])
                        job.timings["read"] += time.perf_counter() - t0
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
        put(None)


def _end(job: ScanJob) -> ScanJob:
    if job.error is None:
        t0 = time.perf_counter()
        try:
            job.maps = {name: merger.finish() for name, merger in job.mergers.items()}
        except Exception as exc:  # noqa: BLE001 - one scan's failure must not stop the others
            job.fail(exc)
        job.timings["stitch"] += time.perf_counter() - t0
    job.mergers = {}
    if job.error is not None:
        job.release()
    return job


def stream_scans(paths: list[Path], passes: Sequence[Pass], options: ProcessOptions,
                 scratch: Path) -> Iterator[ScanJob]:
    """Run the prepare and infer stages; yield each job, in input order, when its last tile is merged.

    A yielded job holds ``maps`` and ``vectors`` by pass name and ``image``
    (the normalised scan in scratch, kept until the caller's ``job.release()``),
    or ``error``.
    """
    runners = [p.runner() for p in passes]
    items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(paths, passes, runners, options, scratch, items, stop),
                                name="semtile-prepare", daemon=True)
    producer.start()
    # Per pass, batches submitted and not yet collected, oldest first: (batch, live parts, handle, t0).
    pending: list[collections.deque] = [collections.deque() for _ in passes]
    timing = [infer_timing_key(i, p) for i, p in enumerate(passes)]

    def collect_oldest(i: int) -> None:
        item, live, handle, t0 = pending[i].popleft()
        p = passes[i]
        try:
            out = runners[i].collect(handle)
        except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
            for job, *_ in live:
                job.fail(exc)
            return
        t1 = time.perf_counter()
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
            job.timings["stitch"] += (t2 - t1) * count / n

    def holds(job: ScanJob) -> bool:
        return any(part[0] is job for queue_ in pending for entry in queue_ for part in entry[1])

    try:
        while (item := items.get()) is not None:
            if isinstance(item, _End):
                # Its last batches first: collect until no pending batch holds this job.
                while holds(item.job):
                    for i in range(len(passes)):
                        if any(part[0] is item.job for entry in pending[i] for part in entry[1]):
                            collect_oldest(i)
                yield _end(item.job)
                continue
            live = [part for part in item.parts if part[0].error is None]
            if not live:
                continue
            i = item.index
            t0 = time.perf_counter()
            try:
                handle = runners[i].submit(item.tiles)
            except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
                for job, *_ in live:
                    job.fail(exc)
                continue
            pending[i].append((item, live, handle, t0))
            if len(pending[i]) >= max(1, runners[i].in_flight):
                collect_oldest(i)
        for i in range(len(passes)):
            while pending[i]:
                collect_oldest(i)
    finally:
        stop.set()
        producer.join()


def run_pass(image, p: Pass, *, region_pixels: int | None = None, block_pixels: int | None = None,
             scratch: Path | None = None, runner: PassRunner | None = None) -> tuple[dict, dict]:
    """Every tile of pass ``p``'s grid over ``image`` (2-D, sliceable: numpy or zarr) through its runner.

    Blended in memory, or out of core when the image has more than
    ``region_pixels`` pixels (partial sums under ``scratch``; each map then
    written region by region into a scratch Zarr array there). Returns
    ``(maps, vectors)``: the blended maps by name and the per-tile vectors in
    row-major tile order.
    """
    runner = runner if runner is not None else p.runner()
    shape = tuple(int(s) for s in image.shape[-2:])
    grid = p.rule.grid(shape)
    strategy = merge_strategy(shape[0] * shape[1], region_pixels=region_pixels if region_pixels is not None
                              else ProcessOptions().region_pixels, regions_possible=scratch is not None,
                              device=runner.device)
    blocks = None
    if strategy == REGIONS:
        blocks = Path(scratch) / f"blocks-{uuid.uuid4().hex[:8]}"
    merger = make_merger(strategy, grid, device=runner.device, stream=runner.stream, folder=blocks,
                         block_pixels=block_pixels)
    order = merger.order
    origins = grid.origins[order]
    vectors = {name: np.empty((len(grid), width), dtype=np.float32) for name, width in p.vector_widths().items()}
    merged = False
    for first, count in merger.batches(p.batch_size):
        out = runner.run(read_windows(image, origins[first: first + count], grid.tile))
        for name, values in out.vectors.items():
            vectors[name][order[first: first + count]] = values
        if out.maps:
            merger.add(first, **out.maps)
            merged = True
    maps = merger.finish() if merged else {}
    if strategy == REGIONS and maps:
        maps = _materialise(maps, merger.plan, Path(scratch))
        shutil.rmtree(blocks, ignore_errors=True)
    return maps, vectors


def _materialise(maps: dict, plan, scratch: Path) -> dict:
    """Out-of-core maps written region by region into scratch Zarr arrays (bounded memory)."""
    out = {}
    for name, blended in maps.items():
        target = zarr.create_array(str(scratch / f"{name}-{uuid.uuid4().hex[:8]}.zarr"), shape=blended.shape,
                                   dtype="float32", chunks=(*blended.shape[:-2], *(min(plan.region, s)
                                                                                   for s in blended.shape[-2:])),
                                   compressors=None, overwrite=True)
        for y0, y1, x0, x1 in plan.regions:
            target[..., y0:y1, x0:x1] = blended[y0:y1, x0:x1]
        out[name] = target
    return out


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
