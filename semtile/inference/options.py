"""How scans are tiled and judged: the options of ``semtile process`` (light: no dask, torch or numba)."""

from __future__ import annotations

from dataclasses import dataclass

from semtile.errors import SemtileError
from semtile.inference.split import GridRule
from semtile.inference.strategy import BLOCK_PIXELS, REGION_PIXELS

__all__ = ["MIN_SIDE", "REGION_PIXELS", "ProcessOptions"]

#: Smallest valid area (either side) semtile will analyse; smaller ones are reported.
MIN_SIDE = 16


@dataclass(frozen=True)
class ProcessOptions:
    """How scans are tiled and judged; ``halo=None`` takes :func:`default_halo` of the tile."""

    tile: int = 256
    halo: int | None = None
    batch_size: int = 8
    threshold: float = 0.5
    page: int = 0
    databar_rows: int | None = None
    max_pixels: int | None = None  # pixel budget per scan, from its header (None: the reader's default)
    region_pixels: int = REGION_PIXELS  # larger scans go region by region (0: every scan)
    block_pixels: int = BLOCK_PIXELS  # region by region: side of the tile blocks one engine task blends

    def __post_init__(self) -> None:
        if self.halo is None:
            object.__setattr__(self, "halo", GridRule.derive(self.tile).halo)

    def rule(self, multiple: int) -> GridRule:
        """The segmenter's grid rule for these options (SemtileError when the tile or halo does not fit)."""
        return GridRule.derive(self.tile, self.halo, multiple=multiple)

    def validate(self, multiple: int) -> None:
        self.rule(multiple)
        if self.batch_size < 1:
            raise SemtileError("--batch-size must be at least 1")
        if not 0.0 < self.threshold < 1.0:
            raise SemtileError("--threshold must lie strictly between 0 and 1")
        if self.block_pixels < 1:
            raise SemtileError("block_pixels must be at least 1")
        if self.region_pixels < 0:
            raise SemtileError("--region-pixels must be at least 0")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise SemtileError("--max-pixels must be at least 1")
