"""What happened to one input of a run (light: the planning side imports it without the runner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ImageOutcome"]


@dataclass
class ImageOutcome:
    path: Path
    status: str  # "ok" or "error"
    group: str | None = None
    label: object = None
    adhesive_ratio: float | None = None
    pixel_size_m: float | None = None
    databar_rows: int | None = None
    error: str | None = None
    timings: dict = field(default_factory=dict)
    anomaly_fraction: float | None = None  # with --anomaly
