"""The ``sbatch`` scripts of a nightly run, for a lab to edit: ``semtile slurm-script``.

Three ways (docs/clusters.md says when to pick which):

* ``allocation``: one job; a Dask scheduler and the driver run in the batch
  step (on the first node), ``srun`` starts one worker per task on every
  node; they meet through a scheduler file on a shared folder. A requeued
  job (``--requeue``: preemption, a node failure, ``scontrol requeue``)
  starts over and does only what is missing.
* ``array``: a job array; each task processes its share of the inputs in its
  own process (``--shard-from-env``) into the one store.
* ``workers``: one small job runs the driver, which submits the worker jobs
  itself (``--cluster slurm``, dask-jobqueue); workers retire before their
  walltime (``--lifetime``) and new jobs replace them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ScriptSpec", "WAYS", "slurm_script", "walltime_seconds"]

WAYS = ("allocation", "array", "workers")


@dataclass(frozen=True)
class ScriptSpec:
    inputs: tuple[str, ...]
    out: str
    way: str = "allocation"
    partition: str | None = None
    account: str | None = None
    time: str = "06:00:00"
    nodes: int = 1
    workers_per_node: int = 4  # allocation: dask workers (SLURM tasks) per node
    cpus: int = 4  # per worker, array task or worker job: the engine's threads
    gpus: int = 0  # per worker (allocation, workers) or per array task
    mem: str | None = None  # per node (allocation), per task (array), per worker job (workers)
    tasks: int = 4  # array: tasks; workers: worker jobs
    scratch: str | None = None
    shared: str | None = None  # scheduler files and job logs
    model: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before the run: modules, a virtual environment
    interface: str | None = None
    process_args: tuple[str, ...] = field(default_factory=tuple)  # more `semtile process` options


def walltime_seconds(value: str) -> int:
    """SLURM's [D-]HH:MM:SS (or MM, MM:SS, D-HH, D-HH:MM) in seconds."""
    days, _, rest = value.rpartition("-") if "-" in value else ("0", "", value)
    parts = [int(p) for p in rest.split(":")]
    if "-" in value:
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return int(days) * 86400 + h * 3600 + m * 60 + s


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _q(value: str) -> str:
    return shlex.quote(str(value))


def slurm_script(spec: ScriptSpec) -> str:
    """The script of ``spec.way``; see the module docstring."""
    if spec.way not in WAYS:
        raise ValueError(f"way must be one of {', '.join(WAYS)}")
    out = Path(spec.out)
    shared = spec.shared or str(out.parent / "semtile-jobs")
    scratch = spec.scratch or str(out.parent / "semtile-scratch")
    head = ["#!/bin/bash", f"# semtile: the nightly run, {_TITLES[spec.way]} (written by `semtile slurm-script`; "
            "edit the lines marked EDIT).", "#SBATCH --job-name=semtile"]
    if spec.partition:
        head.append(f"#SBATCH --partition={spec.partition}")
    if spec.account:
        head.append(f"#SBATCH --account={spec.account}")
    head.append(f"#SBATCH --time={spec.time}")
    if spec.way == "allocation":
        head += [f"#SBATCH --nodes={spec.nodes}", f"#SBATCH --ntasks-per-node={spec.workers_per_node}",
                 f"#SBATCH --cpus-per-task={spec.cpus}"]
        if spec.gpus:
            head.append(f"#SBATCH --gpus-per-task={spec.gpus}")
        head += ["# Preempted, a node lost or `scontrol requeue`: the job runs again and does only what is missing.",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append"]
    elif spec.way == "array":
        head += [f"#SBATCH --array=0-{spec.tasks - 1}", "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={spec.cpus}"]
        if spec.gpus:
            head.append(f"#SBATCH --gpus-per-task={spec.gpus}")
    else:
        head += ["#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=1"]
    if spec.mem and spec.way != "workers":
        head.append(f"#SBATCH --mem={spec.mem}")
    # In the folder sbatch is run from (a folder named here must exist before the job starts).
    head.append("#SBATCH --output=" + ("semtile-%A_%a.out" if spec.way == "array" else "semtile-%j.out"))
    body = ["", "set -u", "# EDIT: what to process, on folders every node sees.",
            f"INPUTS=({' '.join(_q(i) for i in spec.inputs)})", f"OUT={_q(spec.out)}",
            f"SCRATCH={_q(scratch)}", *([f"SHARED={_q(shared)}  # the scheduler file"] if spec.way == "allocation" else []), ""]
    body += ["# EDIT: the software environment (modules, a virtual environment with semtile).",
             *(spec.setup or ["# module load python/3.11; source ~/venvs/semtile/bin/activate"]), ""]
    body.append('mkdir -p "$SCRATCH"' + (' "$SHARED"' if spec.way == "allocation" else ""))
    process = ["semtile", "process", '"${INPUTS[@]}"', '--out "$OUT"', '--scratch "$SCRATCH"']
    if spec.model:
        process.append(f"--model {_q(spec.model)}")
    process += [_q(a) for a in spec.process_args]
    interface = f" --interface {_q(spec.interface)}" if spec.interface else ""
    if spec.way == "allocation":
        gpu = " --resources GPU=1" if spec.gpus else ""
        body += ['SCHED="$SHARED/$SLURM_JOB_ID.scheduler.json"',
                 'rm -f "$SCHED"  # a requeued job has the same id: never the old scheduler\'s address',
                 "# The scheduler and the driver run here, in the batch step; one worker per task, on every node.",
                 f'dask scheduler --scheduler-file "$SCHED" --port 0 --dashboard-address :0{interface} &',
                 f'srun --kill-on-bad-exit=0 dask worker --scheduler-file "$SCHED" --nthreads 1 --nworkers 1 '
                 f'--memory-limit 0{interface}{gpu} &',
                 'for _ in $(seq 300); do [ -s "$SCHED" ] && break; sleep 1; done',
                 f'{" ".join(process)} --scheduler-file "$SCHED" --threads "$SLURM_CPUS_PER_TASK"',
                 "status=$?",
                 "kill $(jobs -p) 2>/dev/null; wait",
                 "exit $status"]
    elif spec.way == "array":
        body += ["# Task I of N processes its share (balanced by pixels); the last to finish writes results.csv",
                 "# (or run `semtile tables \"$OUT\"`). A failed task: `sbatch --array=I` this script again",
                 "# (N is written here, not read from SLURM_ARRAY_TASK_COUNT: a rerun of one task is an array of 1).",
                 f'{" ".join(process)} --shard "$SLURM_ARRAY_TASK_ID/{spec.tasks}" --threads "$SLURM_CPUS_PER_TASK"']
    else:
        seconds = walltime_seconds(spec.time)
        margin = max(60, seconds // 10)
        stagger = max(10, margin // 4)
        lifetime = max(60, seconds - margin - stagger)
        jobs = [f"--cluster slurm --jobs {spec.tasks} --cores {spec.cpus} --walltime {spec.time}",
                f"--lifetime {_duration(lifetime)} --lifetime-stagger {_duration(stagger)}"]
        if spec.mem:
            jobs.append(f"--memory {_q(spec.mem)}")
        if spec.partition:
            jobs.append(f"--queue {_q(spec.partition)}")
        if spec.account:
            jobs.append(f"--account {_q(spec.account)}")
        if spec.gpus:
            jobs.append(f"--gpus {spec.gpus}")
        if spec.interface:
            jobs.append(f"--interface {_q(spec.interface)}")
        body += ["# The worker jobs' logs go to the folder sbatch is run from.",
                 " \\\n    ".join([" ".join(process), *jobs])]
    return "\n".join(head + body) + "\n"


_TITLES = {"allocation": "Dask inside one allocation", "array": "a job array over the inputs",
           "workers": "semtile submitting worker jobs"}

