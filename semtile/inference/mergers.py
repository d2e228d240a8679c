"""The merger a scan is blended by, built from the strategy :func:`~semtile.inference.strategy.merge_strategy` chose."""

from __future__ import annotations

from semtile.inference.merge import BlendMerger, Merger
from semtile.inference.split import TileGrid
from semtile.inference.strategy import DEVICE, MEMORY, REGION_SIDE, REGIONS

__all__ = ["make_merger"]


def make_merger(strategy: str, grid: TileGrid, *, device=None, stream=None, folder=None, block_pixels=None,
                region: int | None = None) -> Merger:
    """The merger of ``strategy`` (:func:`~semtile.inference.strategy.merge_strategy`) for ``grid``.

    ``device``/``stream``: where a runner keeps its maps (device); ``folder``,
    ``block_pixels`` and ``region``: the partial sums' folder and the plan (regions).
    """
    if strategy == MEMORY:
        return BlendMerger(grid)
    if strategy == DEVICE:
        from semtile.inference.merge_device import DeviceMerger

        return DeviceMerger(grid, device, stream)
    if strategy == REGIONS:
        from semtile.inference.regions import RegionMerger, RegionPlan

        plan = RegionPlan.for_grid(grid, region=region or REGION_SIDE, block_pixels=block_pixels)
        return RegionMerger(plan, folder)
    raise ValueError(f"unknown merge strategy {strategy!r}")
