"""The arrays of an OME-Zarr result group: creating them (whole or staged for regions) and writing them.

The layout and the choices behind it are described in :mod:`semtile.store.ome_zarr`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from semtile.errors import SemtileError
from semtile.store.base import ImageResult, map_dtype
from semtile.store.encoding import (
    CHUNK,
    ZSTD_LEVEL,
    array_layout,
    check_mask_dtype,
    encode_mask,
    image_storage,
    quantise_image,
    storage_facts,
    stored_scale,
)
from semtile.store.pyramid import level_shapes, map_multiscale, multiscale, next_level
from semtile.store.shards import write_sharded

__all__ = ["NGFF_VERSION", "LABEL", "QUANT", "CHUNK", "stored_image_dtype", "result_image_dtype", "create_group", "group_attributes",
           "create_map_group", "write_map_pyramid", "write_region", "write_whole", "compact_metadata", "Clock"]

NGFF_VERSION = "0.5"
LABEL = "adhesive"
LABEL_COLOR = [255, 80, 0, 160]  # RGBA of label 1
QUANT = 65535.0  # the scale of a uint16 image (stores before uint8 images); a level's own: stored_scale(dtype)


def _omero(scale: int) -> dict:
    """napari-ome-zarr's channel: layer "<file>: scan", shown over the stored dtype's full range."""
    window = {"min": 0, "max": scale, "start": 0, "end": scale}
    return {"channels": [{"label": "scan", "color": "FFFFFF", "active": True, "window": window}],
            "rdefs": {"model": "greyscale"}}


def stored_image_dtype(input_dtype: Any = None, photometric: Any = None) -> np.dtype:
    """The stored image's dtype for an input of sample type ``input_dtype``: uint8 for 8-bit scans, else uint16.

    Palette images (whose colours may be 16-bit) and unknown inputs are uint16.
    """
    return np.dtype(np.uint16) if photometric == "PALETTE" else image_storage(input_dtype)


def result_image_dtype(result: ImageResult) -> np.dtype:
    """What a result's image is stored as: its own dtype when already quantised, else from its input's record."""
    given = np.dtype(getattr(result.image, "dtype", np.float32))
    if given in (np.uint8, np.uint16):
        return given
    inputs = (result.attrs.get("provenance") or {}).get("input") if isinstance(result.attrs, dict) else None
    inputs = inputs if isinstance(inputs, dict) else {}
    return stored_image_dtype(inputs.get("dtype"), inputs.get("photometric"))


def create_map_group(parent: zarr.Group, name: str, shape: tuple[int, int], dtype, pixel_size: Any,
                      channels: int | None = None, *, sharded: bool = True, checksum: bool = True) -> zarr.Group:
    """An empty map pyramid ``name/0, 1, ...`` in ``parent`` (levels as the image's), with its NGFF metadata."""
    shapes = level_shapes(shape)
    lead = () if channels is None else (int(channels),)
    dims = ("y", "x") if channels is None else ("c", "y", "x")
    group = parent.create_group(name, attributes={"ome": {
        "version": NGFF_VERSION, "multiscales": [map_multiscale(name, len(shapes), pixel_size, channels)]}})
    for k, level in enumerate(shapes):
        full = (*lead, *level)
        group.create_array(str(k), shape=full, dtype=dtype, dimension_names=dims, fill_value=0,
                           **array_layout(full, sharded=sharded, checksum=checksum))
    return group


def write_map_pyramid(parent: zarr.Group, name: str, array: Any, pixel_size: Any = None, *,
                      checksum: bool = True, timings: dict | None = None) -> dict:
    """Write the map ``array`` ((rows, cols) or (C, rows, cols)) as the pyramid ``parent/name``; return its facts."""
    data = np.asarray(array[...] if hasattr(array, "__getitem__") and not isinstance(array, np.ndarray) else array)
    dtype = map_dtype(data)
    data = data.astype(dtype, copy=False)
    shape = tuple(data.shape[-2:])
    channels = data.shape[0] if data.ndim == 3 else None
    group = create_map_group(parent, name, shape, dtype, pixel_size, channels, checksum=checksum)
    clock = Clock(timings)
    levels = level_shapes(shape)
    for k in range(len(levels)):
        if k:
            with clock("pyramid"):
                data = next_level(data, "map")
        with clock("write"):
            group[str(k)][...] = data
    return {"dtype": str(dtype), "shape": list(np.shape(array)), "levels": len(levels)}


@contextlib.contextmanager
def compact_metadata():
    """zarr.json written on one line (no indent): a tenth of a small result's bytes are metadata."""
    with zarr.config.set({"json_indent": None}):
        yield


class Clock:
    """Seconds added to ``timings[key]`` (when a dict is given) around each ``with clock(key):``."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, key: str):
        if self.timings is None:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0


def group_attributes(shape: tuple[int, int], pixel_size: Any, *, image_dtype: Any, mask_dtype: str,
                     sharded: bool, checksum: bool = True) -> dict[str, dict]:
    """The attributes of a result's groups: ``""`` (the result: ome, semtile storage), ``labels`` and
    ``labels/adhesive``, before the result's own facts are added."""
    shapes = level_shapes(shape)
    image_dtype = np.dtype(image_dtype)
    image_label = {"colors": [{"label-value": 1, "rgba": LABEL_COLOR}],
                   "properties": [{"label-value": 1, "name": LABEL}], "source": {"image": "../../"}}
    return {
        "": {"ome": {"version": NGFF_VERSION, "omero": _omero(stored_scale(image_dtype)),
                     "multiscales": [{"name": "image", **multiscale(len(shapes), pixel_size, "mean")}]},
             "semtile": {"storage": storage_facts(image_dtype=image_dtype, mask_dtype=mask_dtype, sharded=sharded,
                                                  checksum=checksum)}},
        "labels": {"ome": {"version": NGFF_VERSION, "labels": [LABEL]}},
        f"labels/{LABEL}": {"ome": {"version": NGFF_VERSION, "image-label": image_label,
                                    "multiscales": [{"name": LABEL, **multiscale(len(shapes), pixel_size, "max")}]}},
    }


def create_group(staged: Path, shape: tuple[int, int], pixel_size: Any, *, image_dtype: Any, mask_dtype: str,
                 sharded: bool, checksum: bool = True, arrays: bool = True) -> zarr.Group:
    """A result group with every level's image and label arrays and the mask, all empty (attributes: ome).

    ``sharded``: one shard per array (written whole); else plain chunks (staged for regions).
    ``arrays=False``: the groups and their attributes only (:func:`write_whole` writes the arrays).
    """
    shapes = level_shapes(shape)
    attributes = group_attributes(shape, pixel_size, image_dtype=image_dtype, mask_dtype=mask_dtype,
                                  sharded=sharded, checksum=checksum)
    group = zarr.open_group(str(staged), mode="w-", zarr_format=3)
    image_dtype = np.dtype(image_dtype)

    def array(parent, key, shape, dtype):
        if arrays:
            parent.create_array(key, shape=shape, dtype=dtype, dimension_names=("y", "x"), fill_value=0,
                                **array_layout(shape, sharded=sharded, checksum=checksum))

    for k, level in enumerate(shapes):
        array(group, str(k), level, image_dtype)
    labels = group.create_group("labels", attributes=attributes["labels"])
    adhesive = labels.create_group(LABEL, attributes=attributes[f"labels/{LABEL}"])
    for k, level in enumerate(shapes):
        array(adhesive, str(k), level, np.uint8)
    array(group, "mask", shapes[0], check_mask_dtype(mask_dtype))
    group.attrs.update(attributes[""])
    return group


def write_whole(staged: Path, *, image: Any, binary_mask: Any, mask: Any, image_dtype: Any, mask_dtype: str,
                checksum: bool, timings: dict | None = None) -> None:
    """Every array of a result written whole into the group ``staged`` (from ``create_group(arrays=False)``).

    The levels are built here and all arrays' chunks compressed at once on the
    writer pool (:func:`semtile.store.shards.write_sharded`). ``timings`` as :func:`write_region`'s.
    """
    clock = Clock(timings)
    with clock("encode"):
        image_q = quantise_image(image, image_dtype)
        labels = np.asarray(binary_mask).astype(np.uint8)
        stored_mask = encode_mask(mask, mask_dtype)
    out = {"mask": stored_mask}
    for k in range(len(level_shapes(image_q.shape))):
        if k:
            with clock("pyramid"):
                image_q, labels = next_level(image_q, "mean"), next_level(labels, "max")
        out[str(k)], out[f"labels/{LABEL}/{k}"] = image_q, labels
    with clock("write"):
        write_sharded(Path(staged), {key: (data, array_layout(data.shape, sharded=True, checksum=checksum), ("y", "x"))
                                     for key, data in out.items()}, level=ZSTD_LEVEL, checksum=checksum)


def write_region(staged: str | Path, y0: int, x0: int, *, image: np.ndarray, binary_mask: np.ndarray,
                 mask: np.ndarray, levels: int, group: zarr.Group | None = None,
                 maps: dict[str, np.ndarray] | None = None, timings: dict | None = None) -> None:
    """Write one region of a staged result (from :meth:`OmeZarrStore.stage`) at ``(y0, x0)``, levels ``0..levels``.

    ``image`` float32 in [0, 1] (or already quantised to the staged dtype),
    ``binary_mask`` bool, ``mask`` the probability (float, or uint8 already
    encoded), all of the region's shape; ``maps``: the region of each extra map the result was
    staged with (``stage(..., maps=)``), 2-D of the region's shape. For every output chunk to have one writer, ``(y0, x0)``
    must be multiples of ``CHUNK * 2**levels`` and the region must end there or
    at the image's edge; writing a region twice gives the same bytes.
    ``timings`` (a dict) gets seconds added under "encode" (quantising to the
    stored dtypes), "pyramid" (the levels) and "write" (zarr: compression, checksums, files).
    """
    group = group if group is not None else zarr.open_group(str(staged), mode="r+", zarr_format=3)
    step = CHUNK * 2**levels
    if y0 % step or x0 % step:
        raise ValueError(f"region at ({y0}, {x0}) is not aligned to {step} pixels (levels 0..{levels})")
    clock = Clock(timings)
    with clock("encode"):
        image_q = quantise_image(image, group["0"].dtype)
        labels = np.asarray(binary_mask).astype(np.uint8)
        stored_mask = encode_mask(mask, group["mask"].dtype.name)
    for k in range(levels + 1):
        if k:
            with clock("pyramid"):
                image_q, labels = next_level(image_q, "mean"), next_level(labels, "max")
        ky, kx = y0 >> k, x0 >> k
        with clock("write"):
            group[str(k)][ky: ky + image_q.shape[0], kx: kx + image_q.shape[1]] = image_q
            group[f"labels/{LABEL}/{k}"][ky: ky + labels.shape[0], kx: kx + labels.shape[1]] = labels
    with clock("write"):
        group["mask"][y0: y0 + stored_mask.shape[0], x0: x0 + stored_mask.shape[1]] = stored_mask
    for name, region in (maps or {}).items():
        if name not in group or not isinstance(group[name], zarr.Group):
            raise SemtileError(f"{staged}: map {name!r} was not staged (OmeZarrStore.stage(..., maps=))")
        data = np.asarray(region).astype(group[f"{name}/0"].dtype, copy=False)
        if data.shape != np.shape(mask):
            raise SemtileError(f"{staged}: region of map {name!r} is {data.shape}, the mask's {np.shape(mask)}")
        for k in range(levels + 1):
            if k:
                with clock("pyramid"):
                    data = next_level(data, "map")
            ky, kx = y0 >> k, x0 >> k
            with clock("write"):
                group[f"{name}/{k}"][ky: ky + data.shape[0], kx: kx + data.shape[1]] = data


