"""Dask inside one allocation: the script of ``semtile slurm-script`` (the docs' sbatch recipe), run by sbatch."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from slurm_cluster import ROOT, RUN_ARGS, assert_same_store, result_names, semtile


def _script(slurm, tmp_path: Path, way: str, scans, out: Path, tiny_bundle, *extra: str) -> Path:
    script = tmp_path / f"{way}.sbatch"
    slurm.run(*semtile("slurm-script", *map(str, scans), "--out", str(out), "--way", way, "--time", "00:10:00",
                       "--cpus", "1", "--model", str(tiny_bundle), "--interface", "lo", "-o", str(script),
                       *[f"--process-arg={a}" for a in RUN_ARGS], *extra), cwd=tmp_path)
    return script


def test_the_docs_recipe_is_what_slurm_script_writes(tmp_path):
    """docs/clusters.md shows the script of `semtile slurm-script` (the same lines, whatever the paths)."""
    docs = (ROOT / "docs" / "clusters.md").read_text()
    from semtile.execution.slurm_script import ScriptSpec, slurm_script

    script = slurm_script(ScriptSpec(inputs=("/scans",), out="/shared/results.zarr", partition="batch",
                                     nodes=4, workers_per_node=4, cpus=4,
                                     setup=("source ~/venvs/semtile/bin/activate",)))
    assert script in docs


def test_inside_one_allocation_through_sbatch_and_requeued_mid_run(tmp_path, slurm, slurm_scans, slurm_reference,
                                                                  tiny_bundle):
    """The script runs under sbatch; `scontrol requeue` mid-run kills the whole job (driver, scheduler,
    workers) and runs it again: the second run does only what is missing, and the store equals the
    in-process run's."""
    out = tmp_path / "allocation.zarr"
    script = _script(slurm, tmp_path, "allocation", slurm_scans, out, tiny_bundle, "--workers-per-node", "2")
    text = script.read_text()
    for line in ("#SBATCH --time=00:10:00", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --requeue", "--scheduler-file"):
        assert line in text, (line, text)
    job = slurm.sbatch(str(script), cwd=tmp_path)
    deadline = time.monotonic() + 150
    while not result_names(out):  # mid-run: the first results are in
        assert time.monotonic() < deadline and slurm.state(job) != "GONE", slurm.run("squeue").stdout
        time.sleep(0.1)
    slurm.run("scontrol", "requeue", job)
    before = set(result_names(out))
    while slurm.state(job) != "PENDING":
        assert time.monotonic() < deadline, slurm.state(job)
        time.sleep(0.1)
    # SLURM holds a requeued job for a while (BeginTime); start it once its old processes are gone (a relaunch
    # while they end is refused: "already killed").
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    slurm.wait_gone(timeout=150)
    log = (tmp_path / f"semtile-{job}.out").read_text()
    assert "DUE TO JOB REQUEUE" in log, log[-3000:]
    assert assert_same_store(out, slurm_reference) == len(slurm_scans), log[-3000:]
    ends = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"run_end"' in line]
    assert len(ends) == 2 and ends[0]["interrupted"] == "SIGTERM" and ends[1]["interrupted"] is None, ends
    assert ends[1]["skipped"] >= len(before) and ends[1]["done"] == len(slurm_scans) - ends[1]["skipped"], ends
    # the workers of both runs joined their job's scheduler, on 127.0.0.1 only
    workers = set(re.findall(r"Start worker at:\s+(tcp://\S+)", log))
    assert len(workers) >= 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers), workers
