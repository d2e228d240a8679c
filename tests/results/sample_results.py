"""Result stores written by hand, quickly: what ``semtile process`` writes, without running a model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import zarr

from semtile.store import ImageResult, RunTable, ZarrDirectoryStore, default_csv_path, open_store
from semtile.store.table import runs_folder

LABELS = [0, 1, 2, 3]
SEGMENTER_SHA = "5e" * 32
CLASSIFIER_SHA = "c1" * 32


def sample_result(source: Path, i: int, shape=(300, 400), timings: bool = True, g: list | None = None) -> ImageResult:
    """A result whose adhesive area is the top ``ratio`` of the image (a band), label ``i % 4``."""
    rng = np.random.default_rng(i)
    rows, cols = shape
    label = LABELS[i % len(LABELS)]
    ratio = 1 - label / (len(LABELS) - 1) * 0.9
    mask = np.zeros(shape, np.float32)
    mask[: max(1, round(rows * ratio))] = 0.9
    image = np.clip(0.3 + 0.4 * rng.random(shape, dtype=np.float32), 0, 1)
    attrs = {"pixel_size_m": 2e-9, "databar_rows": 10, "frame_shape": [rows + 10, cols], "tiles": 4,
             "label_rule": "median", "adhesive_ratio_soft": float(mask.mean()),
             "provenance": {"created": "2026-01-01T00:00:00+00:00",
                            "input": {"path": str(source), "sha256": "ab" * 32},
                            "model": {"source": "test-model",
                                      "classifier": {"path": "/nowhere/classifier.pt", "sha256": CLASSIFIER_SHA},
                                      "segmenter": {"path": "/nowhere/segmenter.pt", "sha256": SEGMENTER_SHA,
                                                    "training": {"mode": "weak", "hypothesis": "linear", "g": g}
                                                    if g else {"mode": "supervised"}}},
                            "engine": {"name": "torch-cpu", "precision": "f32", "device": "cpu"},
                            "parameters": {"tile": 64, "halo": 8, "threshold": 0.5}}}
    if timings:
        attrs["timings"] = {"read": 0.01 * (i + 1), "infer": 0.1, "stitch": 0.02, "elapsed": 9.0}
    binary = mask >= 0.5
    return ImageResult(source=source, mask=mask, binary_mask=binary,
                       class_probs=np.full(len(LABELS), 0.25, np.float32), labels=LABELS, label=label,
                       adhesive_ratio=float(binary.mean()), attrs=attrs, image=image,
                       record={"format": "test/1", "run_id": "run-b"})


def write_results(folder: Path, n: int = 6, shape=(300, 400), timings: bool = True, legacy: bool = False,
                  g: list | None = None, failures: bool = True) -> Path:
    """A store ``folder/r.zarr`` of ``n`` results of files ``folder/scans/scan_K.tif`` and its run tables.

    Two runs: ``run-a`` failed on ``broken.tif`` and ``fixed.tif``; ``run-b`` wrote every scan, failed on
    ``broken.tif`` again, skipped ``old.tif`` and finished ``fixed.tif`` (so it no longer counts as failing).
    """
    scans = folder / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    path = folder / "r.zarr"
    store = ZarrDirectoryStore(path) if legacy else open_store(path)
    sources = []
    for i in range(n):
        source = scans / f"scan_{i}.tif"
        source.write_bytes(b"")  # only the path matters here
        sources.append(source.resolve())
        store.write(store.claim(source), sample_result(source, i, shape, timings, g))
    if failures:
        runs = runs_folder(default_csv_path(path))
        with RunTable(runs / "run-a.csv", "run-a") as table:
            table.add(path=str(scans / "broken.tif"), status="error", error="broken.tif: not a TIFF file")
            table.add(path=str(scans / "fixed.tif"), status="error", error="fixed.tif: truncated")
        with RunTable(runs / "run-b.csv", "run-b") as table:
            for source in sources:
                table.add(path=str(source), status="ok", label=0, adhesive_ratio=0.5)
            table.add(path=str(scans / "broken.tif"), status="error", error="broken.tif: not a TIFF file")
            table.add(path=str(scans / "old.tif"), status="skipped")
            table.add(path=str(scans / "fixed.tif"), status="ok")
    return path


def add_heat_map(store: Path, name: str, shape=(300, 400)) -> np.ndarray:
    """An extra float32 map in a result group, added by hand as a later stage might."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    heat = np.exp(-((yy - rows / 2) ** 2 + (xx - cols / 3) ** 2) / (2 * (rows / 5) ** 2)).astype(np.float32)
    group = zarr.open_group(str(store / name), mode="a", zarr_format=3)
    group.create_array("heat", data=heat, chunks=(128, 128))
    return heat


def write_labels_csv(path: Path, rows: list[tuple[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path
