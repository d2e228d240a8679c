"""Heat maps of a large scan: no tile seams, bounded memory, and what `semtile explain` costs against `process`.

Writes an 8192 x 8192 uint16 BigTIFF (``--side``) of synthetic etched copper,
runs ``semtile process`` on it (built-in model, default engine; out of core,
the scan being above 16 MP) and then ``semtile explain`` (Grad-CAM and CAM on
torch-cpu, out of core: block partial sums, regions), each in a fresh
process, and prints:

* for each heat map, the largest and the mean |step| between neighbouring
  pixels across tile-core borders (every ``core`` pixels), against the same
  inside cores, read band by band from the store (a seam would make the
  border figures stand out);
* seconds and peak RSS (``/usr/bin/time``) of process and explain, and the
  seconds per MP of each.

    python benchmarks/explain_seams.py [--side 8192] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import make_base, write_scan


def timed(args: list[str]) -> tuple[float, float]:
    """Run a command; (seconds, peak RSS in MB)."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    rss = float(re.findall(r"MAXRSS (\d+)", done.stderr)[-1]) / 1024
    return seconds, rss


def jumps_by_band(heat, grid, band: int = 1024) -> dict:
    """border_jumps over a large map, band by band (each band shares its first row with the previous one)."""
    from semtile.explain.heatmaps import border_jumps

    h = grid.shape[0]
    total = {"border_max": 0.0, "inside_max": 0.0, "border_sum": 0.0, "inside_sum": 0.0, "border_steps": 0,
             "inside_steps": 0}
    for y0 in range(0, h - 1, band):
        y1 = min(h, y0 + band + 1)
        part = border_jumps(np.asarray(heat[y0:y1]), grid, origin=(y0, 0))
        for kind in ("border", "inside"):
            total[f"{kind}_max"] = max(total[f"{kind}_max"], part[f"{kind}_max"])
            total[f"{kind}_sum"] += part[f"{kind}_mean"] * part[f"{kind}_steps"]
            total[f"{kind}_steps"] += part[f"{kind}_steps"]
    return {"border_max": total["border_max"], "inside_max": total["inside_max"],
            "border_mean": total["border_sum"] / max(1, total["border_steps"]),
            "inside_mean": total["inside_sum"] / max(1, total["inside_steps"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Work in this folder and keep it.")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="semtile-explain-seams-"))
    work.mkdir(parents=True, exist_ok=True)
    scan = work / f"scan{args.side}.tif"
    store = work / "r.zarr"
    if not scan.exists():
        write_scan(scan, (args.side, args.side), "tiled", make_base())
    semtile = [sys.executable, "-m", "semtile.cli.main", "--log-json"]
    t_process, rss_process = timed([*semtile, "process", str(scan), "--out", str(store), "--force",
                                    "--threads", str(args.threads)])
    t_explain, rss_explain = timed([*semtile, "explain", str(store), "--force", "--threads", str(args.threads)])

    from semtile.inference.split import TileGrid
    from semtile.results import open_results

    result = next(iter(open_results(store)))
    params = result.provenance["parameters"]
    mp = args.side * args.side / 1e6
    report = {"side": args.side, "megapixels": round(mp, 2), "threads": args.threads,
              "engine_process": result.provenance["engine"].get("name"),
              "process": {"seconds": round(t_process, 1), "s_per_mp": round(t_process / mp, 2),
                          "peak_rss_mb": round(rss_process)},
              "explain": {"seconds": round(t_explain, 1), "s_per_mp": round(t_explain / mp, 2),
                          "peak_rss_mb": round(rss_explain), "maps": sorted(result.maps),
                          "attrs": {k: v for k, v in result.stored.maps.get("gradcam", {}).items()
                                    if k in ("out_of_core", "engine", "label", "seconds")}}}
    shape = tuple(result.shape or result.mask.shape)
    grid = TileGrid(shape, params["tile"], params["halo"])
    for kind in ("gradcam", "cam"):
        report[kind] = {k: float(f"{v:.4g}") for k, v in jumps_by_band(result.map(kind), grid).items()}
        report[kind]["no_seams"] = report[kind]["border_max"] <= report[kind]["inside_max"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
