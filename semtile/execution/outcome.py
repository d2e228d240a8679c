"""What happened to one input of a run (light: the planning side imports it without the runner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semtile.errors import ImageError
from semtile.logs import get_logger

__all__ = ["ImageOutcome", "failed_outcome", "log_outcome"]

log = get_logger("semtile.process")


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
    columns: dict = field(default_factory=dict)  # the run-table columns the passes fill (e.g. anomaly_fraction)

    @property
    def anomaly_fraction(self) -> float | None:
        return self.columns.get("anomaly_fraction")


def failed_outcome(path: Path, exc: BaseException) -> ImageOutcome:
    """The outcome of a scan that failed with ``exc``, logged (with the traceback when it was unforeseen)."""
    error = exc.reason if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, ImageError):
        log.error("image_error", path=str(path), error=error, exc_info=exc)
    log.warning("image_failed", path=str(path), error=error, kind=type(exc).__name__)
    return ImageOutcome(path=Path(path), status="error", error=error)


def log_outcome(outcome: ImageOutcome) -> ImageOutcome:
    """Log a large scan's outcome (its regions were written by other steps); returns it."""
    log.info("image", path=str(outcome.path), status="ok", group=outcome.group, label=outcome.label,
             adhesive_ratio=round(outcome.adhesive_ratio, 4), pixel_size_m=outcome.pixel_size_m,
             databar_rows=outcome.databar_rows, timings=outcome.timings, regions=True)
    return outcome
