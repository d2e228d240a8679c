"""What checking results costs: the manifest at commit, a crc32c codec, ``semtile verify``, the rerun check, reads.

Writes the same results into three stores, round-robin so that machine noise
falls on all alike: without a manifest (the store as it was), with the
manifest (as shipped), and with the manifest and a ``crc32c`` codec after
zstd on every array (set here for the measurement only). Then times
``verify_store`` full and quick, the quick check a rerun makes per result
(``ResultStore.verify``), and a full read of every mask through
``open_results`` (checked against the manifest) against the same without one, and a plain Zarr read.

    python benchmarks/verify.py [--results 6] [--side 2048] [--rounds 3]

Prints seconds and ratios against the first store, all measured in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

import semtile.store.directory as directory
from semtile.results import open_results
from semtile.store import ImageResult, OmeZarrStore
from semtile.store.verify import seal, verify_store


def result(source: Path, side: int, seed: int) -> ImageResult:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    mask = np.clip(0.5 + 0.4 * np.sin(9 * x + seed) * np.cos(7 * y) + 0.05 * rng.standard_normal((side, side),
                                                                                                  np.float32), 0, 1)
    image = np.clip(0.4 + 0.2 * rng.standard_normal((side, side), np.float32), 0, 1)
    binary = mask >= 0.5
    return ImageResult(source=source, mask=mask.astype(np.float32), binary_mask=binary,
                       class_probs=np.full(16, 1 / 16, np.float32), labels=list(range(16)), label=3,
                       adhesive_ratio=float(binary.mean()), image=image, record={"format": "bench/1", "input": {}})


@contextlib.contextmanager
def variant(kind: str):
    """``plain``: no manifest; ``manifest``: as shipped; ``crc32c``: manifest and a crc32c codec on every array."""
    original_seal, original_create = directory.seal, zarr.Group.create_array
    if kind == "plain":
        directory.seal = lambda folder: None
    if kind == "crc32c":
        def create_array(self, *args, **kw):
            kw.setdefault("compressors", [ZstdCodec(level=0, checksum=False), Crc32cCodec()])
            return original_create(self, *args, **kw)

        zarr.Group.create_array = create_array
    try:
        yield
    finally:
        directory.seal, zarr.Group.create_array = original_seal, original_create


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=6)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kinds = ("plain", "manifest", "crc32c")
    work = Path(tempfile.mkdtemp(prefix="semtile-bench-verify-"))
    try:
        made = [result(work / f"scan_{i}.tif", args.side, i) for i in range(args.results)]
        writes: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                store = OmeZarrStore(work / f"{kind}.zarr")
                with variant(kind):
                    for i, item in enumerate(made):
                        writes[kind].append(timed(lambda store=store, item=item, i=i: store.write(f"s{i}", item)))
        mb = sum(f.stat().st_size for f in (work / "manifest.zarr" / "s0").rglob("*") if f.is_file()) / 1e6
        print(f"{args.results} results of {args.side}x{args.side} ({mb:.1f} MB each on disk), {args.rounds} rounds")
        base = statistics.median(writes["plain"])
        for kind in kinds:
            w = statistics.median(writes[kind])
            print(f"write {kind:9s} {w * 1e3:8.1f} ms a result  x{w / base:.3f}")
        sealed = work / "manifest.zarr" / "s0"

        def fresh_seal():
            (sealed / ".manifest.json").unlink()  # else unchanged files keep their entries unread (add_maps)
            seal(sealed)

        seal_s = statistics.median(timed(fresh_seal) for _ in range(5))
        print(f"seal (the manifest alone, files in the page cache) {seal_s * 1e3:.1f} ms a result")
        for kind in ("plain", "manifest", "crc32c"):
            store = OmeZarrStore(work / f"{kind}.zarr", mode="r")
            full = verify_store(store, full=True)
            quick = verify_store(store, full=False)
            rerun = timed(lambda store=store: [store.verify(n) for n in store.names()]) / len(store.names())
            print(f"verify {kind:9s} full {full.seconds:6.2f} s ({full.bytes_read / 1e6 / full.seconds:6.0f} MB/s, "
                  f"{len(full.damaged)} damaged)  quick {quick.seconds * 1e3:6.1f} ms  "
                  f"rerun check {rerun * 1e3:.2f} ms a result")
        reads = {}
        for kind in kinds:  # plain: no manifest, so no CRC on read; crc32c: zarr checks, the guard does not
            path = work / f"{kind}.zarr"
            names = OmeZarrStore(path, mode="r").names()
            raw = statistics.median(timed(lambda path=path, names=names: [
                zarr.open_group(str(path / n), mode="r")["mask"][...] for n in names]) for _ in range(3))
            reads[kind] = statistics.median(timed(lambda path=path, names=names: [
                open_results(path)[n].mask.compute() for n in names]) for _ in range(3))
            print(f"read masks {kind:9s} zarr {raw:.3f} s, open_results {reads[kind]:.3f} s  "
                  f"x{reads[kind] / reads['plain']:.2f} of open_results without a manifest")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
