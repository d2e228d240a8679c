"""Engines for defect models: PyTorch (the reference), ONNX Runtime and OpenVINO on the CPU.

Every engine runs one defect model on batches of tiles ``(n, T, T)`` in
[0, 1] and returns what the model's inference graph gives: the anomaly map
``(n, T, T)`` of an autoencoder or VAE, or the defect probability ``(n,)``
of a patch classifier. The ONNX engines run the cached export
(:func:`semtile.defects.export.exported_defect_model`) at a fixed tile;
PyTorch takes any tile that is a multiple of ``2**stages``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from semtile.errors import SemtileError
from semtile.models.io import LoadedModel
from semtile.models.kinds import DEFECT_KINDS

__all__ = ["DefectEngine", "TorchDefectEngine", "OnnxRuntimeDefectEngine", "OpenVINODefectEngine",
           "create_defect_engine", "DEFECT_ENGINES"]

DEFECT_ENGINES = ("torch-cpu", "onnxruntime", "openvino")


class DefectEngine(ABC):
    """One defect model on one backend. Not thread-safe: one per thread."""

    name = "engine"
    precision = "f32"

    def __init__(self, model: LoadedModel, tile: int | None):
        if not isinstance(model, LoadedModel) or model.arch.kind not in DEFECT_KINDS:
            raise SemtileError(f"a defect engine needs a loaded defect model, got {type(model).__name__}")
        self.model = model
        self.tile = tile  # None: any multiple of the model's 2**stages

    def check(self, tiles: np.ndarray) -> np.ndarray:
        if not isinstance(tiles, np.ndarray) or tiles.ndim != 3 or tiles.shape[1] != tiles.shape[2]:
            raise ValueError(f"tiles must be an (n, T, T) array, got {getattr(tiles, 'shape', type(tiles))}")
        side = tiles.shape[1]
        if side % self.model.arch.multiple:
            raise ValueError(f"tile side {side} is not a multiple of {self.model.arch.multiple} ({self.model.path})")
        if self.tile is not None and side != self.tile:
            raise ValueError(f"the {self.name} engine runs {self.tile}-pixel tiles, got {side}")
        return np.ascontiguousarray(tiles, dtype=np.float32)

    @abstractmethod
    def run(self, tiles: np.ndarray) -> np.ndarray:
        """Per-pixel output of a batch of tiles (n, T, T), float32."""

    @staticmethod
    def _shape(out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        return np.ascontiguousarray(out[:, 0] if out.ndim == 4 else out)

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "model_sha256": self.model.sha256}


class TorchDefectEngine(DefectEngine):
    name = "torch-cpu"

    def __init__(self, model: LoadedModel, threads: int | None = None):
        super().__init__(model, None)
        import torch

        from semtile.models.networks import inference_module

        if threads:
            torch.set_num_threads(threads)
        self._module = inference_module(model.network)

    def run(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(self.check(tiles))[:, None]
        with torch.inference_mode():
            return self._shape(self._module(x).numpy())


class OnnxRuntimeDefectEngine(DefectEngine):
    name = "onnxruntime"

    def __init__(self, model: LoadedModel, tile: int | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SemtileError("onnxruntime is not installed (pip install onnxruntime)") from exc
        from semtile.defects.export import ONNX_NAME, exported_defect_model

        super().__init__(model, int(tile or model.tile))
        folder = exported_defect_model(model, tile=self.tile)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(folder / ONNX_NAME), options, providers=["CPUExecutionProvider"])

    def run(self, tiles: np.ndarray) -> np.ndarray:
        return self._shape(self._session.run(None, {"tiles": self.check(tiles)[:, None]})[0])


class OpenVINODefectEngine(DefectEngine):
    name = "openvino"

    def __init__(self, model: LoadedModel, tile: int | None = None, precision: str = "auto",
                 threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as exc:
            raise SemtileError("openvino is not installed (pip install openvino)") from exc
        from semtile.defects.export import ONNX_NAME, exported_defect_model
        from semtile.engines.openvino import openvino_cpu_config, openvino_default_precision

        if precision not in ("auto", "f32", "bf16"):
            raise SemtileError(f"the openvino defect engine runs f32 or bf16 (or auto), not {precision!r}")
        super().__init__(model, int(tile or model.tile))
        self.precision = openvino_default_precision() if precision == "auto" else precision
        folder = exported_defect_model(model, tile=self.tile)
        core = ov.Core()
        network = core.read_model(str(folder / ONNX_NAME))
        network.reshape({"tiles": ov.PartialShape([-1, 1, self.tile, self.tile])})
        self._request = core.compile_model(network, "CPU", openvino_cpu_config(self.precision, threads)
                                           ).create_infer_request()

    def run(self, tiles: np.ndarray) -> np.ndarray:
        return self._shape(np.array(self._request.infer({0: self.check(tiles)[:, None]})[0]))


def create_defect_engine(model: LoadedModel, engine: str = "torch-cpu", *, tile: int | None = None,
                         precision: str = "auto", threads: int | None = None) -> DefectEngine:
    """Build ``engine`` (one of :data:`DEFECT_ENGINES`) for ``model``; ONNX engines at ``tile`` (default: the card's)."""
    if engine == "torch-cpu":
        if precision not in ("auto", "f32"):
            raise SemtileError(f"the torch-cpu defect engine is the f32 reference, not {precision!r}")
        return TorchDefectEngine(model, threads=threads)
    if engine == "onnxruntime":
        if precision not in ("auto", "f32"):
            raise SemtileError(f"the onnxruntime defect engine runs f32, not {precision!r}")
        return OnnxRuntimeDefectEngine(model, tile=tile, threads=threads)
    if engine == "openvino":
        return OpenVINODefectEngine(model, tile=tile, precision=precision, threads=threads)
    raise SemtileError(f"unknown defect engine {engine!r}: choose one of {', '.join(DEFECT_ENGINES)}")
