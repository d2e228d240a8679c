"""Hypothesis curves g(t): the adhesive-area fraction expected for label t.

The same definitions serve ``semtile synth --truth`` (to generate surfaces
with a known curve) and weak-label training (to regress the mean of the
segmenter's mask onto g(t)), so a curve means the same thing everywhere.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError

__all__ = ["HYPOTHESES", "hypothesis_values", "parse_hypothesis"]

HYPOTHESES = ("linear", "sqrt", "log")


def _linear(x: np.ndarray) -> np.ndarray:
    return 1.0 - x


def _sqrt(x: np.ndarray) -> np.ndarray:
    return 1.0 - np.sqrt(x)


def _log(x: np.ndarray) -> np.ndarray:
    return 1.0 - np.log1p(9.0 * x) / math.log(10.0)


_CURVES = {"linear": _linear, "sqrt": _sqrt, "log": _log}


def _read_table(path: Path, n_labels: int) -> np.ndarray:
    """Read one value per label from a CSV (``t,g`` with header) or a plain list."""
    if not path.is_file():
        raise SemtileError(f"{path}: hypothesis table not found")
    values: dict[int, float] = {}
    plain: list[float] = []
    with path.open(newline="") as handle:
        for row in csv.reader(handle):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            try:
                numbers = [float(c) for c in cells]
            except ValueError:
                continue  # a header line
            if len(numbers) == 1:
                plain.append(numbers[0])
            else:
                values[int(numbers[0])] = numbers[1]
    if values:
        missing = [t for t in range(n_labels) if t not in values]
        if missing:
            raise SemtileError(f"{path}: hypothesis table has no value for labels {missing}")
        table = np.array([values[t] for t in range(n_labels)], dtype=np.float64)
    else:
        if len(plain) != n_labels:
            raise SemtileError(
                f"{path}: hypothesis table has {len(plain)} values, expected one per label ({n_labels})"
            )
        table = np.array(plain, dtype=np.float64)
    if np.any(table < 0) or np.any(table > 1):
        raise SemtileError(f"{path}: hypothesis values must lie in [0, 1]")
    return table


def parse_hypothesis(spec: str) -> str:
    """Validate a hypothesis name (``linear``, ``sqrt``, ``log`` or ``table:FILE``)."""
    if spec in _CURVES or (spec.startswith("table:") and len(spec) > len("table:")):
        return spec
    raise SemtileError(
        f"unknown hypothesis {spec!r}: choose one of {', '.join(HYPOTHESES)} or table:FILE"
    )


def hypothesis_values(spec: str, n_labels: int) -> np.ndarray:
    """Return g(t) for t = 0 .. n_labels-1 as a float64 array.

    Parameters
    ----------
    spec : str
        ``linear`` (g = 1 - x), ``sqrt`` (g = 1 - sqrt(x)), ``log``
        (g = 1 - ln(1 + 9x)/ln 10), with x = t / (T - 1); or ``table:FILE``.
    n_labels : int
        Number of labels T (at least 2 for the analytic curves).
    """
    parse_hypothesis(spec)
    if n_labels < 1:
        raise SemtileError(f"need at least one label, got {n_labels}")
    if spec.startswith("table:"):
        return _read_table(Path(spec[len("table:"):]), n_labels)
    if n_labels < 2:
        raise SemtileError("an analytic hypothesis needs at least 2 labels")
    x = np.arange(n_labels, dtype=np.float64) / (n_labels - 1)
    return np.clip(_CURVES[spec](x), 0.0, 1.0)
