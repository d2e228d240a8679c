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
is removed, and the summary says the run was interrupted (exit code 3). A
Dask scheduler lost mid-run is the same: one error for the run, exit code 3.

**Fencing.** The run holds a lease in the store (:mod:`semtile.store.lease`)
while it works: every commit, here or on a worker, checks it. On the way out
(done, SIGTERM, a lost scheduler) the driver cancels its tasks, releases the
lease, and only then removes its scratch folder (renamed aside first): a task
still running on a worker the driver did not start may read that scratch,
but it can no longer commit what it computed from it. Scratch and temporaries
of other runs go only when their lease has expired or was released.

**A full disk** (``ENOSPC``) while results are written stops the run from
starting new work: it says so once, and the rest is left for a rerun.
"""

from __future__ import annotations

import _thread
import errno
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from semtile.errors import SchedulerLost, SemtileError
from semtile.execution.outcome import ImageOutcome
from semtile.execution.resume import Plan, output_key, plan_run
from semtile.inference.options import ProcessOptions
from semtile.logs import get_logger
from semtile.store import RunTable, default_csv_path, open_store
from semtile.store.lease import TOKEN, RunLease, lease_state
from semtile.store.table import new_run_id, run_columns, running, runs_folder, write_current_table

if TYPE_CHECKING:  # the runner (dask, numba) is imported only when there is work: a rerun that skips all is quick
    from semtile.execution.distributed import ClusterSpec
    from semtile.inference.passes import Pass

__all__ = ["Interrupted", "BatchSummary", "run_process", "clean_stale_scratch", "EXIT_OK", "EXIT_FAILED",
           "EXIT_USAGE", "EXIT_INTERRUPTED"]

log = get_logger("semtile.process")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
#: Scratch named by older versions (host and pid), or whose lease cannot be asked, is left alone until it is this old.
STALE_SECONDS = 24 * 3600
#: A run's scratch folder under the scratch root: ``semtile-run~<lease token>~<random>``, holding ``lease.json``.
RUN_SCRATCH = "semtile-run"
_DISK_FULL = os.strerror(errno.ENOSPC)


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
    #: why the run started no new work before the end (a full disk); None when it did all it could
    stopped: str | None = None
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
        if self.stopped:
            return EXIT_FAILED
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


def make_run_scratch(root: Path, lease: RunLease) -> Path:
    """This run's scratch folder under ``root``, named by its lease, with ``lease.json`` naming the lease file."""
    folder = Path(root) / f"{RUN_SCRATCH}~{lease.token}~{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "lease.json").write_text(json.dumps({"token": lease.token, "leases": str(lease.folder.absolute())}))
    return folder


def remove_scratch(folder: Path) -> None:
    """Rename ``folder`` aside (atomically: a reader that checks it afterwards knows it was whole), then delete
    it without following links."""
    folder = Path(folder)
    doomed = folder.with_name(f"semtile-dead~{uuid.uuid4().hex}")
    try:
        if stat.S_ISLNK(os.lstat(folder).st_mode):
            return
        os.rename(folder, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _scratch_lease(folder: Path) -> str:
    """The state of the lease of the run scratch ``folder`` (``unknown`` when its marker cannot be read)."""
    try:
        fd = os.open(folder / "lease.json", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            marker = json.loads(handle.read(65536))
        token, leases = marker["token"], Path(marker["leases"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    if not folder.name.startswith(f"{RUN_SCRATCH}~{token}~"):
        return "unknown"
    return lease_state(leases, token)


def clean_stale_scratch(root: Path) -> int:
    """Remove what semtile left under the scratch root for runs whose lease expired or was released; how many.

    Only folders semtile named (``semtile-run~<token>~...``, or ``semtile-scratch-...`` and
    ``semtile-dead~...`` of older versions and interrupted clean-ups), never a link, never anything outside
    ``root``. A run folder whose lease cannot be asked (its store is not mounted here) waits a day, as do
    the older names."""
    removed, root = 0, Path(root)
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        run = name.startswith(f"{RUN_SCRATCH}~")
        if not (run or name.startswith(("semtile-scratch-", "semtile-dead~"))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue  # a link or a file: never semtile's
        folder = Path(entry.path)
        state = _scratch_lease(folder) if run and TOKEN.fullmatch(name.split("~")[1]) else "unknown"
        if state == "held":
            continue
        if state in ("expired", "released") or time.time() - st.st_mtime > STALE_SECONDS:
            remove_scratch(folder)
            removed += 1
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


def _run_distributed(todo, store, cluster, passes, options, key, run_id, scratch, lease, run_table, seen) -> None:
    """The scans to do as tasks on a Dask cluster; outcomes reach the run table as they arrive."""
    from semtile.execution.distributed import connect, process_scans_distributed
    from semtile.execution.local import add_table_row

    def arrived(outcome: ImageOutcome) -> None:
        add_table_row(run_table, outcome)
        seen(outcome)

    # Workers write their scratch in the run's folder: on a cluster it must be one every node sees (--scratch).
    with connect(cluster) as (client, workers_on_host):
        process_scans_distributed(todo, store, client=client, passes=passes, options=options, key=key,
                                  run_id=run_id, scratch=scratch, workers_on_host=workers_on_host,
                                  on_outcome=arrived, fence=lease.fence)


def _heard_of(summary: BatchSummary, todo: list[Path], store) -> None:
    """The results this run committed whose outcome never reached the driver (its scheduler was lost)."""
    known = {Path(o.path) for o in summary.outcomes}
    for path in todo:
        if Path(path) in known:
            continue
        try:
            name = store.find(path)
            record = store.record(name) if name else None
            if record and record.get("run_id") == summary.run_id:
                stored = store.read(name)
                summary.outcomes.append(ImageOutcome(path=Path(path), status="ok", group=name, label=stored.label,
                                                     adhesive_ratio=stored.adhesive_ratio))
        except Exception:  # noqa: BLE001 - a result that cannot be read now is left for the rerun
            continue


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
    lease = run_scratch = None
    try:
        try:
            lease = store.lease(summary.run_id)
            run_table = RunTable(summary.run_table, run_id=summary.run_id, columns=run_columns(passes))
            scratch_root.mkdir(parents=True, exist_ok=True)
            run_scratch = make_run_scratch(scratch_root, lease)
            probe = table.with_name(f".{table.name}.probe-{os.getpid()}")
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise SemtileError(f"{exc.filename or table}: cannot write here ({exc.strerror or exc})") from None
        store.fence(lease.fence)
        return _run(summary, scans, out, store, table, run_table, passes, options, lease, run_scratch, scratch_root,
                    force, keep_existing, problems, on_image, cluster, started)
    finally:
        # Nothing of this run commits once its lease is gone; only then may its scratch go.
        if lease is not None:
            lease.release()
            store.fence(None)
        if run_scratch is not None:
            remove_scratch(run_scratch)


def _run(summary, scans, out, store, table, run_table, passes, options, lease, run_scratch, scratch_root, force,
         keep_existing, problems, on_image, cluster, started) -> BatchSummary:
    """:func:`run_process` once its lease is held and its scratch folder made."""
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
        if outcome.status != "ok" and _DISK_FULL in (outcome.error or "") and summary.stopped is None:
            summary.stopped = f"{outcome.error}; the run starts no new work (free space and rerun)"
            log.error("disk_full", run_id=summary.run_id, store=str(out), error=outcome.error,
                      message="no space left on the device: the run starts no new work; a rerun does the rest")
            if threading.current_thread() is threading.main_thread():
                raise Interrupted(signal.SIGTERM)
            _thread.interrupt_main(signal.SIGTERM)  # the main thread stops streaming new scans

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
                    _run_distributed(todo, store, cluster, ready, options, key, summary.run_id, run_scratch,
                                     lease, run_table, seen)
                else:
                    from semtile.execution.local import process_scans

                    process_scans(todo, store, passes=ready, options=options, table=run_table,
                                  scratch=run_scratch, on_image=seen, run_id=summary.run_id)
        except Interrupted as stop:
            if summary.stopped is None:
                summary.interrupted = str(stop)
                log.warning("run_interrupted", run_id=summary.run_id, signal=str(stop))
        except SchedulerLost as lost:
            summary.interrupted = str(lost)
            log.error("scheduler_lost", run_id=summary.run_id, error=str(lost),
                      message="the Dask scheduler was lost: no input is failed for it; a rerun does the rest")
            _heard_of(summary, plan.todo, store)
    if cluster is not None:  # what workers killed mid-write left behind (their run's lease is this one)
        lease.release()
        store.fence(None)
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
