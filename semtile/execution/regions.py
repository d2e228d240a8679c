"""Large scans region by region: bounded memory, from one process or many, for any list of passes.

A scan whose frame exceeds ``ProcessOptions.region_pixels`` pixels is blended
out of core (:class:`~semtile.inference.regions.RegionMerger`). Its work is
five kinds of step, each a function of small picklable arguments: the
in-process runner calls them in a loop (:func:`process_region_scan`), the
distributed runner submits them as Dask tasks
(:mod:`semtile.execution.distributed`). Any step may run twice (a lost
worker) and leaves the same bytes:

* :func:`start_region_scan` (the driver): hashes the input (its identity, before
  any pixel is read), reads the header, claims the result name and stages an
  empty result in the store (owned by the driver's process, so
  ``clean_stale`` keeps it while the driver lives).
* :func:`prepare_region_scan`: the normalised valid area into a scratch Zarr
  array, written beside and renamed into place (a rerun never exposes half of it).
* :func:`run_block`: one tile block of one pass through its runner into
  partial sums on scratch; returns the block's per-tile vectors.
* :func:`write_region_output`: one output region of every pass blended,
  judged and written (image, mask, labels, maps, pyramid levels); its counts.
* :func:`finish_region_scan`: the passes' results from the blocks' vectors and
  the regions' counts; provenance; commit, once the input is checked to be the
  file that was hashed (else no result: the change is the scan's error).

The normalised copy in scratch is read through
:class:`~semtile.inference.scratch.ScratchImage`: a chunk or folder gone missing
fails the scan, never reads as zeros.

Every pass has its own grid and blocks; the output regions are the same for
all, so a region is written once the blocks of every pass that reach it are done.

Missing data is an error, never a fill value: the normalised copy is read
only while its ``.complete`` mark is in place, checked after every read (the
scratch folder is renamed aside before it is removed, so a read that the
mark outlives was whole), and every partial sum a region needs is a file that
must be there. Every step carries the run's lease (``fence``): none starts,
writes or commits once it is gone.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semtile.errors import ImageError, ImageTooSmallError
from semtile.execution.outcome import ImageOutcome
from semtile.inference.judge import add_counts, finish_result, judge_region
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.passes import Pass
from semtile.inference.regions import RegionMerger, RegionPlan
from semtile.inference.split import read_windows
from semtile.inference.strategy import REGION_SIDE
from semtile.io.source import SourceIdentity, check_unchanged, hash_source
from semtile.io.tiff import ScanInfo, open_scan
from semtile.logs import get_logger
from semtile.store import ResultStore, open_store

__all__ = ["RegionScan", "BlockOutput", "start_region_scan", "prepare_region_scan", "run_block",
           "write_region_output", "finish_region_scan", "discard_region_scan", "process_region_scan"]

log = get_logger("semtile.process")

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
    options: ProcessOptions
    levels: int  # pyramid levels each region writes (0..levels)
    passes: tuple[Pass, ...]
    plans: dict = field(default_factory=dict)  # pass name -> RegionPlan (same output regions)
    fence: object = None  # the run's lease (semtile.store.lease.Fence); None: the writing process's own
    identity: SourceIdentity | None = None  # the input hashed before its pixels were read; checked at commit

    @property
    def normalised(self) -> Path:
        return Path(self.scratch) / "normalised.zarr"

    def blocks_folder(self, name: str) -> Path:
        return Path(self.scratch) / f"blocks-{name}"

    @property
    def regions(self) -> list[tuple[int, int, int, int]]:
        return self.plans[self.passes[0].name].regions

    def contributors(self, region: int) -> list[tuple[str, int]]:
        """The (pass, block) steps whose canvases reach output region ``region``."""
        bounds = self.regions[region]
        return [(p.name, b) for p in self.passes for b in self.plans[p.name].contributors(bounds)]


@dataclass
class BlockOutput:
    """What one block step gives: its tiles' vectors (block tile order), the pass's blended maps, facts, time."""

    pass_name: str
    block: int
    vectors: dict
    maps: dict  # name -> BlendedMap (reads any window from the saved partial sums)
    facts: dict
    seconds: float


def start_region_scan(index: int, path: Path, passes: Sequence[Pass], options: ProcessOptions, store: ResultStore,
                      scratch: Path, fence=None) -> RegionScan:
    """Read the header, claim the name, stage an empty result; raises ImageError for a bad scan (the input hashed first).

    ``fence``: the run's lease, which every step checks (default: the one ``store`` writes under)."""
    fence = fence if fence is not None else getattr(store, "current_fence", None)
    identity = hash_source(path)
    with open_scan(path, page=options.page, databar_rows=options.databar_rows, max_pixels=options.max_pixels) as scan:
        info = scan.info
    rows, cols = info.valid_shape
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise ImageTooSmallError(path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
    plans = {p.name: RegionPlan.for_grid(p.rule.grid((rows, cols)), region=REGION_SIDE,
                                         block_pixels=options.block_pixels) for p in passes}
    levels = store.region_levels((rows, cols), REGION_SIDE)
    name = store.claim(path)
    staged = store.stage((rows, cols), info.pixel_size_m, maps=[m for p in passes for m in p.map_names()],
                         mask_dtype=options.mask_dtype, input_dtype=info.dtype, photometric=info.photometric)
    folder = Path(scratch) / f"{index:06d}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return RegionScan(index, str(path), name, str(store.path), str(staged), str(folder), info, options, levels,
                      tuple(passes), plans, fence, identity)


def prepare_region_scan(rs: RegionScan) -> float:
    """The normalised valid area into scratch (Dask, chunk by chunk); returns seconds. Done once, atomically."""
    from semtile.inference.run import normalised_copy

    t0 = time.perf_counter()
    _check_fence(rs, "its normalised copy")
    target = rs.normalised
    if (target / _COMPLETE).exists():
        return 0.0
    if not Path(rs.scratch).is_dir():
        raise ImageError(rs.path, f"its scratch folder {rs.scratch} is gone (removed by its run's end?)")
    staged = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        first = rs.passes[0].rule
        normalised_copy(Path(rs.path), rs.options, staged, first.tile - 2 * first.halo, threads=True)
        (staged / _COMPLETE).write_text("")
        try:
            os.replace(staged, target)
        except OSError:
            if not (target / _COMPLETE).exists():  # not a twin's complete copy in the way: a real failure
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return time.perf_counter() - t0


def _check_fence(rs: RegionScan, what: str) -> None:
    if rs.fence is not None:
        rs.fence.check(f"{what} of {rs.path}")


def _store(rs: RegionScan) -> ResultStore:
    store = open_store(rs.store)
    if rs.fence is not None:
        store.fence(rs.fence)
    return store


def _open_normalised(rs: RegionScan):
    """The scan's normalised copy in scratch, read by window; a missing chunk or folder raises."""
    import zarr

    from semtile.inference.scratch import ScratchImage, ScratchMissingError

    if not (rs.normalised / _COMPLETE).exists():
        raise ScratchMissingError(f"{rs.path}: its normalised copy {rs.normalised} is gone from scratch (removed "
                                  "while the scan was processed?); the scan is not stored")
    return ScratchImage(zarr.open_array(str(rs.normalised), mode="r"), rs.normalised)


def _check_normalised(rs: RegionScan) -> None:
    """ImageError unless the normalised copy is whole: called before and after every read of it."""
    if not (rs.normalised / _COMPLETE).is_file():
        raise ImageError(rs.path, f"its normalised copy in {rs.scratch} is missing or incomplete (scratch removed "
                                  "while it was read?); nothing is written from it")


def _pass(rs: RegionScan, name: str) -> Pass:
    return next(p for p in rs.passes if p.name == name)


def run_block(rs: RegionScan, pass_name: str, block: int) -> BlockOutput:
    """One tile block of one pass through this process's runner into partial sums on scratch."""
    t0 = time.perf_counter()
    _check_fence(rs, f"block {block} of pass {pass_name}")
    p = _pass(rs, pass_name)
    runner = p.runner()
    plan = rs.plans[pass_name]
    merger = RegionMerger(plan, rs.blocks_folder(pass_name), blocks=[block])
    image = p.tile_source(_open_normalised(rs), rs.info)
    origins = plan.grid.origins[merger.order]
    gathered: dict[str, list] = {name: [] for name in p.vector_widths()}
    for first, count in merger.batches(p.batch_size):
        out = runner.run(read_windows(image, origins[first: first + count], plan.grid.tile))
        for name in gathered:
            gathered[name].append(np.asarray(out.vectors[name], dtype=np.float32))
        if out.maps:
            merger.add(first, **out.maps)
    _check_normalised(rs)  # still whole after every tile was read: none was a fill value
    vectors = {name: np.concatenate(parts) for name, parts in gathered.items()}
    return BlockOutput(pass_name, block, vectors, merger.finish(), runner.describe(), time.perf_counter() - t0)


def write_region_output(rs: RegionScan, region: int, blocks: Sequence[BlockOutput]) -> dict:
    """One output region of every pass, blended from the blocks' partial sums, judged and written into the staged
    result; its counts by pass. ``blocks``: outputs of (at least) one block of each pass (for its maps)."""
    t0 = time.perf_counter()
    _check_fence(rs, f"region {region}")
    y0, y1, x0, x1 = bounds = rs.regions[region]
    maps = {b.pass_name: b.maps for b in blocks}
    try:
        arrays, counts = judge_region(rs.passes, maps, bounds)  # blends the region from the partial sums
    except FileNotFoundError as exc:  # a block's partial sums are gone: never blended as zeros
        raise ImageError(rs.path, f"partial sums missing ({exc.filename}); region {region} is not written") from None
    image = np.asarray(_open_normalised(rs)[y0:y1, x0:x1])
    _check_normalised(rs)
    _check_fence(rs, f"region {region}")
    t1 = time.perf_counter()
    store = _store(rs)
    mask, binary = arrays.pop("mask"), arrays.pop("binary_mask")
    store.write_region(rs.staged, y0, x0, image=image, binary_mask=binary, mask=mask, levels=rs.levels, maps=arrays)
    t2 = time.perf_counter()
    return {"counts": counts, "seconds": t2 - t0, "judge": t1 - t0, "write": t2 - t1}


def finish_region_scan(rs: RegionScan, blocks: Sequence[BlockOutput], regions: Sequence[dict], key: dict,
                       run_id: str, prepare_seconds: float = 0.0) -> ImageOutcome:
    """Every pass's result from the steps' outputs; the staged result committed. Returns the outcome."""
    from semtile.inference.run import infer_timing_key

    t0 = time.perf_counter()
    store = _store(rs)
    staged = Path(rs.staged)
    if not staged.exists():  # a finish that ran before (a lost worker): its commit is the result
        done = store.find(rs.path)
        record = store.record(done) if done else None
        if record and record.get("run_id") == run_id:
            stored = store.read(done)
            return ImageOutcome(path=Path(rs.path), status="ok", group=done, label=stored.label,
                                adhesive_ratio=stored.adhesive_ratio, pixel_size_m=rs.info.pixel_size_m,
                                databar_rows=rs.info.databar_rows)
        raise ImageError(rs.path, "its staged result is gone (removed by another run?)")
    grids = {p.name: rs.plans[p.name].grid for p in rs.passes}
    vectors = {p.name: {name: np.empty((len(grids[p.name]), width), dtype=np.float32)
                        for name, width in p.vector_widths().items()} for p in rs.passes}
    facts: dict = {}
    # Stages as the in-memory path names them: blending happens as each region is judged, from the partial sums.
    timings = {"normalise": prepare_seconds, "infer": 0.0,
               "judge": sum(r.get("judge", r["seconds"]) for r in regions),
               "write": sum(r.get("write", 0.0) for r in regions)}
    for i, p in enumerate(rs.passes):
        timings.setdefault(infer_timing_key(i, p), 0.0)
    for b in blocks:
        p = _pass(rs, b.pass_name)
        plan = rs.plans[b.pass_name]
        where = plan.blocks[b.block].tile_indices(plan.grid)
        for name, values in b.vectors.items():
            vectors[b.pass_name][name][where] = values
        facts.setdefault(b.pass_name, b.facts)
        timings[infer_timing_key(rs.passes.index(p), p)] += b.seconds
    counts: dict = {}
    for r in regions:
        add_counts(counts, r["counts"])
    # The result is of the file that was hashed, or of none: a file replaced or rewritten since is not committed.
    if rs.identity is not None:
        check_unchanged(rs.path, rs.identity, rehash=True)
    identity = rs.identity or hash_source(rs.path)
    sha256 = identity.sha256
    arrays = store.staged_arrays(staged)  # the staged maps are the result's; their attributes come with map_attrs
    image = arrays.pop("image")
    result, row = finish_result(rs.passes, counts, vectors, grids, facts, path=Path(rs.path), info=rs.info,
                                sha256=sha256, timings=timings, arrays=arrays, image=image)
    first = rs.plans[rs.passes[0].name]
    result.attrs["regions"] = {"count": len(first.regions), "side": first.region, "blocks": len(first.blocks),
                               **{f"{p.name}_blocks": len(rs.plans[p.name].blocks) for p in rs.passes[1:]}}
    result.record = {**key, "input": identity.record(), "run_id": run_id}
    store.commit(rs.name, staged, result, built_levels=rs.levels)
    timings["write"] += time.perf_counter() - t0
    return ImageOutcome(path=Path(rs.path), status="ok", group=rs.name, label=result.label,
                        adhesive_ratio=result.adhesive_ratio, pixel_size_m=rs.info.pixel_size_m,
                        databar_rows=rs.info.databar_rows, timings={k: round(v, 4) for k, v in timings.items()},
                        columns=row)


def discard_region_scan(rs: RegionScan) -> None:
    """Remove a scan's staged result and scratch (it failed, or it is committed), each renamed aside first."""
    for folder in (Path(rs.staged), Path(rs.scratch)):
        kind, _, rest = folder.name.partition("~")  # a staged result keeps its lease token: dead~<token>~<random>
        dead = f"dead~{rest.split('~')[0]}~{uuid.uuid4().hex[:12]}" if kind == "partial" else f".dead-{folder.name}"
        doomed = folder.with_name(dead)
        try:
            os.rename(folder, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)


def process_region_scan(index: int, path: Path, passes: Sequence[Pass], options: ProcessOptions,
                        store: ResultStore, scratch: Path, key: dict, run_id: str) -> ImageOutcome:
    """One large scan in this process: every pass's blocks in order, each region written (on a second thread,
    beside the runners) as soon as the last block reaching it is done. Raises on a bad scan."""
    rs = start_region_scan(index, path, passes, options, store, scratch)
    try:
        prepared = prepare_region_scan(rs)
        waiting = [len(rs.contributors(region)) for region in range(len(rs.regions))]
        latest: dict[str, BlockOutput] = {}
        blocks, written = [], []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="semtile-region") as writer:
            for p in rs.passes:
                plan = rs.plans[p.name]
                for block in plan.blocks:
                    out = run_block(rs, p.name, block.index)
                    blocks.append(out)
                    latest[p.name] = out
                    for region in plan.regions_of(block.index):
                        waiting[region] -= 1
                        if not waiting[region]:
                            written.append(writer.submit(write_region_output, rs, region, list(latest.values())))
            regions = [f.result() for f in written]
        return finish_region_scan(rs, blocks, regions, key, run_id, prepared)
    finally:
        discard_region_scan(rs)
