"""The per-run CSV table: one row per image, written as each image finishes."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["RunTable", "RUN_COLUMNS", "default_csv_path"]

RUN_COLUMNS = ("path", "status", "label", "adhesive_ratio", "pixel_size_m", "databar_rows", "error")


def default_csv_path(store: Path) -> Path:
    """The table beside a store: ``r.zarr`` -> ``r.csv``, ``out/results`` -> ``out/results.csv``."""
    store = Path(store)
    return store.with_name(store.stem + ".csv") if store.suffix else store.with_name(store.name + ".csv")


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
