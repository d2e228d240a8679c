"""The OME-Zarr store: OME-NGFF 0.5 on Zarr v3, one image group per scan (the format of new stores).

The root group's attributes are ``{"semtile": {"store": "ome-zarr", "version": 1}}``;
claims and temporaries live in the hidden folder ``.semtile``
(:mod:`semtile.store.directory`). Each result ``<name>`` is an NGFF image::

    <name>/zarr.json        ome: version "0.5", multiscales (axes y, x; a scale per level)
                            semtile: source_path, labels, label, adhesive_ratio,
                                     attrs (ImageResult.attrs, provenance included), record
    <name>/0, 1, ...        the normalised image, level k downsampled 2**k times (uint16, below)
    <name>/labels/zarr.json           ome: labels ["adhesive"]
    <name>/labels/adhesive/zarr.json  ome: image-label (label 1 "adhesive", its colour,
                                      source ../../) and multiscales with the image's levels
    <name>/labels/adhesive/0, 1, ...  uint8: 0 background, 1 adhesive
    <name>/mask             float32 adhesive probability, full resolution
    <name>/class_probs      float32, one per label

Choices:

* **Image as uint16**, ``round(v * 65535)``: half the bytes of float32 and lossless
  for the inputs SEM instruments write. 8-bit scans become ``x / 255``, which is
  ``x * 257 / 65535`` exactly; 16-bit scans ``x / 65535``; both round back to the
  integer they came from. Float, palette and RGB inputs lose at most 7.6e-6
  (half a step), far below what a viewer shows; the network never reads the
  stored image. ``StoredResult.image`` reads it back as float32 ``q / 65535``.
  Viewers show uint16 over its full range, which is [0, 1] here.
* **Levels**: 2 x 2 block means (an odd last row or column is repeated), down to
  the first level whose smaller side is at most 256. Level k has scale
  ``2**k * pixel size`` and translation ``(2**k - 1) / 2 * pixel size``, so its
  pixel centres sit where the blocks' centres are; the unit is micrometer when
  ``attrs["pixel_size_m"]`` is known, else the scale is in pixels (1).
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
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.store.base import ImageResult, StoredResult, jsonable, source_key
from semtile.store.directory import DirectoryStore

__all__ = ["OmeZarrStore", "NGFF_VERSION", "ROOT_ATTRS", "LABEL", "MIN_LEVEL_SIDE", "is_ome_root", "level_shapes"]

NGFF_VERSION = "0.5"
ROOT_ATTRS = {"store": "ome-zarr", "version": 1}
LABEL = "adhesive"
LABEL_COLOR = [255, 80, 0, 160]  # RGBA of label 1
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
        shapes = level_shapes(shape)
        pixel_size = jsonable(result.attrs.get("pixel_size_m"))
        group = zarr.open_group(str(staged), mode="w-", zarr_format=3)

        def array(parent, key, data):
            chunks = tuple(min(s, CHUNK) for s in data.shape) if data.ndim == 2 else None
            names = ("y", "x") if data.ndim == 2 else ("label",)
            parent.create_array(key, data=data, chunks=chunks or "auto", dimension_names=names)

        level = np.asarray(result.image[...] if hasattr(result.image, "__getitem__") else result.image,
                           dtype=np.float32)
        for k in range(len(shapes)):
            if k:
                level = _halve(level, "mean")
            array(group, str(k), _quantise(level))
        del level
        labels = group.create_group("labels", attributes={"ome": {"version": NGFF_VERSION, "labels": [LABEL]}})
        image_label = {"colors": [{"label-value": 1, "rgba": LABEL_COLOR}],
                       "properties": [{"label-value": 1, "name": LABEL}], "source": {"image": "../../"}}
        adhesive = labels.create_group(LABEL, attributes={"ome": {
            "version": NGFF_VERSION, "image-label": image_label,
            "multiscales": [{"name": LABEL, **_multiscale(len(shapes), pixel_size, "max")}]}})
        mask = np.asarray(result.binary_mask).astype(np.uint8)
        for k in range(len(shapes)):
            if k:
                mask = _halve(mask, "max")
            array(adhesive, str(k), mask)
        array(group, "mask", np.asarray(result.mask).astype(np.float32, copy=False))
        array(group, "class_probs", np.asarray(result.class_probs).astype(np.float32, copy=False))
        semtile = jsonable({"source_path": source_key(result.source), "labels": list(result.labels),
                            "label": result.label, "adhesive_ratio": float(result.adhesive_ratio),
                            "attrs": dict(result.attrs), "record": result.record})
        name = Path(result.source).name
        group.attrs.update({"ome": {"version": NGFF_VERSION,
                                    "multiscales": [{"name": name, **_multiscale(len(shapes), pixel_size, "mean")}]},
                            "semtile": semtile})

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

        return StoredResult(name=name, source=Path(semtile["source_path"]), labels=list(semtile["labels"]),
                            label=semtile["label"], adhesive_ratio=float(semtile["adhesive_ratio"]),
                            attrs=dict(semtile.get("attrs") or {}), open_array=open_array,
                            record=self._record_of(attrs))
