"""The Zarr v3 directory store of semtile before OME-Zarr: one plain group per image.

Old stores stay readable and writable with it; new stores are OME-Zarr
(:mod:`semtile.store.ome_zarr`), and :func:`semtile.store.open_store` opens
each with the backend that wrote it.

Layout: the root group's ``zarr.json`` carries ``semtile_store: 1``; each result
is a child group (its name from ``claim``) with the arrays ``mask`` (float32,
chunks of at most 512 x 512), ``binary_mask`` (bool, same chunks) and
``class_probs`` (float32), and the attributes ``source_path``, ``labels``,
``label``, ``adhesive_ratio`` followed by ``ImageResult.attrs`` and, when the
result has one, its completion record under ``semtile_record``. Extra maps
(``ImageResult.maps``) are plain float32 (or float16) arrays ``<map>`` beside
the mask, their attributes under ``semtile_maps``. The image
(``ImageResult.image``) is not kept. Claims and temporaries live in the hidden
folder ``.semtile`` (see :mod:`semtile.store.directory`); stores written
before it may hold ``.partial-*``/``.retired-*`` groups, which are never results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.store.base import ARRAYS, RESULT_KEYS, ImageResult, StoredResult, jsonable, map_dtype, source_key
from semtile.store.directory import DirectoryStore
from semtile.store.encoding import encode_mask

__all__ = ["ZarrDirectoryStore", "ROOT_KEY"]

ROOT_KEY = "semtile_store"  # the root attribute of this format
RECORD_KEY = "semtile_record"
MAPS_KEY = "semtile_maps"
CHUNK = 512


class ZarrDirectoryStore(DirectoryStore):
    """A local Zarr v3 directory holding one plain group per image (semtile's format before OME-Zarr)."""

    def _new_root_attrs(self) -> dict:
        return {ROOT_KEY: 1}

    def _adopt_root(self, attrs: dict) -> None:
        if isinstance(attrs.get("semtile"), dict) and attrs["semtile"].get("store") == "ome-zarr":
            raise SemtileError(f"{self.path}: an OME-Zarr result store, not a Zarr-directory one "
                               "(open it with semtile.store.open_store)")
        if self.read_only and ROOT_KEY not in attrs:
            raise SemtileError(f"{self.path}: a Zarr group, but not a semtile result store")
        if not self.read_only:
            self.root.attrs.setdefault(ROOT_KEY, 1)

    def _source_of(self, attrs: dict) -> str | None:
        source = attrs.get("source_path")
        return str(source) if source is not None else None

    def _record_of(self, attrs: dict) -> dict | None:
        record = attrs.get(RECORD_KEY)
        return record if isinstance(record, dict) else None

    def _check(self, result: ImageResult) -> None:
        for key in (RECORD_KEY, MAPS_KEY):
            if key in result.attrs:
                raise SemtileError(f"{result.source}: attrs ['{key}'] would shadow the result's own fields")

    def _write_group(self, staged: Path, result: ImageResult, timings: dict | None = None) -> None:
        group = zarr.open_group(str(staged), mode="w-", zarr_format=3)
        rows, cols = result.mask.shape
        chunks = (min(rows, CHUNK), min(cols, CHUNK))
        # The earlier format, byte for byte (float32 mask, zarr's default codecs, no checksums).
        group.create_array("mask", data=encode_mask(result.mask, "float32"), chunks=chunks)
        group.create_array("binary_mask", data=np.asarray(result.binary_mask).astype(bool, copy=False),
                           chunks=chunks)
        group.create_array("class_probs", data=np.asarray(result.class_probs).astype(np.float32, copy=False))
        attrs = {"source_path": source_key(result.source), "labels": list(result.labels), "label": result.label,
                 "adhesive_ratio": float(result.adhesive_ratio), **result.attrs}
        if result.record is not None:
            attrs[RECORD_KEY] = result.record
        maps = self._write_maps(staged, result.maps, result.map_attrs, None)
        if maps:
            attrs[MAPS_KEY] = maps
        group.attrs.update(jsonable(attrs))

    # -- extra maps ----------------------------------------------------------------------------------

    def _maps_of(self, attrs: dict) -> dict:
        maps = attrs.get(MAPS_KEY)
        return dict(maps) if isinstance(maps, dict) else {}

    def _write_maps(self, staged: Path, maps: dict, map_attrs: dict, pixel_size, timings: dict | None = None) -> dict:
        """Each map as a plain array at the top of the result group ``staged``; returns name -> its attributes."""
        if not maps:
            return {}
        group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
        out = {}
        for name, array in maps.items():
            data = np.asarray(array[...] if not isinstance(array, np.ndarray) else array)
            dtype = map_dtype(data)
            chunks = (*data.shape[:-2], *(min(s, CHUNK) for s in data.shape[-2:]))
            group.create_array(name, data=data.astype(dtype, copy=False), chunks=chunks)
            out[name] = jsonable({**dict(map_attrs.get(name) or {}), "dtype": str(dtype), "shape": list(data.shape),
                                  "levels": 1})
        return out

    def _set_maps(self, staged: Path, maps: dict) -> None:
        group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
        group.attrs[MAPS_KEY] = maps

    def _pixel_size(self, attrs: dict):
        return attrs.get("pixel_size_m")

    def _open_result(self, name: str, attrs: dict) -> StoredResult:
        attrs = dict(attrs)
        core = {key: attrs.pop(key) for key in RESULT_KEYS if key in attrs}
        if len(core) < len(RESULT_KEYS):
            raise SemtileError(f"{self.path}/{name}: result lacks {sorted(set(RESULT_KEYS) - set(core))}")
        record = attrs.pop(RECORD_KEY, None)
        maps = self._maps_of(attrs)
        attrs.pop(MAPS_KEY, None)
        opened: list[zarr.Group] = []

        def open_array(key: str):
            key = key.removeprefix("stored:")  # stored as read: float32 probability, bool, float32
            if key not in ARRAYS:
                raise SemtileError(f"{self.path}/{name}: no array {key!r} (this store format keeps no {key})")
            if not opened:
                opened.append(zarr.open_group(str(self.path / name), mode="r", zarr_format=3))
            try:
                return opened[0][key]
            except KeyError:
                raise SemtileError(f"{self.path}/{name}: array {key!r} is missing") from None

        def open_map(map_name: str, level: int = 0):
            if int(level) != 0:
                raise SemtileError(f"{self.path}/{name}: map {map_name!r} has no level {level} (this store format "
                                   "keeps full resolution only)")
            if not opened:
                opened.append(zarr.open_group(str(self.path / name), mode="r", zarr_format=3))
            try:
                return opened[0][map_name]
            except KeyError:
                raise SemtileError(f"{self.path}/{name}: map {map_name!r} is missing") from None

        return StoredResult(name=name, source=Path(core["source_path"]), labels=list(core["labels"]),
                            label=core["label"], adhesive_ratio=float(core["adhesive_ratio"]), attrs=attrs,
                            open_array=open_array, record=record if isinstance(record, dict) else None,
                            maps=maps, open_map=open_map)
