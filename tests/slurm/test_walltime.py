"""Worker jobs that reach their walltime: a real 1-minute SLURM time limit, workers that retire before it
(``--lifetime 30s --lifetime-stagger 5s``), new jobs that replace them, and no task lost.

Each result write is slowed by 4.5 s in the workers (slow_hook), so the 8 tiny scans take longer than a
worker's lifetime (25 to 35 s): the first job retires mid-run, and the run ends on its replacement with the in-process
run's results.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from slurm_cluster import RUN_ARGS, assert_same_store, semtile

HOOK = Path(__file__).with_name("slow_hook")


def test_worker_jobs_at_a_real_walltime_retire_and_are_replaced_and_nothing_is_lost(tmp_path, slurm, slurm_scans,
                                                                                   slurm_reference, tiny_bundle):
    out = tmp_path / "walltime.zarr"
    command = semtile("process", *map(str, slurm_scans), "--out", str(out), "--model", str(tiny_bundle), *RUN_ARGS,
                      "--scratch", str(tmp_path / "scratch"), "--cluster", "slurm", "--jobs", "1", "--cores", "1",
                      "--memory", "1GB", "--walltime", "00:01:00", "--lifetime", "30s", "--lifetime-stagger", "5s",
                      "--interface", "lo")
    env = {**slurm.env, "SEMTILE_TEST_SLOW_WRITE": "4.5",
           "PYTHONPATH": os.pathsep.join([str(HOOK), slurm.env["PYTHONPATH"]])}
    began = time.monotonic()
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.run(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log, text=True,
                                timeout=240)
    wall = time.monotonic() - began
    stderr = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, stderr[-4000:]
    assert assert_same_store(out, slurm_reference) == len(slurm_scans)
    logs = {p.stem.split("-")[1]: p.read_text() for p in tmp_path.glob("slurm-*.out")}
    assert len(logs) >= 2, f"no job replaced the first: jobs {sorted(logs)}"
    retired = [j for j, text in logs.items() if re.search(r"worker-lifetime|Closing worker|Retire worker", text)]
    killed = [j for j, text in logs.items() if "DUE TO TIME LIMIT" in text]
    first = min(logs, key=int)
    assert first in retired, f"the first job did not retire at its lifetime: {logs[first][-1500:]}"
    print(f"\nwalltime run: {wall:.1f} s, {len(logs)} worker jobs, retired {retired}, killed at the walltime {killed}")
    slurm.wait_gone(timeout=90)
