"""Provenance: what produced a result (inputs, model, engine, versions, parameters)."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from semtile.io.discover import sha256_file  # re-exported: the one implementation lives with file discovery

__all__ = ["package_versions", "provenance_record", "sha256_file"]

_PACKAGES = ("semtile", "torch", "numpy", "numba", "dask", "zarr", "tifffile", "imagecodecs", "click", "structlog")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance_record(*, inputs: dict, model: dict, engine: dict, parameters: dict) -> dict:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": inputs,
        "model": model,
        "engine": engine,
        "versions": package_versions(),
        "parameters": parameters,
    }
