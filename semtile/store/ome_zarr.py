"""The OME-Zarr store: OME-NGFF 0.5 on Zarr v3, one image group per scan (the format of new stores).

The root group's attributes are ``{"semtile": {"store": "ome-zarr", "version": 1}}``;
claims and temporaries live in the hidden folder ``.semtile``
(:mod:`semtile.store.directory`). Each result ``<name>`` is an NGFF image::

    <name>/zarr.json        ome: version "0.5", multiscales (axes y, x; a scale per level), omero (channel "scan")
                            semtile: source_path, labels, label, adhesive_ratio,
                                     attrs (ImageResult.attrs; provenance a stub), record
    <name>/provenance.json  the full provenance (semtile.store.provenance; old results: inline)
    <name>/0, 1, ...        the normalised image, level k downsampled 2**k times (uint8 or uint16, below)
    <name>/labels/zarr.json           ome: labels ["adhesive"]
    <name>/labels/adhesive/zarr.json  ome: image-label (label 1 "adhesive", its colour,
                                      source ../../) and multiscales with the image's levels
    <name>/labels/adhesive/0, 1, ...  uint8: 0 background, 1 adhesive
    <name>/mask             the adhesive probability, full resolution: uint8 round(p * 255) by
                            default, float16 or float32 on request (semtile.storage says which)
    <name>/class_probs      float32, one per label
    <name>/<map>/zarr.json  an extra map (ImageResult.maps: anomaly, heat maps...): ome multiscales
                            like the image's (a channel axis first for (C, rows, cols) maps)
    <name>/<map>/0, 1, ...  float32 (or float16), level k by 2 x 2 block means of level k-1
                            as stored; the map's attributes under semtile.maps[<map>]

``semtile.storage`` (also in the provenance) records how each array is stored
and decoded, and the codecs (:mod:`semtile.store.encoding`): zstd and a crc32c
checksum on every chunk, one zarr v3 shard per array for results written whole.

Choices:

* **Image no wider than the input**: 8-bit scans as uint8 ``round(v * 255)``,
  the bytes they came from; others as uint16 ``round(v * 65535)``, lossless for
  16-bit scans, within 7.6e-6 (half a step) for float, palette and RGB
  inputs. ``StoredResult.image`` reads either back as float32 in [0, 1]; the
  network never reads the stored image. Stores written before (uint16 for
  every scan) read the same way.
* **Levels** (:mod:`semtile.store.pyramid`): 2 x 2 block means of the level
  below as stored, in integers rounded half up (an odd last row or column is
  repeated), so a pyramid written whole and one written region by region are
  the same values, down to the first level whose smaller side is at most 512
  (a scan that small has no other level). Level k has scale
  ``2**k * pixel size`` and translation ``(2**k - 1) / 2 * pixel size``, so its
  pixel centres sit where the blocks' centres are; the unit is micrometer when
  ``attrs["pixel_size_m"]`` is known, else the scale is in pixels (1).
* **Large scans** are written region by region (:meth:`OmeZarrStore.stage`,
  :func:`write_region`, :meth:`OmeZarrStore.commit`), by any number of
  processes: their arrays are plain chunks (no shards), regions are whole
  chunks at every level they write, so each chunk file has one writer; the
  upper levels are built band by band at commit.
* **Labels by 2 x 2 block max** over the same blocks: a coarse pixel is adhesive
  when any pixel under it is, so thin adhesive stays visible when zoomed out
  and label and image pixels cover the same area at every level (nearest
  sampling would drop thin features and sit half a pixel off the means). The
  adhesive share of a coarse level is therefore an upper bound; the measured
  ratio is ``adhesive_ratio``, from full resolution.
* **Probability mask as uint8** by default: steps of 1/255 (0.0039) are finer
  than any threshold is chosen to, and it is a quarter of float32's bytes (the
  float32 mask was 70% of a store). ``--mask-dtype float16|float32`` keeps more.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.store.base import ImageResult, StoredResult, check_map_name, check_result, jsonable, map_dtype, source_key
from semtile.store.directory import DirectoryStore
from semtile.store.encoding import (
    CHUNK,
    DEFAULT_MASK_DTYPE,
    ZSTD_LEVEL,
    array_layout,
    check_mask_dtype,
    decode_probability,
    stored_scale,
)
from semtile.store.ome_layout import (
    LABEL,
    NGFF_VERSION,
    QUANT,
    Clock,
    compact_metadata,
    create_group,
    create_map_group,
    group_attributes,
    result_image_dtype,
    stored_image_dtype,
    write_map_pyramid,
    write_region,
    write_whole,
)
from semtile.store.provenance import read_provenance, write_provenance
from semtile.store.pyramid import MIN_LEVEL_SIDE, level_shapes, reduce_in_bands
from semtile.store.shards import write_group, write_plain

__all__ = ["OmeZarrStore", "NGFF_VERSION", "ROOT_ATTRS", "LABEL", "MIN_LEVEL_SIDE", "CHUNK", "QUANT", "is_ome_root",
           "level_shapes", "write_region", "write_map_pyramid", "stored_image_dtype"]

ROOT_ATTRS = {"store": "ome-zarr", "version": 1}


def is_ome_root(attrs: dict) -> bool:
    """Whether a root group's attributes are those of a semtile OME-Zarr store."""
    semtile = attrs.get("semtile")
    return isinstance(semtile, dict) and semtile.get("store") == ROOT_ATTRS["store"]


def _mask_decoder(dtype):
    """The stored mask of ``dtype`` back to the probability, float32 (uint8: / 255; floats as they are)."""
    scale = 255 if np.dtype(dtype) == np.uint8 else 1
    return lambda a: decode_probability(a, scale)


class _Converted:
    """A lazy view of a stored array read back as another dtype (``[...]``, ``np.asarray``, shape, dtype)."""

    def __init__(self, array, dtype, convert):
        self._array, self.dtype, self._convert = array, np.dtype(dtype), convert

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        return self._convert(np.asarray(self._array[key]))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"<{self.dtype} view of {self._array!r}>"


class OmeZarrStore(DirectoryStore):
    """A local OME-Zarr (NGFF 0.5, Zarr v3) folder holding one image group per scan; see the module docstring."""

    def _new_root_attrs(self) -> dict:
        return {"semtile": dict(ROOT_ATTRS)}

    def _adopt_root(self, attrs: dict) -> None:
        if "semtile_store" in attrs:
            raise SemtileError(f"{self.path}: a semtile store of the older Zarr-directory format, not OME-Zarr "
                               "(open it with semtile.store.open_store)")
        if is_ome_root(attrs):
            return
        if self.read_only:
            raise SemtileError(f"{self.path}: a Zarr group, but not a semtile result store")
        self.root.attrs["semtile"] = dict(ROOT_ATTRS)

    def _source_of(self, attrs: dict) -> str | None:
        semtile = attrs.get("semtile")
        if isinstance(semtile, dict) and isinstance(semtile.get("source_path"), str) and "ome" in attrs:
            return semtile["source_path"]
        return None

    def _record_of(self, attrs: dict) -> dict | None:
        record = attrs["semtile"].get("record")
        return record if isinstance(record, dict) else None

    def _check(self, result: ImageResult) -> None:
        if result.image is None:
            raise SemtileError(f"{result.source}: no image (ImageResult.image); an OME-Zarr result needs it")
        if np.shape(result.image) != np.shape(result.mask):
            raise SemtileError(f"{result.source}: image {np.shape(result.image)} and mask {np.shape(result.mask)} "
                               "must have the same shape")

    def __init__(self, path: str | Path, mode: str = "a", *, checksum: bool = True):
        """``checksum=False`` writes arrays without crc32c (for measuring its cost; readers take either)."""
        self.checksum = bool(checksum)
        super().__init__(path, mode)

    def _complete(self, staged: Path, name: str, result: ImageResult, fill) -> None:
        def compact(staged: Path, result: ImageResult) -> None:
            with compact_metadata():
                fill(staged, result)

        super()._complete(staged, name, result, compact)

    def _write_group(self, staged: Path, result: ImageResult, timings: dict | None = None) -> None:
        # Written whole: the groups' zarr.json and the arrays go straight to files (store/shards.py), with the
        # attributes of zarr-python's layout; zarr-python's own group and attribute calls cost ~8 ms a result.
        staged = Path(staged)
        shape = tuple(np.shape(result.mask))
        mask_dtype = check_mask_dtype(result.mask_dtype or DEFAULT_MASK_DTYPE)
        image_dtype = result_image_dtype(result)
        if (staged / "zarr.json").exists():
            raise SemtileError(f"{staged}: a result group is already staged here")
        attributes = group_attributes(shape, jsonable(result.attrs.get("pixel_size_m")), image_dtype=image_dtype,
                                      mask_dtype=mask_dtype, sharded=True, checksum=self.checksum)
        for key, value in attributes.items():
            write_group(staged / key if key else staged, value)
        image = result.image if isinstance(result.image, np.ndarray) else np.asarray(result.image[...])
        write_whole(staged, image=image, binary_mask=np.asarray(result.binary_mask), mask=np.asarray(result.mask),
                    image_dtype=image_dtype, mask_dtype=mask_dtype, checksum=self.checksum, timings=timings)
        del image
        maps = self._write_maps(staged, result.maps, result.map_attrs, result.attrs.get("pixel_size_m"), timings)
        write_plain(staged / "class_probs", np.asarray(result.class_probs).astype(np.float32, copy=False),
                    level=ZSTD_LEVEL, checksum=self.checksum, dimension_names=("label",))
        root = attributes[""]
        write_group(staged, self._result_attributes(root["ome"], root["semtile"]["storage"], result, maps, staged))

    # -- extra maps ----------------------------------------------------------------------------------

    _MAPS_KEY = "maps"

    def _maps_of(self, attrs: dict) -> dict:
        maps = (attrs.get("semtile") or {}).get(self._MAPS_KEY)
        return dict(maps) if isinstance(maps, dict) else {}

    def _write_maps(self, staged: Path, maps: dict, map_attrs: dict, pixel_size: Any,
                    timings: dict | None = None) -> dict:
        """Each map as a pyramid group at the top of the result group ``staged``; returns name -> its attributes."""
        if not maps:
            return {}
        group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
        out = {}
        for name, array in maps.items():
            with compact_metadata():
                facts = write_map_pyramid(group, name, array, jsonable(pixel_size), checksum=self.checksum,
                                          timings=timings)
            out[name] = jsonable({**dict(map_attrs.get(name) or {}), **facts})
        return out

    def _set_maps(self, staged: Path, maps: dict) -> None:
        group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
        semtile = dict(group.attrs["semtile"])
        semtile[self._MAPS_KEY] = maps
        with compact_metadata():
            group.attrs["semtile"] = semtile

    def _pixel_size(self, attrs: dict) -> Any:
        return ((attrs.get("semtile") or {}).get("attrs") or {}).get("pixel_size_m")

    def _finish_group(self, group: zarr.Group, result: ImageResult, maps: dict | None, staged: Path) -> None:
        probs = np.asarray(result.class_probs).astype(np.float32, copy=False)
        group.create_array("class_probs", data=probs, dimension_names=("label",),
                           **{k: v for k, v in array_layout(probs.shape, sharded=False, checksum=self.checksum).items()
                              if k != "chunks"})
        storage = dict((group.attrs.get("semtile") or {}).get("storage") or {})
        group.attrs.update(self._result_attributes(dict(group.attrs["ome"]), storage, result, maps, staged))

    def _result_attributes(self, ome: dict, storage: dict, result: ImageResult, maps: dict | None,
                           staged: Path) -> dict:
        """The result group's final attributes (ome named after the scan, semtile with the result's facts);
        writes provenance.json beside them."""
        attrs = jsonable(dict(result.attrs))
        if isinstance(attrs.get("provenance"), dict):  # what was really written, in the result's provenance too
            attrs["provenance"] = {**attrs["provenance"], "storage": storage}
        semtile = jsonable({"source_path": source_key(result.source), "labels": list(result.labels),
                            "label": result.label, "adhesive_ratio": float(result.adhesive_ratio),
                            "storage": storage, "attrs": write_provenance(staged, attrs), "record": result.record})
        if maps:
            semtile[self._MAPS_KEY] = maps
        ome = dict(ome)
        ome["multiscales"] = [{**ome["multiscales"][0], "name": Path(result.source).name}]
        return {"ome": ome, "semtile": semtile}

    # -- results written region by region (large scans, several processes) ---------------------------

    supports_regions = True

    def stage(self, shape: tuple[int, int], pixel_size_m: Any = None, maps: Any = (), *,
              mask_dtype: str | None = None, input_dtype: Any = None, photometric: Any = None) -> Path:
        """A new temporary result group of ``shape`` with empty arrays, for :func:`write_region` calls.

        ``maps``: the extra 2-D maps the regions will write, names (float32) or
        a dict name -> dtype (float32 or float16); their pyramids are staged empty.
        ``mask_dtype``: the stored mask's (uint8 by default); ``input_dtype`` and
        ``photometric``: the scan's (ScanInfo), which choose the image's dtype
        (uint8 for 8-bit scans; uint16 when not given).

        The temporary belongs to this process: it lives while this process
        does, whatever other processes write into it, and ``clean_stale``
        removes it once this process is gone. Finish it with :meth:`commit`.
        """
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot write")
        specs = dict(maps) if isinstance(maps, dict) else {name: np.float32 for name in maps}
        for name in specs:
            check_map_name(self.path, name)
        staged = self._temp("partial")
        shape = tuple(int(s) for s in shape)
        with compact_metadata():
            group = create_group(staged, shape, jsonable(pixel_size_m), sharded=False, checksum=self.checksum,
                                  image_dtype=stored_image_dtype(input_dtype, photometric),
                                  mask_dtype=check_mask_dtype(mask_dtype or DEFAULT_MASK_DTYPE))
            for name, dtype in specs.items():
                create_map_group(group, name, shape, map_dtype(np.zeros(0, dtype)), jsonable(pixel_size_m),
                                  sharded=False, checksum=self.checksum)
        return staged

    def region_levels(self, shape: tuple[int, int], side: int) -> int:
        if side % CHUNK:
            raise ValueError(f"regions of {side} pixels are not whole chunks of {CHUNK}")
        return min(int(side // CHUNK).bit_length() - 1, len(level_shapes(tuple(shape))) - 1)

    def write_region(self, staged: str | Path, y0: int, x0: int, *, image: Any, binary_mask: Any, mask: Any,
                     levels: int, maps: Mapping[str, Any] | None = None, timings: dict | None = None) -> None:
        write_region(staged, y0, x0, image=image, binary_mask=binary_mask, mask=mask, levels=levels,
                     maps=dict(maps or {}), timings=timings)

    def staged_arrays(self, staged: str | Path) -> dict[str, Any]:
        """The staged image (as stored), mask (the probability, float32) and binary mask (bool), lazily."""
        group = zarr.open_group(str(staged), mode="r")
        mask = group["mask"]
        return {"image": group["0"], "mask": _Converted(mask, np.float32, _mask_decoder(mask.dtype)),
                "binary_mask": _Converted(group[f"labels/{LABEL}/0"], bool, lambda a: a != 0)}

    def commit(self, name: str, staged: str | Path, result: ImageResult, *, built_levels: int,
               timings: dict | None = None) -> None:
        """Finish a staged group whose regions are all written (levels ``0..built_levels``) and publish it.

        ``result`` gives the label, ratio, class probabilities, attributes and
        record; its ``mask``, ``binary_mask`` and ``image`` may be the staged
        arrays themselves (only their shapes are checked). The levels above
        ``built_levels`` are computed band by band from the stored ones, for
        the image, the labels and every staged map; ``result.map_attrs`` gives
        the staged maps' attributes (``result.maps`` may be left empty).
        """
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot write {name!r}")
        check_result(name, result)

        def finish(staged: Path, result: ImageResult) -> None:
            group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
            staged_maps = [name for name, node in group.members() if isinstance(node, zarr.Group)
                           and name != "labels" and "ome" in node.attrs]
            unknown = sorted(set(result.maps) - set(staged_maps))
            if unknown:
                raise SemtileError(f"{staged}: maps {unknown} were not staged (OmeZarrStore.stage(..., maps=))")
            parts = [("", "mean"), (f"labels/{LABEL}/", "max"), *((f"{m}/", "map") for m in staged_maps)]
            clock = Clock(timings)
            with clock("pyramid"):  # reads, reduces and writes the upper levels band by band
                for key, reduce in parts:
                    k = built_levels + 1
                    while f"{key}{k}" in group:
                        reduce_in_bands(group[f"{key}{k - 1}"], group[f"{key}{k}"], reduce, 2 * CHUNK)
                        k += 1
            maps = {}
            for m in staged_maps:
                level0 = group[f"{m}/0"]
                maps[m] = jsonable({**dict(result.map_attrs.get(m) or {}), "dtype": str(level0.dtype),
                                    "shape": list(level0.shape), "levels": len(list(group[m].array_keys()))})
            self._finish_group(group, result, maps, staged)

        self._complete(Path(staged), name, result, finish)

    def _open_result(self, name: str, attrs: dict) -> StoredResult:
        semtile = attrs["semtile"]
        missing = sorted({"labels", "label", "adhesive_ratio"} - set(semtile))
        if missing:
            raise SemtileError(f"{self.path}/{name}: result lacks {missing}")
        opened: list[zarr.Group] = []
        paths = {"mask": "mask", "class_probs": "class_probs", "binary_mask": f"labels/{LABEL}/0", "image": "0"}

        def open_array(key: str):
            raw = key.startswith("stored:")  # the values as stored (StoredResult.stored)
            key = key.removeprefix("stored:")
            if key not in paths:
                raise SemtileError(f"{self.path}/{name}: no array {key!r}")
            if not opened:
                opened.append(zarr.open_group(str(self.path / name), mode="r", zarr_format=3))
            try:
                stored = opened[0][paths[key]]
            except KeyError:
                raise SemtileError(f"{self.path}/{name}: array {key!r} is missing") from None
            if raw:
                return stored
            if key == "binary_mask":
                return _Converted(stored, bool, lambda a: a != 0)
            if key == "image":
                scale = np.float32(stored_scale(stored.dtype))
                return _Converted(stored, np.float32, lambda a: a.astype(np.float32) / scale)
            if key == "mask":
                return _Converted(stored, np.float32, _mask_decoder(stored.dtype))
            return stored

        maps = self._maps_of(attrs)

        def open_map(map_name: str, level: int = 0):
            levels = int((maps.get(map_name) or {}).get("levels") or 1)
            if not 0 <= int(level) < levels:
                raise SemtileError(f"{self.path}/{name}: map {map_name!r} has no level {level} (it has {levels})")
            if not opened:
                opened.append(zarr.open_group(str(self.path / name), mode="r", zarr_format=3))
            try:
                return opened[0][f"{map_name}/{int(level)}"]
            except KeyError:
                raise SemtileError(f"{self.path}/{name}: map {map_name!r} is missing") from None

        return StoredResult(name=name, source=Path(semtile["source_path"]), labels=list(semtile["labels"]),
                            label=semtile["label"], adhesive_ratio=float(semtile["adhesive_ratio"]),
                            attrs=read_provenance(self.path / name, dict(semtile.get("attrs") or {})),
                            open_array=open_array,
                            record=self._record_of(attrs), maps=maps, open_map=open_map)
