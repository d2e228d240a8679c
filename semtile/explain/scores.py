"""Scores of a binary mask against a true mask, and the choice of a threshold on a validation split.

Pure numpy, no I/O. The five figures of Hasic & Kofler's table (003):
accuracy, precision, recall, Dice and IoU, per image, then mean ± sd over
images (population sd, ``ddof=0``, as semtile's other summaries).

Undefined cases are NaN, never a guess, and a summary skips them (and says
over how many images it is taken): precision where nothing is predicted,
recall, Dice and IoU where the true mask is empty (one false-positive pixel
would score 0, none 1; MONAI's ``DiceMetric`` skips empty truths too).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["METRICS", "Counts", "counts", "binary_scores", "Summary", "summarise", "validation_split",
           "choose_tau", "TAUS", "format_table"]

#: The figures of 003's table, in its order.
METRICS = ("accuracy", "precision", "recall", "dice", "iou")
#: Thresholds tried on the validation split: 0.05, 0.10, ..., 0.95.
TAUS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True)
class Counts:
    """Pixel counts of a predicted mask against a true one."""

    tp: int
    fp: int
    fn: int
    tn: int


def counts(predicted: np.ndarray, truth: np.ndarray) -> Counts:
    """True/false positives/negatives of two binary masks of one shape (any non-zero is 1)."""
    p, t = np.asarray(predicted).astype(bool, copy=False), np.asarray(truth).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"predicted mask {p.shape} and true mask {t.shape} differ in shape")
    tp = int(np.count_nonzero(p & t))
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    fp, fn = n_p - tp, n_t - tp
    return Counts(tp, fp, fn, p.size - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def binary_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, Dice and IoU of ``predicted`` against ``truth`` (NaN where undefined)."""
    c = counts(predicted, truth)
    n_true = c.tp + c.fn
    return {"accuracy": _ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn),
            "precision": _ratio(c.tp, c.tp + c.fp),
            "recall": _ratio(c.tp, n_true),
            "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn) if n_true else float("nan"),
            "iou": _ratio(c.tp, c.tp + c.fp + c.fn) if n_true else float("nan")}


@dataclass(frozen=True)
class Summary:
    """Mean ± sd of one figure over the images where it is defined."""

    mean: float
    sd: float
    images: int

    def __str__(self) -> str:
        return "-" if self.images == 0 else f"{self.mean:.3f} ± {self.sd:.3f}"

    def to_dict(self) -> dict:
        return {"mean": None if self.images == 0 else self.mean, "sd": None if self.images == 0 else self.sd,
                "images": self.images}


def summarise(values: Iterable[float]) -> Summary:
    """Mean and population sd of the finite values, and their count."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(v.mean()), float(v.std()), int(v.size))


def validation_split(names: Sequence[str], fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """(validation, test) names: a deterministic split by a hash of ``seed`` and each name.

    The same name always falls on the same side for a given seed, whatever the
    other names or their order. At least one name goes to each side when there
    are two or more (the lowest hashes to validation).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    def key(name: str) -> float:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64
    names = sorted(set(names))
    val = [n for n in names if key(n) < fraction]
    test = [n for n in names if key(n) >= fraction]
    if len(names) >= 2 and not val:
        val = [min(test, key=key)]
        test.remove(val[0])
    if len(names) >= 2 and not test:
        test = [max(val, key=key)]
        val.remove(test[0])
    return val, test


def choose_tau(score: Callable[[float], Sequence[float]], taus: Sequence[float] = TAUS) -> tuple[float, float]:
    """The threshold of ``taus`` whose per-image scores (``score(tau)``: one per validation image) have
    the highest mean over the images where they are defined; ties go to the smaller tau.

    Returns (tau, that mean). Raises ValueError when no tau gives any defined score.
    """
    best_tau, best = None, -math.inf
    for tau in taus:
        s = summarise(score(tau))
        if s.images and s.mean > best + 1e-12:
            best_tau, best = float(tau), s.mean
    if best_tau is None:
        raise ValueError("no threshold gives a defined score on the validation images (are their true masks empty?)")
    return best_tau, best


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table in the form of 003's: ``Method | Accuracy | Precision | Recall | Dice | IoU``.

    Each row is ``{"method": str, "accuracy": Summary, ...}``; other keys
    (``tau``, ``images``) become extra columns when any row has them.
    """
    extra = [k for k in ("tau", "images") if any(k in r for r in rows)]
    head = ["Method", "Accuracy", "Precision", "Recall", "Dice", "IoU", *(e.replace("tau", "τ") for e in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [str(r["method"]), *(str(r[m]) for m in METRICS)]
        for e in extra:
            v = r.get(e, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
