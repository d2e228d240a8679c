"""Hypothesis curves g(t): the adhesive-area fraction expected for label t.

The same definitions serve ``semtile synth --truth`` (to generate surfaces
with a known curve) and weak-label training (to regress the mean of the
segmenter's mask onto g(t)), so a curve means the same thing everywhere.
They live here, with the synthetic data, because synth stands below science
(ARCHITECTURE.md); :mod:`semtile.science.hypotheses` re-exports them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError

__all__ = ["HYPOTHESES", "hypothesis_values", "parse_hypothesis", "parse_g_range", "is_learned"]

HYPOTHESES = ("linear", "sqrt", "log", "exp", "power:K", "table:FILE", "learned")


def _linear(x: np.ndarray) -> np.ndarray:
    return 1.0 - x


def _sqrt(x: np.ndarray) -> np.ndarray:
    return 1.0 - np.sqrt(x)


def _log(x: np.ndarray) -> np.ndarray:
    return 1.0 - np.log1p(9.0 * x) / math.log(10.0)


def _exp(x: np.ndarray) -> np.ndarray:
    # A fast early fall, normalised to the same ends: (e^-3x - e^-3) / (1 - e^-3).
    return (np.exp(-3.0 * x) - math.exp(-3.0)) / (1.0 - math.exp(-3.0))


_CURVES = {"linear": _linear, "sqrt": _sqrt, "log": _log, "exp": _exp}


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


def _power_exponent(spec: str) -> float:
    try:
        k = float(spec[len("power:"):])
    except ValueError:
        raise SemtileError(f"{spec!r}: power:K needs a number K, e.g. power:0.5") from None
    if not k > 0:
        raise SemtileError(f"{spec!r}: K must be positive")
    return k


def is_learned(spec: str) -> bool:
    return spec == "learned"


def parse_hypothesis(spec: str) -> str:
    """Validate a hypothesis: linear, sqrt, log, exp, power:K, table:FILE or learned."""
    if spec in _CURVES or spec == "learned" or (spec.startswith("table:") and len(spec) > len("table:")):
        return spec
    if spec.startswith("power:"):
        _power_exponent(spec)
        return spec
    raise SemtileError(f"unknown hypothesis {spec!r}: choose one of {', '.join(HYPOTHESES)}")


def parse_g_range(value: str | None) -> tuple[float, float] | None:
    """``HI,LO`` (default 1,0) -> (hi, lo); ``free`` -> None (ends learned too)."""
    if value is None or value == "":
        return (1.0, 0.0)
    if value == "free":
        return None
    try:
        hi, lo = (float(v) for v in value.split(","))
    except ValueError:
        raise SemtileError(f"--g-range {value!r}: expected HI,LO such as 1,0 (or 'free')") from None
    if not (0.0 <= lo < hi <= 1.0):
        raise SemtileError(f"--g-range {value!r}: need 0 <= LO < HI <= 1")
    return hi, lo


def hypothesis_values(spec: str, n_labels: int, g_range: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    """Return g(t) for t = 0 .. n_labels-1 as a float64 array.

    Parameters
    ----------
    spec : str
        ``linear`` (g = 1 - x), ``sqrt`` (g = 1 - sqrt(x)), ``log``
        (g = 1 - ln(1 + 9x)/ln 10), ``exp`` ((e^-3x - e^-3)/(1 - e^-3)),
        ``power:K`` (g = 1 - x^K), with x = t / (T - 1); or ``table:FILE``
        (one value per label, used as given). ``learned`` has no fixed values.
    n_labels : int
        Number of labels T (at least 2 for the analytic curves).
    g_range : (hi, lo)
        Analytic curves run from ``hi`` at t = 0 down to ``lo`` at t = T - 1.
    """
    parse_hypothesis(spec)
    if is_learned(spec):
        raise SemtileError("the learned hypothesis has no fixed values: it is fitted during training")
    if n_labels < 1:
        raise SemtileError(f"need at least one label, got {n_labels}")
    if spec.startswith("table:"):
        return _read_table(Path(spec[len("table:"):]), n_labels)
    if n_labels < 2:
        raise SemtileError("an analytic hypothesis needs at least 2 labels")
    x = np.arange(n_labels, dtype=np.float64) / (n_labels - 1)
    if spec.startswith("power:"):
        g = 1.0 - x ** _power_exponent(spec)
    else:
        g = _CURVES[spec](x)
    hi, lo = g_range
    return np.clip(lo + (hi - lo) * g, 0.0, 1.0)
