"""Provenance: what produced a result (inputs, model, engine, versions, parameters)."""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_versions", "provenance_record", "sha256_file"]

_PACKAGES = ("semtile", "torch", "numpy", "numba", "dask", "zarr", "tifffile", "imagecodecs", "click", "structlog")


def sha256_file(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks (raises OSError)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": inputs,
        "model": model,
        "engine": engine,
        "versions": package_versions(),
        "parameters": parameters,
    }
