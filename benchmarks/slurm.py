"""A 32-scan run three ways on a real SLURM, each against the same run in one process.

Starts the single-node cluster of the tests (``.ci/slurm-cluster``, as root; stopped at the end), writes
32 synthetic scans (``--size``, default 960x1280) and runs ``semtile process`` on them with the built-in
model:

* **in process**: no cluster (the reference);
* **worker jobs**: ``--cluster slurm --jobs J --cores 1`` (semtile submits the worker jobs);
* **inside one allocation**: the script of ``semtile slurm-script --way allocation`` through ``sbatch``
  (one job: a scheduler, J workers, the driver);
* **an array of 4**: the script of ``semtile slurm-script --way array --tasks 4`` through ``sbatch``;
* **SLURMRunner** (``--ways runner``): the other way to run inside one allocation, dask-jobqueue's
  ``SLURMRunner``: one ``srun`` of J + 2 tasks (scheduler, client, J workers; ``--overcommit``, as the
  scheduler and the client are mostly idle), the client task running ``semtile process --scheduler-file``.

Each store is compared with the reference (masks max |Δ|, labels, ratios; names) and each wall time
printed, from the command (or ``sbatch``) to the store complete and the queue empty. Everything binds to
127.0.0.1 (``--interface lo``). J defaults to the machine's cores (one engine thread each).

    sudo python benchmarks/slurm.py [--scans 32] [--size 960x1280] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from semtile.synth import SynthConfig, write_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "slurm-cluster"


def semtile(*args: str) -> list[str]:
    return [sys.executable, "-m", "semtile.cli.main", "--log-json", *args]


def names(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if (p / "zarr.json").is_file()) if store.is_dir() else []


def compare(a: Path, b: Path) -> str:
    """``max |Δmask| 0, labels 32/32 equal, ratios 32/32 equal`` (names must match)."""
    na, nb = names(a), names(b)
    if na != nb:
        return f"DIFFERENT results: {len(na)} vs {len(nb)} ({sorted(set(na) ^ set(nb))[:4]})"
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    delta, labels, ratios = 0.0, 0, 0
    for name in na:
        sa, sb = ga[name].attrs["semtile"], gb[name].attrs["semtile"]
        labels += sa["label"] == sb["label"]
        ratios += sa["adhesive_ratio"] == sb["adhesive_ratio"]
        delta = max(delta, float(np.abs(ga[name]["mask"][...].astype(np.float64) - gb[name]["mask"][...]).max()))
    ok = delta <= 1e-6 and labels == ratios == len(na)
    return (f"{'equal' if ok else 'NOT EQUAL'}: max |Δmask| {delta:.2g}, labels {labels}/{len(na)}, "
            f"ratios {ratios}/{len(na)}")


def run(env: dict, *args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise SystemExit(f"{' '.join(args[:4])} ...: exit {result.returncode}\n{result.stderr[-3000:]}")
    return result


def wait_queue_empty(env: dict, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise SystemExit("jobs still queued")
        time.sleep(0.2)


def runner_script(inputs: list[str], out: Path, scheduler_file: Path, workers: int, common: list[str]) -> str:
    """An sbatch script running ``semtile process`` inside one allocation through dask-jobqueue's SLURMRunner."""
    body = f"""import subprocess, sys
from dask_jobqueue.slurm import SLURMRunner
options = {{"interface": "lo"}}
with SLURMRunner(scheduler_file={str(scheduler_file)!r}, scheduler_options={{**options, "dashboard_address": ":0"}},
                 worker_options={{**options, "nthreads": 1, "memory_limit": 0}}) as runner:
    # Only the client task (rank 1) gets here; the scheduler and the workers serve until it leaves.
    command = [sys.executable, "-m", "semtile.cli.main", "--log-json", "process", *{inputs!r}, "--out", {str(out)!r},
               *{common!r}, "--scheduler-file", str(runner.scheduler_file)]
    code = subprocess.run(command).returncode
sys.exit(code)
"""
    (out.parent / "runner.py").write_text(body)
    return (f"#!/bin/bash\n#SBATCH --job-name=semtile-runner\n#SBATCH --ntasks={workers + 2}\n#SBATCH --overcommit\n"
            f"#SBATCH --cpus-per-task=1\n#SBATCH --time=01:00:00\n#SBATCH --output=runner-%j.out\n"
            f"srun --overcommit {sys.executable} {out.parent / 'runner.py'}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=32)
    parser.add_argument("--size", default="960x1280", help="ROWSxCOLS of each scan")
    parser.add_argument("--jobs", type=int, default=max(1, len(os.sched_getaffinity(0))),
                        help="worker jobs, and workers inside the allocation")
    parser.add_argument("--tasks", type=int, default=4, help="array tasks")
    parser.add_argument("--ways", default="jobs,allocation,array",
                        help="which ways, of jobs, allocation, array, runner (dask-jobqueue's SLURMRunner), lifetime "
                             "(worker jobs with a 1-minute walltime and --lifetime 30s: workers retire mid-run and "
                             "new jobs replace them)")
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="semtile-slurm-bench-") as tmp:
        tmp = Path(tmp)
        state = tmp / "cluster"
        env = {**os.environ, "SEMTILE_SLURM_DIR": str(state), "SLURM_CONF": str(state / "slurm.conf"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin"])}
        per_label = -(-args.scans // 4)
        write_dataset(tmp / "data", SynthConfig(per_label=per_label, labels=4, size=(rows, cols), truth="sqrt", seed=3))
        scans = sorted((tmp / "data" / "images").glob("*.tif"))[: args.scans]
        inputs = [str(p) for p in scans]
        t0 = time.perf_counter()
        started = run(env, str(SCRIPT), "start", cwd=tmp)
        print(f"cluster: {started.stdout.strip()} (script: {time.perf_counter() - t0:.2f} s)")
        common = ["--threads", "1"]
        timings: dict[str, tuple[float, str]] = {}
        try:
            t0 = time.perf_counter()
            run(env, *semtile("process", *inputs, "--out", str(tmp / "local.zarr"), *common), cwd=tmp)
            timings["in process"] = (time.perf_counter() - t0, "reference")

            ways = args.ways.split(",")
            for way, walltime, lifetime in (("jobs", "01:00:00", []),
                                            ("lifetime", "00:01:00", ["--lifetime", "30s", "--lifetime-stagger", "5s"])):
                if way not in ways:
                    continue
                logs = tmp / way
                logs.mkdir()
                t0 = time.perf_counter()
                run(env, *semtile("process", *inputs, "--out", str(tmp / f"{way}.zarr"), "--scratch",
                                  str(tmp / "scratch"), *common, "--cluster", "slurm", "--jobs", str(args.jobs),
                                  "--cores", "1", "--memory", "2GB", "--walltime", walltime, *lifetime,
                                  "--interface", "lo"), cwd=logs)
                wait_queue_empty(env)
                verdict = compare(tmp / f"{way}.zarr", tmp / "local.zarr")
                if lifetime:
                    texts = [p.read_text() for p in logs.glob("slurm-*.out")]
                    verdict += (f"; {len(texts)} worker jobs, {sum('Reason: worker-lifetime' in t for t in texts)} "
                                f"retired at --lifetime, {sum('DUE TO TIME LIMIT' in t for t in texts)} killed at "
                                "the walltime")
                label = f"worker jobs ({args.jobs})" + (", --lifetime 30s, walltime 1 min" if lifetime else "")
                timings[label] = (time.perf_counter() - t0, verdict)
            for way, out, extra in (("allocation", "allocation.zarr", ["--workers-per-node", str(args.jobs)]),
                                    ("array", "array.zarr", ["--tasks", str(args.tasks)])):
                if way not in ways:
                    continue
                script = tmp / f"{way}.sbatch"
                run(env, *semtile("slurm-script", *inputs, "--out", str(tmp / out), "--way", way, "--cpus", "1",
                                  "--time", "01:00:00", "--interface", "lo", "-o", str(script), *extra), cwd=tmp)
                t0 = time.perf_counter()
                run(env, "sbatch", "--parsable", str(script), cwd=tmp)
                wait_queue_empty(env)
                label = (f"inside one allocation ({args.jobs} workers)" if way == "allocation"
                         else f"array of {args.tasks}")
                timings[label] = (time.perf_counter() - t0, compare(tmp / out, tmp / "local.zarr"))
            if "runner" in ways:
                script = tmp / "runner.sbatch"
                script.write_text(runner_script(inputs, tmp / "runner.zarr", tmp / "runner-scheduler.json",
                                                args.jobs, common))
                t0 = time.perf_counter()
                run(env, "sbatch", "--parsable", str(script), cwd=tmp)
                wait_queue_empty(env)
                timings[f"SLURMRunner ({args.jobs} workers)"] = (time.perf_counter() - t0,
                                                                 compare(tmp / "runner.zarr", tmp / "local.zarr"))
        finally:
            subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        base = timings["in process"][0]
        print(f"{args.scans} scans of {rows}x{cols}, built-in model, one engine thread per worker/task, "
              f"{len(os.sched_getaffinity(0))} cores")
        print(f"{'way':<36} {'wall s':>8} {'/ in process':>13}  store")
        for label, (seconds, verdict) in timings.items():
            print(f"{label:<36} {seconds:8.1f} {seconds / base:13.2f}  {verdict}")


if __name__ == "__main__":
    main()
