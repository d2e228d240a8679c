"""``semtile process`` in one process: scans in, one result per scan out, from a list of passes.

The runner (:mod:`semtile.inference.run`) streams the tiles of every scan
through every pass into the scan's mergers. Here each finished scan is judged
(:mod:`semtile.inference.judge`), given its completion record and written to
the result store and the run table by a pool of writer threads sized to the
host (``ProcessOptions.threads``; the table keeps input order), so that
compression and disk overlap the inference of the next scans. Scans too large to blend in
memory go region by region (:mod:`semtile.execution.regions`).

One bad image is reported and skipped; the rest go on.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from semtile.errors import ImageError, SemtileError
from semtile.execution.outcome import ImageOutcome, failed_outcome, log_outcome
from semtile.execution.resume import live_conflict, output_key, replaced_difference
from semtile.inference.judge import finish_result, judge_region
from semtile.inference.options import ProcessOptions
from semtile.inference.passes import Pass
from semtile.inference.run import ScanJob
from semtile.inference.strategy import REGIONS, merge_strategy
from semtile.io.source import check_unchanged
from semtile.io.tiff import scan_pixels
from semtile.logs import get_logger
from semtile.store import ImageResult, ResultStore, RunTable, host_name, open_store
from semtile.store.table import run_columns

__all__ = ["ProcessOptions", "ImageOutcome", "RunSummary", "process_scans", "analyse_scan", "scratch_prefix",
           "large_scans", "add_table_row", "scan_results", "store_one"]

log = get_logger("semtile.process")


@dataclass
class RunSummary:
    outcomes: list[ImageOutcome]
    store: Path | None
    table: Path | None

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]


def _judge(job: ScanJob, passes: Sequence[Pass], key: dict, run_id: str) -> tuple[ImageResult, dict]:
    """A finished scan's blended maps and vectors -> its result, record and run-table columns.

    The input's sha256 and identity are those of the bytes the scan was read from (``job.identity``), not of
    the file as it is now.
    """
    t0 = time.perf_counter()
    if getattr(job, "judged", None) is not None:  # judged on the engine's device (inference.device_pass)
        arrays, counts = job.judged
    else:
        arrays, counts = judge_region(passes, job.maps, None)
    job.timings.setdefault("judge", 0.0)
    identity = job.identity
    facts = getattr(job, "facts", None) or {p.name: p.runner().describe() for p in passes}
    result, row = finish_result(passes, counts, job.vectors, job.grids, facts, path=job.path, info=job.info,
                                sha256=identity.sha256, timings=job.timings, arrays=arrays, image=job.image)
    result.record = {**key, "input": identity.record(), "run_id": run_id}
    job.timings["judge"] += time.perf_counter() - t0
    return result, row


def scan_results(paths: list[Path], passes: Sequence[Pass], options: ProcessOptions, scratch: Path,
                 run_id: str = ""):
    """Each scan's job (in input order) with its result and run-table columns, or (job, None, {}) when it failed."""
    key = output_key(passes)
    from semtile.inference.device_pass import scan_jobs  # the host path, or the pass that stays on the GPU

    for job in scan_jobs(paths, passes, options, scratch):
        result, row = None, {}
        if job.error is None:
            try:
                result, row = _judge(job, passes, key, run_id)
            except Exception as exc:  # noqa: BLE001 - one scan's failure must not stop the others
                job.fail(exc)
                job.release()
        yield job, result, row


def analyse_scan(path: Path, passes: Sequence[Pass], options: ProcessOptions,
                 scratch: Path) -> tuple[ImageResult, dict]:
    """Run one scan through the whole chain without storing it; raises on a bad scan."""
    for job, result, _ in scan_results([Path(path)], passes, options, Path(scratch)):
        if result is None:
            raise ImageError(path, job.error)
        result.image = None if job.image is None else job.image[...]  # in memory: the scratch goes now
        job.release()
        return result, job.timings
    raise SemtileError(f"{path}: produced no result")


def process_scans(
    scans: list[Path],
    out: Path | ResultStore,
    *,
    passes: Sequence[Pass],
    options: ProcessOptions = ProcessOptions(),
    table: Path | RunTable,
    scratch: Path | None = None,
    on_image: Callable[[ImageOutcome], None] | None = None,
    run_id: str = "",
) -> RunSummary:
    """Process ``scans`` through ``passes`` into the store ``out`` (a path or an open store).

    Never stops on one image's error. ``table`` is a path (a table written
    afresh) or an open :class:`RunTable`. Every given scan is processed;
    deciding what a rerun may skip is :func:`semtile.execution.batch.run_process`'s job.
    """
    if not passes:
        raise SemtileError("process needs at least one pass")
    store = out if isinstance(out, ResultStore) else open_store(out)
    own_table = not isinstance(table, RunTable)
    run_table = RunTable(table, columns=run_columns(passes)) if own_table else table
    # Judging and writing (compression, disk) overlap inference of the next scans, on a pool sized to the host.
    threads = options.threads
    writer = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="semtile-write")
    room = threading.BoundedSemaphore(2 * threads + 2)  # scans judged or written at once: bounded memory
    pending = []
    scans = [Path(p) for p in scans]
    large = set(large_scans(scans, options, store))
    key = output_key(passes)
    try:
        with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=scratch) as tmp:
            def finished(outcome: ImageOutcome) -> ImageOutcome:
                add_table_row(run_table, outcome)
                if on_image:
                    on_image(outcome)
                return outcome

            in_order = _InOrder(finished)  # the table and on_image see the scans in input order

            def write(index: int, job: ScanJob) -> ImageOutcome:
                try:
                    result, row = None, {}
                    if job.error is None:
                        try:
                            result, row = _judge(job, passes, key, run_id)
                            result.mask_dtype = options.mask_dtype  # how the store keeps the mask
                        except Exception as exc:  # noqa: BLE001 - one scan's failure must not stop the others
                            job.fail(exc)
                    outcome = store_one(job, result, row, store)
                except Exception as exc:  # noqa: BLE001 - one scan's failure must not stop the others
                    outcome = failed_outcome(job.path, exc)
                finally:
                    job.release()
                    room.release()
                in_order.done(index, outcome)
                return outcome

            small = [p for p in scans if p not in large]
            from semtile.inference.device_pass import scan_jobs  # the host path, or the pass that stays on the GPU

            for index, job in enumerate(scan_jobs(small, passes, options, Path(tmp))):
                room.acquire()
                pending.append(writer.submit(write, index, job))
            outcomes = [f.result() for f in pending]
            writer.shutdown()
            if large:
                from semtile.execution.regions import process_region_scan

                for index, path in enumerate(scans):
                    if path in large:
                        try:
                            outcome = log_outcome(process_region_scan(index, path, passes, options, store,
                                                                      Path(tmp), key, run_id))
                        except Exception as exc:  # noqa: BLE001 - one bad scan never stops the others
                            outcome = failed_outcome(path, exc)
                        outcomes.append(finished(outcome))
    except BaseException:
        # Interrupted: results not yet being written are abandoned (a write under way completes, atomically).
        writer.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        if own_table:
            run_table.close()
    return RunSummary(outcomes=outcomes, store=store.path, table=run_table.path)


class _InOrder:
    """Calls ``fn`` with outcomes in input order, as they complete out of order on the writer pool."""

    def __init__(self, fn: Callable[[ImageOutcome], object]):
        self.fn, self.next, self.ready, self.lock = fn, 0, {}, threading.Lock()

    def done(self, index: int, outcome: ImageOutcome) -> None:
        with self.lock:
            self.ready[index] = outcome
            while self.next in self.ready:
                self.fn(self.ready.pop(self.next))
                self.next += 1


def large_scans(scans: list[Path], options: ProcessOptions, store: ResultStore) -> list[Path]:
    """The scans to blend region by region (:func:`~semtile.inference.strategy.merge_strategy`, header only)."""
    return [p for p in scans if merge_strategy(scan_pixels(p, options.page), region_pixels=options.region_pixels,
                                               regions_possible=store.supports_regions) == REGIONS]


def add_table_row(run_table: RunTable, outcome: ImageOutcome) -> None:
    """The outcome's row in the run table; a full disk there must not lose the stored result or stop the run.

    ``replaced``: what the stored result this one replaced was made with (the run's plan, ``run_table.replaced``).
    """
    columns = dict(outcome.columns)
    if outcome.status == "ok" and not columns.get("replaced"):
        columns["replaced"] = run_table.replaced.get(str(outcome.path))
    try:
        run_table.add(path=str(outcome.path), status=outcome.status, label=outcome.label,
                      adhesive_ratio=None if outcome.adhesive_ratio is None else f"{outcome.adhesive_ratio:.6f}",
                      pixel_size_m=outcome.pixel_size_m, databar_rows=outcome.databar_rows, error=outcome.error,
                      **{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in columns.items()})
    except OSError as exc:
        log.error("run_table_row_not_written", path=str(outcome.path), table=str(run_table.path), error=str(exc))


def scratch_prefix() -> str:
    """Scratch folders name their host and process, so a later run can tell a dead run's leftovers."""
    return f"semtile-scratch-{host_name()}-{os.getpid()}-"


def _takes_timings(store: ResultStore) -> bool:
    try:
        return "timings" in inspect.signature(store.write).parameters
    except (TypeError, ValueError):
        return False


def store_one(job: ScanJob, result: ImageResult | None, row: dict, store: ResultStore) -> ImageOutcome:
    """Write one scan's result (or report its failure); its outcome."""
    if result is not None:
        try:
            t0 = time.perf_counter()
            name = store.claim(job.path)
            stored = store.record(name)
            conflict = live_conflict(job.path, stored, result.record)
            if conflict is not None:  # another live run wrote it meanwhile, with another key: it stays
                raise conflict
            replaced = replaced_difference(stored, result.record)  # e.g. written meanwhile by a run now finished
            # The file must still be the one read: a result made from other bytes is never committed.
            check_unchanged(job.path, job.identity, rehash=job.rehash)
            if _takes_timings(store):  # the store says its own stages (pyramid, encode, write)
                store.write(name, result, timings=job.timings)
            else:
                store.write(name, result)
                job.timings["write"] = job.timings.get("write", 0.0) + time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a failed write is this image's failure
            job.fail(exc)
    if job.error is not None:
        log.warning("image_failed", path=str(job.path), error=job.error, kind=job.error_kind)
        return ImageOutcome(path=job.path, status="error", error=job.error,
                            databar_rows=job.info.databar_rows if job.info else None,
                            pixel_size_m=job.info.pixel_size_m if job.info else None)
    # Wall-clock seconds from the start of reading to the end of writing; stages of many scans overlap, so this
    # includes queueing beside others and is not this image's cost (readers take the old name "elapsed" too).
    job.timings["wall_clock"] = time.perf_counter() - job.started
    attrs = result.attrs
    outcome = ImageOutcome(path=job.path, status="ok", group=name, label=result.label,
                           adhesive_ratio=result.adhesive_ratio, pixel_size_m=attrs["pixel_size_m"],
                           databar_rows=attrs["databar_rows"],
                           timings={k: round(v, 4) for k, v in job.timings.items()},
                           columns={**row, **({"replaced": replaced} if replaced else {})})
    log.info("image", path=str(job.path), status="ok", group=name, size=list(result.mask.shape),
             label=result.label, adhesive_ratio=round(result.adhesive_ratio, 4),
             databar_rows=attrs["databar_rows"], pixel_size_m=attrs["pixel_size_m"],
             tiles=attrs["tiles"], timings=outcome.timings)
    return outcome
