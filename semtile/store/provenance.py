"""Provenance: what produced a result (inputs, model, engine, versions, parameters)."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from semtile.io.discover import sha256_file  # re-exported: the one implementation lives with file discovery
from semtile.store.written import write_file

__all__ = ["package_versions", "provenance_record", "sha256_file", "PROVENANCE_DOCUMENT", "provenance_stub",
           "write_provenance", "read_provenance"]

_PACKAGES = ("semtile", "torch", "numpy", "numba", "dask", "zarr", "tifffile", "imagecodecs", "click", "structlog")


def package_versions() -> dict[str, str]:
    """The versions of Python, the platform and the packages semtile runs on (a new dict each call)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    # Read once per process: parsing every package's METADATA cost about 9 ms a result. A process keeps the
    # modules it imported first, so the versions found first are the ones it runs on.
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return tuple(versions.items())


def provenance_record(*, inputs: dict, model: dict, engine: dict, parameters: dict) -> dict:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": inputs,
        "model": model,
        "engine": engine,
        "versions": package_versions(),
        "parameters": parameters,
    }


# -- where a result's provenance is kept --------------------------------------------------------------
# A result's full provenance (the model cards' training histories included: tens of kilobytes) is a
# JSON document of its own beside the group's zarr.json, written into the staged group and so published
# with it by the same rename. The group's attributes keep a small stub: the document's name and sha256
# and the essential facts (input, model sha256s, engine, parameters), so that viewers that print a
# group's attributes (napari-ome-zarr does) print a few hundred bytes. Readers put the document back.

PROVENANCE_DOCUMENT = "provenance.json"
_SMALL = 256  # a model part's entries up to this many bytes of JSON stay in the stub


def _small(value: object) -> bool:
    return len(json.dumps(value, default=str)) <= _SMALL


def provenance_stub(provenance: dict, digest: str) -> dict:
    """The attributes' stand-in for ``provenance`` kept in the document with sha256 ``digest``."""
    stub: dict = {"document": PROVENANCE_DOCUMENT, "sha256": digest}
    for key in ("created", "engine", "parameters"):
        if key in provenance:
            stub[key] = provenance[key]
    inputs = provenance.get("input")
    if isinstance(inputs, dict):
        stub["input"] = {k: v for k, v in inputs.items() if k in ("path", "sha256", "page")}
    model = provenance.get("model")
    if isinstance(model, dict):
        stub["model"] = {part: ({k: v for k, v in facts.items() if _small(v)} if isinstance(facts, dict) else facts)
                         for part, facts in model.items()}
    return stub


def write_provenance(folder: Path, attrs: dict) -> dict:
    """Write ``attrs["provenance"]`` as the document in the result folder ``folder``; the attrs with its stub.

    ``attrs`` without a provenance dict come back as they are (nothing is written).
    """
    provenance = attrs.get("provenance")
    if not isinstance(provenance, dict) or not provenance:
        return attrs
    data = json.dumps(provenance, separators=(",", ":"), default=str).encode("utf-8")  # compact: 30% smaller
    write_file(Path(folder) / PROVENANCE_DOCUMENT, [data])
    return {**attrs, "provenance": provenance_stub(provenance, hashlib.sha256(data).hexdigest())}


def read_provenance(folder: Path, attrs: dict) -> dict:
    """``attrs`` with the full provenance: read from the document its stub names (older results: inline).

    A document that is missing or damaged leaves the stub, marked ``"document_unreadable": True``.
    """
    stub = attrs.get("provenance")
    if not isinstance(stub, dict) or not isinstance(stub.get("document"), str) or "/" in stub["document"]:
        return attrs
    try:
        provenance = json.loads((Path(folder) / stub["document"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        provenance = None
    if not isinstance(provenance, dict):
        return {**attrs, "provenance": {**stub, "document_unreadable": True}}
    return {**attrs, "provenance": provenance}
