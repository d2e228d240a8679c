"""Behaviour parity of two checkouts: the same commands, the same masks, labels, ratios and maps.

``run OUT`` runs the fixed sequence below with the semtile found on PYTHONPATH
(so one checkout at a time); ``compare A B`` prints the largest difference of
every stored field between two such folders and exits 1 when one is above
the tolerance. ``rerun A`` runs ``process`` of the checkout on PYTHONPATH over
the stores another checkout wrote in ``A`` and prints how many scans it
skipped (all of them, when the completion records still match).

The sequence: a synthetic copper set (48 scans of 480x640), ``process``;
an autoencoder trained on the same scans; ``process --anomaly`` in memory and
region by region (``--region-pixels 0``); ``explain`` and ``clusters``.

    PYTHONPATH=OLD python benchmarks/parity.py run before
    PYTHONPATH=NEW python benchmarks/parity.py run after
    python benchmarks/parity.py compare before after
    PYTHONPATH=NEW python benchmarks/parity.py rerun before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-6
STORES = ("X.zarr", "A.zarr", "R.zarr")


def semtile(*args: str, cwd: Path) -> str:
    """One semtile command with the checkout on PYTHONPATH; its output (raises on a non-zero exit)."""
    code = "import sys; from semtile.cli.main import main; sys.argv = ['semtile', *sys.argv[1:]]; main()"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "SEMTILE_LOG_LEVEL": "WARNING"})
    print(f"  {time.perf_counter() - t0:6.1f} s  semtile {' '.join(args)}", flush=True)
    if done.returncode:
        raise SystemExit(f"semtile {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    semtile("synth", "S", "--per-label", "3", "--labels", "16", "--size", "480x640", "--truth", "sqrt",
            "--seed", "123", cwd=out)
    semtile("process", "S/images", "--out", "X.zarr", "--threads", "2", cwd=out)
    semtile("train", "autoencoder", "S", "--threads", "2", "--epochs", "2", "--steps-per-epoch", "20",
            "--out", "m/ae.pt", cwd=out)
    semtile("process", "S/images", "--out", "A.zarr", "--threads", "2", "--anomaly", "m/ae.pt", cwd=out)
    semtile("process", "S/images", "--out", "R.zarr", "--threads", "2", "--anomaly", "m/ae.pt",
            "--region-pixels", "0", cwd=out)
    semtile("explain", "A.zarr", "--threads", "2", cwd=out)
    semtile("clusters", "X.zarr", "--out", "cl", "--threads", "2", "--clusters", "4", cwd=out)


def _fields(store: Path) -> dict:
    from semtile.results import open_results

    results = open_results(store)
    out = {}
    for name in results.names:
        r = results[name]
        entry = {"mask": np.asarray(r.mask.compute(), dtype=np.float64),
                 "binary": np.asarray(r.binary_mask.compute(), dtype=np.float64),
                 "probs": np.asarray(r.class_probs, dtype=np.float64),
                 "ratio": float(r.adhesive_ratio), "label": r.label,
                 "soft_ratio": float(r.attrs.get("adhesive_ratio_soft", 0.0))}
        for map_name in r.maps:
            entry[f"map:{map_name}"] = np.asarray(r.map(map_name).compute(), dtype=np.float64)
        fraction = r.attrs.get("anomaly_fraction")
        if fraction is not None:
            entry["anomaly_fraction"] = float(fraction)
        out[Path(str(r.source)).name] = entry
    return out


def compare(a: Path, b: Path) -> int:
    worst: dict[str, float] = {}
    problems = []
    for store in STORES:
        fa, fb = _fields(a / store), _fields(b / store)
        if sorted(fa) != sorted(fb):
            problems.append(f"{store}: different results {sorted(set(fa) ^ set(fb))}")
            continue
        for name in fa:
            ea, eb = fa[name], fb[name]
            if set(ea) != set(eb):
                problems.append(f"{store}/{name}: fields {sorted(set(ea) ^ set(eb))} differ")
            for field in set(ea) & set(eb):
                key = f"{store}:{field}"
                if field == "label":
                    if ea[field] != eb[field]:
                        problems.append(f"{store}/{name}: label {ea[field]} != {eb[field]}")
                    continue
                va, vb = np.asarray(ea[field]), np.asarray(eb[field])
                if va.shape != vb.shape:
                    problems.append(f"{store}/{name}: {field} shape {va.shape} != {vb.shape}")
                    continue
                worst[key] = max(worst.get(key, 0.0), float(np.max(np.abs(va - vb))) if va.size else 0.0)
    # The table names each input by its path: the two runs' folders differ, nothing else may.
    ca = (a / "cl" / "clusters.csv").read_text().replace(str(a.resolve()), "RUN")
    cb = (b / "cl" / "clusters.csv").read_text().replace(str(b.resolve()), "RUN")
    worst["clusters.csv identical"] = 0.0 if ca == cb else 1.0
    for key in sorted(worst):
        print(f"{key:32s} max |diff| {worst[key]:.3g}")
    bad = [k for k, v in worst.items() if v > TOLERANCE]
    for p in problems:
        print("PROBLEM", p)
    print(json.dumps({"max_abs_difference": max(worst.values()), "above_tolerance": bad,
                      "problems": len(problems)}))
    return 1 if bad or problems else 0


def rerun(a: Path) -> None:
    work = a / "rerun"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for store in ("X.zarr", "A.zarr"):
        shutil.copytree(a / store, work / store, symlinks=True)
    shutil.copytree(a / "m", work / "m")
    (work / "S").symlink_to((a / "S").resolve())
    # The same options as the run that wrote each store, so every completion record matches.
    print(semtile("process", "S/images", "--out", "X.zarr", "--threads", "2", cwd=work).strip().splitlines()[-1])
    print(semtile("process", "S/images", "--out", "A.zarr", "--threads", "2", "--anomaly", "m/ae.pt",
                  cwd=work).strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    sub.add_parser("rerun").add_argument("a", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.out)
        return 0
    if args.command == "compare":
        return compare(args.a, args.b)
    rerun(args.a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
