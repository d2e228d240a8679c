"""Throughput of ``semtile process`` on dask.distributed with 1, 2, 4, 8... worker processes.

One run, one machine: synthetic 960 x 1280 scans (``--scans``, default 32)
through a real LocalCluster of N worker processes (one task thread each) for
every N in ``--workers`` (default 1,2), each worker's engine given
``cores // max(N)`` threads, so that every N runs on the same share of cores
per worker and efficiency measures how the work spreads:

    efficiency(N) = throughput(N) / (N x throughput(1))

The engines are built and warmed before the clock starts (a first small run
on the same cluster). The in-process runner (the default of ``semtile
process``, its engine on every core) is measured too, as the baseline a
cluster must beat on one machine.

    python benchmarks/scaling.py                     # 1 and 2 workers (2-core machine)
    python benchmarks/scaling.py --workers 1,2,4,8   # a 16-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.execution.distributed import ClusterSpec
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass
from semtile.models.io import load_bundle
from semtile.synth import SynthConfig, write_dataset


def make_scans(folder: Path, count: int) -> list[Path]:
    per_label = -(-count // 16)
    write_dataset(folder, SynthConfig(per_label=per_label, labels=16, size=(960, 1280), truth="sqrt", seed=77))
    return sorted((folder / "images").glob("*.tif"))[:count]


def timed_run(scans, out, bundle, engine, threads, cluster=None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    options = ProcessOptions()
    settings = EngineSettings(tile=options.tile, halo=options.halo, batch_size=options.batch_size, threads=threads)
    t0 = time.perf_counter()
    summary = run_process(scans, out, passes=[segment_pass(bundle, engine, settings, options)], options=options,
                          force=True, cluster=cluster)
    seconds = time.perf_counter() - t0
    if summary.exit_code:
        raise SystemExit(f"run failed: {[o.error for o in summary.failed]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--scans", type=int, default=32)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0))
    per_worker = max(1, cores // max(counts))
    bundle = load_bundle(None)
    from distributed import Client, LocalCluster

    rows = []
    with tempfile.TemporaryDirectory(prefix="semtile-scaling-") as tmp:
        tmp = Path(tmp)
        scans = make_scans(tmp / "data", args.scans)
        mp = sum(1 for _ in scans) * 960 * 1280 / 1e6  # data bar included: the frame's pixels
        timed_run(scans[:2], tmp / "warm.zarr", bundle, args.engine, None)  # exports and compiles once
        seconds = timed_run(scans, tmp / "inprocess.zarr", bundle, args.engine, None)
        rows.append({"runner": f"in process, engine on {cores} cores", "workers": 0, "seconds": seconds,
                     "mp_per_s": mp / seconds})
        print(f"in process: {seconds:.1f} s, {mp / seconds:.3f} MP/s", flush=True)
        for n in counts:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                              memory_limit=0) as cluster, Client(cluster):
                spec = ClusterSpec(kind="address", address=cluster.scheduler_address)
                timed_run(scans[: 2 * n], tmp / "warm.zarr", bundle, args.engine, per_worker, spec)
                seconds = timed_run(scans, tmp / f"cluster{n}.zarr", bundle, args.engine, per_worker, spec)
            rows.append({"runner": f"{n} worker(s) x {per_worker} engine thread(s)", "workers": n,
                         "seconds": seconds, "mp_per_s": mp / seconds})
            print(f"{n} workers: {seconds:.1f} s, {mp / seconds:.3f} MP/s", flush=True)
    one = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        if one and row["workers"]:
            row["efficiency"] = row["mp_per_s"] / (row["workers"] * one["mp_per_s"])
    print(f"\n{len(scans)} scans of 960x1280, {cores} cores ({platform.processor() or platform.machine()})")
    print("| runner | seconds | MP/s | vs in process | efficiency |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        eff = f"{row['efficiency']:.2f}" if "efficiency" in row else ""
        print(f"| {row['runner']} | {row['seconds']:.1f} | {row['mp_per_s']:.3f} | "
              f"{row['mp_per_s'] / rows[0]['mp_per_s']:.2f} | {eff} |")
    if args.out:
        args.out.write_text(json.dumps({"cores": cores, "scans": len(scans), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
