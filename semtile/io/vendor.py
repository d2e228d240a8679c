"""What a scan's TIFF tags say about it: vendor, pixel size and FEI's data-bar height.

The pixel size comes from FEI (``Scan.PixelWidth``), Zeiss
(``ap_image_pixel_size``) or semtile's own JSON description
(``pixel_size_m``). Metadata is a bonus, never a requirement: a missing or
malformed tag gives None, never an error, so it cannot make an otherwise
readable image unreadable.
"""

from __future__ import annotations

import json
import math
from typing import Any

import tifffile

__all__ = ["fei_metadata", "read_pixel_size", "fei_databar"]

_UNIT_TO_M = {
    "pm": 1e-12,
    "a": 1e-10,
    "å": 1e-10,
    "nm": 1e-9,
    "µm": 1e-6,  # micro sign U+00B5
    "μm": 1e-6,  # Greek mu U+03BC
    "um": 1e-6,
    "mm": 1e-3,
    "cm": 1e-2,
    "m": 1.0,
}


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _tag_dict(tif: tifffile.TiffFile, page: tifffile.TiffPage, codes: tuple[int, ...]) -> dict[str, Any]:
    """Merged dict-valued tags ``codes`` of ``page``, else of the first page."""
    for candidate in (page, tif.pages.first):
        result: dict[str, Any] = {}
        for code in codes:
            try:
                value = candidate.tags.valueof(code)
            except Exception:  # noqa: BLE001 - a malformed tag must not make the image unreadable
                value = None
            if isinstance(value, dict):
                result.update(value)
        if result:
            return result
    return {}


def fei_metadata(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> dict[str, Any]:
    """The FEI metadata of ``page`` (else of the first page) as a dict; empty if none."""
    return _tag_dict(tif, page, (34680, 34682))  # FEI_SFEG, FEI_HELIOS


def read_pixel_size(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> tuple[str | None, float | None, str | None]:
    """Return (vendor, pixel size in metres, source). Metadata problems give None."""
    vendor: str | None = None
    fei = fei_metadata(tif, page)
    if fei:
        vendor = "FEI"
        scan_meta = fei.get("Scan")
        size = _positive(scan_meta.get("PixelWidth")) if isinstance(scan_meta, dict) else None
        if size is not None:
            return vendor, size, "fei"
    sem = _tag_dict(tif, page, (34118,))  # CZ_SEM
    if sem:
        vendor = vendor or "Zeiss"
        for key in ("ap_image_pixel_size", "ap_pixel_size"):
            size = _zeiss_length(sem.get(key))
            if size is not None:
                return vendor, size, "zeiss"
    for candidate in (page, tif.pages.first):
        size = _semtile_pixel_size(getattr(candidate, "description", ""))
        if size is not None:
            return vendor, size, "semtile"
    return vendor, None, None


def _zeiss_length(entry: Any) -> float | None:
    """Convert a Zeiss ``(name, value, unit)`` entry to metres."""
    if not isinstance(entry, (tuple, list)) or len(entry) < 2:
        return None
    value, unit = entry[-2], entry[-1]
    factor = _UNIT_TO_M.get(str(unit).strip().lower()) if isinstance(unit, str) else None
    v = _positive(value)
    if factor is None or v is None:
        return None
    return v * factor


def _semtile_pixel_size(description: str | None) -> float | None:
    if not description or not description.lstrip().startswith("{"):
        return None
    try:
        meta = json.loads(description)
    except ValueError:
        return None
    return _positive(meta.get("pixel_size_m")) if isinstance(meta, dict) else None


def fei_databar(meta: dict[str, Any], rows: int) -> int | None:
    """Data-bar height from FEI metadata, or None if it does not say (sensibly)."""
    private = meta.get("PrivateFei")
    height = private.get("DatabarHeight") if isinstance(private, dict) else None
    try:
        if height is not None and 0 <= int(height) < rows:
            return int(height)
    except (TypeError, ValueError, OverflowError):  # OverflowError: "inf"
        pass
    # no usable DatabarHeight: the bar is what lies below the image's own rows
    image = meta.get("Image")
    try:
        res_y = int(image["ResolutionY"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if 0 < res_y < rows:
        return rows - res_y
    return None
