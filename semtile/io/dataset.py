"""Datasets: a folder with ``labels.csv`` (``path,label[,split]``), paths relative to the CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import DatasetError

__all__ = ["Sample", "read_labels", "label_order", "parse_split", "split_samples", "SPLITS"]


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


SPLITS = ("train", "val", "test")


def parse_split(value: str | None) -> tuple[float, float, float]:
    """``--split 80,10,10`` or ``40,5,5`` (any three non-negative numbers) -> fractions summing to 1."""
    if value is None:
        return (0.8, 0.1, 0.1)
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise DatasetError(f"--split {value!r}: expected three numbers such as 80,10,10") from None
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or sum(parts) <= 0:
        raise DatasetError(f"--split {value!r}: expected three non-negative numbers, train > 0")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def split_samples(samples: list[Sample], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, list[int]]:
    """Indices of the train, val and test samples.

    A ``split`` column in labels.csv is used as given. Otherwise each label is
    split on its own (stratified), in a seeded random order: rounded shares
    for val and test, at least one image each where the label has three or
    more and the share is not zero, the rest for training.
    """
    given = [s.split for s in samples]
    if any(given):
        if not all(given):
            raise DatasetError("labels.csv gives a split for some images and not others")
        bad = sorted({g for g in given if g not in SPLITS})
        if bad:
            raise DatasetError(f"labels.csv split values must be train, val or test; found {bad}")
        return {name: [i for i, g in enumerate(given) if g == name] for name in SPLITS}
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    by_label: dict = {}
    for i, s in enumerate(samples):
        by_label.setdefault(s.label, []).append(i)
    for label in label_order(by_label):
        idx = rng.permutation(by_label[label]).tolist()
        n = len(idx)
        n_val, n_test = (int(round(f * n)) for f in fractions[1:])
        if n >= 3:
            n_val = max(n_val, 1) if fractions[1] > 0 else 0
            n_test = max(n_test, 1) if fractions[2] > 0 else 0
        n_val, n_test = min(n_val, max(n - 1, 0)), min(n_test, max(n - 1 - n_val, 0))
        out["val"] += idx[:n_val]
        out["test"] += idx[n_val: n_val + n_test]
        out["train"] += idx[n_val + n_test:]
    return {name: sorted(v) for name, v in out.items()}
