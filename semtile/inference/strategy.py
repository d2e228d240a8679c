"""How a scan's tiles are blended: in memory, on the engine's device, or region by region out of core.

The one decision (:func:`merge_strategy`) and its constants, stated once; light
(no dask, torch or numba), so planning a run imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["REGION_PIXELS", "BLOCK_PIXELS", "REGION_SIDE", "MEMORY", "DEVICE", "REGIONS", "merge_strategy"]

#: Scans of more pixels than this are blended region by region, out of core (bounded memory);
#: smaller ones in memory, several at once, batched across scans.
REGION_PIXELS = 16 * 2**20
#: Side, in pixels of tile cores, of the tile blocks one engine task blends out of core (~80 MB of canvases).
BLOCK_PIXELS = 3072
#: Side of the output regions of the out-of-core merger: a whole number of store chunks at every
#: pyramid level a region writes itself (the store checks it), so every output chunk has one writer.
REGION_SIDE = 2048

MEMORY, DEVICE, REGIONS = "memory", "device", "regions"


def merge_strategy(pixels: int, *, region_pixels: int = REGION_PIXELS, regions_possible: bool = True,
                   device: object = None) -> str:
    """Which merger blends a scan of ``pixels`` pixels.

    ``regions`` when it has more than ``region_pixels`` and its destination
    can take region writes (``regions_possible``); else ``device`` when the
    runner keeps its maps on a torch ``device``; else ``memory``.
    """
    if regions_possible and pixels > region_pixels:
        return REGIONS
    return DEVICE if device is not None else MEMORY
