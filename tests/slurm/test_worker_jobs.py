"""``semtile process --cluster slurm``: semtile submits the worker jobs, on the real single-node cluster.

The only worker job is cancelled mid-run (``scancel``: SIGCONT, SIGTERM, then SIGKILL after KillWait, the
sequence of a walltime): a new job replaces it (the cluster adapts at a fixed size), its tasks run there,
and the results equal the in-process run's.
"""

from __future__ import annotations

import re
import subprocess
import time

from slurm_cluster import RUN_ARGS, assert_same_store, result_names, semtile


def test_a_worker_job_cancelled_mid_run_is_replaced_and_the_results_are_right(tmp_path, slurm, slurm_scans,
                                                                       slurm_reference, tiny_bundle):
    out = tmp_path / "slurm.zarr"
    command = semtile("process", *map(str, slurm_scans), "--out", str(out), "--model", str(tiny_bundle), *RUN_ARGS,
                      "--scratch", str(tmp_path / "scratch"), "--cluster", "slurm", "--jobs", "1", "--cores", "1",
                      "--memory", "1GB", "--walltime", "00:10:00", "--lifetime", "9m", "--lifetime-stagger", "10s",
                      "--interface", "lo")
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(command, env=slurm.env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log, text=True)
    cancelled = None
    try:
        deadline = time.monotonic() + 240
        while driver.poll() is None and time.monotonic() < deadline:
            if cancelled is None and result_names(out):  # mid-run: a first result is in
                running = slurm.run("squeue", "-h", "-t", "R", "-o", "%i").stdout.split()
                if running:
                    cancelled = running[0]
                    slurm.run("scancel", cancelled)
            time.sleep(0.2)
        assert driver.wait(timeout=5) == 0, open(tmp_path / "driver.log").read()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    stderr = (tmp_path / "driver.log").read_text()
    assert cancelled, "no worker job was running when the first result came"
    assert assert_same_store(out, slurm_reference) == len(slurm_scans)
    # The workers ran as SLURM jobs (their logs are the jobs' output files), on 127.0.0.1 only.
    logs = {p.stem.split("-")[1]: p.read_text() for p in tmp_path.glob("slurm-*.out")}
    assert re.search(r"CANCELLED", logs[cancelled]), logs[cancelled][-2000:]
    assert len(logs) >= 2, f"the cancelled job was not replaced: jobs {sorted(logs)}"  # the only worker: a new job
    text = "\n".join(logs.values())
    addresses = re.findall(r"Start worker at:\s+(\S+)", text)
    assert addresses and all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
    assert re.search(r'"scheduler": "tcp://127\.0\.0\.1:\d+"', stderr), stderr[-2000:]
    slurm.wait_gone(timeout=60)  # the jobs are gone at the end
