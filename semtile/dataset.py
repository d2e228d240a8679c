"""Datasets: a folder with ``labels.csv`` (``path,label[,split]``), paths relative to the CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from semtile.errors import DatasetError

__all__ = ["Sample", "read_labels", "label_order"]


@dataclass(frozen=True)
class Sample:
    path: Path
    label: object  # int where every label is an integer, else str
    split: str | None = None


def _coerce(values: list[str]) -> list:
    try:
        return [int(v) for v in values]
    except ValueError:
        return values


def label_order(labels) -> list:
    """Distinct labels in their natural order (numeric where all are integers)."""
    return sorted(set(labels))


def read_labels(source: str | Path) -> list[Sample]:
    """Read a dataset folder (or its ``labels.csv``) into samples with absolute paths."""
    source = Path(source)
    csv_path = source / "labels.csv" if source.is_dir() else source
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: labels.csv not found")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "path" not in fields or "label" not in fields:
            raise DatasetError(f"{csv_path}: needs columns 'path' and 'label', found {fields}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    labels = _coerce([r["label"].strip() for r in rows])
    samples = []
    for line, (row, label) in enumerate(zip(rows, labels), start=2):
        path = (csv_path.parent / row["path"].strip()).resolve()
        if not path.is_file():
            raise DatasetError(f"{csv_path}:{line}: image {row['path']} not found")
        samples.append(Sample(path=path, label=label, split=(row.get("split") or "").strip() or None))
    return samples
