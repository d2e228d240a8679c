"""The OME-Zarr store: OME-NGFF 0.5 on Zarr v3, one image group per scan (the format of new stores).

The root group's attributes are ``{"semtile": {"store": "ome-zarr", "version": 1}}``;
claims and temporaries live in the hidden folder ``.semtile``
(:mod:`semtile.store.directory`). Each result ``<name>`` is an NGFF image::

    <name>/zarr.json        ome: version "0.5", multiscales (axes y, x; a scale per level), omero (channel "scan")
                            semtile: source_path, labels, label, adhesive_ratio,
                                     attrs (ImageResult.attrs; provenance a stub), record
    <name>/provenance.json  the full provenance (semtile.store.provenance; old results: inline)
    <name>/0, 1, ...        the normalised image, level k downsampled 2**k times (uint16, below)
    <name>/labels/zarr.json           ome: labels ["adhesive"]
    <name>/labels/adhesive/zarr.json  ome: image-label (label 1 "adhesive", its colour,
                                      source ../../) and multiscales with the image's levels
    <name>/labels/adhesive/0, 1, ...  uint8: 0 background, 1 adhesive
    <name>/mask             float32 adhesive probability, full resolution
    <name>/class_probs      float32, one per label
    <name>/<map>/zarr.json  an extra map (ImageResult.maps: anomaly, heat maps...): ome multiscales
                            like the image's (a channel axis first for (C, rows, cols) maps)
    <name>/<map>/0, 1, ...  float32 (or float16), level k by 2 x 2 block means of level k-1
                            as stored; the map's attributes under semtile.maps[<map>]

Choices:

* **Image as uint16**, ``round(v * 65535)``: half the bytes of float32 and lossless
  for the inputs SEM instruments write. 8-bit scans become ``x / 255``, which is
  ``x * 257 / 65535`` exactly; 16-bit scans ``x / 65535``; both round back to the
  integer they came from. Float, palette and RGB inputs lose at most 7.6e-6
  (half a step), far below what a viewer shows; the network never reads the
  stored image. ``StoredResult.image`` reads it back as float32 ``q / 65535``.
  Viewers show uint16 over its full range, which is [0, 1] here.
* **Levels**: 2 x 2 block means of the level below as stored (dequantised; an
  odd last row or column is repeated), so a pyramid written whole and one
  written region by region are the same bytes, down to
  the first level whose smaller side is at most 256. Level k has scale
  ``2**k * pixel size`` and translation ``(2**k - 1) / 2 * pixel size``, so its
  pixel centres sit where the blocks' centres are; the unit is micrometer when
  ``attrs["pixel_size_m"]`` is known, else the scale is in pixels (1).
* **Large scans** are written region by region (:meth:`OmeZarrStore.stage`,
  :func:`write_region`, :meth:`OmeZarrStore.commit`), by any number of
  processes: regions are whole chunks at every level they write, so each
  chunk has one writer; the upper levels are built band by band at commit.
* **Labels by 2 x 2 block max** over the same blocks: a coarse pixel is adhesive
  when any pixel under it is, so thin adhesive stays visible when zoomed out
  and label and image pixels cover the same area at every level (nearest
  sampling would drop thin features and sit half a pixel off the means). The
  adhesive share of a coarse level is therefore an upper bound; the measured
  ratio is ``adhesive_ratio``, from full resolution.
* **Probability mask as float32**: it is what the pipeline computes, results are
  compared with it to 1e-5, and the mask is where thresholds are re-chosen;
  uint8 would cut it to steps of 0.004 and save little once compressed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.store.base import ImageResult, StoredResult, check_map_name, check_result, jsonable, map_dtype, source_key
from semtile.store.directory import DirectoryStore
from semtile.store.provenance import read_provenance, write_provenance

__all__ = ["OmeZarrStore", "NGFF_VERSION", "ROOT_ATTRS", "LABEL", "MIN_LEVEL_SIDE", "CHUNK", "is_ome_root", "level_shapes",
           "write_region", "write_map_pyramid"]

NGFF_VERSION = "0.5"
ROOT_ATTRS = {"store": "ome-zarr", "version": 1}
LABEL = "adhesive"
LABEL_COLOR = [255, 80, 0, 160]  # RGBA of label 1
OMERO = {"channels": [{"label": "scan", "color": "FFFFFF", "active": True, "window": {"min": 0, "max": 65535, "start": 0, "end": 65535}}], "rdefs": {"model": "greyscale"}}  # napari-ome-zarr: layer "<file>: scan"
MIN_LEVEL_SIDE = 256
CHUNK = 512
QUANT = 65535.0


def is_ome_root(attrs: dict) -> bool:
    """Whether a root group's attributes are those of a semtile OME-Zarr store."""
    semtile = attrs.get("semtile")
    return isinstance(semtile, dict) and semtile.get("store") == ROOT_ATTRS["store"]


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The shape of every pyramid level: halved (rounding up) until the smaller side is at most 256."""
    shapes = [tuple(int(s) for s in shape)]
    while min(shapes[-1]) > MIN_LEVEL_SIDE:
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def _halve(a: np.ndarray, reduce: str) -> np.ndarray:
    """2 x 2 block mean (``"mean"``, float32) or max (``"max"``); an odd last row or column is repeated."""
    rows, cols = a.shape
    if rows % 2 or cols % 2:
        a = np.pad(a, ((0, rows % 2), (0, cols % 2)), mode="edge")
    # The four corners of every block as strided views: elementwise ops, several times faster
    # than a reduction over reshaped axes (this runs in the writer, beside the engine).
    a00, a01, a10, a11 = a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]
    if reduce == "max":
        return np.maximum(np.maximum(a00, a01), np.maximum(a10, a11))
    return ((a00.astype(np.float32) + a01) + (a10 + a11)) * np.float32(0.25)


def _quantise(v: np.ndarray) -> np.ndarray:
    out = np.empty(v.shape, np.uint16)
    for r in range(0, v.shape[0], 1024):  # in bands: no full-size float64 temporaries
        band = np.nan_to_num(np.asarray(v[r:r + 1024], dtype=np.float32), nan=0.0)
        out[r:r + 1024] = np.rint(np.clip(band, 0.0, 1.0) * np.float32(QUANT))
    return out


def _multiscale(n_levels: int, pixel_size_m: Any, reduce: str) -> dict:
    known = isinstance(pixel_size_m, (int, float)) and not isinstance(pixel_size_m, bool) \
        and math.isfinite(pixel_size_m) and pixel_size_m > 0
    step = float(pixel_size_m) * 1e6 if known else 1.0
    axes = [{"name": axis, "type": "space", **({"unit": "micrometer"} if known else {})} for axis in ("y", "x")]
    datasets = []
    for k in range(n_levels):
        transforms = [{"type": "scale", "scale": [step * 2**k] * 2}]
        if k:
            transforms.append({"type": "translation", "translation": [step * (2**k - 1) / 2] * 2})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    return {"axes": axes, "datasets": datasets, "type": reduce,
            "metadata": {"method": f"2x2 block {reduce}"}}


def _next_level(prev: np.ndarray, reduce: str) -> np.ndarray:
    """Level k+1 from level k as stored: uint16 image by 2 x 2 means of the dequantised values, uint8 labels by max.

    From the stored (quantised) level, so that a pyramid built whole in memory
    and one built region by region or band by band are the same bytes.
    """
    if reduce == "max":
        return _halve(prev, "max")
    return _quantise(_halve(prev.astype(np.float32) / np.float32(QUANT), "mean"))


def _halve_map(a: np.ndarray) -> np.ndarray:
    """A map's next level: 2 x 2 block means over its last two axes in float32, back to its dtype."""
    a = np.asarray(a)
    dtype = a.dtype
    rows, cols = a.shape[-2:]
    if rows % 2 or cols % 2:
        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, rows % 2), (0, cols % 2)], mode="edge")
    a00, a01 = a[..., 0::2, 0::2].astype(np.float32), a[..., 0::2, 1::2]
    a10, a11 = a[..., 1::2, 0::2], a[..., 1::2, 1::2]
    return (((a00 + a01) + (a10 + a11)) * np.float32(0.25)).astype(dtype, copy=False)


def _map_multiscale(name: str, n_levels: int, pixel_size: Any, channels: int | None) -> dict:
    """NGFF multiscales of a map: the image's, with a channel axis first for (C, rows, cols) maps."""
    ms = _multiscale(n_levels, pixel_size, "mean")
    if channels is not None:
        ms["axes"] = [{"name": "c", "type": "channel"}, *ms["axes"]]
        for d in ms["datasets"]:
            for t in d["coordinateTransformations"]:
                key = "scale" if t["type"] == "scale" else "translation"
                t[key] = [1.0 if key == "scale" else 0.0, *t[key]]
    return {"name": name, **ms}


def _create_map_group(parent: zarr.Group, name: str, shape: tuple[int, int], dtype, pixel_size: Any,
                      channels: int | None = None) -> zarr.Group:
    """An empty map pyramid ``name/0, 1, ...`` in ``parent`` (levels as the image's), with its NGFF metadata."""
    shapes = level_shapes(shape)
    lead = () if channels is None else (int(channels),)
    dims = ("y", "x") if channels is None else ("c", "y", "x")
    group = parent.create_group(name, attributes={"ome": {
        "version": NGFF_VERSION, "multiscales": [_map_multiscale(name, len(shapes), pixel_size, channels)]}})
    for k, level in enumerate(shapes):
        full = (*lead, *level)
        group.create_array(str(k), shape=full, dtype=dtype, dimension_names=dims, fill_value=0,
                           chunks=(*lead, *(min(s, CHUNK) for s in level)))
    return group


def write_map_pyramid(parent: zarr.Group, name: str, array: Any, pixel_size: Any = None) -> dict:
    """Write the map ``array`` ((rows, cols) or (C, rows, cols)) as the pyramid ``parent/name``; return its facts."""
    data = np.asarray(array[...] if hasattr(array, "__getitem__") and not isinstance(array, np.ndarray) else array)
    dtype = map_dtype(data)
    data = data.astype(dtype, copy=False)
    shape = tuple(data.shape[-2:])
    channels = data.shape[0] if data.ndim == 3 else None
    group = _create_map_group(parent, name, shape, dtype, pixel_size, channels)
    levels = level_shapes(shape)
    for k in range(len(levels)):
        if k:
            data = _halve_map(data)
        group[str(k)][...] = data
    return {"dtype": str(dtype), "shape": list(np.shape(array)), "levels": len(levels)}


def _create_group(staged: Path, shape: tuple[int, int], pixel_size: Any) -> zarr.Group:
    """A result group with every level's image and label arrays and the mask, all empty (attributes: ome)."""
    shapes = level_shapes(shape)
    group = zarr.open_group(str(staged), mode="w-", zarr_format=3)

    def array(parent, key, shape, dtype):
        parent.create_array(key, shape=shape, dtype=dtype, chunks=tuple(min(s, CHUNK) for s in shape),
                            dimension_names=("y", "x"), fill_value=0)

    for k, level in enumerate(shapes):
        array(group, str(k), level, np.uint16)
    labels = group.create_group("labels", attributes={"ome": {"version": NGFF_VERSION, "labels": [LABEL]}})
    image_label = {"colors": [{"label-value": 1, "rgba": LABEL_COLOR}],
                   "properties": [{"label-value": 1, "name": LABEL}], "source": {"image": "../../"}}
    adhesive = labels.create_group(LABEL, attributes={"ome": {
        "version": NGFF_VERSION, "image-label": image_label,
        "multiscales": [{"name": LABEL, **_multiscale(len(shapes), pixel_size, "max")}]}})
    for k, level in enumerate(shapes):
        array(adhesive, str(k), level, np.uint8)
    array(group, "mask", shapes[0], np.float32)
    group.attrs["ome"] = {"version": NGFF_VERSION, "omero": OMERO,
                          "multiscales": [{"name": "image", **_multiscale(len(shapes), pixel_size, "mean")}]}
    return group


def write_region(staged: str | Path, y0: int, x0: int, *, image: np.ndarray, binary_mask: np.ndarray,
                 mask: np.ndarray, levels: int, group: zarr.Group | None = None,
                 maps: dict[str, np.ndarray] | None = None) -> None:
    """Write one region of a staged result (from :meth:`OmeZarrStore.stage`) at ``(y0, x0)``, levels ``0..levels``.

    ``image`` float32 in [0, 1], ``binary_mask`` bool, ``mask`` float32, all of
    the region's shape; ``maps``: the region of each extra map the result was
    staged with (``stage(..., maps=)``), 2-D of the region's shape. For every output chunk to have one writer, ``(y0, x0)``
    must be multiples of ``CHUNK * 2**levels`` and the region must end there or
    at the image's edge; writing a region twice gives the same bytes.
    """
    group = group if group is not None else zarr.open_group(str(staged), mode="r+", zarr_format=3)
    step = CHUNK * 2**levels
    if y0 % step or x0 % step:
        raise ValueError(f"region at ({y0}, {x0}) is not aligned to {step} pixels (levels 0..{levels})")
    image_q = _quantise(image)
    labels = np.asarray(binary_mask).astype(np.uint8)
    for k in range(levels + 1):
        if k:
            image_q, labels = _next_level(image_q, "mean"), _next_level(labels, "max")
        ky, kx = y0 >> k, x0 >> k
        group[str(k)][ky: ky + image_q.shape[0], kx: kx + image_q.shape[1]] = image_q
        group[f"labels/{LABEL}/{k}"][ky: ky + labels.shape[0], kx: kx + labels.shape[1]] = labels
    group["mask"][y0: y0 + mask.shape[0], x0: x0 + mask.shape[1]] = np.asarray(mask, dtype=np.float32)
    for name, region in (maps or {}).items():
        if name not in group or not isinstance(group[name], zarr.Group):
            raise SemtileError(f"{staged}: map {name!r} was not staged (OmeZarrStore.stage(..., maps=))")
        data = np.asarray(region).astype(group[f"{name}/0"].dtype, copy=False)
        if data.shape != np.shape(mask):
            raise SemtileError(f"{staged}: region of map {name!r} is {data.shape}, the mask's {np.shape(mask)}")
        for k in range(levels + 1):
            if k:
                data = _halve_map(data)
            ky, kx = y0 >> k, x0 >> k
            group[f"{name}/{k}"][ky: ky + data.shape[0], kx: kx + data.shape[1]] = data


def _reduce_in_bands(source: zarr.Array, target: zarr.Array, reduce: str) -> None:
    """``target`` = the next level of ``source``, a band of chunk rows at a time (bounded memory).

    ``reduce``: "mean" (the quantised image), "max" (labels) or "map" (a float map, 2-D).
    """
    band = 2 * CHUNK
    for r in range(0, source.shape[0], band):
        t = r // 2
        block = np.asarray(source[r: r + band])
        target[t: t + CHUNK] = _halve_map(block) if reduce == "map" else _next_level(block, reduce)


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

    def _write_group(self, staged: Path, result: ImageResult) -> None:
        shape = tuple(np.shape(result.mask))
        group = _create_group(staged, shape, jsonable(result.attrs.get("pixel_size_m")))
        image = np.asarray(result.image[...] if hasattr(result.image, "__getitem__") else result.image,
                           dtype=np.float32)
        write_region(staged, 0, 0, image=image, binary_mask=np.asarray(result.binary_mask),
                     mask=np.asarray(result.mask), levels=len(level_shapes(shape)) - 1, group=group)
        del image
        maps = self._write_maps(staged, result.maps, result.map_attrs, result.attrs.get("pixel_size_m"))
        self._finish_group(group, result, maps, staged)

    # -- extra maps ----------------------------------------------------------------------------------

    _MAPS_KEY = "maps"

    def _maps_of(self, attrs: dict) -> dict:
        maps = (attrs.get("semtile") or {}).get(self._MAPS_KEY)
        return dict(maps) if isinstance(maps, dict) else {}

    def _write_maps(self, staged: Path, maps: dict, map_attrs: dict, pixel_size: Any) -> dict:
        """Each map as a pyramid group at the top of the result group ``staged``; returns name -> its attributes."""
        if not maps:
            return {}
        group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
        out = {}
        for name, array in maps.items():
            facts = write_map_pyramid(group, name, array, jsonable(pixel_size))
            out[name] = jsonable({**dict(map_attrs.get(name) or {}), **facts})
        return out

    def _set_maps(self, staged: Path, maps: dict) -> None:
        group = zarr.open_group(str(staged), mode="r+", zarr_format=3)
        semtile = dict(group.attrs["semtile"])
        semtile[self._MAPS_KEY] = maps
        group.attrs["semtile"] = semtile

    def _pixel_size(self, attrs: dict) -> Any:
        return ((attrs.get("semtile") or {}).get("attrs") or {}).get("pixel_size_m")

    def _finish_group(self, group: zarr.Group, result: ImageResult, maps: dict | None, staged: Path) -> None:
        group.create_array("class_probs", data=np.asarray(result.class_probs).astype(np.float32, copy=False),
                           dimension_names=("label",))
        semtile = jsonable({"source_path": source_key(result.source), "labels": list(result.labels),
                            "label": result.label, "adhesive_ratio": float(result.adhesive_ratio),
                            "attrs": write_provenance(staged, jsonable(dict(result.attrs))), "record": result.record})
        if maps:
            semtile[self._MAPS_KEY] = maps
        ome = dict(group.attrs["ome"])
        ome["multiscales"] = [{**ome["multiscales"][0], "name": Path(result.source).name}]
        group.attrs.update({"ome": ome, "semtile": semtile})

    # -- results written region by region (large scans, several processes) ---------------------------

    supports_regions = True

    def stage(self, shape: tuple[int, int], pixel_size_m: Any = None, maps: Any = ()) -> Path:
        """A new temporary result group of ``shape`` with empty arrays, for :func:`write_region` calls.

        ``maps``: the extra 2-D maps the regions will write, names (float32) or
        a dict name -> dtype (float32 or float16); their pyramids are staged empty.

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
        group = _create_group(staged, shape, jsonable(pixel_size_m))
        for name, dtype in specs.items():
            _create_map_group(group, name, shape, map_dtype(np.zeros(0, dtype)), jsonable(pixel_size_m))
        return staged

    def region_levels(self, shape: tuple[int, int], side: int) -> int:
        if side % CHUNK:
            raise ValueError(f"regions of {side} pixels are not whole chunks of {CHUNK}")
        return min(int(side // CHUNK).bit_length() - 1, len(level_shapes(tuple(shape))) - 1)

    def write_region(self, staged: str | Path, y0: int, x0: int, *, image: Any, binary_mask: Any, mask: Any,
                     levels: int, maps: Mapping[str, Any] | None = None) -> None:
        write_region(staged, y0, x0, image=image, binary_mask=binary_mask, mask=mask, levels=levels,
                     maps=dict(maps or {}))

    def staged_arrays(self, staged: str | Path) -> dict[str, Any]:
        group = zarr.open_group(str(staged), mode="r")
        return {"image": group["0"], "mask": group["mask"], "binary_mask": group[f"labels/{LABEL}/0"]}

    def commit(self, name: str, staged: str | Path, result: ImageResult, *, built_levels: int) -> None:
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
            for key, reduce in parts:
                k = built_levels + 1
                while f"{key}{k}" in group:
                    _reduce_in_bands(group[f"{key}{k - 1}"], group[f"{key}{k}"], reduce)
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
            if key not in paths:
                raise SemtileError(f"{self.path}/{name}: no array {key!r}")
            if not opened:
                opened.append(zarr.open_group(str(self.path / name), mode="r", zarr_format=3))
            try:
                stored = opened[0][paths[key]]
            except KeyError:
                raise SemtileError(f"{self.path}/{name}: array {key!r} is missing") from None
            if key == "binary_mask":
                return _Converted(stored, bool, lambda a: a != 0)
            if key == "image":
                return _Converted(stored, np.float32, lambda a: a.astype(np.float32) / np.float32(QUANT))
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
