"""Fuzz the TIFF input path: N mutated files through open/decode, and batches through ``process_scans``.

    python benchmarks/fuzz_tiff.py [--cases 10000] [--seed 0] [--batch-every 500] [--batch-size 20]

Each case applies a few random mutations (the strategy of
``tests/io/test_fuzz_tiff.py``: dimensions, offsets, byte counts, bits per
sample, sample format, compression, photometric, strip counts, tag types and
codes, byte flips in the IFD, text values, truncation) to a small valid scan
and checks that ``open_scan`` + the valid area either gives float32 in [0, 1]
of the header's shape or raises semtile's ImageError naming the file, within
a deadline. Every ``--batch-every`` cases, ``--batch-size`` of the last
mutated files (those a run finishes in seconds: at most 2**18 pixels claimed,
or rejected for another reason than their size) and 2 good files go through
the real batch pipeline (``process_scans``, built-in model, torch-cpu) into
one persistent store: the batch must not crash, every file the decode path
rejected must get an error row, and the good files' stored results must stay
exactly what the first batch wrote.

Prints the counts: cases, processed, rejected by reason class, crashes (must
be 0), and the batch checks. Exit status 1 when anything crashed or a check failed.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import logging
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "io")]

import numpy as np  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from tiff_mutations import (  # noqa: E402
    RandomChooser,
    apply_mutations,
    check_case,
    draw_mutations,
    header_dims,
    write_base_files,
)

#: Pixel budget of the decode path: 4 Mpx, 16 MB of float32 (the bases have 12288 pixels).
MAX_PIXELS = 2**22
#: Files claiming more than this are left out of pipeline batches (they only cost time).
BATCH_MAX_PIXELS = 2**18
DEADLINE_S = 20


class Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise Deadline(f"a case ran for more than {DEADLINE_S} s")


def run_case(path: Path) -> tuple[str, str]:
    """("processed", shape), ("rejected", reason class) or ("crash", what escaped)."""
    signal.setitimer(signal.ITIMER_REAL, DEADLINE_S)
    try:
        return check_case(path, max_pixels=MAX_PIXELS)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return "crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class Pipeline:
    """Batches through process_scans into one persistent store, with the built-in model."""

    def __init__(self, work: Path, good: list[Path]):
        from semtile.engines import EngineSettings, create_engine
        from semtile.execution.local import ProcessOptions
        from semtile.models.io import load_bundle

        self.work, self.good = work, good
        self.bundle = load_bundle()
        self.engine, _ = create_engine("torch-cpu", self.bundle, EngineSettings(tile=64, halo=8, batch_size=8))
        self.options = ProcessOptions(tile=64, halo=8, batch_size=8)
        self.store_path = work / "store.zarr"
        self.reference: dict[str, tuple] | None = None
        self.counts = collections.Counter()
        self.failures: list[str] = []

    def batch(self, index: int, cases: list[tuple[Path, str, str]]) -> None:
        from semtile.execution.local import process_scans
        from semtile.inference.segment import SegmentPass
        from semtile.store import open_store

        folder = self.work / f"batch-{index:03d}"
        folder.mkdir()
        inputs, expected = [], {}
        for k, (path, status, why) in enumerate(cases):
            target = folder / f"m{k:02d}.tif"
            shutil.copyfile(path, target)
            inputs.append(target)
            expected[str(target.resolve())] = (status, why)
        inputs += self.good
        table = folder / "run.csv"
        self.counts["batches"] += 1
        with capture_logs() as events:
            try:
                summary = process_scans(inputs, self.store_path, options=self.options, table=table,
                                        passes=[SegmentPass.of_engine(self.engine, self.bundle, self.options)])
            except BaseException as exc:  # noqa: BLE001 - a crash of any kind is what the fuzzer counts
                self.failures.append(f"batch {index} crashed: {type(exc).__name__}: {exc}")
                self.counts["batch crashes"] += 1
                return
        unforeseen = [e for e in events if e.get("event") == "image_error"]  # a non-ImageError failure
        for e in unforeseen:
            self.failures.append(f"batch {index}: {e.get('path')}: unforeseen error {e.get('error')}")
        self.counts["unforeseen image errors"] += len(unforeseen)
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        by_path = collections.Counter(str(Path(r["path"]).resolve()) for r in rows)
        for path in inputs:
            if by_path[str(path.resolve())] != 1:
                self.failures.append(f"batch {index}: {path} has {by_path[str(path.resolve())]} rows")
        for row in rows:
            key = str(Path(row["path"]).resolve())
            if key not in expected:
                continue
            status, why = expected[key]
            self.counts[f"mutated files, decode {status}, pipeline {row['status']}"] += 1
            if status == "processed" and row["status"] != "ok":  # e.g. a valid area under the pipeline's minimum
                why_not = re.sub(r"\d+", "N", re.split(r"[:(]", row.get("error") or "", maxsplit=1)[0]).strip()
                self.counts[f"  of which: {why_not[:60]}"] += 1
            if status == "rejected" and row["status"] != "error":
                self.failures.append(f"batch {index}: {key} was rejected ({why}) but the pipeline says {row['status']}")
        wanted = {str(p.resolve()) for p in self.good}
        good = {str(Path(o.path).resolve()): o for o in summary.outcomes if str(Path(o.path).resolve()) in wanted}
        if len(good) != len(self.good) or any(o.status != "ok" for o in good.values()):
            self.failures.append(f"batch {index}: a good file failed: {[(k, o.error) for k, o in good.items()]}")
            return
        store = open_store(self.store_path, mode="r")
        snapshot = {}
        for key, outcome in good.items():
            result = store.read(outcome.group)
            snapshot[key] = (outcome.group, result.label, result.adhesive_ratio,
                             hashlib.sha256(np.ascontiguousarray(result.mask[:]).tobytes()).hexdigest())
        if self.reference is None:
            self.reference = snapshot
        elif snapshot != self.reference:
            self.failures.append(f"batch {index}: the good files' stored results changed: {snapshot} != {self.reference}")
            self.counts["good results changed"] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-every", type=int, default=500, help="cases between pipeline batches (0: none)")
    parser.add_argument("--batch-size", type=int, default=20, help="mutated files per pipeline batch")
    parser.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary one)")
    args = parser.parse_args(argv)

    from semtile.logs import configure_logging

    configure_logging(json=True, level=logging.ERROR)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its complaints about broken files are expected
    signal.signal(signal.SIGALRM, _alarm)
    work = Path(tempfile.mkdtemp(prefix="semtile-fuzz-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    bases = [(p, p.read_bytes()) for p in write_base_files(work / "bases")]
    pipeline = Pipeline(work, [bases[0][0], bases[1][0]]) if args.batch_every else None
    cases_dir = work / "cases"
    cases_dir.mkdir()
    counts: collections.Counter = collections.Counter()
    crashes: list[str] = []
    recent: list[tuple[Path, str, str]] = []
    t0 = time.perf_counter()
    try:
        for i in range(args.cases):
            base_path, base = bases[rng.randrange(len(bases))]
            mutations = draw_mutations(RandomChooser(rng), base)
            data = apply_mutations(base, mutations)
            path = cases_dir / f"case-{i % (2 * args.batch_size + 1):03d}.tif"  # a few files, reused in turn
            path.write_bytes(data)
            status, why = run_case(path)
            counts[status] += 1
            if status == "rejected":
                counts[why] += 1
            elif status == "crash":
                crashes.append(f"case {i} ({base_path.name}, {mutations}): {why}")
            dims = header_dims(data)
            small = dims is not None and dims[0] * dims[1] <= BATCH_MAX_PIXELS
            if status == "processed" and small or status == "rejected" and not why.startswith("ImageTooLarge"):
                keep = cases_dir / f"recent-{len(recent) % (2 * args.batch_size):03d}.tif"
                shutil.copyfile(path, keep)
                recent = [r for r in recent if r[0] != keep] + [(keep, status, why)]
            if pipeline and (i + 1) % args.batch_every == 0:
                pipeline.batch((i + 1) // args.batch_every, recent[-args.batch_size:])
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"cases: {args.cases} in {time.perf_counter() - t0:.0f} s (seed {args.seed})")
    print(f"processed: {counts['processed']}")
    print(f"rejected: {counts['rejected']}")
    for key, n in sorted(((k, n) for k, n in counts.items() if ":" in k), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {key}")
    print(f"crashes: {counts['crash']}")
    for crash in crashes[:20]:
        print("  " + crash.replace("\n", "\n    "))
    failures = []
    if pipeline:
        print(f"pipeline batches: {pipeline.counts['batches']}")
        for key, n in sorted(pipeline.counts.items()):
            if key != "batches":
                print(f"  {n:6d}  {key}")
        print(f"pipeline failures: {len(pipeline.failures)}")
        for failure in pipeline.failures[:20]:
            print("  " + failure)
        failures = pipeline.failures
    return 1 if crashes or failures else 0


if __name__ == "__main__":
    sys.exit(main())
