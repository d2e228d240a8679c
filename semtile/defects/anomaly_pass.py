"""``semtile process --anomaly MODEL``: the anomaly pass, a whole-scan anomaly map and anomaly fraction per result.

The anomaly map is a pass (:class:`~semtile.inference.passes.Pass`) over the
same normalised valid area the mask is computed on, with the autoencoder's
own fixed tile and halo, blended by the same mergers as every pass: in memory
for ordinary scans, region by region from per-block partial sums for large
ones, so the two agree to float32 rounding and neither has seams. The *anomaly fraction* is the share
of pixels above the threshold calibrated in the model's card
(``semtile train calibrate-anomaly``) or given with ``--anomaly-threshold``.

The engine is chosen like the others: the fastest available CPU engine for
defect models (OpenVINO, then ONNX Runtime, then PyTorch), at f32 so that the
threshold calibrated with PyTorch keeps its meaning. What decides the map
(model sha256, engine, precision, tile, halo, threshold) joins the run's
completion key, so a rerun with another model or threshold redoes the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError
from semtile.inference.passes import Pass, PassResult, PassRunner, RegionJudgement, TileOutputs, register_pass
from semtile.inference.split import GridRule, TileGrid
from semtile.logs import get_logger

__all__ = ["AnomalyPass", "MAP_NAME", "anomaly_pass", "calibrate_on_scans"]

log = get_logger("semtile.process")

#: The stored map's name (a pyramid group ``anomaly/0, 1, ...`` in OME-Zarr).
MAP_NAME = "anomaly"
class _AnomalyRunner(PassRunner):
    def __init__(self, engine):
        self.engine = engine

    def run(self, tiles: np.ndarray) -> TileOutputs:
        return TileOutputs(maps={MAP_NAME: self.engine.run(tiles)})

    def describe(self) -> dict:
        return self.engine.describe()


@register_pass
@dataclass(frozen=True)
class AnomalyPass(Pass):
    """An autoencoder's (or VAE's) anomaly map over every tile, and the share of pixels above its threshold."""

    kind = "anomaly"

    model: str  # the weights (.pt) with their card beside
    sha256: str
    model_kind: str  # autoencoder or vae
    engine: str
    precision: str
    rule: GridRule
    threshold: float
    threshold_source: str  # "card" or "option"
    batch_size: int = 8
    threads: int | None = None
    engine_reason: str = ""

    def build_runner(self) -> PassRunner:
        from semtile.engines import EngineSettings, create_engine
        from semtile.models.io import load_model
        from semtile.models.kinds import ANOMALY_KINDS

        model = load_model(self.model, expect=ANOMALY_KINDS)
        if model.sha256 != self.sha256:
            raise SemtileError(f"{self.model}: the anomaly model changed since the run started "
                               f"(sha256 {model.sha256[:12]}... != {self.sha256[:12]}...)")
        engine, _ = create_engine(self.engine, model, EngineSettings(tile=self.rule.tile, precision=self.precision,
                                                                     threads=self.threads))
        return _AnomalyRunner(engine)

    def map_names(self) -> tuple[str, ...]:
        return (MAP_NAME,)

    def parameters(self) -> dict:
        return {"tile": self.rule.tile, "halo": self.rule.halo, "batch_size": self.batch_size,
                "threshold": self.threshold, "threshold_source": self.threshold_source}

    def judge_region(self, maps: dict) -> RegionJudgement:
        values = np.asarray(maps[MAP_NAME])
        return RegionJudgement(arrays={MAP_NAME: values},
                               counts={"anomalous": int(np.count_nonzero(values > self.threshold)),
                                       "pixels": int(values.size)})

    def finish(self, counts: dict, vectors: dict, grid: TileGrid, runner_facts: dict) -> PassResult:
        fraction = counts["anomalous"] / counts["pixels"]
        facts = dict(runner_facts or {"name": self.engine, "precision": self.precision})
        model = {"path": self.model, "sha256": self.sha256, "kind": self.model_kind}
        return PassResult(
            attrs={"anomaly_fraction": float(fraction),
                   MAP_NAME: {"threshold": self.threshold, "threshold_source": self.threshold_source,
                              "model": model, "engine": facts, "parameters": self.parameters(), "map": MAP_NAME}},
            provenance={"model": {MAP_NAME: model}, "engine": {MAP_NAME: facts},
                        "parameters": {MAP_NAME: self.parameters()}},
            map_attrs={MAP_NAME: {"kind": "anomaly", "model": model, "engine": facts, **self.parameters(),
                                  "fraction_above_threshold": float(fraction)}},
            row={"anomaly_fraction": float(fraction)})

    def key(self) -> dict:
        """What decides the map and the fraction."""
        return {MAP_NAME: {"model_sha256": self.sha256, "engine": self.engine, "precision": self.precision,
                           "tile": self.rule.tile, "halo": self.rule.halo, "threshold": self.threshold}}

    def columns(self) -> tuple[str, ...]:
        return ("anomaly_fraction",)

    def run_facts(self) -> dict:
        return {"anomaly_model": self.model, "anomaly_engine": self.engine,
                "anomaly_engine_reason": self.engine_reason, "anomaly_threshold": self.threshold}


def anomaly_pass(model_path: str | Path, *, engine: str = "auto", threshold: float | None = None,
                 batch_size: int = 8, threads: int | None = None) -> AnomalyPass:
    """Check the anomaly model and settle its engine, grid and threshold (SemtileError naming the file)."""
    from semtile.engines import pick_engine
    from semtile.errors import ModelError
    from semtile.models.io import load_model
    from semtile.models.kinds import DEFECT_KINDS

    try:
        model = load_model(model_path, expect=DEFECT_KINDS)
    except ModelError as exc:
        raise SemtileError(f"--anomaly: {exc}") from None
    if not model.arch.is_anomaly:
        raise SemtileError(f"--anomaly {model_path}: a {model.arch.kind} gives no anomaly map; "
                           "train one with `semtile train autoencoder`")
    rule = GridRule.derive(model.tile, model.halo, multiple=model.arch.multiple, aligned=True,
                           what=f"--anomaly {model_path}")
    source = "option"
    if threshold is None:
        threshold, source = model.threshold, "card"
    if threshold is None:
        raise SemtileError(f"--anomaly {model_path}: its card has no calibrated threshold; run "
                           "`semtile train calibrate-anomaly MODEL NORMAL_SCANS...` or give --anomaly-threshold")
    if not np.isfinite(threshold):
        raise SemtileError(f"--anomaly-threshold {threshold}: must be a finite number")
    name, why = pick_engine(engine, kind=model.kind)
    return AnomalyPass(model=str(Path(model_path).resolve()), sha256=model.sha256, model_kind=model.arch.kind,
                       engine=name, precision="f32", rule=rule, threshold=float(threshold),
                       threshold_source=source, batch_size=int(batch_size), threads=threads, engine_reason=why)


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
    from semtile.engines import EngineSettings, create_engine, pick_engine
    from semtile.io.tiff import open_scan
    from semtile.models.io import load_model
    from semtile.models.kinds import ANOMALY_KINDS

    if not scans:
        raise SemtileError(f"{model_path}: no normal scans to calibrate the threshold on")
    model = load_model(model_path, expect=ANOMALY_KINDS)
    name, why = pick_engine(engine, kind=model.kind)
    runner, _ = create_engine(name, model, EngineSettings(tile=None, precision="f32"))

    def images():
        for path in scans:
            with open_scan(path, page=page, databar_rows=databar_rows) as scan:
                yield np.ascontiguousarray(scan.valid().compute(), dtype=np.float32)

    threshold = calibrate_model(model_path, images(), fpr, engine=runner,
                                note=f"{len(scans)} normal scans, engine {name} f32 ({why})")
    log.info("anomaly_threshold_calibrated", model=str(model_path), threshold=threshold["value"], fpr=fpr,
             scans=len(scans), engine=name)
    return threshold
