"""The result store: one Zarr group per image, plus a per-run CSV table.

Each image's group is written under a temporary name and renamed into place
only once complete, so a failure never leaves a half-written group and never
touches the results of other images. A group is replaced only by a newer
result for the same input file; other names get a numbered suffix.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from semtile.errors import SemtileError

__all__ = ["ImageResult", "ResultStore", "RunTable", "RUN_COLUMNS", "default_csv_path"]

RUN_COLUMNS = ("path", "status", "label", "adhesive_ratio", "pixel_size_m", "databar_rows", "error")


@dataclass
class ImageResult:
    """Everything semtile writes about one image."""

    source: Path
    mask: np.ndarray  # (rows, cols) float32 adhesive probability over the valid area
    binary_mask: np.ndarray  # (rows, cols) bool
    class_probs: np.ndarray  # (n_labels,) float32
    labels: list
    label: object
    adhesive_ratio: float
    attrs: dict = field(default_factory=dict)


def default_csv_path(store: Path) -> Path:
    store = Path(store)
    return store.with_name(store.stem + ".csv") if store.suffix else store.with_name(store.name + ".csv")


def _safe_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._-")
    return name or "image"


class ResultStore:
    """A local Zarr v3 directory store holding one group per image."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise SemtileError(f"{self.path}: exists and is not a Zarr directory store")
        self.root = zarr.open_group(str(self.path), mode="a")
        self.root.attrs.setdefault("semtile_store", 1)
        # Names already taken, and by which input file, so reruns replace only their own groups.
        self._owners: dict[str, str] = {}
        for name, group in self.root.groups():
            self._owners[name] = str(group.attrs.get("source_path", ""))

    def name_for(self, source: Path) -> str:
        source_key = str(Path(source).resolve())
        base = _safe_name(Path(source))
        candidate, k = base, 1
        while candidate in self._owners and self._owners[candidate] != source_key:
            k += 1
            candidate = f"{base}-{k}"
        self._owners[candidate] = source_key
        return candidate

    def write(self, name: str, result: ImageResult) -> None:
        temp = f".partial-{name}-{uuid.uuid4().hex[:8]}"
        group = self.root.create_group(temp)
        rows, cols = result.mask.shape
        chunks = (min(rows, 512), min(cols, 512))
        group.create_array("mask", data=result.mask.astype(np.float32, copy=False), chunks=chunks)
        group.create_array("binary_mask", data=result.binary_mask.astype(bool, copy=False), chunks=chunks)
        group.create_array("class_probs", data=result.class_probs.astype(np.float32, copy=False))
        group.attrs.update(
            {
                "source_path": str(Path(result.source).resolve()),
                "labels": list(result.labels),
                "label": result.label,
                "adhesive_ratio": float(result.adhesive_ratio),
                **result.attrs,
            }
        )
        final, staged = self.path / name, self.path / temp
        if final.exists():
            retired = self.path / f".retired-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, retired)
            os.replace(staged, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staged, final)


class RunTable:
    """Per-run CSV, one row per image, flushed as each image finishes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=RUN_COLUMNS)
        self._writer.writeheader()
        self._handle.flush()

    def add(self, **row) -> None:
        self._writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RUN_COLUMNS})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "RunTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
