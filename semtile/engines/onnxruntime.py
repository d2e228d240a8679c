"""ONNX Runtime engines on the CPU: a bundle's export (:class:`OnnxRuntimeEngine`), a defect model's
(:class:`OnnxRuntimeDefectEngine`, at the fixed tile of its cached export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semtile.engines.base import DefectEngine, Engine, EngineOutput
from semtile.errors import SemtileError

__all__ = ["OnnxRuntimeEngine", "OnnxRuntimeDefectEngine", "onnxruntime_available"]


def onnxruntime_available() -> tuple[bool, str]:
    try:
        import onnxruntime
    except ImportError:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, f"onnxruntime {onnxruntime.__version__}"


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    precision = "f32"

    def __init__(self, bundle_dir: str | Path, *, threads: int | None = None):
        ok, why = onnxruntime_available()
        if not ok:
            raise SemtileError(why)
        import onnxruntime as ort

        from semtile.models.export import read_export_manifest  # torch: only to build

        folder = Path(bundle_dir)
        manifest = read_export_manifest(folder, kind="bundle")
        self.tile = int(manifest["tile"])
        options = _session_options(ort, threads)
        providers = ["CPUExecutionProvider"]
        self._classifier = ort.InferenceSession(str(folder / "classifier.onnx"), options, providers=providers)
        self._segmenter = ort.InferenceSession(str(folder / "segmenter.onnx"), options, providers=providers)
        self.multiple = 2 ** max(manifest["architecture"]["classifier"]["d"], manifest["architecture"]["segmenter"]["d"])
        self._version = ort.__version__

    def run(self, tiles: np.ndarray) -> EngineOutput:
        x = self.check_tiles(tiles, self.multiple)[:, None]
        logits = self._classifier.run(None, {"tiles": x})[0]
        probs = self._segmenter.run(None, {"tiles": x})[0][:, 0]
        return EngineOutput(class_logits=np.asarray(logits, np.float32), mask_probs=np.asarray(probs, np.float32))

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": "cpu", "onnxruntime": self._version}


def _session_options(ort, threads: int | None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxRuntimeDefectEngine(DefectEngine):
    """A defect model's cached ONNX export on ONNX Runtime, f32, at ``tile`` (default: the card's)."""

    name = "onnxruntime"

    def __init__(self, model, tile: int | None = None, threads: int | None = None):
        ok, why = onnxruntime_available()
        if not ok:
            raise SemtileError(why)
        import onnxruntime as ort

        from semtile.models.export import ONNX_NAME, export_model

        super().__init__(model, int(tile or model.tile))
        folder = export_model(model, tile=self.tile)
        self._session = ort.InferenceSession(str(folder / ONNX_NAME), _session_options(ort, threads),
                                             providers=["CPUExecutionProvider"])

    def run(self, tiles: np.ndarray) -> np.ndarray:
        return self._shape(self._session.run(None, {"tiles": self.check(tiles)[:, None]})[0])
