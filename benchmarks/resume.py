"""A nightly rerun against the first run, measured in one go with the real ``semtile`` command.

Writes 48 synthetic scans (``semtile synth S --per-label 3 --labels 16 --size
480x640 --truth sqrt --seed 123``), processes them into a new store, then
runs the same command again (every image should be skipped), then once more
after changing one input file (only it should be redone). Prints the wall
times of the three runs (whole commands, start-up included) and the ratios.

    python benchmarks/resume.py [--engine auto] [--out resume.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def semtile(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "semtile.cli.main", "--log-json", *args], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"semtile {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = done.stderr.strip().splitlines()
    return time.perf_counter() - t0, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="semtile-resume-"))
    try:
        semtile("synth", str(work / "S"), "--per-label", "3", "--labels", "16", "--size", "480x640",
                "--truth", "sqrt", "--seed", "123")
        command = ["process", str(work / "S" / "images"), "--out", str(work / "r.zarr"), "--engine", args.engine]
        first, first_line = semtile(*command)
        rerun, rerun_line = semtile(*command)
        changed = sorted((work / "S" / "images").glob("*.tif"))
        shutil.copy(changed[1], changed[0])
        one, one_line = semtile(*command)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    numbers = {"first_s": round(first, 2), "rerun_s": round(rerun, 2), "one_changed_s": round(one, 2),
               "rerun_vs_first": round(rerun / first, 3), "one_changed_vs_first": round(one / first, 3),
               "first": first_line, "rerun": rerun_line, "one_changed": one_line}
    print("| run | seconds | vs first | summary |\n|---|---:|---:|---|")
    print(f"| first (48 scans) | {first:.2f} | 1 | {first_line} |")
    print(f"| rerun, nothing changed | {rerun:.2f} | {rerun / first:.3f} | {rerun_line} |")
    print(f"| rerun, one input changed | {one:.2f} | {one / first:.3f} | {one_line} |")
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
