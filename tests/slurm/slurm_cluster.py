"""Helpers of the SLURM tests: the cluster's environment, jobs, and comparing stores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "slurm-cluster"
#: The run options every test uses: tiny tiles of the tiny model, one engine thread.
RUN_ARGS = ["--engine", "torch-cpu", "--tile", "64", "--halo", "8", "--batch-size", "4", "--threads", "1"]


class Slurm:
    """The running cluster: its environment for client commands and helpers to watch jobs."""

    def __init__(self, folder: Path, started_s: float):
        self.folder, self.started_s = folder, started_s
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "SEMTILE_SLURM_DIR": str(folder),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}

    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=kw.pop("timeout", 60),
                                **kw)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def sbatch(self, *args: str, cwd: Path) -> str:
        """Submit; the job id (an array's base id)."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd).stdout.strip().split(";")[0]

    def jobs(self) -> list[str]:
        """Job ids (array tasks as ID_TASK) in the queue, any state."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", job, check=False).stdout
        for part in out.split():
            if part.startswith("JobState="):
                return part.split("=", 1)[1]
        return "GONE"

    def wait_gone(self, timeout: float = 90) -> None:
        """Until the queue is empty (every job ended)."""
        deadline = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still queued after {timeout} s: {self.run('squeue').stdout}")
            time.sleep(0.2)

    def exit_codes(self, job: str) -> dict[str, str]:
        """ExitCode of each job (array task) of ``job`` still known to the controller: {id: "0:0"}."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout
        codes = {}
        for line in out.splitlines():
            fields = dict(p.split("=", 1) for p in line.split() if "=" in p)
            task = fields.get("ArrayTaskId")
            codes[f"{fields.get('ArrayJobId', fields.get('JobId'))}_{task}" if task else fields.get("JobId")] = \
                fields.get("ExitCode")
        return codes


def semtile(*args: str) -> list[str]:
    """The command line of this tree's ``semtile``."""
    return [sys.executable, "-m", "semtile.cli.main", "--log-json", *args]


def result_names(store: Path) -> list[str]:
    if not Path(store).is_dir():
        return []
    return sorted(p.name for p in Path(store).iterdir() if (p / "zarr.json").is_file())


def assert_same_store(a: Path, b: Path) -> int:
    """Store ``a`` holds the results of ``b``, no more and no fewer: masks equal at their stored precision
    (max |difference| <= 1e-6), identical labels and adhesive ratios. Returns the number of results."""
    names = result_names(a)
    assert names == result_names(b), (names, result_names(b))
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in names:
        sa, sb = ga[name].attrs["semtile"], gb[name].attrs["semtile"]
        assert sa["label"] == sb["label"], name
        assert sa["adhesive_ratio"] == sb["adhesive_ratio"], name
        assert np.abs(ga[name]["mask"][...].astype(np.float64) - gb[name]["mask"][...]).max() <= 1e-6, name
    return len(names)
