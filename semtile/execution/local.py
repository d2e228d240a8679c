"""``semtile process`` in one process: scans in, per-image masks, labels and adhesive ratios out.

The runner (:mod:`semtile.inference.run`) streams the tiles of every scan
through the engine into each scan's merger. Here each finished scan is
judged (threshold, label, ratio), given its provenance and written to the
result store and the run table by one writer thread, so that compression and
disk overlap the inference of the next scans.

One bad image is reported and skipped; the rest go on.

With an anomaly model (:mod:`semtile.execution.anomaly`) each scan also gets
a whole-scan anomaly map (a second tiled pass over the same normalised scratch
copy, with the anomaly model's own tile and halo) stored as the result's
``anomaly`` map, and its anomaly fraction in the attrs and the run table.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from typing import TYPE_CHECKING

from semtile.engines import Engine
from semtile.errors import ImageError, SemtileError
from semtile.execution.outcome import ImageOutcome
from semtile.execution.resume import completion_record, output_key
from semtile.inference.labels import class_probs, core_weights, decide_label
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.run import TileJob, stream_scans
from semtile.io.discover import image_sha256
from semtile.logs import get_logger
from semtile.models.io import ModelBundle
from semtile.store import ImageResult, ResultStore, RunTable, open_store
from semtile.store.directory import host_name
from semtile.store.provenance import provenance_record
from semtile.store.table import run_columns

__all__ = ["ProcessOptions", "ImageOutcome", "RunSummary", "process_scans", "analyse_scan", "record_key",
           "scratch_prefix", "result_attrs", "large_scans", "region_outcome", "failed_outcome", "add_table_row"]

if TYPE_CHECKING:
    from semtile.execution.anomaly import AnomalySpec

log = get_logger("semtile.process")


@dataclass
class RunSummary:
    outcomes: list[ImageOutcome]
    store: Path | None
    table: Path | None

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]


def record_key(engine: Engine, bundle: ModelBundle, options: ProcessOptions,
               anomaly: "AnomalySpec | None" = None) -> dict:
    """What besides the input decides a result of this engine, model, options and anomaly model (see :mod:`.resume`)."""
    engine_facts = engine.describe()
    return output_key(bundle, engine_facts["name"], engine_facts["precision"], options, anomaly)


def result_attrs(path: Path, info, grid, engine_facts: dict, model_provenance: dict, options: ProcessOptions,
                 sha256: str, label_rule: str, soft_ratio: float, timings: dict) -> dict:
    """The attributes stored with every result: data bar, pixel size, tiles, timings and provenance."""
    return {
        "label_rule": label_rule,
        "databar_rows": info.databar_rows,
        "databar_source": info.databar_source,
        "pixel_size_m": info.pixel_size_m,
        "pixel_size_source": info.pixel_size_source,
        "frame_shape": list(info.frame_shape),
        "adhesive_ratio_soft": float(soft_ratio),
        "tiles": len(grid),
        "timings": {k: round(float(v), 4) for k, v in timings.items()},
        "provenance": provenance_record(
            inputs={"path": str(Path(path).resolve()), "sha256": sha256, "page": info.page,
                    "n_pages": info.n_pages, "dtype": info.dtype, "photometric": info.photometric,
                    "vendor": info.vendor},
            model=model_provenance,
            engine=engine_facts,
            parameters={**asdict(options), "min_side": MIN_SIDE},
        ),
    }


def _judge(job: TileJob, engine: Engine, bundle: ModelBundle, options: ProcessOptions, key: dict,
           run_id: str, anomaly: "AnomalySpec | None" = None, anomaly_runner=None) -> ImageResult:
    """The merged mask and tile logits of a finished scan -> its result with provenance and record."""
    t0 = time.perf_counter()
    info, grid = job.info, job.grid
    mask = job.maps.pop("mask")
    binary = mask >= options.threshold
    probs = class_probs(job.logits, core_weights(grid))
    label, label_rule = decide_label(probs, bundle.labels)
    ratio = float(binary.mean())
    job.timings["stitch"] += time.perf_counter() - t0
    maps: dict = {}
    if anomaly is not None:  # the anomaly model's own tiled pass over the same normalised scratch copy
        from semtile.execution.anomaly import MAP_NAME, scan_anomaly

        t0 = time.perf_counter()
        maps[MAP_NAME], fraction = scan_anomaly(job.image, anomaly, anomaly_runner)
        job.timings["anomaly"] = time.perf_counter() - t0
    sha256 = image_sha256(job.path)
    attrs = result_attrs(job.path, info, grid, engine.describe(), bundle.provenance(), options, sha256, label_rule,
                         float(mask.mean()), job.timings)
    map_attrs: dict = {}
    if anomaly is not None:
        from semtile.execution.anomaly import MAP_NAME, add_anomaly_attrs

        map_attrs[MAP_NAME] = add_anomaly_attrs(attrs, anomaly, fraction, anomaly_runner.describe())
    return ImageResult(source=Path(job.path), mask=mask, binary_mask=binary, class_probs=probs,
                       labels=bundle.labels, label=label, adhesive_ratio=ratio, attrs=attrs, image=job.image,
                       record={**completion_record(job.path, key, sha256), "run_id": run_id}, maps=maps,
                       map_attrs=map_attrs)


def _results(paths: list[Path], engine: Engine, bundle: ModelBundle, options: ProcessOptions, scratch: Path,
             run_id: str = "", anomaly: "AnomalySpec | None" = None):
    """Each scan's job (in input order) with its result, or None when it failed."""
    key = record_key(engine, bundle, options, anomaly)
    runner = None
    if anomaly is not None:
        from semtile.execution.anomaly import anomaly_engine

        runner = anomaly_engine(anomaly)
    merger = engine.merger_factory()  # GPU engines blend on the GPU; None: the in-memory CPU merger
    extra = {"make_merger": merger} if merger is not None else {}
    for job in stream_scans(paths, engine, options, scratch, n_labels=len(bundle.labels), **extra):
        result = None
        if job.error is None:
            try:
                result = _judge(job, engine, bundle, options, key, run_id, anomaly, runner)
            except Exception as exc:  # noqa: BLE001
                job.fail(exc)
                job.release()
        yield job, result


def analyse_scan(path: Path, engine: Engine, bundle: ModelBundle, options: ProcessOptions,
                 scratch: Path, anomaly: "AnomalySpec | None" = None) -> tuple[ImageResult, dict]:
    """Run one scan through the whole chain without storing it; raises on a bad scan."""
    for job, result in _results([Path(path)], engine, bundle, options, Path(scratch), anomaly=anomaly):
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
    engine: Engine,
    bundle: ModelBundle,
    options: ProcessOptions = ProcessOptions(),
    table: Path | RunTable,
    scratch: Path | None = None,
    on_image: Callable[[ImageOutcome], None] | None = None,
    run_id: str = "",
    anomaly: "AnomalySpec | None" = None,
) -> RunSummary:
    """Process ``scans`` into the store ``out`` (a path or an open store); never stops on one image's error.

    ``table`` is a path (a table written afresh) or an open :class:`RunTable`.
    ``anomaly``: also an anomaly map and fraction per scan (:mod:`semtile.execution.anomaly`).
    Every given scan is processed; deciding what a rerun may skip is
    :func:`semtile.execution.batch.run_process`'s job.
    """
    options.validate(max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple))
    store = out if isinstance(out, ResultStore) else open_store(out)
    own_table = not isinstance(table, RunTable)
    run_table = RunTable(table, columns=run_columns(anomaly)) if own_table else table
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semtile-write")
    pending = []
    scans = [Path(p) for p in scans]
    large = set(large_scans(scans, options, store))
    try:
        with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=scratch) as tmp:
            def finished(outcome: ImageOutcome) -> ImageOutcome:
                add_table_row(run_table, outcome)
                if on_image:
                    on_image(outcome)
                return outcome

            def write(job: TileJob, result: ImageResult | None) -> ImageOutcome:
                try:
                    outcome = _store_one(job, result, store)
                finally:
                    job.release()
                return finished(outcome)

            # Writing (compression, disk) overlaps inference of the next scans; one writer keeps input order.
            small = [p for p in scans if p not in large]
            for job, result in _results(small, engine, bundle, options, Path(tmp), run_id, anomaly):
                pending.append(writer.submit(write, job, result))
            outcomes = [f.result() for f in pending]
            writer.shutdown()
            if large:
                from semtile.execution.regions import FinishContext, process_region_scan

                context = FinishContext(bundle.provenance(), list(bundle.labels),
                                        record_key(engine, bundle, options, anomaly), run_id, anomaly)
                for index, path in enumerate(scans):
                    if path in large:
                        outcomes.append(finished(region_outcome(
                            path, lambda: process_region_scan(index, path, engine, options, store, Path(tmp),
                                                              context))))
    except BaseException:
        # Interrupted: results not yet being written are abandoned (a write under way completes, atomically).
        writer.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        if own_table:
            run_table.close()
    return RunSummary(outcomes=outcomes, store=store.path, table=run_table.path)


def large_scans(scans: list[Path], options: ProcessOptions, store: ResultStore) -> list[Path]:
    """The scans to blend region by region: a frame of more pixels than ``options.region_pixels`` (header only)."""
    if not store.supports_regions:
        return []
    from semtile.execution.regions import scan_pixels

    return [p for p in scans if scan_pixels(p, options) > options.region_pixels]


def failed_outcome(path: Path, exc: BaseException) -> ImageOutcome:
    """The outcome of a scan that failed with ``exc``, logged (with the traceback when it was unforeseen)."""
    error = exc.reason if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, ImageError):
        log.error("image_error", path=str(path), error=error, exc_info=exc)
    log.warning("image_failed", path=str(path), error=error, kind=type(exc).__name__)
    return ImageOutcome(path=Path(path), status="error", error=error)


def region_outcome(path: Path, run: Callable[[], ImageOutcome]) -> ImageOutcome:
    """``run()``'s outcome for a large scan, or its failure: one bad scan never stops the others."""
    try:
        outcome = run()
    except Exception as exc:  # noqa: BLE001
        return failed_outcome(path, exc)
    log.info("image", path=str(path), status="ok", group=outcome.group, label=outcome.label,
             adhesive_ratio=round(outcome.adhesive_ratio, 4), pixel_size_m=outcome.pixel_size_m,
             databar_rows=outcome.databar_rows, timings=outcome.timings, regions=True)
    return outcome


def add_table_row(run_table: RunTable, outcome: ImageOutcome) -> None:
    """The outcome's row in the run table; a full disk there must not lose the stored result or stop the run."""
    try:
        fraction = None if outcome.anomaly_fraction is None else f"{outcome.anomaly_fraction:.6f}"
        run_table.add(path=str(outcome.path), status=outcome.status, label=outcome.label,
                      adhesive_ratio=None if outcome.adhesive_ratio is None else f"{outcome.adhesive_ratio:.6f}",
                      pixel_size_m=outcome.pixel_size_m, databar_rows=outcome.databar_rows, error=outcome.error,
                      anomaly_fraction=fraction)
    except OSError as exc:
        log.error("run_table_row_not_written", path=str(outcome.path), table=str(run_table.path), error=str(exc))


def scratch_prefix() -> str:
    """Scratch folders name their host and process, so a later run can tell a dead run's leftovers."""
    return f"semtile-scratch-{host_name()}-{os.getpid()}-"


def _store_one(job: TileJob, result: ImageResult | None, store: ResultStore) -> ImageOutcome:
    if result is not None:
        try:
            t0 = time.perf_counter()
            name = store.claim(job.path)
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
                           timings={k: round(v, 4) for k, v in job.timings.items()},
                           anomaly_fraction=attrs.get("anomaly_fraction"))
    log.info("image", path=str(job.path), status="ok", group=name, size=list(result.mask.shape),
             label=result.label, adhesive_ratio=round(result.adhesive_ratio, 4),
             databar_rows=attrs["databar_rows"], pixel_size_m=attrs["pixel_size_m"],
             tiles=attrs["tiles"], timings=outcome.timings)
    return outcome
