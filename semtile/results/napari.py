"""semtile's napari reader: a result opens as its scan, its adhesive labels and its maps (npe2 plugin).

``napari --plugin semtile demo.zarr/NAME`` (or the whole store, ``demo.zarr``)
calls :func:`napari_get_reader` through the manifest ``semtile/napari.yaml``
(entry point ``napari.manifest``). The layers are napari's layer data tuples
``(data, kwargs, layer type)``, built on :func:`semtile.open_results`, every
pyramid a list of lazy dask arrays, finest first:

* ``image`` named by the result (``t00_0000``, dots and all): the normalised
  scan, float32 in [0, 1], contrast limits [0, 1];
* ``labels`` named ``adhesive``, shown: 1 where adhesive (the store's colour);
* one ``image`` per extra map (``anomaly``, ``heat``...), hidden, named
  ``NAME anomaly`` (a map with a channel axis keeps it; ``labels/...`` maps as labels).

The scale is the pixel size in micrometres where the result records it (else
pixels); level k of a pyramid is 2**k times coarser (napari finds the levels'
scales from their shapes). napari itself is not imported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from semtile.errors import SemtileError
from semtile.results.reader import ResultImage, open_results
from semtile.store import LABEL

__all__ = ["napari_get_reader", "result_layers", "read_path", "LABEL_RGBA"]

LABEL_RGBA = (1.0, 80 / 255, 0.0, 160 / 255)  # the store's colour of label 1 (ome_zarr.LABEL_COLOR), as 0-1


def _one_path(path: Any) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path) if path is not None else None


def _locate(path: str) -> tuple[Path, str | None] | None:
    """(store, result name or None for every result) when ``path`` is a semtile result or store; else None."""
    folder = Path(path.rstrip("/\\") or path)
    if not (folder / "zarr.json").is_file():
        return None
    try:
        open_results(folder)
        return folder, None
    except SemtileError:
        pass
    try:
        results = open_results(folder.parent)
    except SemtileError:
        return None
    return (folder.parent, folder.name) if folder.name in results else None


def napari_get_reader(path: Any):
    """napari's hook: the reader of ``path`` when it is a semtile result group or store, else None."""
    one = _one_path(path)
    if one is None or _locate(one) is None:
        return None
    return read_path


def read_path(path: Any, stack: bool = False) -> list[tuple]:
    """The layer data tuples of the result (or every result of the store) at ``path``."""
    one = _one_path(path)
    found = _locate(one) if one is not None else None
    if found is None:
        raise SemtileError(f"{path}: not a semtile result or result store")
    store, name = found
    results = open_results(store)
    names = [name] if name is not None else results.names
    layers: list[tuple] = []
    for each in names:
        layers += result_layers(results[each], prefix=name is None)
    return layers


def _scale(result: ResultImage) -> tuple[tuple[float, float], str | None]:
    size = result.attrs.get("pixel_size_m")
    if isinstance(size, (int, float)) and not isinstance(size, bool) and math.isfinite(size) and size > 0:
        return (float(size) * 1e6,) * 2, "micrometer"
    return (1.0, 1.0), None


def _pyramid(levels: list) -> Any:
    """A multiscale layer's data is the list of its levels; one level is the array itself."""
    return levels if len(levels) > 1 else levels[0]


def result_layers(result: ResultImage, prefix: bool = False) -> list[tuple]:
    """napari layer data tuples of one result: its scan, its adhesive labels (shown) and its maps (hidden).

    ``prefix``: the labels and maps are named ``NAME adhesive``, ``NAME heat`` (a whole store opened at once).
    """
    scale, unit = _scale(result)
    n = len(result.levels)
    facts = {"semtile": {"name": result.name, "source": str(result.source), "label": result.label,
                         "adhesive_ratio": result.adhesive_ratio, "group": str(result.group_path)}}
    facts["semtile"]["unit"] = unit or "pixel"
    common = {"scale": scale, "metadata": facts}
    named = (lambda what: f"{result.name} {what}") if prefix else (lambda what: what)
    layers = [
        (_pyramid([result.level(k) for k in range(n)]),
         {**common, "name": result.name, "visible": True, "contrast_limits": [0.0, 1.0], "colormap": "gray",
          "multiscale": n > 1}, "image"),
        (_pyramid([result.mask_level(k).astype("uint8") for k in range(n)]),
         {**common, "name": named(LABEL), "visible": True, "opacity": 0.6, "multiscale": n > 1,
          "colormap": {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0), 1: LABEL_RGBA}}, "labels"),
    ]
    for map_name, info in result.maps.items():
        levels = [result.map(map_name, k) for k in range(len(info.paths))]
        map_scale = scale if levels[0].ndim == 2 else (1.0, *scale)
        kwargs = {**common, "scale": map_scale, "name": named(map_name), "visible": False,
                  "multiscale": len(levels) > 1}
        layers.append((_pyramid(levels), kwargs, "labels" if info.label_image else "image"))
    return layers
