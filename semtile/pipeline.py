"""``semtile process``: scans in, per-image masks, labels and adhesive ratios out.

For each scan: read lazily (tifffile -> Zarr store -> Dask), drop the data
bar, write the normalised image as a chunked Zarr array (chunk = tile core)
with Dask, read overlapping tiles from it with a halo (reflection at the
edges), run them batch by batch through the engine while the next batch is
being read, blend the tile masks into the whole-image canvas with the Numba
kernel, aggregate the tile class probabilities, and store everything with
its provenance. One bad image is reported and skipped; the rest go on.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import dask.array as da
import numpy as np
import zarr

from semtile.engines import Engine
from semtile.errors import ImageError, ImageTooSmallError, SemtileError
from semtile.kernels.stitch import accumulate_tiles, normalise_canvas
from semtile.kernels.window import blend_window
from semtile.logs import get_logger
from semtile.modelio import ModelBundle
from semtile.provenance import provenance_record
from semtile.reader import open_scan, sha256_file
from semtile.store import ImageResult, ResultStore, RunTable
from semtile.tiling import TileGrid, read_windows

__all__ = ["ProcessOptions", "ImageOutcome", "RunSummary", "process_scans", "analyse_scan", "calibration_tiles"]

log = get_logger("semtile.process")

#: Smallest valid area (either side) semtile will analyse; smaller ones are reported.
MIN_SIDE = 16


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
    store: Path
    table: Path

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


def analyse_scan(
    path: Path,
    engine: Engine,
    bundle: ModelBundle,
    options: ProcessOptions,
    scratch: Path,
) -> tuple[ImageResult, dict]:
    """Run one scan through the whole chain; returns the result and stage timings."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_scan(path, page=options.page, databar_rows=options.databar_rows) as scan:
        info = scan.info
        rows, cols = info.valid_shape
        if rows < MIN_SIDE or cols < MIN_SIDE:
            raise ImageTooSmallError(path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
        grid = TileGrid((rows, cols), options.tile, options.halo)
        # The normalised image, chunked by tile core, in a scratch Zarr store: tiles are
        # then cheap rectangular reads whatever the TIFF's own strip or tile layout.
        scratch_path = scratch / f"{_scratch_name(path)}.zarr"
        normalised = zarr.create_array(str(scratch_path), shape=(rows, cols), dtype="float32",
                                       chunks=(min(grid.core, rows), min(grid.core, cols)), overwrite=True)
        # Dask blocks aligned with the Zarr chunks: every chunk has exactly one writer.
        da.store(scan.valid().rechunk(normalised.chunks), normalised, lock=False, scheduler="threads")
    timings["read"] = time.perf_counter() - t0

    window = blend_window(options.tile, options.halo)
    canvas = np.zeros((rows, cols), dtype=np.float32)
    weight_canvas = np.zeros((rows, cols), dtype=np.float32)
    origins = grid.origins
    batches = [origins[i: i + options.batch_size] for i in range(0, len(origins), options.batch_size)]
    logits = []
    infer = stitch = 0.0
    # Read the next batch of tiles while the engine works on the current one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="semtile-read") as reader:
        pending = reader.submit(read_windows, normalised, batches[0], options.tile)
        for i, batch_origins in enumerate(batches):
            tiles = pending.result()
            if i + 1 < len(batches):
                pending = reader.submit(read_windows, normalised, batches[i + 1], options.tile)
            t1 = time.perf_counter()
            out = engine.run(tiles)
            t2 = time.perf_counter()
            accumulate_tiles(canvas, weight_canvas, out.mask_probs, batch_origins, window)
            stitch += time.perf_counter() - t2
            infer += t2 - t1
            logits.append(out.class_logits)
    t3 = time.perf_counter()
    mask = normalise_canvas(canvas, weight_canvas, out=canvas)
    del weight_canvas
    binary = mask >= options.threshold
    probs = _class_probs(np.concatenate(logits), _core_weights(grid))
    labels = bundle.labels
    label, label_rule = _decide(probs, labels)
    ratio = float(binary.mean())
    timings.update(infer=infer, stitch=stitch + time.perf_counter() - t3)
    shutil.rmtree(scratch_path, ignore_errors=True)

    parameters = {**asdict(options), "min_side": MIN_SIDE}
    attrs = {
        "label_rule": label_rule,
        "databar_rows": info.databar_rows,
        "databar_source": info.databar_source,
        "pixel_size_m": info.pixel_size_m,
        "pixel_size_source": info.pixel_size_source,
        "frame_shape": list(info.frame_shape),
        "adhesive_ratio_soft": float(mask.mean()),
        "tiles": len(origins),
        "provenance": provenance_record(
            inputs={"path": str(Path(path).resolve()), "sha256": sha256_file(path), "page": info.page,
                    "n_pages": info.n_pages, "dtype": info.dtype, "photometric": info.photometric,
                    "vendor": info.vendor},
            model=bundle.provenance(),
            engine=engine.describe(),
            parameters=parameters,
        ),
    }
    result = ImageResult(source=Path(path), mask=mask, binary_mask=binary, class_probs=probs,
                         labels=labels, label=label, adhesive_ratio=ratio, attrs=attrs)
    return result, timings


def _scratch_name(path: Path) -> str:
    return f"{Path(path).stem[:40]}-{uuid.uuid4().hex[:8]}"


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
    store = ResultStore(out)
    outcomes: list[ImageOutcome] = []
    with tempfile.TemporaryDirectory(prefix="semtile-scratch-", dir=scratch) as tmp, RunTable(table) as run_table:
        for path in scans:
            outcome = _process_one(Path(path), store, engine, bundle, options, Path(tmp))
            outcomes.append(outcome)
            run_table.add(path=str(path), status=outcome.status, label=outcome.label,
                          adhesive_ratio=None if outcome.adhesive_ratio is None else f"{outcome.adhesive_ratio:.6f}",
                          pixel_size_m=outcome.pixel_size_m, databar_rows=outcome.databar_rows, error=outcome.error)
            if on_image:
                on_image(outcome)
    return RunSummary(outcomes=outcomes, store=Path(out), table=Path(table))


def _process_one(path: Path, store: ResultStore, engine: Engine, bundle: ModelBundle,
                 options: ProcessOptions, scratch: Path) -> ImageOutcome:
    t0 = time.perf_counter()
    try:
        result, timings = analyse_scan(path, engine, bundle, options, scratch)
        name = store.name_for(path)
        t1 = time.perf_counter()
        store.write(name, result)
        timings["write"] = time.perf_counter() - t1
    except ImageError as exc:
        log.warning("image_failed", path=str(path), error=exc.reason, kind=type(exc).__name__)
        return ImageOutcome(path=path, status="error", error=exc.reason)
    except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
        # Anything unforeseen (a decoder error deep in a codec, a full disk) is reported
        # against this file with its traceback in the log; the other images go on.
        reason = f"{type(exc).__name__}: {exc}"
        log.error("image_failed", path=str(path), error=reason, kind=type(exc).__name__, exc_info=True)
        return ImageOutcome(path=path, status="error", error=reason)
    timings["total"] = time.perf_counter() - t0
    attrs = result.attrs
    outcome = ImageOutcome(path=path, status="ok", group=name, label=result.label,
                           adhesive_ratio=result.adhesive_ratio, pixel_size_m=attrs["pixel_size_m"],
                           databar_rows=attrs["databar_rows"], timings={k: round(v, 4) for k, v in timings.items()})
    log.info("image", path=str(path), status="ok", group=name, size=list(result.mask.shape),
             label=result.label, adhesive_ratio=round(result.adhesive_ratio, 4),
             databar_rows=attrs["databar_rows"], pixel_size_m=attrs["pixel_size_m"],
             tiles=attrs["tiles"], timings=outcome.timings)
    return outcome


def calibration_tiles(scans: list[Path], options: ProcessOptions, count: int = 64, seed: int = 0) -> np.ndarray:
    """Tiles drawn at random from the user's own scans, to calibrate int8 engines.

    Unreadable scans are skipped here (the run reports them); raises when no
    scan yields a tile.
    """
    rng = np.random.default_rng(seed)
    chosen = [scans[i] for i in rng.permutation(len(scans))[: max(1, min(len(scans), 16))]]
    per_scan = max(1, -(-count // len(chosen)))
    tiles = []
    for path in chosen:
        try:
            with open_scan(path, page=options.page, databar_rows=options.databar_rows) as scan:
                rows, cols = scan.info.valid_shape
                if min(rows, cols) < MIN_SIDE:
                    continue
                image = scan.valid()
                grid = TileGrid((rows, cols), options.tile, options.halo)
                pick = grid.origins[rng.permutation(len(grid))[:per_scan]]
                tiles.append(read_windows(image.compute() if image.nbytes < 2**28 else image, pick, options.tile))
        except ImageError:
            continue
    if not tiles:
        raise SemtileError("no readable scan to take calibration tiles from")
    return np.concatenate(tiles)[:count]
