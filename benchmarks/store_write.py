"""How fast results are written, by which Zarr backend, and what the checksum and the codec level cost.

    python benchmarks/store_write.py [--scans 8] [--size 960x1280] [--repeat 3] [--json out.json]

On the same results (8-bit scans with a network-like probability mask), back
to back in one run:

1. **Arrays**: the arrays of a result (image, labels and mask with their
   pyramids, as the store lays them out: uint8, zstd, crc32c, one shard per
   array) written by zarr-python, by zarr-python with the zarrs codec
   pipeline, by tensorstore, and by the store's own shard writer
   (``semtile.store.shards``, what ``OmeZarrStore.write`` uses).
2. **Store**: ``OmeZarrStore.write`` whole (claims, metadata, provenance,
   publishing), with and without crc32c (back to back), and the layout
   of the store before (float32 mask, uint16 image, 512 chunks, no shards,
   zarr-python) for reference.
3. **Codec levels**: the bytes and speed of zstd levels on the stored image and mask.

Prints seconds per megapixel, MB/s of stored (uncompressed) bytes and ratios
against zarr-python; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Zstd

from semtile.store import ImageResult, OmeZarrStore, encode_probability_u8
from semtile.store.encoding import CHUNK, ZSTD_LEVEL, array_layout
from semtile.store.pyramid import level_shapes, next_level
from semtile.store.shards import write_sharded, writer_threads

ZARRS = "zarrs.ZarrsCodecPipeline"  # zarr-python with the zarrs codec pipeline (pip install zarrs)


def scans(n: int, shape: tuple[int, int], seed: int = 0) -> list[dict]:
    """Results of 8-bit scans: a textured image and a smooth, noisy probability mask (what a segmenter gives)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.random((shape[0] // 16 + 2, shape[1] // 16 + 2)).astype(np.float32)
        field = np.kron(coarse, np.ones((16, 16), np.float32))[: shape[0], : shape[1]]
        image = np.clip(field * 60 + rng.normal(90, 5, shape), 0, 255).astype(np.uint8)  # SEM-like noise
        logit = (field - 0.55) * 14 + rng.normal(0, 0.05, shape).astype(np.float32)
        mask = (1 / (1 + np.exp(-logit))).astype(np.float32)
        out.append({"image": image, "mask": mask, "binary": mask >= 0.5})
    return out


def result_of(scan: dict, source: Path) -> ImageResult:
    return ImageResult(source=source, mask=scan["mask"], binary_mask=scan["binary"],
                       class_probs=np.array([0.3, 0.7], np.float32), labels=[0, 1], label=1,
                       adhesive_ratio=float(scan["binary"].mean()), image=scan["image"].astype(np.float32) / 255,
                       attrs={"provenance": {"input": {"path": str(source), "dtype": "uint8"}}})


def arrays_of(scan: dict) -> dict[str, np.ndarray]:
    """Every array of a result as the store keeps it (levels precomputed): what each backend writes."""
    image, labels = scan["image"], scan["binary"].astype(np.uint8)
    out = {"mask": encode_probability_u8(scan["mask"])}
    for k in range(len(level_shapes(image.shape))):
        if k:
            image, labels = next_level(image, "mean"), next_level(labels, "max")
        out[str(k)], out[f"labels/{k}"] = image, labels
    return out


def write_zarr(folder: Path, arrays: dict, pipeline: str | None) -> None:
    with zarr.config.set({"codec_pipeline.path": pipeline} if pipeline else {}):
        group = zarr.open_group(str(folder), mode="w", zarr_format=3)
        for key, data in arrays.items():
            group.create_array(key, shape=data.shape, dtype=data.dtype, fill_value=0,
                               **array_layout(data.shape, sharded=True))[...] = data


def write_direct(folder: Path, arrays: dict) -> None:
    """The store's own writer: shards encoded by semtile, chunks compressed on its thread pool."""
    write_sharded(folder, {key: (data, array_layout(data.shape, sharded=True), ("y", "x")) for key, data in arrays.items()},
                  level=ZSTD_LEVEL, checksum=True)


def write_tensorstore(folder: Path, arrays: dict) -> None:
    import tensorstore as ts

    for key, data in arrays.items():
        layout = array_layout(data.shape, sharded=True)
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(folder / key)},
                "metadata": {"shape": list(data.shape), "data_type": data.dtype.name, "fill_value": 0,
                             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(layout["shards"])}},
                             "codecs": [{"name": "sharding_indexed", "configuration": {
                                 "chunk_shape": list(layout["chunks"]),
                                 "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                            {"name": "zstd", "configuration": {"level": ZSTD_LEVEL}},
                                            {"name": "crc32c"}],
                                 "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                                  {"name": "crc32c"}]}}]},
                "create": True, "delete_existing": True}
        ts.open(spec).result().write(data).result()


def write_before(folder: Path, scan: dict) -> None:
    """The layout of the store before: uint16 image, float32 mask, 512 chunks, zarr's default codec, no shards."""
    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    image = (scan["image"].astype(np.uint16) * 257)
    labels = scan["binary"].astype(np.uint8)
    shapes, k = [image.shape], 0
    while min(shapes[-1]) > 256:
        shapes.append(tuple((s + 1) // 2 for s in shapes[-1]))
    for k in range(len(shapes)):
        if k:
            image, labels = next_level(image, "mean"), next_level(labels, "max")
        for key, data in ((str(k), image), (f"labels/{k}", labels)):
            group.create_array(key, data=data, chunks=tuple(min(s, CHUNK) for s in data.shape))
    group.create_array("mask", data=scan["mask"], chunks=tuple(min(s, CHUNK) for s in scan["mask"].shape))


def timed(fn, repeat: int) -> float:
    """The median seconds of ``repeat`` runs of ``fn()``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--size", default="960x1280")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.size.split("x"))
    data = scans(args.scans, (rows, cols))
    mp = args.scans * rows * cols / 1e6
    stored = [arrays_of(s) for s in data]
    raw_mb = sum(a.nbytes for arrays in stored for a in arrays.values()) / 1e6
    rows_out: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="semtile-store-bench-"))

    def record(section: str, name: str, seconds: float, folder: Path | None) -> None:
        size, files = folder_bytes(folder) if folder is not None and folder.exists() else (0, 0)
        rows_out.append({"section": section, "backend": name, "s_per_mp": seconds / mp, "mb_per_s": raw_mb / seconds,
                         "bytes_per_scan": size / args.scans, "files_per_scan": files / args.scans})

    try:
        # 1. the arrays, by each library
        def arrays_with(write):
            def run():
                for i, arrays in enumerate(stored):
                    write(tmp / "arrays" / str(i), arrays)
            return run

        backends = {"zarr-python": lambda f, a: write_zarr(f, a, None), "zarrs": lambda f, a: write_zarr(f, a, ZARRS),
                    "tensorstore": write_tensorstore, "semtile shards (the store's)": write_direct}
        for name, write in backends.items():
            shutil.rmtree(tmp / "arrays", ignore_errors=True)
            try:
                seconds = timed(arrays_with(write), args.repeat)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
                print(f"arrays {name}: failed ({type(exc).__name__}: {exc})")
                continue
            record("arrays", name, seconds, tmp / "arrays")

        # 2. the whole store write: the layout before, then with and without the checksum, alternating
        def before():
            shutil.rmtree(tmp / "before", ignore_errors=True)
            for i, scan in enumerate(data):
                write_before(tmp / "before" / str(i), scan)

        record("store", "layout before (zarr-python)", timed(before, args.repeat), tmp / "before")

        def store_with(checksum: bool):
            def run():
                shutil.rmtree(tmp / "store", ignore_errors=True)
                store = OmeZarrStore(tmp / "store", checksum=checksum)
                for i, scan in enumerate(data):
                    source = tmp / f"scan{i}.tif"
                    store.write(store.claim(source), result_of(scan, source))
            return run

        best: dict[str, float] = {}
        for name, checksum in [("OmeZarrStore.write", True), ("OmeZarrStore.write, no crc32c", False)] * 2:
            best[name] = min(best.get(name, float("inf")), timed(store_with(checksum), args.repeat))
        for name, seconds in best.items():  # sizes: of the last store written (without crc32c: 8 bytes a chunk less)
            record("store", name, seconds, tmp / "store")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # 3. zstd levels on the stored image and mask
    levels = []
    for what in ("0", "mask"):
        blocks = [a[what] for a in stored]
        nbytes = sum(b.nbytes for b in blocks)
        for level in (1, 3, 5, 9):
            codec = Zstd(level)
            t0 = time.perf_counter()
            size = sum(len(codec.encode(np.ascontiguousarray(b))) for b in blocks)
            seconds = time.perf_counter() - t0
            levels.append({"array": "image" if what == "0" else "mask", "level": level, "ratio": size / nbytes,
                           "mb_per_s": nbytes / 1e6 / seconds})

    print(f"store_write: {args.scans} scans of {rows}x{cols} 8-bit ({mp:.2f} MP, {raw_mb:.1f} MB stored "
          f"uncompressed), median of {args.repeat}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {writer_threads()} writer threads; zarr {zarr.__version__}")
    for section, base_name in (("arrays", "zarr-python"), ("store", "layout before (zarr-python)")):
        base = next((r for r in rows_out if r["section"] == section and r["backend"] == base_name), None)
        print(f"\n{section:8s} {'backend':30s} {'s/MP':>8s} {'MB/s':>8s} {'speed x base':>13s} {'KB/scan':>9s} "
              f"{'files/scan':>10s}   (base: {base_name})")
        for r in (r for r in rows_out if r["section"] == section):
            ratio = base["s_per_mp"] / r["s_per_mp"] if base else float("nan")
            r["speed_vs_base"], r["base"] = ratio, base_name
            print(f"{'':8s} {r['backend']:30s} {r['s_per_mp']:8.4f} {r['mb_per_s']:8.1f} {ratio:13.2f} "
                  f"{r['bytes_per_scan'] / 1e3:9.1f} {r['files_per_scan']:10.1f}")
    store_rows = {r["backend"]: r for r in rows_out if r["section"] == "store"}
    with_crc, without = store_rows["OmeZarrStore.write"], store_rows["OmeZarrStore.write, no crc32c"]
    print(f"\ncrc32c cost: {(with_crc['s_per_mp'] / without['s_per_mp'] - 1) * 100:+.1f}% of the store write time "
          f"({(with_crc['s_per_mp'] - without['s_per_mp']) * 1e3:+.2f} ms/MP; best of 2 x {args.repeat}, alternating)")
    print(f"\n{'array':8s} {'zstd level':>10s} {'bytes/raw':>10s} {'MB/s':>8s}")
    for r in levels:
        print(f"{r['array']:8s} {r['level']:10d} {r['ratio']:10.3f} {r['mb_per_s']:8.0f}")
    if args.json:
        args.json.write_text(json.dumps({"scans": args.scans, "shape": [rows, cols], "rows": rows_out,
                                         "levels": levels}, indent=1))


if __name__ == "__main__":
    main()
