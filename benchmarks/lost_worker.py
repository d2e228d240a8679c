"""A worker killed with kill -9 mid-run: the run still exits 0 and its results equal a local run's.

By hand, as a lab would run it: ``dask scheduler --scheduler-file`` and two
``dask worker`` processes started here, ``semtile process --scheduler-file``
on 24 synthetic 960x1280 scans and one 6000x6000 scan (region by region),
and, once some results are in, ``kill -9`` of the worker that is busiest.
Then the same scans in one process (``semtile process`` without a cluster),
and the two stores compared: masks (max |Δp|), labels, ratios, names.

    python benchmarks/lost_worker.py
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from semtile.synth import SynthConfig, write_dataset

from scale import make_base, write_scan


def rows_done(runs: Path) -> int:
    total = 0
    for table in runs.glob("*.csv"):
        with table.open(newline="") as handle:
            total += sum(1 for _ in csv.DictReader(handle))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-after", type=int, default=6, help="kill a worker once this many results are in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="semtile-lost-") as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "data", SynthConfig(per_label=2, labels=12, size=(960, 1280), truth="sqrt", seed=5))
        write_scan(tmp / "data" / "images" / "large.tif", (6000, 6000), "tiled", make_base())
        images = tmp / "data" / "images"
        sched = tmp / "scheduler.json"
        procs = [subprocess.Popen(["dask", "scheduler", "--scheduler-file", str(sched), "--port", "0",
                                   "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        while not sched.exists():
            time.sleep(0.1)
        workers = [subprocess.Popen(["dask", "worker", "--scheduler-file", str(sched), "--nthreads", "1",
                                     "--memory-limit", "0", "--no-nanny"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        procs += workers
        try:
            t0 = time.perf_counter()
            run = subprocess.Popen(["semtile", "--log-json", "process", str(images), "--out", str(tmp / "cluster.zarr"),
                                    "--scheduler-file", str(sched), "--scratch", str(tmp / "scratch")],
                                   stdout=subprocess.DEVNULL, stderr=open(tmp / "cluster.log", "w"))
            while rows_done(tmp / "cluster.runs") < args.kill_after and run.poll() is None:
                time.sleep(0.2)
            victim = workers[0]
            victim.send_signal(signal.SIGKILL)
            killed_at = rows_done(tmp / "cluster.runs")
            print(f"kill -9 worker pid {victim.pid} after {killed_at} of 25 results, "
                  f"{time.perf_counter() - t0:.1f} s into the run", flush=True)
            code = run.wait()
            cluster_s = time.perf_counter() - t0
            print(f"semtile process --scheduler-file: exit {code}, {cluster_s:.1f} s with one worker left", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:  # a worker whose scheduler is gone may not heed SIGTERM
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        t0 = time.perf_counter()
        local = subprocess.run(["semtile", "--log-json", "process", str(images), "--out", str(tmp / "local.zarr")],
                               capture_output=True, text=True)
        print(f"semtile process (one process): exit {local.returncode}, {time.perf_counter() - t0:.1f} s")
        a, b = tmp / "cluster.zarr", tmp / "local.zarr"
        names = sorted(p.name for p in a.iterdir() if (p / "zarr.json").is_file())
        other = sorted(p.name for p in b.iterdir() if (p / "zarr.json").is_file())
        worst, same_labels, same_ratios = 0.0, True, True
        for name in names:
            ga, gb = zarr.open_group(str(a / name), mode="r"), zarr.open_group(str(b / name), mode="r")
            worst = max(worst, float(np.abs(ga["mask"][...].astype(np.float64) - gb["mask"][...]).max()))
            same_labels &= ga.attrs["semtile"]["label"] == gb.attrs["semtile"]["label"]
            same_ratios &= ga.attrs["semtile"]["adhesive_ratio"] == gb.attrs["semtile"]["adhesive_ratio"]
        leftovers = list((a / ".semtile" / "tmp").iterdir())
        print(json.dumps({"results": len(names), "same_names": names == other, "max_abs_dp": worst,
                          "labels_identical": same_labels, "ratios_identical": same_ratios,
                          "temporaries_left": len(leftovers)}))


if __name__ == "__main__":
    main()
