"""Inference engines behind one small interface (one file per backend), for every model kind.

``create_engine("auto", model, ...)`` picks the fastest backend present that
runs the model's kind, in the order tensorrt > torch-cuda > openvino >
onnxruntime > torch-cpu (for a defect model: openvino > onnxruntime >
torch-cpu), and says why. The backends, the kinds and precisions each runs,
whether it needs a GPU and how each is probed and built live in one table,
:mod:`semtile.engines.registry`; bad engine/precision combinations are
refused there, as :class:`~semtile.errors.SemtileError`, before anything is
probed or built. :mod:`semtile.engines.conformance` compares the engines
with PyTorch on one model.
"""

from __future__ import annotations

from semtile.engines.base import DefectEngine, Engine, EngineOutput
from semtile.engines.registry import (
    AUTO_ORDER,
    ENGINE_NAMES,
    ENGINES,
    GRADIENT_ENGINES,
    PRECISIONS,
    EngineSettings,
    available_engines,
    check_options,
    create_engine,
    engine_kind,
    engines_for,
    is_gpu_engine,
    pick_engine,
    resolve_engine,
    torch_device,
)

__all__ = ["Engine", "DefectEngine", "EngineOutput", "EngineSettings", "ENGINE_NAMES", "ENGINES", "AUTO_ORDER",
           "PRECISIONS", "GRADIENT_ENGINES", "available_engines", "check_options", "create_engine", "engine_kind",
           "engines_for", "is_gpu_engine", "pick_engine", "resolve_engine", "torch_device"]
