"""``semtile process`` on real dask.distributed clusters: worker processes, a killed worker, a scheduler file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.execution.distributed import ClusterSpec
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass
from semtile.models.io import load_bundle

from scan_compare import assert_same_results, write_large_scan

distributed = pytest.importorskip("distributed")

SETTINGS = EngineSettings(tile=64, halo=8, batch_size=4)
OPTIONS = ProcessOptions(tile=64, halo=8, batch_size=4, region_pixels=100_000, block_pixels=150)


@pytest.fixture()
def scans(tmp_path, tiny_dataset) -> list[Path]:
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.tif")):
        shutil.copy(path, folder / path.name)
    write_large_scan(folder / "large.tif", (420, 700), seed=3)  # region by region: 9 blocks, 1 region
    return sorted(folder.glob("*.tif"))


@pytest.fixture()
def reference(tmp_path, scans, tiny_bundle) -> Path:
    out = tmp_path / "local.zarr"
    assert run_process(scans, out, passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu", SETTINGS, OPTIONS)],
                       options=OPTIONS).exit_code == 0
    return out


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(tmp_path, scans, reference, tiny_bundle):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=0) as cluster, Client(cluster) as client:
        killed: list[int] = []

        def kill_a_busy_worker(outcome) -> None:
            if killed:
                return
            pids = client.run(os.getpid)
            busy = [w for w, tasks in client.processing().items() if tasks and w in pids] or list(pids)
            killed.append(pids[busy[0]])
            os.kill(pids[busy[0]], signal.SIGKILL)  # kill -9: no clean-up, whatever it was writing

        out = tmp_path / "cluster.zarr"
        summary = run_process(scans, out, passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu", SETTINGS,
                                                               OPTIONS)],
                              options=OPTIONS, on_image=kill_a_busy_worker,
                              cluster=ClusterSpec(kind="address", address=cluster.scheduler_address))
        assert killed
        client.wait_for_workers(2, timeout=60)
        assert killed[0] not in client.run(os.getpid).values()  # the nanny started a new worker process
    assert summary.exit_code == 0, [o.error for o in summary.failed]
    assert len(summary.outcomes) == len(scans) and all(o.status == "ok" for o in summary.outcomes)
    # Same results as one process, no duplicated names (large-2...), nothing half written left over.
    assert_same_results(out, reference)
    assert not list((out / ".semtile" / "tmp").iterdir())


@pytest.mark.slow
def test_a_scheduler_file_joins_workers_started_by_hand(tmp_path, scans, reference, tiny_bundle):
    file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([*dask, "--scheduler-file", str(file), "--port", "0", "--dashboard-address", ":0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if file.exists():
                break
            time.sleep(0.1)
        for _ in range(2):
            procs.append(subprocess.Popen([*worker, "--scheduler-file", str(file), "--nthreads", "1",
                                           "--nworkers", "1", "--memory-limit", "0"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = tmp_path / "file.zarr"
        result = subprocess.run([sys.executable, "-m", "semtile.cli.main", "--log-json", "process",
                                 *map(str, scans), "--out", str(out), "--model", str(tiny_bundle),
                                 "--engine", "torch-cpu", "--tile", "64", "--halo", "8", "--batch-size", "4",
                                 "--region-pixels", "100000", "--scheduler-file", str(file)],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert '"dashboard"' in result.stderr and "dask_cluster" in result.stderr  # the dashboard link is logged
        assert_same_results(out, reference, tol=1e-5)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_slurm_job_script_asks_for_what_semtile_needs():
    pytest.importorskip("dask_jobqueue")
    from semtile.execution.distributed import slurm_cluster

    cluster = slurm_cluster(ClusterSpec(kind="slurm", jobs=3, cores=8, memory="16GB", walltime="02:30:00",
                                        queue="gpu", account="lab42", gpus=1))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for directive in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=15G", "#SBATCH -t 02:30:00", "#SBATCH -p gpu",
                      "#SBATCH -A lab42", "#SBATCH --gres=gpu:1", "#SBATCH -n 1"):
        assert directive in lines, (directive, script)
    command = lines[-1]
    assert "distributed.cli.dask_worker" in command or "dask worker" in command or "dask-worker" in command
    assert "--nthreads 1" in command and "--nworkers" not in command  # one task at a time: engines are not thread-safe
    assert "--resources GPU=1" in command
    assert "export SEMTILE_WORKERS_ON_HOST=1" in script


def test_cluster_options_are_checked(tmp_path, tiny_dataset, tiny_bundle):
    from click.testing import CliRunner

    from semtile.cli.main import main

    images = tiny_dataset / "images"
    for args, message in ((["--cluster", "local", "--scheduler-address", "tcp://x:1"], "choose one"),
                          (["--workers", "2"], "--workers goes with --cluster local"),
                          (["--scheduler-file", str(tmp_path / "none.json")], "scheduler file not found"),
                          (["--scheduler-address", "bogus://127.0.0.1:9"], "cannot reach the Dask scheduler")):
        result = CliRunner().invoke(main, ["process", str(images), "--out", str(tmp_path / "o.zarr"),
                                           "--model", str(tiny_bundle), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
