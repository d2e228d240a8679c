"""Labels against the truth: confusion matrix, top-1, ±1 and mean absolute error in t.

Shared by ``semtile evaluate`` and ``semtile report`` (the paper's Figures 7
and 8), and usable from a notebook on ``Results.table``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import DatasetError
from semtile.io.dataset import label_columns

__all__ = ["LabelScores", "label_scores", "read_answers"]


@dataclass
class LabelScores:
    labels: list
    confusion: np.ndarray  # rows: true label, columns: predicted label
    top1: float
    within1: float | None
    mae_t: float | None
    per_label_accuracy: dict

    def to_dict(self) -> dict:
        return {"top1": self.top1, "within1": self.within1, "mae_t": self.mae_t, "n": int(self.confusion.sum()),
                "per_label_accuracy": {str(k): v for k, v in self.per_label_accuracy.items()}}

    @property
    def ordered(self) -> bool:
        """Whether the labels are integers, so that ±1 means something."""
        return self.within1 is not None

    def per_label_within1(self) -> dict:
        """Per true label, the share of answers within one label of it (None where it has no image)."""
        if not self.ordered:
            return {}
        values = np.array(self.labels, dtype=float)
        near = np.abs(values[:, None] - values[None, :]) <= 1
        return {label: (float(self.confusion[i][near[i]].sum() / self.confusion[i].sum())
                        if self.confusion[i].sum() else None) for i, label in enumerate(self.labels)}


def label_scores(true: list, predicted: list, labels: list) -> LabelScores:
    """Confusion matrix, top-1, ±1 accuracy and mean absolute error in t (ordered labels)."""
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted):
        if t not in index or p not in index:
            raise DatasetError(f"label {t if t not in index else p!r} is not one of the model's labels {labels}")
        confusion[index[t], index[p]] += 1
    n = confusion.sum()
    if n == 0:
        raise DatasetError("no images to evaluate")
    top1 = float(np.trace(confusion) / n)
    ordered = all(isinstance(label, int) for label in labels)
    within1 = mae = None
    if ordered:
        diff = np.abs(np.array(true, dtype=float) - np.array(predicted, dtype=float))
        within1, mae = float(np.mean(diff <= 1)), float(np.mean(diff))
    per_label = {label: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
                 for i, label in enumerate(labels)}
    return LabelScores(labels, confusion, top1, within1, mae, per_label)


def read_answers(path: str | Path, base: str | Path | None = None, path_column: str | None = None,
                 label_column: str | None = None) -> dict[Path, object]:
    """An answers CSV (``path,label``: an expert's, or any labelling) as resolved path -> label.

    Paths are relative to ``base`` (the CSV's folder by default); labels are
    integers where every one is. The columns are found as in a dataset's
    ``labels.csv`` (``path`` or ``file``, or ``path_column``; ``label`` or
    ``label_column``), but unlike there the images need not exist here: only
    the paths are compared with the results'.
    """
    path = Path(path)
    base = path.parent if base is None else Path(base)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            path_key, label_key = label_columns(reader.fieldnames, path, path_column, label_column)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: no rows")
    values = [(r[label_key] or "").strip() for r in rows]
    try:
        values = [int(v) for v in values]
    except ValueError:
        pass
    return {(base / (r[path_key] or "").strip()).resolve(): v for r, v in zip(rows, values)}
