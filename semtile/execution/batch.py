"""A whole ``semtile process`` run, as a nightly job needs it.

In order:

1. **Checks before any work**: the store opens for writing (or the run stops
   with a SemtileError naming it), the run's own table is created and synced
   (an unwritable folder or a full disk shows here), the scratch folder is
   created. Leftovers of dead runs go: the store's stale temporaries and
   scratch folders whose process is gone.
2. **The plan**: each input whose stored completion record matches what this
   run would write is skipped (:mod:`semtile.execution.resume`); ``force``
   redoes everything, ``keep_existing`` skips every input with any result.
   A result made with another key is replaced and the run says so (a WARNING
   ``results_replaced`` per difference, the summary, the run table's
   ``replaced`` column); one that another run still running made with another
   key is left alone and its input reported as failed, naming that run.
   Nothing is loaded or compiled when nothing is to do.
3. **The work**, through :func:`semtile.execution.local.process_scans` in this
   process, or as tasks on a Dask cluster (``cluster``:
   :mod:`semtile.execution.distributed`); large scans region by region either way.
4. **The tables**: the run's table holds a row per input (ok, error or
   skipped); the current table beside the store is regenerated from the store.

SIGTERM (what schedulers send at walltime) and SIGINT stop the run cleanly:
results being computed are abandoned without a trace in the store, scratch
is removed, and the summary says the run was interrupted (exit code 3).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from semtile.errors import SemtileError
from semtile.execution.outcome import ImageOutcome
from semtile.execution.resume import Plan, output_key, plan_run
from semtile.inference.options import ProcessOptions
from semtile.logs import get_logger
from semtile.store import RunTable, default_csv_path, host_name, open_store, process_alive
from semtile.store.table import new_run_id, run_columns, running, runs_folder, write_current_table

if TYPE_CHECKING:  # the runner (dask, numba) is imported only when there is work: a rerun that skips all is quick
    from semtile.execution.distributed import ClusterSpec
    from semtile.inference.passes import Pass

__all__ = ["Interrupted", "BatchSummary", "run_process", "clean_stale_scratch", "EXIT_OK", "EXIT_FAILED",
           "EXIT_USAGE", "EXIT_INTERRUPTED"]

log = get_logger("semtile.process")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
#: Scratch of another host (or of an unnamed old run) is left alone until it is this old.
STALE_SECONDS = 24 * 3600


class Interrupted(BaseException):
    """SIGTERM or SIGINT: not an Exception, so no per-image handler mistakes it for an image's failure."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class BatchSummary:
    run_id: str
    outcomes: list[ImageOutcome] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    #: input -> what its stored result was made with, for each result this run replaced: "threshold 0.5 (now 0.3)"
    replaced: dict = field(default_factory=dict)
    #: keep_existing: input -> how the result kept differs from what this run would make
    kept: dict = field(default_factory=dict)
    interrupted: str | None = None
    table_error: str | None = None
    run_table: Path | None = None
    table: Path | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    def replaced_note(self) -> str:
        """``replaced 2 results made with threshold 0.5 (now 0.3)``, one part per difference; "" when none."""
        return _grouped("replaced", self.replaced)

    def kept_note(self) -> str:
        """``kept 2 results made with threshold 0.3 (this run: 0.7) (--keep-existing)``; "" when none."""
        return _grouped("kept", self.kept) + (" (--keep-existing)" if self.kept else "")

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.table_error else EXIT_OK


def _grouped(verb: str, differences: dict) -> str:
    groups: dict[str, int] = {}
    for difference in differences.values():
        groups[difference] = groups.get(difference, 0) + 1
    return "; ".join(f"{verb} {n} result{'s' if n != 1 else ''} made with {difference}" for difference, n in groups.items())


@contextmanager
def _stop_on_signals():
    def stop(signum, frame):
        for s in previous:  # one stop is enough: a second signal must not break the cleanup
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def clean_stale_scratch(root: Path) -> int:
    """Remove scratch folders of dead semtile runs under ``root``; return how many."""
    removed, host = 0, host_name()
    for folder in Path(root).glob("semtile-scratch-*"):
        parts = folder.name[len("semtile-scratch-"):].rsplit("-", 2)
        owner_host, pid = (parts[0], parts[1]) if len(parts) == 3 and parts[1].isdigit() else (None, None)
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:
            continue
        if owner_host == host and int(pid) != os.getpid() and process_alive(int(pid)) is False:
            stale = True
        else:
            stale = owner_host != host and age > STALE_SECONDS
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += not folder.exists()
    return removed


def _refuse_by_header(todo: list[Path], options: ProcessOptions, run_table: RunTable, seen) -> list[Path]:
    """The inputs to do less the TIFFs whose header claims more pixels than the budget, each failed as its
    runner would fail it (the same check, from the header alone): a batch of header bombs builds no engine.
    Anything else about a file (not a TIFF, a PNG, a broken page) is left to its runner."""
    import tifffile

    from semtile.execution.outcome import failed_outcome
    from semtile.io.guards import DEFAULT_MAX_PIXELS, ImageTooLargeError, check_budget, check_file

    budget = int(options.max_pixels or DEFAULT_MAX_PIXELS)
    kept = []
    for path in todo:
        try:
            check_file(Path(path))
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[int(options.page)]
                if not isinstance(page, tifffile.TiffPage):
                    page = page.aspage()
                check_budget(Path(path), int(page.imagelength), int(page.imagewidth), int(page.imagedepth), budget)
        except ImageTooLargeError as exc:
            outcome = failed_outcome(path, exc)
            run_table.add(path=str(path), status="error", error=outcome.error)
            seen(outcome)
            continue
        except Exception:  # noqa: BLE001 - anything else is the runner's to find and report
            pass
        kept.append(path)
    return kept


def _run_distributed(todo, store, cluster, passes, options, key, run_id, scratch_root, run_table, seen) -> None:
    """The scans to do as tasks on a Dask cluster; outcomes reach the run table as they arrive."""
    from semtile.execution.distributed import connect, process_scans_distributed
    from semtile.execution.local import add_table_row, scratch_prefix

    def arrived(outcome: ImageOutcome) -> None:
        add_table_row(run_table, outcome)
        seen(outcome)

    # Workers write their scratch here: on a cluster it must be a folder every node sees (--scratch).
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=scratch_root) as tmp, \
            connect(cluster) as (client, workers_on_host):
        process_scans_distributed(todo, store, client=client, passes=passes, options=options, key=key,
                                  run_id=run_id, scratch=Path(tmp), workers_on_host=workers_on_host,
                                  on_outcome=arrived)


def _warn_replacing(plan: Plan) -> None:
    """One WARNING per difference: how many stored results this run is about to replace, and what changed."""
    for difference, paths in plan.replaced_groups().items():
        log.warning("results_replaced", count=len(paths), difference=difference,
                    changes={f: {"stored": old, "now": new} for f, old, new in plan.changes.get(difference, [])},
                    message=f"replacing {len(paths)} result{'s' if len(paths) != 1 else ''} made with {difference}",
                    inputs=[str(p) for p in paths[:5]])
    kept: dict[str, int] = {}
    for difference in plan.kept.values():
        kept[difference] = kept.get(difference, 0) + 1
    for difference, n in kept.items():
        log.info("results_kept", count=n, difference=difference, reason="--keep-existing")


def _note_replaced(summary: BatchSummary, plan: Plan, outcome: ImageOutcome) -> None:
    """A result this run replaced: for the summary; a WARNING when it was not in the plan (written meanwhile)."""
    if outcome.status != "ok":
        return
    difference = outcome.columns.get("replaced") or plan.replaced.get(outcome.path)
    if not difference:
        return
    summary.replaced[outcome.path] = difference
    if outcome.path not in plan.replaced:
        log.warning("results_replaced", count=1, difference=difference, inputs=[str(outcome.path)],
                    message=f"replaced 1 result made with {difference}, written by another run (not running now) "
                            "since this run made its plan")


def run_process(
    scans: list[Path],
    out: Path,
    *,
    passes: Sequence[Pass],
    options: ProcessOptions = ProcessOptions(),
    csv_path: Path | None = None,
    scratch: Path | None = None,
    force: bool = False,
    keep_existing: bool = False,
    problems: list[tuple[Path, str]] = (),
    on_image: Callable[[ImageOutcome], None] | None = None,
    cluster: ClusterSpec | None = None,
) -> BatchSummary:
    """Run ``semtile process`` over ``scans`` through ``passes`` into the store ``out``; see the module docstring.

    ``passes``: the segmenter + classifier pass first
    (:func:`semtile.inference.segment.segment_pass`), then any other (an
    anomaly map, a new kind of map). ``problems`` are inputs that discovery
    could not list (a symlink loop, an unreadable folder): each is reported as
    a failed input, and the run goes on. ``keep_existing`` skips every input
    that has a result in the store, whatever it was made with (not with
    ``force``). Raises SemtileError for setup problems, before any image is
    processed.
    """
    started = time.perf_counter()
    summary = BatchSummary(run_id=new_run_id())
    if not passes:
        raise SemtileError("process needs at least one pass (the segmenter + classifier)")
    if force and keep_existing:
        raise SemtileError("--force redoes every input, --keep-existing skips every input with a result: pick one")
    passes = list(passes)
    store = open_store(out)
    table = Path(csv_path) if csv_path else default_csv_path(out)
    summary.table, summary.run_table = table, runs_folder(table) / f"{summary.run_id}.csv"
    scratch_root = Path(scratch) if scratch else Path(tempfile.gettempdir())
    try:
        run_table = RunTable(summary.run_table, run_id=summary.run_id, columns=run_columns(passes))
        scratch_root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix="semtile-probe-", dir=scratch_root).cleanup()
        probe = table.with_name(f".{table.name}.probe-{os.getpid()}")
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SemtileError(f"{exc.filename or table}: cannot write here ({exc.strerror or exc})") from None
    stale = store.clean_stale(), clean_stale_scratch(scratch_root)
    key = output_key(passes)
    plan = plan_run(scans, store, key, force=force, keep_existing=keep_existing, run_id=summary.run_id)
    summary.skipped, summary.kept = [path for path, _ in plan.skipped], dict(plan.kept)
    _warn_replacing(plan)
    run_table.replaced = {str(path): difference for path, difference in plan.replaced.items()}
    facts = {k: v for p in passes for k, v in p.run_facts().items()}
    log.info("run_start", run_id=summary.run_id, images=len(scans), to_do=len(plan.todo), skipped=len(plan.skipped),
             stale_temporaries_removed=stale[0], stale_scratch_removed=stale[1], store=str(out), **facts)
    for caveat in dict.fromkeys(getattr(p, "caveat", "") for p in passes) if plan.todo else ():
        if caveat:  # e.g. the built-in model: what its answers mean, once per run
            log.warning("model_caveat", run_id=summary.run_id, note=caveat)
    def seen(outcome: ImageOutcome) -> None:  # collected as they come: an interrupted run keeps what it did
        summary.outcomes.append(outcome)
        _note_replaced(summary, plan, outcome)
        if on_image:
            on_image(outcome)

    # While results are written, other runs (of this process too) see this one as live (resume.live_conflict).
    with run_table, running(summary.run_id), _stop_on_signals():
        try:
            for path, _ in plan.skipped:
                run_table.add(path=str(path), status="skipped")
            for path, reason in problems:
                log.warning("image_failed", path=str(path), error=reason, kind="discovery")
                run_table.add(path=str(path), status="error", error=reason)
                seen(ImageOutcome(path=Path(path), status="error", error=reason))
            for path, conflict in plan.conflicts.items():
                log.warning("image_failed", path=str(path), error=conflict.reason, kind="ResultConflict")
                run_table.add(path=str(path), status="error", error=conflict.reason)
                seen(ImageOutcome(path=Path(path), status="error", error=conflict.reason))
            todo = _refuse_by_header(plan.todo, options, run_table, seen)  # before any engine is built
            if todo:
                ready = [p.prepared(todo) for p in passes]  # the weights; e.g. int8 calibration tiles
                if cluster is not None:
                    _run_distributed(todo, store, cluster, ready, options, key, summary.run_id, scratch_root,
                                     run_table, seen)
                else:
                    from semtile.execution.local import process_scans

                    process_scans(todo, store, passes=ready, options=options, table=run_table,
                                  scratch=scratch_root, on_image=seen, run_id=summary.run_id)
        except Interrupted as stop:
            summary.interrupted = str(stop)
            log.warning("run_interrupted", run_id=summary.run_id, signal=str(stop))
    if cluster is not None:  # what workers killed mid-write left behind
        store.clean_stale()
    try:
        write_current_table(table, store)
    except OSError as exc:  # e.g. a full disk: the results are in the store, the table can be made again
        summary.table_error = f"{table}: not regenerated ({exc.strerror or exc}); rerun to write it"
        log.error("table_not_written", table=str(table), error=str(exc))
    summary.seconds = time.perf_counter() - started
    log.info("run_end", run_id=summary.run_id, images=len(scans), done=len(summary.outcomes) - len(summary.failed),
             failed=len(summary.failed), skipped=len(summary.skipped), replaced=len(summary.replaced), interrupted=summary.interrupted,
             seconds=round(summary.seconds, 2), store=str(out), table=str(table), run_table=str(summary.run_table))
    return summary
