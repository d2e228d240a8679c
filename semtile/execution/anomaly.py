"""``semtile process --anomaly MODEL``: a whole-scan anomaly map and anomaly fraction beside each mask.

The anomaly map is a second tiled pass over the same normalised valid area
the mask was computed on (the scan's scratch copy), with the autoencoder's
own fixed tile and halo, blended by the same merger machinery: in memory
(:func:`semtile.defects.anomaly.anomaly_map`, i.e. ``run_array`` and
``BlendMerger``) for ordinary scans, region by region from per-block partial
sums (:mod:`semtile.inference.regions`) for large ones, so the two agree to
float32 rounding and neither has seams. The *anomaly fraction* is the share
of pixels above the threshold calibrated in the model's card
(``semtile train calibrate-anomaly``) or given with ``--anomaly-threshold``.

The engine is chosen like the others: the fastest available CPU engine for
defect models (OpenVINO, then ONNX Runtime, then PyTorch), at f32 so that the
threshold calibrated with PyTorch keeps its meaning. What decides the map
(model sha256, engine, precision, tile, halo, threshold) joins the run's
completion key, so a rerun with another model or threshold redoes the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError
from semtile.logs import get_logger

__all__ = ["AnomalySpec", "ANOMALY_ENGINES", "MAP_NAME", "anomaly_spec", "anomaly_engine", "scan_anomaly",
           "add_anomaly_attrs", "pick_anomaly_engine", "calibrate_on_scans"]

log = get_logger("semtile.process")

#: The stored map's name (a pyramid group ``anomaly/0, 1, ...`` in OME-Zarr).
MAP_NAME = "anomaly"
#: Fastest first: what ``auto`` tries.
ANOMALY_ENGINES = ("openvino", "onnxruntime", "torch-cpu")


@dataclass(frozen=True)
class AnomalySpec:
    """Everything a process (or a worker) needs to run the anomaly pass; small and picklable."""

    model: str  # the weights (.pt) with their card beside
    sha256: str
    kind: str  # autoencoder or vae
    engine: str
    precision: str
    tile: int
    halo: int
    threshold: float
    threshold_source: str  # "card" or "option"
    batch_size: int = 8
    threads: int | None = None
    engine_reason: str = ""

    def key(self) -> dict:
        """What decides the map and the fraction: joins the completion record's key."""
        return {"model_sha256": self.sha256, "engine": self.engine, "precision": self.precision,
                "tile": self.tile, "halo": self.halo, "threshold": self.threshold}

    def parameters(self) -> dict:
        return {"tile": self.tile, "halo": self.halo, "batch_size": self.batch_size, "threshold": self.threshold,
                "threshold_source": self.threshold_source}


def pick_anomaly_engine(name: str = "auto") -> tuple[str, str]:
    """The defect engine to run (``auto``: the fastest available here) and why."""
    from semtile.engines import available_engines

    if name not in ("auto", *ANOMALY_ENGINES):
        raise SemtileError(f"--anomaly-engine {name!r}: choose auto or one of {', '.join(ANOMALY_ENGINES)}")
    found = available_engines()
    if name != "auto":
        ok, why = found.get(name, (False, "unknown"))
        if not ok:
            raise SemtileError(f"anomaly engine {name} is not available here: {why}")
        return name, f"asked for ({why})"
    for candidate in ANOMALY_ENGINES:
        ok, why = found.get(candidate, (False, "unknown"))
        if ok:
            skipped = [f"{n}: {found[n][1]}" for n in ANOMALY_ENGINES[: ANOMALY_ENGINES.index(candidate)]]
            return candidate, f"auto: {candidate} is the fastest available ({why})" + \
                ("; not available: " + "; ".join(skipped) if skipped else "")
    raise SemtileError("no engine for the anomaly model is available here")  # torch-cpu always is


def anomaly_spec(model_path: str | Path, *, engine: str = "auto", threshold: float | None = None,
                 batch_size: int = 8, threads: int | None = None) -> AnomalySpec:
    """Check the anomaly model and settle its engine, grid and threshold (SemtileError naming the file)."""
    from semtile.defects.anomaly import _halo
    from semtile.defects.modelio import load_defect_model
    from semtile.errors import ModelError
    from semtile.kernels.window import default_halo

    try:
        model = load_defect_model(model_path)
    except ModelError as exc:
        raise SemtileError(f"--anomaly: {exc}") from None
    if not model.arch.is_anomaly:
        raise SemtileError(f"--anomaly {model_path}: a {model.arch.kind} gives no anomaly map; "
                           "train one with `semtile train autoencoder`")
    tile = model.tile
    if tile % model.arch.multiple:
        raise SemtileError(f"--anomaly {model_path}: the card's tile {tile} is not a multiple of {model.arch.multiple}")
    halo = _halo(tile, model.halo, model.arch.multiple, default_halo(tile))
    source = "option"
    if threshold is None:
        threshold, source = model.threshold, "card"
    if threshold is None:
        raise SemtileError(f"--anomaly {model_path}: its card has no calibrated threshold; run "
                           "`semtile train calibrate-anomaly MODEL NORMAL_SCANS...` or give --anomaly-threshold")
    if not np.isfinite(threshold):
        raise SemtileError(f"--anomaly-threshold {threshold}: must be a finite number")
    name, why = pick_anomaly_engine(engine)
    return AnomalySpec(model=str(Path(model_path).resolve()), sha256=model.sha256, kind=model.arch.kind,
                       engine=name, precision="f32", tile=int(tile), halo=int(halo), threshold=float(threshold),
                       threshold_source=source, batch_size=int(batch_size), threads=threads, engine_reason=why)


_ENGINES: dict = {}  # per process: spec -> defect engine


def anomaly_engine(spec: AnomalySpec):
    """This process's engine for ``spec``, built on first use and kept (checked against the model's sha256)."""
    found = _ENGINES.get(spec)
    if found is not None:
        return found
    from semtile.defects.engines import create_defect_engine
    from semtile.defects.modelio import load_defect_model

    model = load_defect_model(spec.model, expect=("autoencoder", "vae"))
    if model.sha256 != spec.sha256:
        raise SemtileError(f"{spec.model}: the anomaly model changed since the run started "
                           f"(sha256 {model.sha256[:12]}... != {spec.sha256[:12]}...)")
    engine = create_defect_engine(model, spec.engine, tile=spec.tile if spec.engine != "torch-cpu" else None,
                                  precision=spec.precision, threads=spec.threads)
    _ENGINES.clear()  # one anomaly engine per process: a new run's spec replaces the last
    _ENGINES[spec] = engine
    return engine


def scan_anomaly(image, spec: AnomalySpec, engine=None) -> tuple[np.ndarray, float]:
    """The blended anomaly map of a whole (normalised) image and its anomaly fraction."""
    from semtile.defects.anomaly import anomaly_map

    engine = engine if engine is not None else anomaly_engine(spec)
    result, fraction = anomaly_map(image, engine, tile=spec.tile, halo=spec.halo, batch_size=spec.batch_size,
                                   threshold=spec.threshold)
    return result, float(fraction)


def add_anomaly_attrs(attrs: dict, spec: AnomalySpec, fraction: float, engine_facts: dict | None = None) -> dict:
    """Record the fraction, threshold, model, engine and parameters in a result's attrs and provenance.

    Returns the map's own attributes (its provenance, stored with the map).
    """
    engine_facts = dict(engine_facts or {"name": spec.engine, "precision": spec.precision})
    model = {"path": spec.model, "sha256": spec.sha256, "kind": spec.kind}
    attrs["anomaly_fraction"] = float(fraction)
    attrs["anomaly"] = {"threshold": spec.threshold, "threshold_source": spec.threshold_source, "model": model,
                        "engine": engine_facts, "parameters": spec.parameters(), "map": MAP_NAME}
    provenance = attrs.get("provenance")
    if isinstance(provenance, dict):
        provenance.setdefault("model", {})["anomaly"] = model
        provenance.setdefault("engine", {})["anomaly"] = engine_facts
        provenance.setdefault("parameters", {})["anomaly"] = spec.parameters()
    return {"kind": "anomaly", "model": model, "engine": engine_facts, **spec.parameters(),
            "fraction_above_threshold": float(fraction)}


def describe(spec: AnomalySpec) -> dict:
    return asdict(spec)


def calibrate_on_scans(model_path: str | Path, scans: list[Path], fpr: float, *, engine: str = "auto",
                       page: int = 0, databar_rows: int | None = None) -> dict:
    """Calibrate an anomaly model's pixel threshold on normal ``scans`` at false-positive rate ``fpr``.

    Each scan is read like ``semtile process`` reads it (the normalised valid
    area, data bar excluded) and mapped through the same tiled path with the
    model's own tile and halo; the ``1 - fpr`` quantile of all their pixels is
    written into the model's card (``threshold``), which ``process --anomaly``
    then uses. Returns the card's new ``threshold`` entry.
    """
    from semtile.defects.anomaly import calibrate_model
    from semtile.defects.engines import create_defect_engine
    from semtile.defects.modelio import load_defect_model
    from semtile.io.tiff import open_scan

    if not scans:
        raise SemtileError(f"{model_path}: no normal scans to calibrate the threshold on")
    model = load_defect_model(model_path, expect=("autoencoder", "vae"))
    name, why = pick_anomaly_engine(engine)
    runner = create_defect_engine(model, name, tile=model.tile if name != "torch-cpu" else None, precision="f32")

    def images():
        for path in scans:
            with open_scan(path, page=page, databar_rows=databar_rows) as scan:
                yield np.ascontiguousarray(scan.valid().compute(), dtype=np.float32)

    threshold = calibrate_model(model_path, images(), fpr, engine=runner,
                                note=f"{len(scans)} normal scans, engine {name} f32 ({why})")
    log.info("anomaly_threshold_calibrated", model=str(model_path), threshold=threshold["value"], fpr=fpr,
             scans=len(scans), engine=name)
    return threshold
