"""Where results go: the result-store interface, its Zarr implementation, the run table, provenance."""

from semtile.store.zarr_dir import ImageResult, ResultStore, RUN_COLUMNS, RunTable, default_csv_path

__all__ = ["ImageResult", "ResultStore", "RunTable", "RUN_COLUMNS", "default_csv_path", "open_store"]


def open_store(path) -> ResultStore:
    """The result store at ``path`` (created when missing)."""
    return ResultStore(path)
