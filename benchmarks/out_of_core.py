"""The out-of-core path against the in-memory one on one large scan: the same mask, no seams, less memory.

Writes an 8192 x 8192 uint16 BigTIFF (``--side``) of synthetic etched copper,
processes it in two fresh processes with the built-in model and the default
engine, once in memory (``region_pixels`` above the scan) and once region by
region (the default for a scan this large), and prints:

* max |Δp| between the two masks (bound 1e-5), and whether labels, ratios and
  the image pyramids are identical;
* a seam check at the region boundaries (every 2048 pixels): the mean
  |step| of the region-by-region mask across each boundary, against the mean
  step across all other pixel columns/rows (a seam would stand out), and the
  largest |Δp| within 2 pixels of a boundary;
* seconds and peak RSS of each.

    python benchmarks/out_of_core.py [--side 8192]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

from semtile.store.encoding import decode_probability, mask_scale

from scale import make_base, write_scan

CHILD = """
import json, resource, sys, time
from pathlib import Path
from semtile.engines import EngineSettings, create_engine
from semtile.execution.local import process_scans
from semtile.inference.options import ProcessOptions
from semtile.models.io import load_bundle
from semtile.inference.segment import SegmentPass
scan, out, region_pixels = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
bundle, options = load_bundle(None), ProcessOptions(region_pixels=region_pixels)
engine, _ = create_engine("auto", bundle, EngineSettings(tile=options.tile, halo=options.halo,
                                                          batch_size=options.batch_size))
t0 = time.perf_counter()
summary = process_scans([scan], out, passes=[SegmentPass.of_engine(engine, bundle, options)], options=options, table=out.with_suffix(".csv"))
print(json.dumps({"ok": not summary.failed, "seconds": time.perf_counter() - t0,
                  "engine": engine.describe(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(scan: Path, out: Path, region_pixels: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(scan), str(out), str(region_pixels)],
                            capture_output=True, text=True)
    try:
        facts = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(result.stderr[-3000:]) from None
    if not facts["ok"]:
        raise SystemExit(result.stderr[-3000:])
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="semtile-ooc-", dir=args.work) as tmp:
        tmp = Path(tmp)
        scan = write_scan(tmp / "large.tif", (args.side, args.side), "tiled", make_base())
        memory = run(scan, tmp / "memory.zarr", args.side**2 + 1)
        regions = run(scan, tmp / "regions.zarr", 0)
        a = zarr.open_group(str(tmp / "regions.zarr" / "large"), mode="r")
        b = zarr.open_group(str(tmp / "memory.zarr" / "large"), mode="r")
        # Decoded to the probability (uint8 masks are p x 255): uint8 differences would wrap around.
        mask_a = decode_probability(a["mask"][...], mask_scale(a["mask"].dtype))
        mask_b = decode_probability(b["mask"][...], mask_scale(b["mask"].dtype))
        diff = np.abs(mask_a - mask_b)
        levels_equal = all(np.array_equal(a[str(k)][...], b[str(k)][...]) for k in range(len(a["labels/adhesive"])))
        labels_equal = all(np.array_equal(a[f"labels/adhesive/{k}"][...], b[f"labels/adhesive/{k}"][...])
                           for k in range(len(a["labels/adhesive"])))
        sa, sb = a.attrs["semtile"], b.attrs["semtile"]
        side = sa["attrs"]["regions"]["side"]
        cols = np.abs(np.diff(mask_a, axis=1)).mean(axis=0)
        rows = np.abs(np.diff(mask_a, axis=0)).mean(axis=1)
        at = np.arange(side - 1, args.side - 1, side)
        seam_cols, seam_rows = cols[at].mean(), rows[at].mean()
        near = np.zeros(args.side, bool)
        for b0 in range(side, args.side, side):
            near[b0 - 2: b0 + 2] = True
        near_diff = max(diff[near].max(), diff[:, near].max())
    print(f"scan {args.side}x{args.side}, engine {regions['engine']['name']} {regions['engine']['precision']}, "
          f"regions {sa['attrs']['regions']}")
    print(f"max |Δp| region by region vs in memory: {diff.max():.3g} (bound 1e-5); within 2 px of a region "
          f"boundary: {near_diff:.3g}")
    print(f"labels {sa['label']} / {sb['label']}, ratios {sa['adhesive_ratio']:.6f} / {sb['adhesive_ratio']:.6f}; "
          f"image pyramid identical: {levels_equal}; label pyramid identical: {labels_equal}")
    print(f"mean |step| across region boundaries: columns {seam_cols:.4g}, rows {seam_rows:.4g}; "
          f"everywhere: columns {cols.mean():.4g}, rows {rows.mean():.4g}")
    print("| path | seconds | peak RSS (MB) |\n|---|---:|---:|")
    print(f"| in memory | {memory['seconds']:.1f} | {memory['peak_rss_mb']:.0f} |")
    print(f"| region by region | {regions['seconds']:.1f} | {regions['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
