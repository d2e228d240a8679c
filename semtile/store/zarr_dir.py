"""The local Zarr v3 directory store: one group per image.

Layout: the root group's ``zarr.json`` carries ``semtile_store: 1``; each result
is a child group (its name from ``name_for``) with the arrays ``mask`` (float32,
chunks of at most 512 x 512), ``binary_mask`` (bool, same chunks) and
``class_probs`` (float32), and the attributes ``source_path``, ``labels``,
``label``, ``adhesive_ratio`` followed by ``ImageResult.attrs``.

A result is written as a hidden group (``.partial-*``) and renamed into place
once complete. Replacing a name moves the old group aside (``.retired-*``),
renames the new one in and deletes the old: between the two renames readers see
no result of that name, never a mixture. Hidden entries are never results.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.store.base import (ARRAYS, RESULT_KEYS, ImageResult, ResultStore, StoredResult, check_result,
                                pick_name, source_key)

__all__ = ["ZarrDirectoryStore"]

_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata")  # never a result's name
CHUNK = 512


class ZarrDirectoryStore(ResultStore):
    """A local Zarr v3 directory holding one group per image.

    ``mode="a"`` opens or creates the store (refusing a file, or a non-empty
    folder that is no Zarr store); ``mode="r"`` opens an existing semtile store
    read-only and creates nothing. Either raises SemtileError naming the path.
    """

    def __init__(self, path: str | Path, mode: str = "a"):
        if mode not in ("r", "a"):
            raise SemtileError(f"store mode {mode!r}: expected 'r' or 'a'")
        self.path, self.read_only = Path(path), mode == "r"
        if self.path.exists() and not self.path.is_dir():
            raise SemtileError(f"{self.path}: exists and is not a result store (a Zarr directory)")
        if self.read_only and not self.path.is_dir():
            raise SemtileError(f"{self.path}: result store not found")
        if not self.read_only and self.path.is_dir() and not (self.path / "zarr.json").is_file() \
                and any(self.path.iterdir()):
            raise SemtileError(f"{self.path}: a folder that is not a Zarr store; refusing to write results into it")
        try:
            self.root = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
        except Exception as exc:  # noqa: BLE001 - whatever zarr says, this is no store of ours
            raise SemtileError(f"{self.path}: not a semtile result store ({type(exc).__name__}: {exc})") from None
        if self.read_only and "semtile_store" not in self.root.attrs:
            raise SemtileError(f"{self.path}: a Zarr group, but not a semtile result store")
        if not self.read_only:
            self.root.attrs.setdefault("semtile_store", 1)
        # Names taken, and by which input file, so reruns replace only their own groups.
        self._owners = {name: str(group.attrs["source_path"]) for name, group in self._groups()}

    def _groups(self):
        for name, group in self.root.groups():
            if not name.startswith(".") and "source_path" in group.attrs:
                yield name, group

    def name_for(self, source: str | Path) -> str:
        occupied = [*_METADATA, *(p.name for p in self.path.iterdir())] if self.path.is_dir() else _METADATA
        name = pick_name(source, self._owners, occupied)
        self._owners[name] = source_key(source)
        return name

    def names(self) -> list[str]:
        return sorted(name for name, _ in self._groups())

    def read(self, name: str) -> StoredResult:
        group = None
        if isinstance(name, str) and name and not name.startswith(".") and "/" not in name and "\\" not in name:
            try:
                group = self.root[name]
            except KeyError:
                pass
        if not isinstance(group, zarr.Group) or "source_path" not in group.attrs:
            raise SemtileError(f"{self.path}: no result named {name!r}")
        attrs = dict(group.attrs)
        core = {key: attrs.pop(key) for key in RESULT_KEYS if key in attrs}
        if len(core) < len(RESULT_KEYS):
            raise SemtileError(f"{self.path}/{name}: result lacks {sorted(set(RESULT_KEYS) - set(core))}")

        def open_array(key: str):
            if key not in ARRAYS:
                raise SemtileError(f"{self.path}/{name}: no array {key!r}")
            try:
                return group[key]
            except KeyError:
                raise SemtileError(f"{self.path}/{name}: array {key!r} is missing") from None

        return StoredResult(name=name, source=Path(core["source_path"]), labels=list(core["labels"]),
                            label=core["label"], adhesive_ratio=float(core["adhesive_ratio"]), attrs=attrs,
                            open_array=open_array)

    def write(self, name: str, result: ImageResult) -> None:
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot write {name!r}")
        check_result(name, result)
        if name.casefold() in {m.casefold() for m in _METADATA}:
            raise SemtileError(f"{name!r}: the name of the store's own metadata")
        temp = f".partial-{uuid.uuid4().hex}"
        staged = self.path / temp
        try:
            group = self.root.create_group(temp)
            rows, cols = result.mask.shape
            chunks = (min(rows, CHUNK), min(cols, CHUNK))
            group.create_array("mask", data=np.asarray(result.mask).astype(np.float32, copy=False), chunks=chunks)
            group.create_array("binary_mask", data=np.asarray(result.binary_mask).astype(bool, copy=False),
                               chunks=chunks)
            group.create_array("class_probs", data=np.asarray(result.class_probs).astype(np.float32, copy=False))
            group.attrs.update({"source_path": source_key(result.source), "labels": list(result.labels),
                                "label": result.label, "adhesive_ratio": float(result.adhesive_ratio),
                                **result.attrs})
            self._swap_in(staged, self.path / name)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        self._owners[name] = source_key(result.source)

    def _swap_in(self, staged: Path, final: Path) -> None:
        """Rename ``staged`` to ``final``; an old ``final`` is moved aside first, and back if that fails."""
        if not final.exists():
            os.replace(staged, final)
            return
        retired = self.path / f".retired-{uuid.uuid4().hex}"
        os.replace(final, retired)
        try:
            os.replace(staged, final)
        except BaseException:
            os.replace(retired, final)
            raise
        shutil.rmtree(retired, ignore_errors=True)
