"""From a scan's blended maps to its result: every pass judged, one result with its provenance.

The same two steps whether a scan was blended in memory (one region: the
whole image) or region by region out of core (many regions, maybe on many
workers): :func:`judge_region` per region, then :func:`finish_result` once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from semtile.inference.passes import Pass, PassResult, merge_nested
from semtile.inference.split import TileGrid
from semtile.store import ImageResult
from semtile.store.provenance import provenance_record

__all__ = ["judge_region", "finish_result", "base_attrs", "RESULT_ARRAYS"]

#: Judged arrays that are the result's own (the rest are its extra maps).
RESULT_ARRAYS = ("mask", "binary_mask")


def judge_region(passes: Sequence[Pass], maps: Mapping[str, Mapping], bounds: tuple[int, int, int, int] | None
                 ) -> tuple[dict, dict]:
    """Every pass's judge over the window ``bounds`` (y0, y1, x0, x1; None: the whole maps) of its maps.

    ``maps``: pass name -> its blended maps (numpy or array-likes read by window).
    Returns ``(arrays, counts)``: the judged arrays of the window by name, and
    the counts by pass name.
    """
    arrays, counts = {}, {}
    for p in passes:
        window = {name: (m if bounds is None else m[bounds[0]:bounds[1], bounds[2]:bounds[3]])
                  for name, m in maps.get(p.name, {}).items()}
        judged = p.judge_region(window)
        arrays.update(judged.arrays)
        counts[p.name] = judged.counts
    return arrays, counts


def add_counts(total: dict, counts: dict) -> dict:
    """``total`` (pass -> name -> number) plus one region's ``counts``, in place."""
    for name, values in counts.items():
        into = total.setdefault(name, {})
        for k, v in values.items():
            into[k] = into.get(k, 0) + v
    return total


def base_attrs(path: Path, info, grid: TileGrid, timings: dict, sha256: str) -> dict:
    """The attributes every result has whatever its passes: data bar, pixel size, frame, tiles, timings, input."""
    return {
        "databar_rows": info.databar_rows,
        "databar_source": info.databar_source,
        "pixel_size_m": info.pixel_size_m,
        "pixel_size_source": info.pixel_size_source,
        "frame_shape": list(info.frame_shape),
        "tiles": len(grid),
        "timings": {k: round(float(v), 4) for k, v in timings.items()},
        "input": {"path": str(Path(path).resolve()), "sha256": sha256, "page": info.page, "n_pages": info.n_pages,
                  "dtype": info.dtype, "photometric": info.photometric, "vendor": info.vendor},
    }


def finish_result(passes: Sequence[Pass], counts: Mapping[str, dict], vectors: Mapping[str, dict],
                  grids: Mapping[str, TileGrid], facts: Mapping[str, dict], *, path: Path, info, sha256: str,
                  timings: dict, arrays: Mapping, image) -> tuple[ImageResult, dict]:
    """The result of one scan from its passes' counts and vectors and its judged ``arrays``.

    ``facts``: each pass's runner description (engine, precision, versions).
    The first pass's provenance is the record's own; the others' are merged
    into it. Returns the result (without its completion record) and the
    run-table columns the passes fill.
    """
    parts: list[PassResult] = [p.finish(counts.get(p.name, {}), vectors.get(p.name, {}), grids[p.name],
                                        facts.get(p.name, {})) for p in passes]
    attrs = base_attrs(path, info, grids[passes[0].name], timings, sha256)
    inputs = attrs.pop("input")
    first = parts[0].provenance
    provenance = provenance_record(inputs=inputs, model=dict(first.get("model", {})),
                                   engine=dict(first.get("engine", {})),
                                   parameters=dict(first.get("parameters", {})))
    fields, map_attrs, row = {}, {}, {}
    for part in parts:
        fields.update(part.fields)
        merge_nested(attrs, part.attrs)
        map_attrs.update(part.map_attrs)
        row.update(part.row)
    for part in parts[1:]:
        merge_nested(provenance, part.provenance)
    attrs["provenance"] = provenance
    extra = {name: a for name, a in arrays.items() if name not in RESULT_ARRAYS}
    result = ImageResult(source=Path(path), mask=arrays["mask"], binary_mask=arrays["binary_mask"], image=image,
                         maps=extra, map_attrs=map_attrs, attrs=attrs, **fields)
    return result, row
