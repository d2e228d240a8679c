"""The segmenter + classifier pass: the mask, the predicted label and the adhesive-area ratio of every result.

Its runner is the run's :class:`~semtile.engines.Engine` (any backend of the
registry), built once per process from the model files, checked against the
sha256s the run started with. Its judge thresholds the blended mask, counts
adhesive pixels region by region, and decides the label from the tiles'
class logits (:mod:`semtile.inference.labels`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from semtile.engines import Engine, EngineSettings
from semtile.errors import SemtileError
from semtile.inference.labels import class_probs, core_weights, decide_label
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.passes import Pass, PassResult, PassRunner, RegionJudgement, TileOutputs, register_pass
from semtile.inference.split import GridRule, TileGrid

__all__ = ["SegmentPass", "EngineRunner", "segment_pass", "segment_pass_of_files", "OUTPUT_PARAMETERS"]

#: The ProcessOptions fields that change a result (the completion key's ``parameters``).
OUTPUT_PARAMETERS = ("tile", "halo", "threshold", "page", "databar_rows")


class EngineRunner(PassRunner):
    """An :class:`~semtile.engines.Engine` as a pass runner: mask probabilities as the map ``mask``,
    class logits as the vector ``logits``."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.in_flight = max(1, engine.in_flight)
        self.device, self.stream = engine.maps_device() or (None, None)

    @staticmethod
    def _outputs(out) -> TileOutputs:
        return TileOutputs(maps={"mask": out.mask_probs}, vectors={"logits": out.class_logits})

    def run(self, tiles: np.ndarray) -> TileOutputs:
        return self._outputs(self.engine.run(tiles))

    def submit(self, tiles: np.ndarray) -> Any:
        return self.engine.submit(tiles)

    def collect(self, handle: Any) -> TileOutputs:
        return self._outputs(self.engine.collect(handle))

    def describe(self) -> dict:
        return self.engine.describe()


@register_pass
@dataclass(frozen=True, eq=False)
class SegmentPass(Pass):
    """The classifier and segmenter over every tile; see the module docstring. Picklable."""

    kind = "segment"

    classifier: str
    segmenter: str
    sha256: tuple[str, str]  # classifier, segmenter
    source: str
    labels: tuple
    provenance: dict  # the bundle's provenance record
    multiple: int
    engine: str  # resolved (never "auto")
    precision: str  # resolved
    engine_reason: str
    settings: EngineSettings
    options: ProcessOptions
    calibration: np.ndarray | None = None
    bundle: Any = field(default=None, repr=False)  # the loaded bundle in the process that made the pass
    prebuilt: Any = field(default=None, repr=False)  # an engine already built in this process (see of_engine)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["bundle"] = state["prebuilt"] = None  # workers load the files (and check their sha256)
        state.pop("_loaded", None)
        return state

    @classmethod
    def of_engine(cls, engine: Engine, bundle, options: ProcessOptions = ProcessOptions()) -> SegmentPass:
        """The pass of an engine already built here (tests, benchmarks, embedding semtile in a program)."""
        facts = engine.describe()
        made = segment_pass(bundle, "torch-cpu", EngineSettings(precision="f32"), options)
        return replace(made, engine=facts.get("name", engine.name), precision=facts.get("precision", "f32"),
                       engine_reason="given", prebuilt=engine)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def gpu(self) -> bool:  # type: ignore[override]
        from semtile.engines import is_gpu_engine

        return is_gpu_engine(self.engine)

    @property
    def rule(self) -> GridRule:
        return self.options.rule(self.multiple)

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    def token(self) -> tuple:
        if self.prebuilt is not None:
            return ("prebuilt", id(self.prebuilt))
        s = self.settings
        return (self.engine, self.precision, self.options.tile, self.options.halo, s.batch_size, s.threads,
                self.sha256, s.compile)

    def build_runner(self) -> EngineRunner:
        from semtile.engines import create_engine

        if self.prebuilt is not None:
            return EngineRunner(self.prebuilt)
        bundle = self.bundle if self.bundle is not None else self._load_checked()
        threads = self.settings.threads
        share = os.environ.get("SEMTILE_WORKERS_ON_HOST")
        if threads is None and share:  # a Dask worker: its share of the host's cores
            threads = max(1, len(os.sched_getaffinity(0)) // max(1, int(share)))
        settings = replace(self.settings, precision=self.precision, threads=threads,
                           device=int(os.environ.get("SEMTILE_CUDA_DEVICE", self.settings.device)))
        engine, _ = create_engine(self.engine, bundle, settings, calibration_tiles=self.calibration)
        return EngineRunner(engine)

    def vector_widths(self) -> dict[str, int]:
        return {"logits": len(self.labels)}

    def judge_region(self, maps: dict[str, np.ndarray]) -> RegionJudgement:
        mask = np.asarray(maps["mask"])
        binary = mask >= self.options.threshold
        return RegionJudgement(arrays={"mask": mask, "binary_mask": binary},
                               counts={"adhesive": int(np.count_nonzero(binary)), "pixels": int(binary.size),
                                       "mask_sum": float(mask.sum(dtype=np.float64))})

    def finish(self, counts: dict, vectors: dict, grid: TileGrid, runner_facts: dict) -> PassResult:
        probs = class_probs(vectors["logits"], core_weights(grid))
        label, label_rule = decide_label(probs, list(self.labels))
        pixels = counts["pixels"]
        return PassResult(
            fields={"labels": list(self.labels), "label": label, "class_probs": probs,
                    "adhesive_ratio": counts["adhesive"] / pixels},
            attrs={"label_rule": label_rule, "adhesive_ratio_soft": float(counts["mask_sum"] / pixels)},
            provenance={"model": self.provenance, "engine": runner_facts,
                        "parameters": {**asdict(self.options), "min_side": MIN_SIDE}})

    def key(self) -> dict:
        return {"model_sha256": {"classifier": self.sha256[0], "segmenter": self.sha256[1]},
                "engine": {"name": self.engine, "precision": self.precision},
                "parameters": {k: getattr(self.options, k) for k in OUTPUT_PARAMETERS}}

    @property
    def caveat(self) -> str:
        """What the built-in model's answers mean, where a part of it runs ('' otherwise); logged at run start."""
        from semtile.models.naming import builtin_caveat, builtin_parts

        return builtin_caveat(builtin_parts(self.provenance))

    def run_facts(self) -> dict:
        return {"model": self.source, "engine": self.engine, "precision": self.precision,
                "engine_reason": self.engine_reason}

    def prepared(self, scans: list) -> SegmentPass:
        made = self
        if self.bundle is None and self.prebuilt is None and scans:  # planned from the cards: load and check now
            made = replace(self, bundle=self._load_checked(), provenance=self._load_checked().provenance())
        if made.precision != "int8" or made.calibration is not None or not scans:
            return made
        from semtile.inference.sampling import calibration_tiles

        return replace(made, calibration=calibration_tiles(list(scans), made.options))

    def _load_checked(self):
        """The bundle of the pass's files (loaded once), checked against the sha256s the run was planned with."""
        if self.__dict__.get("_loaded") is None:
            from semtile.models.io import load_bundle

            bundle = replace(load_bundle(None, classifier=self.classifier, segmenter=self.segmenter),
                             source=self.source)
            got = (bundle.classifier.sha256, bundle.segmenter.sha256)
            if got != tuple(self.sha256):
                raise SemtileError(f"the model files changed since the run started ({self.classifier}, "
                                   f"{self.segmenter}): sha256 {got} != {tuple(self.sha256)}")
            object.__setattr__(self, "_loaded", bundle)
        return self.__dict__["_loaded"]


def segment_pass(bundle, engine: str = "auto", settings: EngineSettings = EngineSettings(),
                 options: ProcessOptions = ProcessOptions()) -> SegmentPass:
    """The pass of ``bundle`` on ``engine`` (``auto``: the fastest here), checked before anything runs.

    The engine and precision are resolved here, without building anything, so
    that a rerun's plan (the completion key) is known first.
    """
    from semtile.engines import resolve_engine

    multiple = max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple)
    options.validate(multiple)
    name, precision, why = resolve_engine(engine, settings.precision)  # checks the pair first, then probes
    return SegmentPass(classifier=str(bundle.classifier.path), segmenter=str(bundle.segmenter.path),
                       sha256=(bundle.classifier.sha256, bundle.segmenter.sha256), source=bundle.source,
                       labels=tuple(bundle.labels), provenance=bundle.provenance(), multiple=multiple,
                       engine=name, precision=precision, engine_reason=why,
                       settings=replace(settings, tile=options.tile, halo=options.halo,
                                        batch_size=options.batch_size),
                       options=options, bundle=bundle)


def segment_pass_of_files(model_dir=None, classifier=None, segmenter=None, engine: str = "auto",
                          settings: EngineSettings = EngineSettings(),
                          options: ProcessOptions = ProcessOptions()) -> SegmentPass:
    """:func:`segment_pass` of the files :func:`~semtile.models.io.load_bundle` would load, planned from their
    cards and sha256s alone: nothing is loaded and torch is not imported, so a run with nothing to do stays
    quick. :meth:`SegmentPass.prepared` loads the weights (checked against these sha256s) when there is work.
    """
    from semtile.engines import resolve_engine
    from semtile.models.cards import read_bundle_cards

    cards = read_bundle_cards(model_dir, classifier=classifier, segmenter=segmenter)
    options.validate(cards.multiple)
    name, precision, why = resolve_engine(engine, settings.precision)
    return SegmentPass(classifier=str(cards.classifier.path), segmenter=str(cards.segmenter.path),
                       sha256=(cards.classifier.sha256, cards.segmenter.sha256), source=cards.source,
                       labels=cards.labels, provenance=cards.provenance(), multiple=cards.multiple,
                       engine=name, precision=precision, engine_reason=why,
                       settings=replace(settings, tile=options.tile, halo=options.halo,
                                        batch_size=options.batch_size),
                       options=options)
