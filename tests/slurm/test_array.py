"""A job array over the inputs (``semtile slurm-script --way array``, ``--shard``) through ``sbatch --array``.

Two tasks fill one store, each its share and its own run table. Task 1 fails (cancelled as it starts
work): the store lacks its share, task 0's is complete. Rerunning that one task (``sbatch --array=1``)
completes the store, equal to the in-process run, and the last task to finish writes results.csv.
"""

from __future__ import annotations

import csv
import time

from slurm_cluster import RUN_ARGS, assert_same_store, result_names, semtile

from semtile.execution.shards import assign_shares, input_weights


def _task_states(slurm, job: str) -> dict[str, str]:
    """``{ARRAYJOB_TASK: JobState}`` of every task of array ``job`` the controller still knows (finished tasks
    for MinJobAge seconds too), from one ``scontrol -o show job``."""
    out = slurm.run("scontrol", "-o", "show", "job", job, check=False).stdout
    states = {}
    for line in out.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "ArrayTaskId" in fields and "JobState" in fields:
            states[f"{fields.get('ArrayJobId', job)}_{fields['ArrayTaskId']}"] = fields["JobState"]
    return states


def _wait(slurm, job: str, timeout: float = 150) -> dict[str, str]:
    """Until the queue is empty; the last state the controller gave of each array task."""
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        states.update(_task_states(slurm, job))
        if not slurm.jobs():
            states.update(_task_states(slurm, job))  # the final states (kept MinJobAge seconds after the end)
            return states
        assert time.monotonic() < deadline, slurm.run("squeue").stdout
        time.sleep(0.2)


def test_a_job_array_fills_one_store_and_a_failed_task_is_rerun_alone(tmp_path, slurm, slurm_scans, slurm_reference,
                                                                      tiny_bundle):
    out, script = tmp_path / "array.zarr", tmp_path / "array.sbatch"
    slurm.run(*semtile("slurm-script", *map(str, slurm_scans), "--out", str(out), "--way", "array", "--tasks", "2",
                       "--time", "00:10:00", "--cpus", "1", "--model", str(tiny_bundle), "-o", str(script),
                       *[f"--process-arg={a}" for a in RUN_ARGS]), cwd=tmp_path)
    assert "#SBATCH --array=0-1" in script.read_text()
    shares = assign_shares(slurm_scans, 2, input_weights(slurm_scans))
    assert all(shares)
    job = slurm.sbatch(str(script), cwd=tmp_path)
    runs = tmp_path / "array.runs"
    # Task 1 fails: cancelled once its run has begun (its run table is created first thing).
    deadline = time.monotonic() + 120
    while slurm.state(f"{job}_1") not in ("RUNNING", "GONE") or len(list(runs.glob("*.csv"))) < 2:
        assert time.monotonic() < deadline and slurm.state(f"{job}_1") != "GONE", slurm.run("squeue").stdout
        time.sleep(0.1)
    slurm.run("scancel", f"{job}_1")
    states = _wait(slurm, job)
    assert states.get(f"{job}_1") == "CANCELLED", states
    done = set(result_names(out))
    names = {p.stem for p in shares[1]}
    assert {p.stem for p in shares[0]} <= done and not names <= done, (done, names)  # task 1's share is missing
    # Rerun that one task: the same script, an array of one.
    rerun = slurm.sbatch("--array=1", str(script), cwd=tmp_path)
    states = _wait(slurm, rerun)
    log = (tmp_path / f"semtile-{rerun}_1.out").read_text()
    assert states.get(f"{rerun}_1") == "COMPLETED", (states, log[-3000:])
    assert assert_same_store(out, slurm_reference) == len(slurm_scans)
    # each task its own run table; the rerun did its share only
    tables = sorted(runs.glob("*.csv"))
    assert len(tables) == 3, tables
    with tables[-1].open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in shares[1])
    assert {r["status"] for r in rows} <= {"ok", "skipped"}
    with (tmp_path / "array.csv").open() as handle:  # the last to finish wrote the complete table
        table = list(csv.DictReader(handle))
    assert len(table) == len(slurm_scans) and {r["status"] for r in table} == {"ok"}
