"""A real single-node SLURM cluster for these tests (``.ci/slurm-cluster``), started once per session.

Skips (with the reason) where it cannot run: not root, SLURM or munge not installed, the daemons not
starting. Everything runs on this machine: the Dask scheduler and workers on 127.0.0.1 (``--interface lo``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from slurm_cluster import SCRIPT, Slurm


def _free_port_pair() -> int:
    """A port P with P and P + 1 free on this machine (slurmctld, slurmd): never another cluster's."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
                    return port
            except OSError:
                continue
    return 6817


def _why_not() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "the SLURM tests start slurmctld and slurmd as root: not root here"
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(t)
               and not Path("/usr/sbin", t).exists()]
    if missing:
        return f"SLURM not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge (.ci/run does)"
    return None


_STARTED: list[str] = []  # what the session's cluster start took, for the summary at the end


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _STARTED:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Slurm:
    """The cluster, started by ``.ci/slurm-cluster start`` and stopped (every job and daemon gone) at the end."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    folder = Path(tmp_path_factory.mktemp("slurm-cluster"))
    env = {**os.environ, "SEMTILE_SLURM_DIR": str(folder), "SEMTILE_SLURM_PORT": str(_free_port_pair())}
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
    began = time.perf_counter()
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60)
    if started.returncode:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        pytest.skip(f"the SLURM cluster did not start: {started.stderr.strip() or started.stdout.strip()}")
    cluster = Slurm(folder, time.perf_counter() - began)
    cluster.env["PATH"] += os.pathsep + "/usr/sbin"
    _STARTED.append(f"the SLURM cluster started in {cluster.started_s:.2f} s ({started.stdout.strip()})")
    try:
        yield cluster
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_scans(tmp_path_factory, tiny_dataset) -> list[Path]:
    """The 8 tiny scans, on a folder every job sees (this machine's)."""
    folder = tmp_path_factory.mktemp("slurm-scans")
    for path in sorted((tiny_dataset / "images").glob("*.tif")):
        shutil.copy(path, folder / path.name)
    return sorted(folder.glob("*.tif"))


@pytest.fixture(scope="session")
def slurm_reference(tmp_path_factory, slurm_scans, tiny_bundle) -> Path:
    """The in-process run of the same scans with the same options: what every SLURM way must equal."""
    from semtile.engines import EngineSettings
    from semtile.execution.batch import run_process
    from semtile.inference.options import ProcessOptions
    from semtile.inference.segment import segment_pass
    from semtile.models.io import load_bundle

    out = tmp_path_factory.mktemp("slurm-reference") / "local.zarr"
    options = ProcessOptions(tile=64, halo=8, batch_size=4)
    settings = EngineSettings(tile=64, halo=8, batch_size=4, threads=1)
    summary = run_process(slurm_scans, out, passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu", settings,
                                                                 options)], options=options)
    assert summary.exit_code == 0
    return out

