"""``semtile process`` on ``dask.distributed``: a local cluster, a running scheduler, or SLURM jobs.

The driver (this process) plans, claims and writes the run table; workers
do the work and write results straight into the store (a shared folder):

* **Small scans** go a few to a task (:func:`process_group`): the worker
  streams their tiles through the run's passes, batched across the scans it
  holds, exactly as the in-process runner does, and writes each result atomically.
* **Large scans** are split into tasks (:mod:`semtile.execution.regions`):
  prepare -> one task per tile block of each pass -> one task per output
  region (each region's chunks have one writer; it waits for the blocks of
  every pass that reach it) -> finish (commit).

Each worker builds the runners of the run's passes once (:class:`PassPlugin`,
a worker plugin) and keeps them for all its tasks. Workers run one task at a
time (``--nthreads 1``; engines are not thread-safe) and give the engine the
cores of their share of the host. Tasks of a pass that runs on a GPU ask for
the ``GPU`` resource, so they run only on workers started with ``--resources GPU=1``.

Every task carries the run's lease (:class:`~semtile.store.lease.Fence`):
a task that starts after the driver has gone does nothing, and one that
finishes after it commits nothing (the store refuses the publish), so no
worker the driver did not start can commit a result read from scratch that
the driver removed. A lost scheduler ends the run with one error
(:class:`~semtile.errors.SchedulerLost`), not one failure per pending input.

A worker that dies (kill -9, a node lost) loses its tasks; the scheduler
runs them again elsewhere. Every task is idempotent: a result written twice
is the same bytes, replaced atomically; what the dead worker left half
written is a temporary that the store's ``clean_stale`` removes at the end.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from semtile.errors import SchedulerLost, SemtileError
from semtile.execution.outcome import ImageOutcome
from semtile.inference.options import ProcessOptions
from semtile.inference.passes import Pass
from semtile.logs import get_logger

__all__ = ["ClusterSpec", "PassPlugin", "connect", "slurm_cluster", "process_scans_distributed", "process_group"]

log = get_logger("semtile.process")

#: Small scans per task: enough pixels to batch across scans, enough tasks to keep every worker busy.
GROUP_PIXELS = 8 * 2**20
MAX_GROUP = 8


@dataclass(frozen=True)
class ClusterSpec:
    """Where the work runs: ``local`` (a LocalCluster of worker processes started here), ``address``
    (``tcp://host:port`` of a running scheduler), ``file`` (a scheduler file) or ``slurm`` (dask-jobqueue)."""

    kind: str = "local"
    workers: int | None = None  # local: worker processes (default: one per 2 cores, at least 1)
    address: str | None = None
    scheduler_file: str | None = None
    # slurm
    jobs: int = 1
    cores: int = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    gpus: int = 0  # per job: --gres=gpu:N and the GPU resource for its worker
    lifetime: str | None = None  # workers retire gracefully after this long; new jobs replace them
    lifetime_stagger: str | None = None
    interface: str | None = None  # network interface of the scheduler and workers (lo: this machine only)


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # dask.distributed is a dependency; this only keeps the module importable without it
    _WorkerPlugin = object


class PassPlugin(_WorkerPlugin):
    """Builds the runners of the run's passes on every worker when it joins (warm before its first task)."""

    name = "semtile-passes"

    def __init__(self, passes: Sequence[Pass], workers_on_host: dict[str, int] | None = None):
        self.passes, self.workers_on_host = tuple(passes), workers_on_host or {}

    def setup(self, worker) -> None:
        share = self.workers_on_host.get(worker.address)
        if share:
            os.environ["SEMTILE_WORKERS_ON_HOST"] = str(share)
        if any(p.gpu for p in self.passes):
            # Workers of one host take its GPUs in turn (worker k: GPU k mod count). A worker whose
            # CUDA_VISIBLE_DEVICES names one GPU (a SLURM job, a launcher) sees it as device 0.
            host = _host(worker.address)
            peers = sorted(a for a in self.workers_on_host if _host(a) == host) or [worker.address]
            rank = peers.index(worker.address) if worker.address in peers else 0
            os.environ["SEMTILE_CUDA_DEVICE"] = str(rank % max(1, _cuda_devices()))
        for p in self.passes:
            p.runner()


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def _cuda_devices() -> int:
    """CUDA devices this process sees (0 without torch CUDA support or a driver)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.version.cuda else 0
    except Exception:  # noqa: BLE001 - a broken driver means no GPU here
        return 0


# -- tasks (run on workers) ------------------------------------------------------------------------------


def process_group(passes: Sequence[Pass], paths: list[str], store_path: str, options: ProcessOptions, run_id: str,
                  scratch: str, fence=None) -> list[ImageOutcome]:
    """A few small scans through this worker's runners (batched across them) into the store, under ``fence``."""
    from semtile.execution.local import scan_results, scratch_prefix, store_one
    from semtile.store import open_store

    store = open_store(store_path)
    if fence is not None:
        fence.check(f"the results of {len(paths)} scans")  # the driver has gone: nothing to start
        store.fence(fence)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=scratch) as tmp:
        for job, result, row in scan_results([Path(p) for p in paths], passes, options, Path(tmp), run_id):
            if result is not None:  # how the store keeps the mask (--mask-dtype)
                result.mask_dtype = options.mask_dtype
            try:
                outcomes.append(store_one(job, result, row, store))
            finally:
                job.release()
    return outcomes


def _block_task(rs, pass_name: str, block: int, prepared: float):
    from semtile.execution.regions import run_block

    return run_block(rs, pass_name, block)


def _region_task(rs, region: int, *blocks):
    from semtile.execution.regions import write_region_output

    return write_region_output(rs, region, blocks)


def _finish_task(rs, blocks: list, regions: list, key: dict, run_id: str, prepared: float) -> ImageOutcome:
    from semtile.execution.regions import finish_region_scan

    return finish_region_scan(rs, blocks, regions, key, run_id, prepared)


# -- the driver ------------------------------------------------------------------------------------------


def slurm_cluster(spec: ClusterSpec, *, engine_threads: int | None = None):
    """A dask-jobqueue SLURMCluster of ``spec.jobs`` jobs, one worker process of one task thread per job,
    its engine on the job's ``spec.cores`` CPUs (not yet scaled: call ``scale(jobs=...)``)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SemtileError("--cluster slurm needs dask-jobqueue: pip install 'semtile[cluster]'") from None
    extra = ["--resources", f"GPU={spec.gpus}"] if spec.gpus else []
    if spec.lifetime:  # retire before the walltime: the scheduler moves the work, the adaptive cluster resubmits
        extra += ["--lifetime", spec.lifetime, "--lifetime-stagger", spec.lifetime_stagger or "0s"]
    directives = [f"--gres=gpu:{spec.gpus}"] if spec.gpus else []
    where = {"interface": spec.interface} if spec.interface else {}
    return SLURMCluster(cores=1, processes=1, job_cpu=spec.cores, memory=spec.memory, walltime=spec.walltime,
                        queue=spec.queue, account=spec.account, worker_extra_args=extra,
                        job_extra_directives=directives,
                        job_script_prologue=["export SEMTILE_WORKERS_ON_HOST=1"],
                        scheduler_options={"dashboard_address": ":0", **where}, name="semtile", **where)


@contextmanager
def connect(spec: ClusterSpec) -> Iterator[tuple[object, dict[str, int]]]:
    """A Client on the cluster ``spec`` names, and how many workers share each worker's host."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SemtileError("the distributed scheduler needs dask.distributed: pip install 'dask[distributed]'") \
            from None
    # Never the default client: a user's (or a test's) later local dask computes must not ship to it,
    # and a Client that failed to connect would otherwise stay registered as the default.
    cluster = restore = None
    try:
        if spec.kind == "local":
            cores = len(os.sched_getaffinity(0))
            workers = spec.workers or max(1, cores // 2)
            # With a GPU here every worker may run GPU tasks: workers share the GPUs (see EnginePlugin).
            gpu = {"resources": {"GPU": 1}} if _cuda_devices() else {}
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", memory_limit=0, **gpu)
            client = Client(cluster, set_as_default=False)
        elif spec.kind == "address":
            client = Client(spec.address, timeout="30s", set_as_default=False)
        elif spec.kind == "file":
            client = Client(scheduler_file=spec.scheduler_file, timeout="30s", set_as_default=False)
        elif spec.kind == "slurm":
            # Adaptive at a fixed size: a job that ends (cancelled, its walltime, --lifetime) is replaced, once
            # its worker has been gone this long (dask's default, 15 s, leaves the run without it meanwhile).
            import dask

            cluster = slurm_cluster(spec)
            cluster.adapt(minimum_jobs=spec.jobs, maximum_jobs=spec.jobs)
            client = Client(cluster, set_as_default=False)
            restore = dask.config.set({"distributed.deploy.lost-worker-timeout": "3s"})  # read when a worker goes
        else:
            raise SemtileError(f"unknown cluster kind {spec.kind!r}")
    except SemtileError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        where = spec.address or spec.scheduler_file or spec.kind
        raise SemtileError(f"cannot reach the Dask scheduler ({where}): {exc}") from None
    try:
        if spec.kind != "slurm":  # SLURM jobs come when the queue lets them; tasks wait for them
            client.wait_for_workers(1, timeout=120)
        info = client.scheduler_info(n_workers=-1)["workers"]
        hosts = Counter(w["host"] for w in info.values())
        with client.as_current():  # the client of this run (futures, as_completed), not a process-wide default
            yield client, {address: hosts[w["host"]] for address, w in info.items()}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        if restore is not None:
            restore.__exit__(None, None, None)


def _groups(paths: list[Path], pixels: dict[Path, int], workers: int) -> list[list[Path]]:
    """Consecutive small scans in groups of about GROUP_PIXELS, at most MAX_GROUP, at least 4 groups per worker."""
    most = max(1, min(MAX_GROUP, -(-len(paths) // max(1, 4 * workers))))
    groups, current, size = [], [], 0
    for path in paths:
        current.append(path)
        size += pixels.get(path, 0)
        if len(current) >= most or size >= GROUP_PIXELS:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def _lost(client, exc: BaseException) -> bool:
    """Whether ``exc`` says the scheduler is gone (not that this task failed)."""
    from concurrent.futures import CancelledError

    if "scheduler-connection-lost" in str(exc):
        return True
    return isinstance(exc, (CancelledError, OSError)) and getattr(client, "status", "running") != "running"


def process_scans_distributed(scans: list[Path], store, *, client, passes: Sequence[Pass], options: ProcessOptions,
                              key: dict, run_id: str, scratch: Path, workers_on_host: dict[str, int],
                              on_outcome: Callable[[ImageOutcome], None], fence=None) -> list[ImageOutcome]:
    """Every scan as tasks on ``client``'s cluster; ``on_outcome`` sees each outcome as it arrives.

    ``fence``: the run's lease, checked by every task before it starts and by the store before it commits.
    SchedulerLost when the scheduler goes away; the tasks not yet reported are cancelled on the way out."""
    from distributed import as_completed

    from semtile.execution.local import large_scans
    from semtile.execution.outcome import failed_outcome, log_outcome
    from semtile.execution.regions import discard_region_scan, prepare_region_scan, start_region_scan
    from semtile.io.tiff import scan_pixels

    passes = tuple(passes)
    client.register_plugin(PassPlugin(passes, workers_on_host), name=PassPlugin.name)
    n_workers = max(1, len(workers_on_host))
    log.info("dask_cluster", dashboard=client.dashboard_link, scheduler=client.scheduler.address, workers=n_workers)
    gpu = {"GPU": 1}

    def resources(needs_gpu: bool):
        return gpu if needs_gpu else None

    any_gpu = any(p.gpu for p in passes)
    pixels = {p: scan_pixels(p, options.page) for p in scans}
    chosen = frozenset(large_scans(scans, options, store))
    large = [p for p in scans if p in chosen]
    small = [p for p in scans if p not in chosen]
    outcomes: list[ImageOutcome] = []
    futures = {}  # future -> (kind, what)
    for i, group in enumerate(_groups(small, pixels, n_workers)):
        future = client.submit(process_group, passes, [str(p) for p in group], str(store.path), options, run_id,
                               str(scratch), fence, key=f"semtile-group-{run_id}-{i}", resources=resources(any_gpu))
        futures[future] = ("group", group)
    staged = {}
    for index, path in enumerate(large):
        try:
            rs = start_region_scan(index, path, passes, options, store, scratch, fence=fence)
        except Exception as exc:  # noqa: BLE001 - a bad header: this scan fails, the run goes on
            outcome = failed_outcome(path, exc)
            outcomes.append(outcome)
            on_outcome(outcome)
            continue
        staged[path] = rs
        tag = f"{run_id}-{index}"
        prepared = client.submit(prepare_region_scan, rs, key=f"semtile-prepare-{tag}")
        blocks = {(p.name, b.index): client.submit(_block_task, rs, p.name, b.index, prepared,
                                                   key=f"semtile-block-{tag}-{p.name}-{b.index}",
                                                   resources=resources(p.gpu))
                  for p in passes for b in rs.plans[p.name].blocks}
        regions = [client.submit(_region_task, rs, i, *[blocks[c] for c in rs.contributors(i)],
                                 key=f"semtile-region-{tag}-{i}") for i in range(len(rs.regions))]
        finish = client.submit(_finish_task, rs, list(blocks.values()), regions, key, run_id, prepared,
                               key=f"semtile-finish-{tag}")
        futures[finish] = ("large", path)
    try:
        for future in as_completed(list(futures)):
            kind, what = futures.pop(future)
            if kind == "group":
                try:
                    done = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. the engine failed to load on every worker
                    if _lost(client, exc):
                        raise SchedulerLost(_lost_message(client)) from None
                    reason = f"{type(exc).__name__}: {exc}"
                    log.error("task_failed", scans=[str(p) for p in what], error=reason)
                    done = [ImageOutcome(path=Path(p), status="error", error=reason) for p in what]
            else:
                try:
                    done = [log_outcome(future.result())]
                except Exception as exc:  # noqa: BLE001 - one bad scan never stops the others
                    if _lost(client, exc):
                        raise SchedulerLost(_lost_message(client)) from None
                    done = [failed_outcome(what, exc)]
                discard_region_scan(staged.pop(what))
            for outcome in done:
                outcomes.append(outcome)
                on_outcome(outcome)
    finally:
        try:
            client.cancel(list(futures), reason="the semtile driver ended")  # tasks not started never start
        except Exception:  # noqa: BLE001 - a lost scheduler cannot be told; the lease fences its tasks
            pass
        # The scans still staged may have tasks running on workers: their scratch and staged results go
        # once the run's lease is released (batch.run_process), never while a task may still commit.
    return outcomes


def _lost_message(client) -> str:
    try:
        where = client.scheduler.address
    except Exception:  # noqa: BLE001 - the address is only for the message
        where = "?"
    return f"lost the Dask scheduler ({where}) mid-run"
