"""``semtile process``: scans in, per-image masks, labels and adhesive ratios out.

Three stages run at once, joined by bounded queues, so that the engine is
never waiting on files:

* **prepare** (a thread): open each scan lazily (tifffile -> Zarr store ->
  Dask), drop the data bar, write the normalised image with Dask as a chunked
  Zarr array (chunk = tile core) in a scratch store, then read overlapping
  tiles from it with a halo (reflected at the edges) and pack them into
  batches. Batches run across scans: the tail of one scan's tiles shares a
  batch with the head of the next.
* **infer** (the calling thread): run each batch through the engine and blend
  the tile masks into each scan's canvas with the Numba kernel.
* **finish** (a thread): normalise the canvas, aggregate the tile class
  probabilities, threshold, and write the result group and the CSV row.

One bad image is reported and skipped; the rest go on.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import dask.array as da
import numpy as np
import zarr

from semtile.engines import Engine
from semtile.errors import ImageError, ImageTooSmallError, SemtileError
from semtile.kernels.stitch import accumulate_tiles, normalise_canvas
from semtile.kernels.window import blend_window
from semtile.logs import get_logger
from semtile.models.io import ModelBundle
from semtile.store.provenance import provenance_record
from semtile.io.tiff import ScanInfo, open_scan, sha256_file
from semtile.store import ImageResult, ResultStore, RunTable, open_store
from semtile.inference.split import TileGrid, read_windows

__all__ = ["ProcessOptions", "ImageOutcome", "RunSummary", "process_scans", "analyse_scan"]

log = get_logger("semtile.process")

#: Smallest valid area (either side) semtile will analyse; smaller ones are reported.
MIN_SIDE = 16
#: Batches of tiles prepared ahead of the engine.
QUEUE_DEPTH = 4
#: Columns of one chunk of the scratch array (its rows are one tile core): a row of
#: tiles is then a read of a few chunks, not of one chunk per tile.
SCRATCH_BAND_COLS = 4096
#: Scans up to this many pixels are prepared without Dask's thread pool.
SYNCHRONOUS_PREPARE_PIXELS = 16 * 2**20


@dataclass(frozen=True)
class ProcessOptions:
    tile: int = 256
    halo: int = 32
    batch_size: int = 8
    threshold: float = 0.5
    page: int = 0
    databar_rows: int | None = None

    def validate(self, multiple: int) -> None:
        if self.tile % multiple:
            raise SemtileError(f"--tile {self.tile} must be a multiple of {multiple} (2**d of the model)")
        if self.halo < 0 or 4 * self.halo > self.tile:
            raise SemtileError(f"--halo {self.halo} must be between 0 and tile/4 = {self.tile // 4}")
        if self.batch_size < 1:
            raise SemtileError("--batch-size must be at least 1")
        if not 0.0 < self.threshold < 1.0:
            raise SemtileError("--threshold must lie strictly between 0 and 1")


@dataclass
class ImageOutcome:
    path: Path
    status: str  # "ok" or "error"
    group: str | None = None
    label: object = None
    adhesive_ratio: float | None = None
    pixel_size_m: float | None = None
    databar_rows: int | None = None
    error: str | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    outcomes: list[ImageOutcome]
    store: Path | None
    table: Path | None

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]


def _class_probs(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Image class probabilities: weighted mean of tile log-probabilities, renormalised.

    Tiles are independent pieces of evidence about one label; averaging their
    log-probabilities (a product of experts) sharpens agreement, and weighting
    by the share of real pixels in each tile core keeps padded edge tiles from
    counting as much as full ones.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    mean = (logp * weights[:, None]).sum(axis=0) / weights.sum()
    p = np.exp(mean - mean.max())
    return (p / p.sum()).astype(np.float32)


def _decide(probs: np.ndarray, labels: list) -> tuple[object, str]:
    """The predicted label and the rule used.

    Integer labels are ordered (the etching conditions t): the median of the
    image's class distribution minimises the expected error |t_pred - t| and
    is the prediction. Unordered (text) labels take the most probable class.
    """
    if all(isinstance(label, int) for label in labels):
        return labels[int(np.searchsorted(np.cumsum(probs), 0.5))], "median"
    return labels[int(np.argmax(probs))], "argmax"


def _core_weights(grid: TileGrid) -> np.ndarray:
    rows, cols = grid.shape
    y0 = np.clip(grid.origins[:, 0] + grid.halo, 0, rows)
    x0 = np.clip(grid.origins[:, 1] + grid.halo, 0, cols)
    y1 = np.clip(grid.origins[:, 0] + grid.halo + grid.core, 0, rows)
    x1 = np.clip(grid.origins[:, 1] + grid.halo + grid.core, 0, cols)
    return ((y1 - y0) * (x1 - x0) / float(grid.core**2)).astype(np.float64)


class _Job:
    """One scan on its way through the stages."""

    def __init__(self, index: int, path: Path):
        self.index, self.path = index, path
        self.info: ScanInfo | None = None
        self.grid: TileGrid | None = None
        self.canvas: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.logits: np.ndarray | None = None
        self.error: str | None = None
        self.error_kind = ""
        self.scratch: Path | None = None
        self.timings = {"read": 0.0, "infer": 0.0, "stitch": 0.0}
        self.started = time.perf_counter()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc.reason if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
            self.error_kind = type(exc).__name__
            if not isinstance(exc, ImageError):  # unforeseen: keep the traceback in the log
                log.error("image_error", path=str(self.path), error=self.error, exc_info=exc)


@dataclass
class _Batch:
    tiles: np.ndarray  # (n, T, T)
    parts: list  # (job, first tile index in the job, first row in the batch, count)


@dataclass
class _End:
    job: _Job


def _prepare(job: _Job, options: ProcessOptions, scratch: Path) -> zarr.Array:
    """Open the scan and write its normalised valid area to a scratch Zarr array."""
    t0 = time.perf_counter()
    with open_scan(job.path, page=options.page, databar_rows=options.databar_rows) as scan:
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
    job.canvas = np.zeros((rows, cols), dtype=np.float32)
    job.weights = np.zeros((rows, cols), dtype=np.float32)
    job.logits = None
    job.timings["read"] += time.perf_counter() - t0
    return normalised


def _produce(paths: list[Path], options: ProcessOptions, scratch: Path, out: queue.Queue,
             stop: threading.Event) -> None:
    """Prepare scans in order and emit full batches of tiles (across scans), then job ends."""
    size, tile = options.batch_size, options.tile
    buffer = np.empty((size, tile, tile), dtype=np.float32)
    parts: list = []
    filled = 0
    waiting_ends: list[_Job] = []

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
            job = _Job(index, path)
            try:
                source = _prepare(job, options, scratch)
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


def _finish(job: _Job, engine: Engine, bundle: ModelBundle, options: ProcessOptions) -> ImageResult:
    t0 = time.perf_counter()
    info, grid = job.info, job.grid
    mask = normalise_canvas(job.canvas, job.weights, out=job.canvas)
    job.weights = None
    binary = mask >= options.threshold
    probs = _class_probs(job.logits, _core_weights(grid))
    label, label_rule = _decide(probs, bundle.labels)
    ratio = float(binary.mean())
    job.timings["stitch"] += time.perf_counter() - t0
    attrs = {
        "label_rule": label_rule,
        "databar_rows": info.databar_rows,
        "databar_source": info.databar_source,
        "pixel_size_m": info.pixel_size_m,
        "pixel_size_source": info.pixel_size_source,
        "frame_shape": list(info.frame_shape),
        "adhesive_ratio_soft": float(mask.mean()),
        "tiles": len(grid),
        "provenance": provenance_record(
            inputs={"path": str(Path(job.path).resolve()), "sha256": sha256_file(job.path), "page": info.page,
                    "n_pages": info.n_pages, "dtype": info.dtype, "photometric": info.photometric,
                    "vendor": info.vendor},
            model=bundle.provenance(),
            engine=engine.describe(),
            parameters={**asdict(options), "min_side": MIN_SIDE},
        ),
    }
    return ImageResult(source=Path(job.path), mask=mask, binary_mask=binary, class_probs=probs,
                       labels=bundle.labels, label=label, adhesive_ratio=ratio, attrs=attrs)


def _stream(paths: list[Path], engine: Engine, bundle: ModelBundle, options: ProcessOptions,
            scratch: Path) -> Iterator[tuple[_Job, ImageResult | None]]:
    """Run the prepare and infer stages; yield each job (in input order) with its result."""
    items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(paths, options, scratch, items, stop),
                                name="semtile-prepare", daemon=True)
    producer.start()
    window = blend_window(options.tile, options.halo)
    try:
        while (item := items.get()) is not None:
            if isinstance(item, _End):
                job = item.job
                result = None
                if job.error is None:
                    try:
                        result = _finish(job, engine, bundle, options)
                    except Exception as exc:  # noqa: BLE001
                        job.fail(exc)
                if job.scratch is not None:
                    shutil.rmtree(job.scratch, ignore_errors=True)
                yield job, result
                continue
            live = [p for p in item.parts if p[0].error is None]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                out = engine.run(item.tiles)
            except Exception as exc:  # noqa: BLE001 - the batch's scans fail, the run goes on
                for job, *_ in live:
                    job.fail(exc)
                continue
            t1 = time.perf_counter()
            n = len(item.tiles)
            for job, first, row, count in live:
                origins = job.grid.origins[first: first + count]
                accumulate_tiles(job.canvas, job.weights, out.mask_probs[row: row + count], origins, window)
                logits = out.class_logits[row: row + count]
                job.logits = logits.copy() if job.logits is None else np.concatenate([job.logits, logits])
                job.timings["infer"] += (t1 - t0) * count / n
            t2 = time.perf_counter()
            for job, _, _, count in live:
                job.timings["stitch"] += (t2 - t1) * count / n
    finally:
        stop.set()
        producer.join()


def analyse_scan(path: Path, engine: Engine, bundle: ModelBundle, options: ProcessOptions,
                 scratch: Path) -> tuple[ImageResult, dict]:
    """Run one scan through the whole chain without storing it; raises on a bad scan."""
    for job, result in _stream([Path(path)], engine, bundle, options, Path(scratch)):
        if result is None:
            raise ImageError(path, job.error)
        return result, job.timings
    raise SemtileError(f"{path}: produced no result")


def process_scans(
    scans: list[Path],
    out: Path,
    *,
    engine: Engine,
    bundle: ModelBundle,
    options: ProcessOptions = ProcessOptions(),
    table: Path,
    scratch: Path | None = None,
    on_image: Callable[[ImageOutcome], None] | None = None,
) -> RunSummary:
    """Process ``scans`` into the store ``out``; never stops on one image's error."""
    options.validate(max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple))
    store = open_store(out)
    outcomes: list[ImageOutcome] = []
    with tempfile.TemporaryDirectory(prefix="semtile-scratch-", dir=scratch) as tmp, \
            RunTable(table) as run_table, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="semtile-write") as writer:
        pending = []

        def write(job: _Job, result: ImageResult | None) -> ImageOutcome:
            outcome = _store_one(job, result, store)
            run_table.add(path=str(job.path), status=outcome.status, label=outcome.label,
                          adhesive_ratio=None if outcome.adhesive_ratio is None else f"{outcome.adhesive_ratio:.6f}",
                          pixel_size_m=outcome.pixel_size_m, databar_rows=outcome.databar_rows, error=outcome.error)
            if on_image:
                on_image(outcome)
            return outcome

        # Writing (compression, disk) overlaps inference of the next scans; one writer keeps input order.
        for job, result in _stream([Path(p) for p in scans], engine, bundle, options, Path(tmp)):
            pending.append(writer.submit(write, job, result))
        outcomes = [f.result() for f in pending]
    return RunSummary(outcomes=outcomes, store=Path(out), table=Path(table))


def _store_one(job: _Job, result: ImageResult | None, store: ResultStore) -> ImageOutcome:
    if result is not None:
        try:
            t0 = time.perf_counter()
            name = store.name_for(job.path)
            store.write(name, result)
            job.timings["write"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a failed write is this image's failure
            job.fail(exc)
    if job.error is not None:
        log.warning("image_failed", path=str(job.path), error=job.error, kind=job.error_kind)
        return ImageOutcome(path=job.path, status="error", error=job.error,
                            databar_rows=job.info.databar_rows if job.info else None,
                            pixel_size_m=job.info.pixel_size_m if job.info else None)
    # From the start of reading to the end of writing; stages overlap, so this includes queueing.
    job.timings["elapsed"] = time.perf_counter() - job.started
    attrs = result.attrs
    outcome = ImageOutcome(path=job.path, status="ok", group=name, label=result.label,
                           adhesive_ratio=result.adhesive_ratio, pixel_size_m=attrs["pixel_size_m"],
                           databar_rows=attrs["databar_rows"],
                           timings={k: round(v, 4) for k, v in job.timings.items()})
    log.info("image", path=str(job.path), status="ok", group=name, size=list(result.mask.shape),
             label=result.label, adhesive_ratio=round(result.adhesive_ratio, 4),
             databar_rows=attrs["databar_rows"], pixel_size_m=attrs["pixel_size_m"],
             tiles=attrs["tiles"], timings=outcome.timings)
    return outcome
