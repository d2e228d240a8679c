"""Where results go: the result-store interface, its backends, the run table, provenance."""

from pathlib import Path

from semtile.store.base import ImageResult, ResultStore, StoredResult
from semtile.store.table import RUN_COLUMNS, RunTable, default_csv_path
from semtile.store.zarr_dir import ZarrDirectoryStore

__all__ = ["ImageResult", "ResultStore", "StoredResult", "ZarrDirectoryStore", "RunTable", "RUN_COLUMNS",
           "default_csv_path", "open_store"]


def open_store(path: str | Path, mode: str = "a") -> ResultStore:
    """The result store at ``path``: ``mode="a"`` opens or creates it, ``mode="r"`` only opens an existing one.

    Raises SemtileError naming ``path`` when it is not (and, for "a", cannot become) a semtile store.
    """
    return ZarrDirectoryStore(path, mode=mode)
