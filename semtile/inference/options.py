"""How scans are tiled and judged: the options of ``semtile process`` (light: no dask, torch or numba)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from semtile.errors import SemtileError
from semtile.inference.split import GridRule
from semtile.inference.strategy import BLOCK_PIXELS, REGION_PIXELS

__all__ = ["MIN_SIDE", "REGION_PIXELS", "ProcessOptions", "host_cores"]

#: Smallest valid area (either side) semtile will analyse; smaller ones are reported.
MIN_SIDE = 16


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
    mask_dtype: str = "uint8"  # how the store keeps the probability: uint8 round(p * 255), float16 or float32
    host_threads: int | None = None  # threads that prepare (read, decode, normalise) and write scans (None: the cores)

    def __post_init__(self) -> None:
        if self.halo is None:
            object.__setattr__(self, "halo", GridRule.derive(self.tile).halo)

    @property
    def threads(self) -> int:
        """Threads preparing and writing scans: ``host_threads``, else the cores this process may run on."""
        return self.host_threads or host_cores()

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
        if self.mask_dtype not in ("uint8", "float16", "float32"):
            raise SemtileError(f"--mask-dtype {self.mask_dtype!r}: expected uint8, float16 or float32")
        if self.host_threads is not None and self.host_threads < 1:
            raise SemtileError("--host-threads must be at least 1")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise SemtileError("--max-pixels must be at least 1")
