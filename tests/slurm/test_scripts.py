"""What semtile asks SLURM for: the worker jobs' script (dask-jobqueue) and the scripts of `semtile slurm-script`."""

from __future__ import annotations

import pytest

from semtile.execution.slurm_script import ScriptSpec, slurm_script, walltime_seconds


def test_worker_jobs_retire_before_their_walltime():
    pytest.importorskip("dask_jobqueue")
    from semtile.execution.distributed import ClusterSpec, slurm_cluster

    cluster = slurm_cluster(ClusterSpec(kind="slurm", jobs=2, cores=4, walltime="04:00:00", lifetime="3h50m",
                                        lifetime_stagger="5m", interface="lo"))
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")  # the scheduler listens on lo only
    finally:
        cluster.close()
    command = script.splitlines()[-1]
    assert "--lifetime 3h50m --lifetime-stagger 5m" in command and "--interface lo" in command, command


def test_the_scripts_of_each_way():
    common = dict(inputs=("/scans",), out="/shared/r.zarr", partition="gpu", account="lab", time="2-00:00:00",
                  cpus=8, gpus=1, mem="64G")
    array = slurm_script(ScriptSpec(way="array", tasks=16, **common))
    for line in ("#SBATCH --array=0-15", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-task=1", "#SBATCH --mem=64G",
                 '--shard "$SLURM_ARRAY_TASK_ID/16"'):
        assert line in array, line
    workers = slurm_script(ScriptSpec(way="workers", tasks=8, **common))
    assert "--cluster slurm --jobs 8 --cores 8 --walltime 2-00:00:00" in workers
    # retire with a margin (10 % of the walltime) and a stagger, before SLURM's SIGTERM
    assert "--lifetime 2520m --lifetime-stagger 72m" in workers and "--gpus 1" in workers and "--queue gpu" in workers
    allocation = slurm_script(ScriptSpec(way="allocation", nodes=2, workers_per_node=4, **common))
    assert "#SBATCH --nodes=2" in allocation and "--resources GPU=1" in allocation and "#SBATCH --requeue" in allocation
    assert walltime_seconds("2-00:00:00") == 172800 and walltime_seconds("90") == 5400
    assert walltime_seconds("01:30:00") == 5400 and walltime_seconds("30:00") == 1800
