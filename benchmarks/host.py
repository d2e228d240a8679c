"""The host side of ``semtile process``: everything but the network, per stage and per core.

The whole ``process`` path (read, decode, normalise, tile, blend, judge,
pyramid, encode, write; the run table) runs with a *null engine* that returns
its input tiles as the mask and zeros as the class logits, so what is timed
is the host's work alone. It is passed in the ordinary way
(:meth:`SegmentPass.of_engine`), like any engine built in a program.

Data (made once, in a temporary folder): 16 synthetic 960x1280 8-bit scans,
the same 16 as 16-bit, and one 8192x8192 8-bit scan (``--quick``: 8 + 8, no
8192x8192). Every measurement runs in fresh worker processes, each pinned to
one core (``sched_setaffinity``), with one thread per library (OpenMP, Numba,
Blosc) and the host pool of one thread per core: so "per core" means per core.
Each worker processes its scans ``--rounds`` times (default 4), each round
into a new store, so that a measurement lasts a second or more; the 8-bit
runs alternate 1 process and the others ``--trials`` times (default 3) and
the median of each count is reported (a 2-core machine's speed moves by
10-20 % from one second to the next: one pair of runs decides nothing).

Printed:

* the seconds per megapixel of each stage, per kind of scan, summed from
  the per-scan ``timings`` the run records (a stage a checkout does not
  record shows as "-");
* MP/s per core with 1 and 2 processes (4, 8, 16 where the machine has
  them) on the 8-bit scans, and the efficiency against 1 process.

``--compare CHECKOUT`` runs the same measurements first against another
checkout (e.g. the commit before a change), then against this one, back to
back on the same data, and prints the tables side by side; a checkout older
than the stage names gives its coarse ones (read, infer, stitch, write).
Megapixels are of the scans' frames (data bar included), per second of wall
time. The JSON (``--json PATH``) holds every number and the commands to rerun.

    python benchmarks/host.py                       # this checkout
    python benchmarks/host.py --quick --compare ../before --json host.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
#: Stages in the order of the pipeline; the coarse names of older checkouts after them.
STAGES = ("decode", "normalise", "tile", "infer", "blend", "judge", "pyramid", "encode", "write")
COARSE = ("read", "stitch")
#: Keep each library to one thread: the pinned core is all a worker has.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
              "BLOSC_NTHREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


# -- the data ------------------------------------------------------------------------------------------------


def make_data(folder: Path, count: int, big: bool) -> dict[str, list[str]]:
    """The scans of each kind: ``8bit``, ``16bit`` (the same frames x 257) and ``8192`` (one 8192x8192)."""
    import numpy as np
    import tifffile

    from semtile.synth import SynthConfig, synth_surface, write_dataset

    write_dataset(folder / "synth", SynthConfig(per_label=1, labels=16, size=(960, 1280), truth="sqrt", seed=4242))
    eight = sorted((folder / "synth" / "images").glob("*.tif"))[:: 16 // count][:count]
    (folder / "16bit").mkdir(exist_ok=True)
    sixteen = []
    for path in eight:
        target = folder / "16bit" / path.name
        tifffile.imwrite(target, tifffile.imread(path).astype(np.uint16) * 257, metadata={"pixel_size_m": 1e-7})
        sixteen.append(target)
    kinds = {"8bit": [str(p) for p in eight], "16bit": [str(p) for p in sixteen]}
    if big:
        image, _, _ = synth_surface(np.random.default_rng(8192), (8192, 8192), 0.4)
        path = folder / "big_8192.tif"
        tifffile.imwrite(path, image, tile=(512, 512), metadata={"pixel_size_m": 1e-7})
        kinds["8192"] = [str(path)]
    return kinds


def frame_megapixels(paths: list[str]) -> float:
    import tifffile

    total = 0
    for path in paths:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
        total += int(shape[0]) * int(shape[1])
    return total / 1e6


# -- one worker process ----------------------------------------------------------------------------------------


def worker(spec: dict) -> dict:
    """Pinned to its core: build the null engine's pass, warm up on one scan, wait for the start, process."""
    os.sched_setaffinity(0, {spec["core"]})
    import dataclasses
    import logging

    import numpy as np

    from semtile.engines.base import Engine, EngineOutput
    from semtile.execution.local import ProcessOptions, process_scans
    from semtile.inference.segment import SegmentPass
    from semtile.logs import configure_logging
    from semtile.models.io import load_bundle

    configure_logging(json=True, level=logging.INFO)  # as a batch job logs: JSON lines on stderr (a file here)

    class NullEngine(Engine):
        """The network replaced by nothing: the input tiles are the mask, zeros the class logits."""

        name, precision = "null", "f32"

        def __init__(self, labels: int):
            self.labels = labels

        def run(self, tiles: np.ndarray) -> EngineOutput:
            return EngineOutput(class_logits=np.zeros((len(tiles), self.labels), np.float32), mask_probs=tiles)

    bundle = load_bundle(None)
    extra = {"host_threads": spec["threads"]} if "host_threads" in {f.name for f in
                                                                   dataclasses.fields(ProcessOptions)} else {}
    options = ProcessOptions(tile=256, halo=32, batch_size=8, **extra)
    passes = [SegmentPass.of_engine(NullEngine(len(bundle.labels)), bundle, options)]
    work = Path(spec["work"])
    scans = [Path(p) for p in spec["scans"]]
    process_scans(scans[:1], work / "warmup.zarr", passes=passes, options=options, table=work / "warmup.csv")
    Path(spec["ready"]).write_text("")
    while not Path(spec["go"]).exists():
        time.sleep(0.002)
    timings: list[dict] = []
    failed = []
    t0 = time.perf_counter()
    for r in range(spec["rounds"]):  # each round a new store: every round reads, computes and writes it all
        summary = process_scans(scans, work / f"run{r}.zarr", passes=passes, options=options,
                                table=work / f"run{r}.csv", on_image=lambda o: timings.append(dict(o.timings)))
        failed += [f"{o.path}: {o.error}" for o in summary.failed]
    wall = time.perf_counter() - t0
    stages: dict[str, float] = {}
    for t in timings:
        for k, v in t.items():
            if k != "wall_clock":
                stages[k] = stages.get(k, 0.0) + float(v)
    return {"wall": wall, "failed": failed, "stages": stages, "scans": len(scans) * spec["rounds"]}


def run_workers(checkout: Path, scans: list[str], processes: int, cores: list[int], work: Path, rounds: int) -> dict:
    """``processes`` workers (one per core) on ``scans`` each, ``rounds`` times, started together; MP/s in all and
    per core."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    go = work / f"go-{processes}-{time.monotonic_ns()}"
    procs, specs = [], []
    for i in range(processes):
        folder = Path(tempfile.mkdtemp(prefix=f"w{i}-", dir=work))
        spec = {"core": cores[i], "threads": 1, "scans": scans, "work": str(folder), "ready": str(folder / "ready"),
                "go": str(go), "rounds": rounds}
        specs.append(spec)
        with open(folder / "stderr.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(HERE), "--worker", json.dumps(spec)], env=env,
                                          stdout=subprocess.PIPE, stderr=log, text=True))
    while not all(Path(s["ready"]).exists() for s in specs):
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.write_text("")
    outs = []
    for p, spec in zip(procs, specs):
        stdout, _ = p.communicate()
        if p.returncode != 0:
            stderr = (Path(spec["work"]) / "stderr.log").read_text()
            raise SystemExit(f"worker failed ({checkout}):\n{stderr[-4000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    failed = [f for o in outs for f in o["failed"]]
    if failed:
        raise SystemExit(f"scans failed ({checkout}): {failed[:3]}")
    mp = frame_megapixels(scans) * rounds
    wall = max(o["wall"] for o in outs)
    stages = {k: sum(o["stages"].get(k, 0.0) for o in outs) / (mp * processes)
              for k in sorted({k for o in outs for k in o["stages"]})}
    return {"processes": processes, "megapixels": round(mp * processes, 3), "wall_s": round(wall, 3),
            "mp_per_s": round(mp * processes / wall, 3), "mp_per_s_per_core": round(mp / wall, 3),
            "s_per_mp": {k: round(v, 5) for k, v in stages.items()}}


def measure(checkout: Path, kinds: dict, counts: list[int], cores: list[int], work: Path, rounds: int,
            trials: int) -> dict:
    """One checkout: on the 8-bit scans, ``trials`` alternations of 1 process and each other count (the median
    trial of each is reported: the 1-process one is the 8-bit stage profile); then the other kinds, 1 process."""
    name = checkout.name or str(checkout)
    out: dict = {"checkout": str(checkout), "commit": _commit(checkout), "stages": {}, "scaling": []}
    order = [1, *[n for n in counts if n != 1]]
    runs: dict[int, list[dict]] = {n: [] for n in order}
    for t in range(trials):
        for n in order:
            run = run_workers(checkout, kinds["8bit"], n, cores, work, rounds)
            runs[n].append(run)
            print(f"  {name} 8bit x{n} (trial {t + 1}/{trials}): {run['mp_per_s_per_core']:.2f} MP/s per core",
                  flush=True)

    def median(n: int) -> dict:
        ranked = sorted(runs[n], key=lambda r: r["mp_per_s_per_core"])
        return {**ranked[(len(ranked) - 1) // 2], "trials": [r["mp_per_s_per_core"] for r in runs[n]]}

    out["stages"]["8bit"] = median(1)
    base = out["stages"]["8bit"]["mp_per_s_per_core"]
    for n in order:
        run = median(n)
        run["efficiency"] = round(run["mp_per_s_per_core"] / base, 3)
        out["scaling"].append(run)
        if n != 1:
            print(f"  {name} 8bit x{n}: median {run['mp_per_s_per_core']:.2f} MP/s per core "
                  f"(efficiency {run['efficiency']:.2f} against the median of 1)", flush=True)
    for kind, scans in kinds.items():
        if kind == "8bit":
            continue
        run = run_workers(checkout, scans, 1, cores, work, 1 if kind == "8192" else rounds)
        out["stages"][kind] = run
        print(f"  {name} {kind}: {run['mp_per_s_per_core']:.2f} MP/s per core", flush=True)
    return out


def _commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, check=True).stdout.strip()[:72]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- the tables --------------------------------------------------------------------------------------------------


def print_tables(results: list[dict]) -> None:
    names = [r["label"] for r in results]
    for kind in results[-1]["stages"]:
        print(f"\n### {kind}: seconds per MP by stage (1 process, 1 core)\n")
        print("| stage | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
        keys = [k for k in (*STAGES, *COARSE) if any(k in r["stages"][kind]["s_per_mp"] for r in results)]
        keys += sorted({k for r in results for k in r["stages"][kind]["s_per_mp"]} - set(keys))
        for k in keys:
            cells = [r["stages"][kind]["s_per_mp"].get(k) for r in results]
            print(f"| {k} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
        sums = [sum(r["stages"][kind]["s_per_mp"].values()) for r in results]
        print("| **stages summed** | " + " | ".join(f"{s:.4f}" for s in sums) + " |")
        walls = [1 / r["stages"][kind]["mp_per_s_per_core"] for r in results]
        print("| **wall** | " + " | ".join(f"{w:.4f}" for w in walls) + " |")
        print("| **MP/s per core** | " + " | ".join(f"{r['stages'][kind]['mp_per_s_per_core']:.2f}"
                                                  for r in results) + " |")
    print("\n### 8-bit 960x1280: MP/s per core by processes (one core each)\n")
    print("| processes | " + " | ".join(f"{n} MP/s/core | {n} efficiency" for n in names) + " |\n|---:|"
          + "---:|---:|" * len(names))
    for i, row in enumerate(results[-1]["scaling"]):
        cells = []
        for r in results:
            s = r["scaling"][i] if i < len(r["scaling"]) else None
            cells += ["-", "-"] if s is None else [f"{s['mp_per_s_per_core']:.2f}", f"{s['efficiency']:.2f}"]
        print(f"| {row['processes']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 + 8 scans, no 8192x8192 scan, 1 and 2 processes")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--compare", type=Path, default=None, help="another checkout, measured first, back to back")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the checkout to measure (default: this one)")
    parser.add_argument("--processes", default=None, help="process counts, e.g. 1,2,4 (default: 1, 2, 4, 8, 16 "
                                                          "up to the cores; --quick: 1, 2)")
    parser.add_argument("--no-big", action="store_true", help="leave out the 8192x8192 scan")
    parser.add_argument("--trials", type=int, default=3,
                        help="alternations of 1 process and each other count on the 8-bit scans; the medians are "
                             "reported (default 3)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="each worker processes its scans this many times, each into a new store (default 4: "
                             "runs of a second or more, so that start-up skew and a writeback burst do not decide "
                             "the scaling)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    cores = sorted(os.sched_getaffinity(0))
    counts = ([int(n) for n in args.processes.split(",")] if args.processes else
              [n for n in ((1, 2) if args.quick else (1, 2, 4, 8, 16)) if n <= len(cores)])
    counts = [n for n in counts if n <= len(cores)] or [1]
    work = Path(tempfile.mkdtemp(prefix="semtile-host-"))
    sys.path.insert(0, str(args.checkout))
    kinds = make_data(work / "data", 8 if args.quick else 16, big=not (args.quick or args.no_big))
    checkouts = [("before", args.compare.resolve())] if args.compare else []
    checkouts.append(("after" if args.compare else "this", args.checkout.resolve()))
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {len(cores)} cores, load {load[0]:.1f}; "
          f"data in {work}", flush=True)
    results = []
    for label, checkout in checkouts:
        results.append({"label": label, **measure(checkout, kinds, counts, cores, work, args.rounds, args.trials)})
    print_tables(results)
    command = " ".join(shlex.quote(a) for a in [sys.executable, str(HERE), *sys.argv[1:]])
    for r in results:
        print(f"\n{r['label']}: {r['checkout']} ({r['commit']})")
    print(f"\nrerun: {command}\nload average before/after: {load[0]:.1f} / {os.getloadavg()[0]:.1f} "
          "(a loaded machine makes these provisional)")
    if args.json:
        args.json.write_text(json.dumps({"machine": {"platform": platform.platform(), "cores": len(cores),
                                                     "load_before": load, "load_after": os.getloadavg()},
                                         "command": command, "scans": {k: len(v) for k, v in kinds.items()},
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
