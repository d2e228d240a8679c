"""Cost per megapixel and peak memory of ``semtile process`` as scans grow (huge scans in bounded memory).

Writes uint16 BigTIFF scans of about 1, 16, 100 and 400 MP (``--quick``: 1, 16
and 64 MP), tiled (512 x 512) and stripped (64 rows per strip), made of a
synthetic etched-copper surface repeated by reflection, and processes each in
a fresh process (the built-in model, the default engine and options: scans
above 16 MP go region by region; the 1 MP scans come 8 to a run, as nightly
runs have them). For each it prints seconds, MP/s, seconds per MP relative to
the smallest scan's, and the process's peak RSS. Cost per MP of image includes
the tile grid's edge: a 1024 x 1024 scan runs 36 tiles of 256 (2.25 tile MP
per MP), a 20000 x 20000 one 1.84 per MP; the cost per MP of tiles run shows
whether the pipeline itself (reading, blending, writing) stays flat.

    python benchmarks/scale.py --quick
    python benchmarks/scale.py --out scale.json          # full: 1, 16, 100, 400 MP (~25 min on 2 cores)

The 400 MP scan is 20000 x 20000: the bound asked for is a peak RSS <= 2 GB, and
a cost per MP within 15 % of the 1 MP scan's.

The CPU's speed drifts on shared machines (the same 16 MP run took 35 and 47 s
half an hour apart), and a full run lasts about 40 minutes. So each child also
times the engine alone on one batch in memory just before and just after its
scans (the floor), and the table gives the cost per MP of tiles relative to
that floor: what the pipeline adds to the engine, free of the drift.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from semtile.inference.options import ProcessOptions
from semtile.inference.split import TileGrid
from semtile.synth import synth_surface

SIDES = {1: (1024, 1024), 16: (4096, 4096), 64: (8192, 8192), 100: (10000, 10000), 400: (20000, 20000)}
TILE, STRIP = 512, 64

# Runs semtile's processing (process_scans: what `semtile process` runs once it has planned the run) in a fresh
# process with the default engine and options, built and warmed first: the time is the scans' own, without
# imports or engine compilation. Reports the process's peak RSS (everything, the engine included) on stdout.
CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from semtile.engines import EngineSettings, create_engine
from semtile.execution.local import process_scans
from semtile.inference.options import ProcessOptions
from semtile.models.io import load_bundle
from semtile.inference.segment import SegmentPass
out, scans = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
bundle, options = load_bundle(None), ProcessOptions()
engine, _ = create_engine("auto", bundle, EngineSettings(tile=options.tile, halo=options.halo,
                                                          batch_size=options.batch_size))
engine.run(np.zeros((options.batch_size, options.tile, options.tile), np.float32))
batch = np.random.default_rng(0).random((options.batch_size, options.tile, options.tile), dtype=np.float32)
def floor(seconds=4.0):
    # The engine alone on one batch held in memory: seconds per MP of tiles, right now on this CPU.
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        engine.run(batch)
        n += 1
    return (time.perf_counter() - t0) / (n * batch.size / 1e6)
before = floor()
t0 = time.perf_counter()
summary = process_scans(scans, out, passes=[SegmentPass.of_engine(engine, bundle, options)], options=options, table=out.with_suffix(".csv"))
seconds = time.perf_counter() - t0
after = floor()
print(json.dumps({"code": int(bool(summary.failed)), "seconds": seconds, "engine": engine.describe()["name"],
                  "floor_s_per_tile_mp": (before + after) / 2, "floor_drift": after / before,
                  "precision": engine.describe()["precision"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
#: Scans per run by size: small scans come in batches, as nightly runs have them.
COPIES = {1: 8}


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def make_base(seed: int = 20000) -> np.ndarray:
    image, _, bar = synth_surface(np.random.default_rng(seed), (2048 + 96, 2048), 0.4)
    return image[: image.shape[0] - bar].astype(np.uint16) * 257


def write_scan(path: Path, shape: tuple[int, int], layout: str, base: np.ndarray) -> Path:
    """A uint16 BigTIFF, tiled or stripped, written piece by piece (never whole in memory)."""
    rows, cols = shape
    hb, wb = base.shape

    def piece(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return base[np.ix_(_reflect(np.arange(y0, y1), hb), _reflect(np.arange(x0, x1), wb))]

    if layout == "tiled":
        pieces = (piece(y, y + TILE, x, x + TILE) for y in range(0, rows, TILE) for x in range(0, cols, TILE))
        tifffile.imwrite(path, data=pieces, shape=shape, dtype=np.uint16, tile=(TILE, TILE), bigtiff=True,
                         metadata=None)
    else:
        pieces = (piece(y, min(y + STRIP, rows), 0, cols) for y in range(0, rows, STRIP))
        tifffile.imwrite(path, data=pieces, shape=shape, dtype=np.uint16, rowsperstrip=STRIP, bigtiff=True,
                         metadata=None)
    return path


def run(scans: list[Path], out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(out), *map(str, scans)], capture_output=True, text=True)
    scan = scans[0]
    try:
        facts = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"semtile process failed on {scan}:\n{result.stderr[-3000:]}") from None
    if facts["code"] != 0:
        raise SystemExit(f"semtile process exited {facts['code']} on {scan}:\n{result.stderr[-3000:]}")
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1, 16 and 64 MP")
    parser.add_argument("--sizes", default=None, help="comma-separated MP sizes among 1,16,64,100,400")
    parser.add_argument("--layouts", default="tiled,stripped")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--work", type=Path, default=None, help="folder for the scans (default: a temporary one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([1, 16, 64] if args.quick else [1, 16, 100, 400])
    layouts = args.layouts.split(",")
    base = make_base()
    rows = []
    with tempfile.TemporaryDirectory(prefix="semtile-scale-", dir=args.work) as tmp:
        tmp = Path(tmp)
        for layout in layouts:
            for mp in sizes:
                shape = SIDES[mp]
                t0 = time.perf_counter()
                scan = write_scan(tmp / f"{layout}_{mp}mp.tif", shape, layout, base)
                made = time.perf_counter() - t0
                scans = [scan]
                for k in range(1, COPIES.get(mp, 1)):
                    scans.append(scan.with_name(f"{scan.stem}-{k}.tif"))
                    scans[-1].hardlink_to(scan)
                facts = run(scans, tmp / f"{layout}_{mp}mp.zarr")
                megapixels = shape[0] * shape[1] / 1e6 * len(scans)
                options = ProcessOptions()
                grid = TileGrid(shape, options.tile, options.halo)
                tile_mp = len(grid) * options.tile**2 / 1e6 * len(scans)  # what the engine runs
                rows.append({"layout": layout, "mp": megapixels, "shape": list(shape), "scans": len(scans),
                             "engine": f"{facts['engine']} {facts['precision']}",
                             "seconds": round(facts["seconds"], 2),
                             "s_per_mp": facts["seconds"] / megapixels,
                             "mp_per_s": megapixels / facts["seconds"],
                             "tiles_per_mp": tile_mp / megapixels, "s_per_tile_mp": facts["seconds"] / tile_mp,
                             "vs_floor": facts["seconds"] / tile_mp / facts["floor_s_per_tile_mp"],
                             "floor_drift": facts["floor_drift"], "peak_rss_mb": round(facts["peak_rss_mb"]),
                             "write_s": round(made, 1)})
                print(f"{layout:8s} {len(scans)} x {shape[0]}x{shape[1]}  {facts['seconds']:8.1f} s  "
                      f"{megapixels / facts['seconds']:.3f} MP/s  {rows[-1]['vs_floor']:.3f} x floor "
                      f"(floor drift {facts['floor_drift']:.3f})  peak RSS {facts['peak_rss_mb']:.0f} MB", flush=True)
                for path in scans:
                    path.unlink()
                shutil.rmtree(tmp / f"{layout}_{mp}mp.zarr", ignore_errors=True)
    smallest = {}
    for row in rows:
        first = smallest.setdefault(row["layout"], row)
        row["cost_vs_smallest"] = row["s_per_mp"] / first["s_per_mp"]
        row["tile_cost_vs_smallest"] = row["s_per_tile_mp"] / first["s_per_tile_mp"]
        row["floor_cost_vs_smallest"] = row["vs_floor"] / first["vs_floor"]
    print(f"\nengine: {rows[0]['engine']} (auto)")
    print("| layout | scans | MP | seconds | MP/s | s per MP vs smallest | tile MP per MP | s per tile MP vs smallest "
          "| x engine floor | x floor vs smallest | peak RSS (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['layout']} | {row['scans']} x {row['shape'][0]}x{row['shape'][1]} | {row['mp']:.1f} | "
              f"{row['seconds']:.1f} | "
              f"{row['mp_per_s']:.3f} | {row['cost_vs_smallest']:.3f} | {row['tiles_per_mp']:.2f} | "
              f"{row['tile_cost_vs_smallest']:.3f} | {row['vs_floor']:.3f} | {row['floor_cost_vs_smallest']:.3f} | "
              f"{row['peak_rss_mb']} |")
    worst = max(abs(r["cost_vs_smallest"] - 1) for r in rows)
    worst_tiles = max(abs(r["tile_cost_vs_smallest"] - 1) for r in rows)
    worst_floor = max(abs(r["floor_cost_vs_smallest"] - 1) for r in rows)
    print(f"\nlargest deviation of cost per MP from the smallest scan's: {worst:.1%} (bound: 15%); "
          f"per MP of tiles run (the grid's edge tiles removed): {worst_tiles:.1%}; "
          f"per MP of tiles relative to the engine floor measured beside it (the CPU's drift removed): {worst_floor:.1%}")
    print(f"largest peak RSS: {max(r['peak_rss_mb'] for r in rows)} MB (bound at 400 MP: 2048 MB)")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
