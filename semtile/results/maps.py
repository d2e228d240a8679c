"""The extra maps of a result group: whatever arrays the store itself does not write.

Heat maps (``semtile explain``), anomaly maps (``semtile process --anomaly``),
cluster maps and any other 2-D or 3-D array, image pyramid or label image a
result group holds beyond the standard ones. They are found by listing the
group's folder and reading only the metadata of unknown entries, so a store
of thousands of results lists quickly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from semtile.store import LABEL

__all__ = ["MapInfo", "find_maps"]

# The entries of a result group that are the store's own; anything else is a map.
_OME_STANDARD = {"labels", "mask", "class_probs", "zarr.json"}  # and the levels "0", "1", ...
_PLAIN_STANDARD = {"mask", "binary_mask", "class_probs", "zarr.json"}


@dataclass(frozen=True)
class MapInfo:
    """An extra map in a result group: its name and the paths of its levels, finest first."""

    name: str
    paths: tuple[str, ...]
    label_image: bool = False  # an NGFF label image (integer classes) rather than a continuous map


def find_maps(group: Path, ome: bool = True) -> dict[str, MapInfo]:
    """The extra maps in the result group folder ``group``: whatever the store itself does not write.

    * a 2-D or 3-D array at the top of the group (``heat``: one path);
    * a group at the top holding levels ``0``, ``1``... (an image pyramid of a map: its levels);
    * a label image under ``labels/`` other than the adhesive mask (``labels/clusters``), as NGFF allows.

    Found by listing the folder and reading only the metadata of unknown entries,
    so a store of thousands of results lists quickly.
    """
    standard = _OME_STANDARD if ome else _PLAIN_STANDARD
    found: dict[str, MapInfo] = {}
    for entry in _entries(group):
        if entry in standard or entry.startswith(".") or (ome and entry.isdigit()):
            continue
        meta = _meta(group / entry)
        if meta is None:
            continue
        if meta.get("node_type") == "array" and len(meta.get("shape", ())) in (2, 3):
            found[entry] = MapInfo(entry, (entry,))
        elif meta.get("node_type") == "group":
            levels = _levels(group / entry, meta)
            if levels:
                found[entry] = MapInfo(entry, tuple(f"{entry}/{p}" for p in levels))
    if ome:
        for entry in _entries(group / "labels"):
            if entry == LABEL or entry == "zarr.json" or entry.startswith("."):
                continue
            meta = _meta(group / "labels" / entry)
            levels = _levels(group / "labels" / entry, meta) if meta and meta.get("node_type") == "group" else []
            if levels:
                name = f"labels/{entry}"
                found[name] = MapInfo(name, tuple(f"{name}/{p}" for p in levels), label_image=True)
    return dict(sorted(found.items()))


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _levels(folder: Path, meta: dict) -> list[str]:
    """The level paths of a multiscale group (from its NGFF metadata, else its arrays 0, 1...), 2-D/3-D only."""
    paths = []
    try:
        paths = [str(d["path"]) for d in meta["attributes"]["ome"]["multiscales"][0]["datasets"]]
    except (KeyError, IndexError, TypeError):
        k = 0
        while (folder / str(k) / "zarr.json").is_file():
            paths.append(str(k))
            k += 1
    good = []
    for path in paths:
        level = _meta(folder / path)
        if level and level.get("node_type") == "array" and len(level.get("shape", ())) in (2, 3):
            good.append(path)
    return good if len(good) == len(paths) else []
