"""Datasets: a folder with ``labels.csv`` (``path,label[,split]``), paths relative to the CSV.

The path column may also be called ``file`` (the public lung-cell set's
``file,label,...``); other names are given with ``path_column`` and
``label_column`` (``--path-column``, ``--label-column``). Other columns are
ignored.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import DatasetError

__all__ = ["Sample", "read_labels", "label_columns", "PATH_COLUMNS", "LABEL_COLUMN", "label_order", "parse_split", "split_samples", "SPLITS"]


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


#: The names the image-path column of a labels.csv may have, in the order they are looked for.
PATH_COLUMNS = ("path", "file")
#: The name of the label column unless one is given.
LABEL_COLUMN = "label"


def label_columns(fields, where: str | Path, path_column: str | None = None,
                  label_column: str | None = None) -> tuple[str, str]:
    """The (path, label) column names of a CSV with the columns ``fields``.

    The path column is ``path_column`` where given, else the first of
    :data:`PATH_COLUMNS` present; the label column is ``label_column`` where
    given, else ``label``. A missing one is a DatasetError naming ``where``
    and listing the columns found.
    """
    fields = [f for f in (fields or []) if f is not None]
    found = ", ".join(fields) if fields else "none"
    if path_column is not None:
        path_key = path_column if path_column in fields else None
        wanted_path = f"'{path_column}' (--path-column)"
    else:
        path_key = next((name for name in PATH_COLUMNS if name in fields), None)
        wanted_path = " or ".join(f"'{name}'" for name in PATH_COLUMNS)
    label_key = label_column or LABEL_COLUMN
    wanted_label = f"'{label_key}'" + (" (--label-column)" if label_column is not None else "")
    missing = ([f"an image path column {wanted_path}"] if path_key is None else []) + \
              ([f"a label column {wanted_label}"] if label_key not in fields else [])
    if missing:
        raise DatasetError(f"{where}: needs {' and '.join(missing)}; found the columns: {found} "
                           "(name others with --path-column and --label-column)")
    return path_key, label_key  # type: ignore[return-value]


def read_labels(source: str | Path, path_column: str | None = None,
                label_column: str | None = None) -> list[Sample]:
    """Read a dataset folder (or its ``labels.csv``) into samples with absolute paths.

    The columns are found by :func:`label_columns`.
    """
    source = Path(source)
    csv_path = source / "labels.csv" if source.is_dir() else source
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: labels.csv not found")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        path_key, label_key = label_columns(reader.fieldnames, csv_path, path_column, label_column)
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    labels = _coerce([(r[label_key] or "").strip() for r in rows])
    samples = []
    for line, (row, label) in enumerate(zip(rows, labels), start=2):
        path = (csv_path.parent / (row[path_key] or "").strip()).resolve()
        if not path.is_file():
            raise DatasetError(f"{csv_path}:{line}: image {row[path_key]} not found")
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
