"""Inference engines behind one small interface (one file per backend).

``create_engine("auto", ...)`` picks the fastest backend present, in the order
tensorrt > torch-cuda > openvino > onnxruntime > torch-cpu, and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from semtile.engines.base import Engine, EngineOutput
from semtile.errors import SemtileError

if TYPE_CHECKING:  # keep `import semtile.engines` free of torch for a fast CLI start
    from semtile.models.io import ModelBundle

__all__ = ["Engine", "EngineOutput", "EngineSettings", "ENGINE_NAMES", "AUTO_ORDER", "available_engines", "create_engine"]

AUTO_ORDER = ("tensorrt", "torch-cuda", "openvino", "onnxruntime", "torch-cpu")
ENGINE_NAMES = ("auto", *AUTO_ORDER)


@dataclass(frozen=True)
class EngineSettings:
    """What an engine needs besides the model: the tile shape and how to run."""

    tile: int = 256
    halo: int = 32
    batch_size: int = 8
    precision: str = "auto"
    threads: int | None = None


def _probe(name: str) -> tuple[bool, str]:
    if name == "torch-cpu":
        import torch

        return True, f"torch {torch.__version__}"
    if name == "onnxruntime":
        from semtile.engines.onnxruntime import onnxruntime_available

        return onnxruntime_available()
    if name == "openvino":
        from semtile.engines.openvino import openvino_available

        return openvino_available()
    if name == "torch-cuda":
        from semtile.engines.torch_cuda import torch_cuda_available

        return torch_cuda_available()
    if name == "tensorrt":
        from semtile.engines.tensorrt import tensorrt_available

        return tensorrt_available()
    raise SemtileError(f"unknown engine {name!r}")


def available_engines() -> dict[str, tuple[bool, str]]:
    """Every backend with whether it can run here and a short reason or version."""
    out = {}
    for name in AUTO_ORDER:
        try:
            out[name] = _probe(name)
        except Exception as exc:  # noqa: BLE001 - a broken optional install is "not available"
            out[name] = (False, f"{type(exc).__name__}: {exc}")
    return out


def create_engine(
    name: str,
    bundle: "ModelBundle",
    settings: EngineSettings = EngineSettings(),
    *,
    calibration_tiles: np.ndarray | None = None,
) -> tuple[Engine, str]:
    """Build the engine called ``name`` (or the best available for ``auto``); return it and why."""
    if name not in ENGINE_NAMES:
        raise SemtileError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    if name == "auto":
        found = available_engines()
        name = next(n for n in AUTO_ORDER if found[n][0])
        skipped = [f"{n}: {found[n][1]}" for n in AUTO_ORDER[: AUTO_ORDER.index(name)]]
        reason = f"auto: {name} is the fastest available ({found[name][1]})"
        if skipped:
            reason += "; not available: " + "; ".join(skipped)
    else:
        ok, why = _probe(name)
        if not ok:
            raise SemtileError(f"engine {name} is not available here: {why}")
        reason = f"asked for ({why})"
    return _build(name, bundle, settings, calibration_tiles), reason


def _build(name: str, bundle: "ModelBundle", s: EngineSettings, calibration_tiles) -> Engine:
    precision = s.precision
    if name == "torch-cpu":
        from semtile.engines.torch_cpu import TorchCPUEngine

        return TorchCPUEngine(bundle, threads=s.threads, precision="f32" if precision == "auto" else precision)
    if name == "torch-cuda":
        from semtile.engines.torch_cuda import TorchCUDAEngine

        return TorchCUDAEngine(bundle, precision="fp16" if precision == "auto" else precision,
                               batch_size=s.batch_size, tile=s.tile)
    from semtile.models.export import exported_bundle

    folder = exported_bundle(bundle, tile=s.tile, halo=s.halo)
    if name == "onnxruntime":
        from semtile.engines.onnxruntime import OnnxRuntimeEngine

        if precision not in ("auto", "f32"):
            raise SemtileError(f"the onnxruntime engine runs f32 only, not {precision}")
        return OnnxRuntimeEngine(folder, threads=s.threads)
    if name == "openvino":
        from semtile.engines.openvino import OpenVINOEngine

        return OpenVINOEngine(folder, precision=precision, threads=s.threads, calibration_tiles=calibration_tiles)
    from semtile.engines.tensorrt import TensorRTEngine

    return TensorRTEngine(folder, precision="fp16" if precision == "auto" else precision,
                          opt_batch=s.batch_size, tile=s.tile)
