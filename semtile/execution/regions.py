"""Large scans region by region: bounded memory, from one process or many.

A scan whose frame exceeds ``ProcessOptions.region_pixels`` pixels is not
blended in memory (:mod:`semtile.inference.regions`). Its work is five kinds
of step, each a function of small picklable arguments: the in-process runner
calls them in a loop (:func:`process_region_scan`), the distributed runner
submits them as Dask tasks (:mod:`semtile.execution.distributed`). Any step
may run twice (a lost worker) and leaves the same bytes:

* :func:`start_region_scan` (the driver): reads the header, claims the result
  name and stages an empty result group in the store (owned by the driver's
  process, so ``clean_stale`` keeps it while the driver lives).
* :func:`prepare_region_scan`: the normalised valid area into a scratch Zarr
  array, written beside and renamed into place (a rerun never exposes half of it).
* :func:`run_block` (the engine): one tile block's partial sums to scratch;
  returns the block's tile logits.
* :func:`write_region_output`: one output region blended, thresholded and
  written (image, labels, mask, pyramid levels ``0..levels``); returns its counts.
* :func:`finish_region_scan`: class probabilities and label from every
  block's logits, the ratio from every region's counts, provenance; commit.

With an anomaly model (:mod:`semtile.execution.anomaly`), the anomaly map is
a second set of tile blocks over the same normalised scratch, on the anomaly
model's own grid (:func:`run_anomaly_block`, partial sums beside the mask's);
the output regions are the same, so each region assembles both maps and
writes them together, and the fraction is counted region by region.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import ImageError, ImageTooSmallError
from semtile.execution.outcome import ImageOutcome
from semtile.inference.labels import class_probs, core_weights, decide_label
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.regions import RegionPlan, accumulate_block, assemble_region, save_block
from semtile.inference.split import TileGrid
from semtile.io.tiff import ScanInfo, open_scan
from semtile.logs import get_logger
from semtile.store import ImageResult, ResultStore, open_store
from semtile.store.ome_zarr import CHUNK, level_shapes, write_region

__all__ = ["RegionScan", "REGION_LEVELS", "scan_pixels", "start_region_scan", "prepare_region_scan", "run_block",
           "run_anomaly_block", "write_region_output", "finish_region_scan", "process_region_scan", "FinishContext"]

log = get_logger("semtile.process")

#: Pyramid levels each region writes itself (its side is ``CHUNK * 2**REGION_LEVELS`` = 2048 pixels);
#: the coarser ones are built at commit from the last of these, 16 times smaller than the scan.
REGION_LEVELS = 2
_COMPLETE = ".complete"


@dataclass(frozen=True)
class RegionScan:
    """What every step of one large scan needs (small and picklable)."""

    index: int
    path: str
    name: str
    store: str
    staged: str
    scratch: str
    info: ScanInfo
    plan: RegionPlan
    options: ProcessOptions
    levels: int  # pyramid levels each region writes (0..levels)
    anomaly: object = None  # AnomalySpec, with --anomaly
    anomaly_plan: RegionPlan | None = None  # the anomaly model's blocks (same output regions)

    @property
    def normalised(self) -> Path:
        return Path(self.scratch) / "normalised.zarr"

    @property
    def blocks_folder(self) -> Path:
        return Path(self.scratch) / "blocks"

    @property
    def anomaly_folder(self) -> Path:
        return Path(self.scratch) / "anomaly-blocks"

    def contributors(self, region: int) -> int:
        """How many block steps (mask and anomaly) reach output region ``region``."""
        bounds = self.plan.regions[region]
        count = len(self.plan.contributors(bounds))
        return count + (len(self.anomaly_plan.contributors(bounds)) if self.anomaly_plan is not None else 0)


@dataclass(frozen=True)
class FinishContext:
    """What the finishing step needs besides the scan: the model, the record key, the run."""

    bundle_provenance: dict
    labels: list
    key: dict
    run_id: str
    anomaly: object = None  # AnomalySpec, with --anomaly


def scan_pixels(path: Path, options: ProcessOptions) -> int:
    """Pixels of the scan's frame, from its TIFF header alone (0 when it cannot be read: its runner reports why).

    The frame bounds the valid area (the data bar only removes rows); a header
    read keeps this check off the hot path of runs of many small scans.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[options.page].shape
        return int(shape[0]) * int(shape[1])
    except Exception:  # noqa: BLE001 - the runner that processes it reports the reason
        return 0


def start_region_scan(index: int, path: Path, options: ProcessOptions, store: ResultStore,
                      scratch: Path, anomaly=None) -> RegionScan:
    """Read the header, claim the name, stage an empty result; raises ImageError for a bad scan."""
    with open_scan(path, page=options.page, databar_rows=options.databar_rows, max_pixels=options.max_pixels) as scan:
        info = scan.info
    rows, cols = info.valid_shape
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise ImageTooSmallError(path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
    grid = TileGrid((rows, cols), options.tile, options.halo)
    levels = min(REGION_LEVELS, len(level_shapes((rows, cols))) - 1)
    plan = RegionPlan.for_grid(grid, region=CHUNK * 2**REGION_LEVELS, block_pixels=options.block_pixels)
    anomaly_plan = None
    if anomaly is not None:
        anomaly_plan = RegionPlan.for_grid(TileGrid((rows, cols), anomaly.tile, anomaly.halo), region=plan.region,
                                           block_pixels=options.block_pixels)
    name = store.claim(path)
    from semtile.execution.anomaly import MAP_NAME

    staged = store.stage((rows, cols), info.pixel_size_m, maps=[MAP_NAME] if anomaly is not None else [])
    folder = Path(scratch) / f"{index:06d}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return RegionScan(index, str(path), name, str(store.path), str(staged), str(folder), info, plan, options, levels,
                      anomaly, anomaly_plan)


def prepare_region_scan(rs: RegionScan) -> float:
    """The normalised valid area into scratch (Dask, chunk by chunk); returns seconds. Done once, atomically."""
    import dask.array as da
    import zarr

    t0 = time.perf_counter()
    target = rs.normalised
    if (target / _COMPLETE).exists():
        return 0.0
    staged = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open_scan(rs.path, page=rs.options.page, databar_rows=rs.options.databar_rows,
                       max_pixels=rs.options.max_pixels) as scan:
            rows, cols = rs.plan.grid.shape
            array = zarr.create_array(str(staged), shape=(rows, cols), dtype="float32",
                                      chunks=(min(rs.plan.grid.core, rows), min(4096, cols)), compressors=None)
            # Dask blocks aligned with the chunks: each chunk has one writer; memory is a few chunks per thread.
            da.store(scan.valid().rechunk(array.chunks), array, lock=False, scheduler="threads")
        (staged / _COMPLETE).write_text("")
        try:
            os.replace(staged, target)
        except OSError:
            if not (target / _COMPLETE).exists():  # not a twin's complete copy in the way: a real failure
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return time.perf_counter() - t0


def _open_normalised(rs: RegionScan):
    import zarr

    return zarr.open_array(str(rs.normalised), mode="r")


def run_block(rs: RegionScan, block: int, engine) -> tuple[np.ndarray, dict, float]:
    """One tile block through ``engine`` into partial sums on scratch; (tile logits, engine facts, seconds)."""
    t0 = time.perf_counter()

    def infer(tiles):
        out = engine.run(tiles)
        return {"mask": out.mask_probs, "logits": out.class_logits}

    sums = accumulate_block(_open_normalised(rs), rs.plan, rs.plan.blocks[block], infer,
                            batch_size=rs.options.batch_size, collect=("logits",))
    save_block(rs.blocks_folder, sums)
    return sums.collected["logits"].astype(np.float32), engine.describe(), time.perf_counter() - t0


def run_anomaly_block(rs: RegionScan, block: int, engine) -> float:
    """One block of the anomaly model's tiles through its ``engine`` into partial sums on scratch; seconds."""
    from semtile.execution.anomaly import MAP_NAME

    t0 = time.perf_counter()
    sums = accumulate_block(_open_normalised(rs), rs.anomaly_plan, rs.anomaly_plan.blocks[block],
                            lambda tiles: {MAP_NAME: engine.run(tiles)}, batch_size=rs.anomaly.batch_size)
    save_block(rs.anomaly_folder, sums)
    return time.perf_counter() - t0


def write_region_output(rs: RegionScan, region: int) -> dict:
    """One output region blended from the blocks' partial sums, judged and written into the staged result."""
    t0 = time.perf_counter()
    y0, y1, x0, x1 = rs.plan.regions[region]
    mask = assemble_region(rs.blocks_folder, rs.plan, region)["mask"]
    binary = mask >= rs.options.threshold
    image = np.asarray(_open_normalised(rs)[y0:y1, x0:x1])
    maps, counts = {}, {}
    if rs.anomaly is not None:
        from semtile.execution.anomaly import MAP_NAME

        maps[MAP_NAME] = assemble_region(rs.anomaly_folder, rs.anomaly_plan, region, names=(MAP_NAME,))[MAP_NAME]
        counts["anomalous"] = int(np.count_nonzero(maps[MAP_NAME] > rs.anomaly.threshold))
    write_region(rs.staged, y0, x0, image=image, binary_mask=binary, mask=mask, levels=rs.levels, maps=maps)
    return {"adhesive": int(np.count_nonzero(binary)), "pixels": int(binary.size),
            "mask_sum": float(mask.sum(dtype=np.float64)), "seconds": time.perf_counter() - t0, **counts}


def finish_region_scan(rs: RegionScan, blocks: list, regions: list[dict], context: FinishContext,
                       prepare_seconds: float = 0.0, anomaly_seconds: float = 0.0,
                       anomaly_engine: dict | None = None) -> ImageOutcome:
    """Label, ratio and provenance from the steps' results; the staged result committed. Returns the outcome."""
    import zarr

    from semtile.execution.local import result_attrs
    from semtile.execution.resume import completion_record
    from semtile.io.discover import image_sha256

    t0 = time.perf_counter()
    store = open_store(rs.store)
    staged = Path(rs.staged)
    if not staged.exists():  # a finish that ran before (a lost worker): its commit is the result
        done = store.find(rs.path)
        record = store.record(done) if done else None
        if record and record.get("run_id") == context.run_id:
            stored = store.read(done)
            return ImageOutcome(path=Path(rs.path), status="ok", group=done, label=stored.label,
                                adhesive_ratio=stored.adhesive_ratio, pixel_size_m=rs.info.pixel_size_m,
                                databar_rows=rs.info.databar_rows)
        raise ImageError(rs.path, "its staged result is gone (removed by another run?)")
    grid = rs.plan.grid
    logits = np.empty((len(grid), len(context.labels)), dtype=np.float32)
    for block, (block_logits, _, _) in zip(rs.plan.blocks, blocks):
        logits[block.tile_indices(grid)] = block_logits
    probs = class_probs(logits, core_weights(grid))
    label, label_rule = decide_label(probs, context.labels)
    adhesive = sum(r["adhesive"] for r in regions)
    pixels = sum(r["pixels"] for r in regions)
    soft = sum(r["mask_sum"] for r in regions) / pixels
    engine_facts = blocks[0][1]
    timings = {"read": prepare_seconds, "infer": sum(b[2] for b in blocks),
               "stitch": sum(r["seconds"] for r in regions)}
    if rs.anomaly is not None:
        timings["anomaly"] = anomaly_seconds
    sha256 = image_sha256(rs.path)
    attrs = result_attrs(rs.path, rs.info, grid, engine_facts, context.bundle_provenance, rs.options, sha256,
                         label_rule, soft, timings)
    attrs["regions"] = {"count": len(rs.plan.regions), "side": rs.plan.region, "blocks": len(rs.plan.blocks)}
    map_attrs, fraction = {}, None
    if rs.anomaly is not None:
        from semtile.execution.anomaly import MAP_NAME, add_anomaly_attrs

        fraction = sum(r["anomalous"] for r in regions) / pixels
        map_attrs[MAP_NAME] = add_anomaly_attrs(attrs, rs.anomaly, fraction, anomaly_engine)
        attrs["regions"]["anomaly_blocks"] = len(rs.anomaly_plan.blocks)
    group = zarr.open_group(str(staged), mode="r")
    result = ImageResult(source=Path(rs.path), mask=group["mask"], binary_mask=group["labels/adhesive/0"],
                         class_probs=probs, labels=list(context.labels), label=label,
                         adhesive_ratio=adhesive / pixels, attrs=attrs, image=group["0"],
                         record={**completion_record(Path(rs.path), context.key, sha256), "run_id": context.run_id},
                         map_attrs=map_attrs)
    store.commit(rs.name, staged, result, built_levels=rs.levels)
    timings["write"] = time.perf_counter() - t0
    return ImageOutcome(path=Path(rs.path), status="ok", group=rs.name, label=label, adhesive_ratio=adhesive / pixels,
                        pixel_size_m=rs.info.pixel_size_m, databar_rows=rs.info.databar_rows,
                        timings={k: round(v, 4) for k, v in timings.items()}, anomaly_fraction=fraction)


def discard_region_scan(rs: RegionScan) -> None:
    """Remove a scan's staged result and scratch (it failed, or it is committed)."""
    shutil.rmtree(rs.staged, ignore_errors=True)
    shutil.rmtree(rs.scratch, ignore_errors=True)


def process_region_scan(index: int, path: Path, engine, options: ProcessOptions, store: ResultStore, scratch: Path,
                        context: FinishContext) -> ImageOutcome:
    """One large scan in this process: blocks through the engine in order, each region written (on a
    second thread, beside the engine) as soon as the last block reaching it is done. Raises on a bad scan."""
    rs = start_region_scan(index, path, options, store, scratch, context.anomaly)
    try:
        prepared = prepare_region_scan(rs)
        plan = rs.plan
        waiting = [rs.contributors(region) for region in range(len(plan.regions))]
        blocks, written = [], []
        anomaly_seconds, anomaly_facts = 0.0, None

        def done(regions_reached, writer) -> None:
            for region in regions_reached:
                waiting[region] -= 1
                if not waiting[region]:
                    written.append(writer.submit(write_region_output, rs, region))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="semtile-region") as writer:
            for block in plan.blocks:
                blocks.append(run_block(rs, block.index, engine))
                done(plan.regions_of(block.index), writer)
            if rs.anomaly is not None:  # the anomaly model's own tiles over the same scratch copy
                from semtile.execution.anomaly import anomaly_engine

                runner = anomaly_engine(rs.anomaly)
                anomaly_facts = runner.describe()
                for block in rs.anomaly_plan.blocks:
                    anomaly_seconds += run_anomaly_block(rs, block.index, runner)
                    done(rs.anomaly_plan.regions_of(block.index), writer)
            regions = [f.result() for f in written]
        return finish_region_scan(rs, blocks, regions, context, prepared, anomaly_seconds, anomaly_facts)
    finally:
        discard_region_scan(rs)
