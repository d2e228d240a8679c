"""Where results go: the result-store interface, its backends, the run table, provenance."""

import json
from pathlib import Path

from semtile.errors import SemtileError
from semtile.store.base import ImageResult, ResultStore, StoredResult

# How arrays are stored and decoded (the uint8 probability convention, shared with the GPU path).
from semtile.store.encoding import (
    DEFAULT_MASK_DTYPE,
    MASK_DTYPES,
    PROBABILITY_SCALE,
    decode_probability,
    encode_probability_u8,
    stored_scale,
)

# What readers above the store need of the OME-Zarr layout: the adhesive label image's name, the scale of the
# stored uint16 image and the pyramid's level shapes. Only semtile/store/ imports the backends themselves.
from semtile.store.ome_zarr import LABEL, QUANT, OmeZarrStore, level_shapes
from semtile.store.ownership import host_name, process_alive
from semtile.store.table import RUN_COLUMNS, RunTable, default_csv_path
from semtile.store.zarr_dir import ROOT_KEY as _ZARR_DIR_KEY
from semtile.store.zarr_dir import ZarrDirectoryStore

__all__ = ["ImageResult", "ResultStore", "StoredResult", "OmeZarrStore", "ZarrDirectoryStore", "RunTable",
           "RUN_COLUMNS", "default_csv_path", "open_store", "LABEL", "QUANT", "level_shapes", "host_name",
           "process_alive", "MASK_DTYPES", "DEFAULT_MASK_DTYPE", "PROBABILITY_SCALE", "encode_probability_u8",
           "decode_probability", "stored_scale"]


def open_store(path: str | Path, mode: str = "a") -> ResultStore:
    """The result store at ``path``: ``mode="a"`` opens or creates it, ``mode="r"`` only opens an existing one.

    A new store (no folder, or an empty one) is OME-Zarr (:class:`OmeZarrStore`); an existing one is opened
    with the backend that wrote it, told by its root attributes (:class:`ZarrDirectoryStore` for semtile's
    earlier format). Raises SemtileError naming ``path`` when it is not (and, for "a", cannot become) a
    semtile store.
    """
    if mode not in ("r", "a"):
        raise SemtileError(f"store mode {mode!r}: expected 'r' or 'a'")
    try:
        attrs = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8")).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        attrs = {}
    if isinstance(attrs, dict) and _ZARR_DIR_KEY in attrs:
        return ZarrDirectoryStore(path, mode=mode)
    return OmeZarrStore(path, mode=mode)
