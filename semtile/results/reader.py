"""The results of runs, for people and notebooks: one table, each image's arrays opened lazily.

:func:`open_results` opens a result store read-only (through
:func:`semtile.store.open_store`, so both store formats read) with the run
tables beside it. ``Results.table`` is a pandas DataFrame with one row per
stored result; ``Results[name]`` is one image, whose arrays are dask arrays
read from the store only when computed. Arrays a result group holds beyond
the standard ones (heat maps, anomaly maps, cluster maps: any other 2-D or
3-D array, or image pyramid, or label image) are listed as *maps*.

``semtile report`` and ``semtile evaluate`` read results through this module only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from semtile.errors import SemtileError
from semtile.models.naming import builtin_parts
from semtile.results.curves import card_curve, recorded_curve
from semtile.results.guard import ResultGuard, guard_opener
from semtile.results.maps import MapInfo, find_maps
from semtile.results.runs import RunTables, read_run_tables
from semtile.store import (
    LABEL,
    OmeZarrStore,
    ResultStore,
    StoredResult,
    default_csv_path,
    level_shapes,
    open_store,
    stored_scale,
)

__all__ = ["Results", "ResultImage", "MapInfo", "Preview", "open_results", "TABLE_COLUMNS"]

#: The timing of an image's wall clock from the start of its read to the end of its write (it overlaps other
#: scans' work, so it is no stage); its older name is read as this one.
WALL_CLOCK = "wall_clock"
OLD_WALL_CLOCK = ("elapsed",)

TABLE_COLUMNS = ("name", "source", "file", "status", "label", "adhesive_ratio", "adhesive_ratio_soft",
                 "pixel_size_m", "height", "width", "databar_rows", "tiles", "label_rule", "engine", "precision",
                 "segmenter_sha256", "classifier_sha256", "model_source", "run_id", "created", "seconds", "maps")


@dataclass
class Preview:
    """A small picture of one result: the scan (or, without one, the probability mask) and its binary mask.

    ``gray`` is float32 in [0, 1] and ``binary`` bool, both the same shape,
    read from the coarsest pyramid level that is still at least ``max_side``
    on its longer side (or the finest there is, if smaller); ``level`` says which.
    """

    gray: np.ndarray
    binary: np.ndarray
    level: int


def _lazy(array: Any):
    """A dask array over a zarr array (or any array-like with shape, dtype and slicing), read on compute."""
    import dask.array as da  # here: dask costs a noticeable fraction of a second to import

    chunks = getattr(array, "chunks", None)
    return da.from_array(array, chunks=chunks if isinstance(chunks, tuple) else "auto", name=False,
                         asarray=True, fancy=False)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class ResultImage:
    """One stored result: its facts, and its arrays as lazy dask arrays."""

    def __init__(self, stored: StoredResult, group: Path, ome: bool, guard: ResultGuard | None = None):
        self.stored, self.group_path, self.ome = stored, group, ome
        self.guard = guard  # reads of a damaged result raise DamagedResultError (semtile.results.guard)

    # -- facts --------------------------------------------------------------------------------------
    name = property(lambda self: self.stored.name)
    source = property(lambda self: self.stored.source)
    label = property(lambda self: self.stored.label)
    labels = property(lambda self: list(self.stored.labels))
    adhesive_ratio = property(lambda self: self.stored.adhesive_ratio)
    attrs = property(lambda self: self.stored.attrs)
    record = property(lambda self: self.stored.record)

    @property
    def provenance(self) -> dict:
        prov = self.attrs.get("provenance")
        return prov if isinstance(prov, dict) else {}

    @property
    def builtin_parts(self) -> list[str]:
        """The parts of the model that made this result that are the built-in ones (segmenter, classifier)."""
        return builtin_parts(self.provenance.get("model"))

    @property
    def builtin_model(self) -> bool:
        """Made (in part) by the built-in model, trained on synthetic copper: labels 0-15 on its scale."""
        return bool(self.builtin_parts)

    @property
    def parameters(self) -> dict:
        """The run's parameters that shaped this result (tile, halo, threshold...), from its provenance."""
        params = self.provenance.get("parameters")
        return params if isinstance(params, dict) else {}

    @property
    def shape(self) -> tuple[int, int] | None:
        """(rows, cols) of the mask, from the result's attributes (None where they do not tell)."""
        frame, bar = self.attrs.get("frame_shape"), self.attrs.get("databar_rows")
        if isinstance(frame, list) and len(frame) == 2 and all(isinstance(v, int) for v in frame):
            return frame[0] - (bar if isinstance(bar, int) else 0), frame[1]
        return None

    # -- arrays -------------------------------------------------------------------------------------
    @cached_property
    def _group(self) -> zarr.Group:
        try:
            return zarr.open_group(str(self.group_path), mode="r", zarr_format=3)
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for a vanished or damaged group
            raise SemtileError(f"{self.group_path}: cannot open the result ({type(exc).__name__}: {exc})") from None

    def _zarr(self, path: str):
        try:
            array = self._group[path]
        except KeyError:
            raise SemtileError(f"{self.group_path}: array {path!r} is missing") from None
        return self.guard.wrap(array, path) if self.guard is not None else array

    @property
    def damage(self) -> list[str]:
        """What the quick check against the result's manifest finds wrong (empty: nothing; see ``semtile verify``)."""
        return [str(d) for d in self.guard.damage()] if self.guard is not None else []

    @property
    def mask(self):
        """Adhesive probability in [0, 1], float32 (rows, cols), whatever the stored dtype."""
        return _lazy(self.stored.mask)

    @property
    def mask_stored(self):
        """The mask's stored values (uint8 ``round(p * 255)`` by default; see ``storage``)."""
        return _lazy(self.stored.stored("mask"))

    @property
    def storage(self) -> dict:
        """How this result's arrays are stored (dtype, scale, codec...); {} for results written before it was kept."""
        group_attrs = self._group.attrs.get("semtile") if self.ome else None
        storage = (group_attrs or {}).get("storage") if isinstance(group_attrs, dict) else None
        return dict(storage) if isinstance(storage, dict) else {}

    @property
    def binary_mask(self):
        """The adhesive mask, bool (rows, cols)."""
        return _lazy(self.stored.binary_mask)

    @property
    def class_probs(self):
        """One probability per label (``labels``)."""
        return _lazy(self.stored.class_probs)

    @property
    def image(self):
        """The normalised scan, float32 in [0, 1] (SemtileError for a store format that keeps none)."""
        return _lazy(self.stored.image)

    @cached_property
    def levels(self) -> list[str]:
        """Paths of the scan's pyramid levels, finest first (empty for a store format without an image)."""
        if not self.ome:
            return []
        try:
            datasets = self._group.attrs["ome"]["multiscales"][0]["datasets"]
            return [str(d["path"]) for d in datasets]
        except (KeyError, IndexError, TypeError):
            return ["0"]

    def level(self, k: int):
        """Level ``k`` of the scan's pyramid as float32 in [0, 1] (a 2**k times coarser dask array)."""
        if not 0 <= k < len(self.levels):
            raise SemtileError(f"{self.group_path}: no image level {k} (it has {len(self.levels)})")
        stored = self._zarr(self.levels[k])
        return _lazy(stored).astype(np.float32) / np.float32(stored_scale(stored.dtype))

    def mask_level(self, k: int):
        """Level ``k`` of the binary mask's pyramid, bool (a coarse pixel is adhesive if any under it is)."""
        if not 0 <= k < len(self.levels):
            raise SemtileError(f"{self.group_path}: no mask level {k} (it has {len(self.levels)})")
        return _lazy(self._zarr(f"labels/{LABEL}/{self.levels[k]}")) != 0

    @cached_property
    def maps(self) -> dict[str, MapInfo]:
        """The extra maps of this result (heat, anomaly, cluster maps...), by name (:func:`.maps.find_maps`)."""
        return find_maps(self.group_path, self.ome)

    def map(self, name: str, level: int = 0):
        """The extra map ``name`` (at pyramid ``level`` where it has levels) as a lazy dask array."""
        info = self.maps.get(name)
        if info is None:
            raise SemtileError(f"{self.group_path}: no map {name!r} (it has {sorted(self.maps) or 'none'})")
        if not 0 <= level < len(info.paths):
            raise SemtileError(f"{self.group_path}: map {name!r} has no level {level}")
        return _lazy(self._zarr(info.paths[level]))

    def arrays(self) -> dict[str, Any]:
        """Every array of this result, lazily: mask, binary_mask, class_probs, image (where kept) and the maps."""
        out = {"mask": self.mask, "binary_mask": self.binary_mask, "class_probs": self.class_probs}
        if self.ome:
            out["image"] = self.image
        out.update({name: self.map(name) for name in self.maps})
        return out

    # -- pictures -----------------------------------------------------------------------------------
    def preview(self, max_side: int = 256) -> Preview:
        """The scan and its binary mask from the coarsest level at least ``max_side`` long (numpy, read now).

        Reads a pyramid level, never the full resolution when a coarser one will
        do. A store format without an image previews the probability mask,
        read with a stride.
        """
        if max_side < 1:
            raise SemtileError(f"preview size {max_side}: must be at least 1 pixel")
        if not self.ome:
            mask = self.stored.mask
            step = max(1, max(mask.shape) // max_side)
            gray = np.asarray(mask[::step, ::step], dtype=np.float32)
            return Preview(gray=gray, binary=gray >= 0.5, level=0)
        k = self._preview_level(max_side)
        stored = self._zarr(self.levels[k])
        gray = np.asarray(stored[...]).astype(np.float32) / np.float32(stored_scale(stored.dtype))
        binary = np.asarray(self._zarr(f"labels/{LABEL}/{self.levels[k]}")[...]) != 0
        return Preview(gray=gray, binary=binary, level=k)

    def _preview_level(self, max_side: int) -> int:
        shape = self.shape
        shapes = level_shapes(shape) if shape else []
        if len(shapes) != len(self.levels):  # written by another rule: ask the arrays themselves
            shapes = [tuple(self._zarr(path).shape) for path in self.levels]
        best = 0
        for k, level in enumerate(shapes):
            if max(level) >= max_side:
                best = k
        return best

    def __repr__(self) -> str:
        return f"ResultImage({self.name!r}, label={self.label!r}, adhesive_ratio={self.adhesive_ratio:.4f})"


class Results:
    """The results of the runs into one store; see the module docstring and :func:`open_results`."""

    def __init__(self, store: ResultStore, csv_path: Path):
        self.store, self.path, self.csv_path = store, Path(store.path), Path(csv_path)
        self._read: dict[str, ResultImage] = {}

    # -- images -------------------------------------------------------------------------------------
    @cached_property
    def names(self) -> list[str]:
        """The names of the stored results, sorted (as when opened: later results need a new open_results)."""
        return self.store.names()

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[ResultImage]:
        return (self[name] for name in self.names)

    def __contains__(self, name: object) -> bool:
        return name in set(self.names)

    def __getitem__(self, name: str) -> ResultImage:
        if name not in self._read:
            if not isinstance(name, str):
                raise SemtileError(f"{self.path}: result names are strings, not {type(name).__name__}")
            stored = self.store.read(name)  # SemtileError naming the store and the name when absent
            guard = ResultGuard(self.path, name, self.path / name)
            stored.open_array = guard_opener(stored.open_array, guard, lambda key: key)
            if stored.open_map is not None:
                stored.open_map = guard_opener(stored.open_map, guard, lambda key, level=0: f"{key}/{level}")
            self._read[name] = ResultImage(stored, self.path / name, isinstance(self.store, OmeZarrStore), guard)
        return self._read[name]

    def get(self, name: str) -> ResultImage:
        """The result ``name`` (SemtileError naming it when the store has none)."""
        return self[name]

    def arrays(self, name: str) -> dict[str, Any]:
        """Every array of the result ``name`` as lazy dask arrays (see :meth:`ResultImage.arrays`)."""
        return self[name].arrays()

    def by_source(self) -> dict[Path, str]:
        """Result name of each input file (resolved path)."""
        return {self[name].source: name for name in self.names}

    # -- tables -------------------------------------------------------------------------------------
    @cached_property
    def table(self) -> pd.DataFrame:
        """One row per stored result (``TABLE_COLUMNS``, then ``t_<stage>`` seconds where recorded), by name."""
        rows = [self._row(self[name]) for name in self.names]
        frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*TABLE_COLUMNS, *(k for r in rows for k in r)])))
        for column in ("adhesive_ratio", "adhesive_ratio_soft", "pixel_size_m", "seconds",
                       *(c for c in frame.columns if c.startswith("t_"))):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        for column in ("height", "width", "databar_rows", "tiles"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
        return frame.set_index("name", drop=False).rename_axis(None)

    def _row(self, result: ResultImage) -> dict:
        attrs, prov = result.attrs, result.provenance
        engine = prov.get("engine") if isinstance(prov.get("engine"), dict) else {}
        model = prov.get("model") if isinstance(prov.get("model"), dict) else {}
        shape = result.shape
        row = {"name": result.name, "source": str(result.source), "file": result.source.name,
               "status": "damaged" if result.damage else "ok",
               "label": result.label, "adhesive_ratio": result.adhesive_ratio,
               "adhesive_ratio_soft": _number(attrs.get("adhesive_ratio_soft")),
               "pixel_size_m": _number(attrs.get("pixel_size_m")),
               "height": shape[0] if shape else None, "width": shape[1] if shape else None,
               "databar_rows": attrs.get("databar_rows"), "tiles": attrs.get("tiles"),
               "label_rule": attrs.get("label_rule"), "engine": engine.get("name"),
               "precision": engine.get("precision"),
               "segmenter_sha256": (model.get("segmenter") or {}).get("sha256"),
               "classifier_sha256": (model.get("classifier") or {}).get("sha256"),
               "model_source": model.get("source"), "run_id": (result.record or {}).get("run_id"),
               "created": prov.get("created"), "seconds": None,
               "maps": ", ".join(result.maps)}
        if _number(attrs.get("anomaly_fraction")) is not None:  # semtile process --anomaly
            row["anomaly_fraction"] = _number(attrs.get("anomaly_fraction"))
        timings = attrs.get("timings")
        if isinstance(timings, dict):
            stages = {WALL_CLOCK if k in OLD_WALL_CLOCK else k: _number(v) for k, v in timings.items()}
            row.update({f"t_{k}": v for k, v in stages.items()})
            # the wall clock from read to write overlaps other scans: not a cost of this image
            work = [v for k, v in stages.items() if k != WALL_CLOCK and v is not None]
            row["seconds"] = sum(work) if work else None
        return row

    @cached_property
    def runs(self) -> RunTables:
        """The run tables beside the store (every run's rows; the latest run; failures)."""
        return read_run_tables(self.csv_path)

    @property
    def failures(self) -> pd.DataFrame:
        """Inputs whose latest run ended in an error and that have no result: ``path``, ``error``, ``run``."""
        done = {str(self[name].source) for name in self.names}
        return self.runs.failures(done)

    @property
    def labels(self) -> list:
        """The model's labels (of the first result; [] for an empty store)."""
        return self[self.names[0]].labels if self.names else []

    @cached_property
    def builtin_model(self) -> bool:
        """Whether any result was made (in part) by the built-in model (see :func:`semtile.models.naming.builtin_caveat`)."""
        return any(self[name].builtin_model for name in self.names)

    def parameter_sets(self) -> list[dict]:
        """Each distinct set of parameters, engine and model the results were made with, with its results."""
        from semtile.results.sets import parameter_sets

        return parameter_sets(self)

    def summary(self) -> dict:
        """The run at a glance: counts, engines, models, time per image, failures.

        ``seconds_per_image`` is the work of an image (its stages summed);
        ``wall_clock_per_image`` the wall clock from its read to its write,
        which overlaps other scans; ``stages`` the mean of each stage.
        """
        table, runs = self.table, self.runs
        latest = runs.counts() if runs.latest_id else None
        def distinct(*columns):
            if table.empty:
                return []
            counts = table.groupby(list(columns), dropna=False).size().reset_index(name="images")
            return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in counts.to_dict("records")]
        stages = {c[2:]: float(table[c].mean()) for c in table.columns
                  if c.startswith("t_") and c != f"t_{WALL_CLOCK}" and table[c].notna().any()}
        seconds = table["seconds"].dropna()
        wall = table[f"t_{WALL_CLOCK}"].dropna() if f"t_{WALL_CLOCK}" in table else pd.Series(dtype=float)
        return {"store": str(self.path), "results": len(table), "latest_run": runs.latest_id,
                "latest_counts": latest, "runs": len(runs.run_ids), "failures": len(self.failures),
                "engines": distinct("engine", "precision"),
                "models": distinct("model_source", "segmenter_sha256", "classifier_sha256"),
                "seconds_per_image": float(seconds.mean()) if len(seconds) else None,
                "wall_clock_per_image": float(wall.mean()) if len(wall) else None,
                "stages": stages, "maps": sorted({m for v in table["maps"] for m in v.split(", ") if m})}

    def answers(self, csv_path: str | Path, path_column: str | None = None,
                label_column: str | None = None) -> pd.Series:
        """The labels an answers CSV (``path,label``: ``labels.csv``, an expert's) gives each result, by name.

        ``csv_path`` may be a dataset folder holding ``labels.csv``. Its path
        column is ``path`` or ``file`` (or ``path_column``), its label column
        ``label`` (or ``label_column``); without them the error lists the
        columns found. A result is
        matched by its input's path, else by its file name where that name is
        unique on both sides (images moved after processing). Results without
        an answer get None; ``Series.attrs`` holds the counts
        (``matched``, ``by_name``, ``unmatched_answers``).
        """
        from semtile.results.scores import read_answers

        csv_path = Path(csv_path)
        if csv_path.is_dir():
            csv_path = csv_path / "labels.csv"
        if not csv_path.is_file():
            raise SemtileError(f"{csv_path}: answers file (path,label) not found")
        given = read_answers(csv_path, path_column=path_column, label_column=label_column)
        by_file: dict[str, list[Path]] = {}
        for path in given:
            by_file.setdefault(path.name, []).append(path)
        sources = {name: self[name].source for name in self.names}
        result_files: dict[str, int] = {}
        for source in sources.values():
            result_files[source.name] = result_files.get(source.name, 0) + 1
        out, used, by_name = {}, set(), 0
        for name, source in sources.items():
            path = source if source in given else None
            if path is None and len(by_file.get(source.name, ())) == 1 and result_files[source.name] == 1:
                path, by_name = by_file[source.name][0], by_name + 1
            out[name] = given[path] if path is not None else None
            if path is not None:
                used.add(path)
        series = pd.Series(out, dtype=object, name=csv_path.stem)
        series.attrs = {"matched": len(used), "by_name": by_name, "unmatched_answers": len(given) - len(used),
                        "file": str(csv_path)}
        return series

    # -- the model ----------------------------------------------------------------------------------
    def hypothesis_curve(self) -> dict | None:
        """The segmenter's hypothesis g(t), where its card has one: ``{"labels", "g", "hypothesis", "source"}``.

        Read from the provenance of the results (which carries the segmenter card's
        training record), else from the card beside the segmenter's weights when
        it is still there and its sha256 matches. None for a model without a curve
        (a segmenter trained on masks, like the built-in one).
        """
        if not self.names:
            return None
        result = self[self.names[0]]
        segmenter = (result.provenance.get("model") or {}).get("segmenter") or {}
        curve = recorded_curve(segmenter.get("training"), result.labels, "provenance")
        if curve is None and segmenter.get("path"):
            curve = card_curve(Path(segmenter["path"]), segmenter.get("sha256"), result.labels)
        return curve

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, {len(self.names)} results)"


def open_results(path: str | Path, csv: str | Path | None = None) -> Results:
    """Open the results in the store ``path`` read-only, with its run tables.

    ``csv`` is the current table the runs wrote (``semtile process --csv``);
    by default the one beside the store (``r.zarr`` -> ``r.csv``, its runs in
    ``r.runs/``). Raises SemtileError naming ``path`` when it is no result
    store; nothing is ever written.

    >>> results = open_results("demo.zarr")          # doctest: +SKIP
    >>> results.table[["label", "adhesive_ratio"]]   # doctest: +SKIP
    >>> results["t00_0000"].binary_mask.compute()    # doctest: +SKIP
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SemtileError(f"open_results: a path to a result store, not {type(path).__name__}")
    store = open_store(path, mode="r")
    return Results(store, Path(csv) if csv is not None else default_csv_path(Path(path)))
