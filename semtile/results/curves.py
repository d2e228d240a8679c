"""The hypothesis curve g(t) of a segmenter, from a result's provenance or the card beside its weights."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def recorded_curve(training: Any, labels: list, source: str) -> dict | None:
    if not isinstance(training, dict):
        return None
    g = training.get("g")
    if not isinstance(g, list) or len(g) != len(labels) or not all(_number(v) is not None for v in g):
        return None
    return {"labels": list(labels), "g": [float(v) for v in g], "hypothesis": training.get("hypothesis"),
            "source": source}


def card_curve(weights: Path, sha256: str | None, labels: list) -> dict | None:
    card = weights.with_suffix(".json")
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (sha256 and data.get("sha256") != sha256):
        return None  # another model now sits at that path
    return recorded_curve(data.get("training"), labels, str(card))
