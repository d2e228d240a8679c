"""Inference engines behind one small interface (one file per backend).

``create_engine("auto", ...)`` picks the fastest backend present, in the order
tensorrt > torch-cuda > openvino > onnxruntime > torch-cpu, and says why. The
backends, the precisions each runs and how each is probed and built live in
one table, :mod:`semtile.engines.registry`; bad engine/precision combinations
are refused there, as :class:`~semtile.errors.SemtileError`, before anything
is probed or built.
"""

from __future__ import annotations

from semtile.engines.base import Engine, EngineOutput
from semtile.engines.registry import (
    AUTO_ORDER,
    ENGINE_NAMES,
    PRECISIONS,
    EngineSettings,
    available_engines,
    check_options,
    is_gpu_engine,
    create_engine,
    resolve_engine,
)

__all__ = ["Engine", "EngineOutput", "EngineSettings", "ENGINE_NAMES", "AUTO_ORDER", "PRECISIONS",
           "available_engines", "check_options", "is_gpu_engine", "create_engine", "resolve_engine"]
