"""The table of inference backends: what each runs, how to probe it, how to build it.

One :class:`EngineEntry` per backend, in the order ``auto`` tries them
(fastest first). Probing and building import the backend module lazily, so
importing this module (and ``semtile.engines``) never imports torch.

:func:`create_engine` checks the engine/precision combination and the
settings against the table *before* probing the machine or building
anything, and raises :class:`~semtile.errors.SemtileError` with one line
naming what was asked and what would be accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from semtile.engines.base import Engine
from semtile.errors import SemtileError

if TYPE_CHECKING:
    from semtile.models.io import ModelBundle

__all__ = ["PRECISIONS", "EngineEntry", "EngineSettings", "REGISTRY", "ENGINES", "AUTO_ORDER", "ENGINE_NAMES",
           "canonical_precision", "check_options", "is_gpu_engine", "available_engines", "create_engine", "resolve_engine"]

PRECISIONS = ("f32", "bf16", "fp16", "int8")  # canonical spellings
_ALIASES = {"fp32": "f32", "float32": "f32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class EngineSettings:
    """What an engine needs besides the model: the tile shape and how to run."""

    tile: int = 256
    halo: int | None = None  # None: the one rule, tile // 8
    batch_size: int = 8
    precision: str = "auto"
    threads: int | None = None
    compile: str | None = None  # torch-cuda: a torch.compile mode (None: eager kernels in a CUDA graph)
    device: int = 0  # GPU engines: the CUDA device (of those CUDA_VISIBLE_DEVICES shows)


@dataclass(frozen=True)
class EngineEntry:
    """One backend: the precisions it runs, its choice for ``auto``, a probe and a builder (both lazy)."""

    name: str
    precisions: tuple[str, ...]
    default: str | Callable[[], str]  # the precision "auto" means (a callable where it depends on the machine)
    probe: Callable[[], tuple[bool, str]]  # (can run here, why / version)
    build: Callable[["ModelBundle", EngineSettings, "np.ndarray | None"], Engine]  # settings.precision resolved
    default_note: str = ""  # how a machine-dependent default is chosen, for messages

    def auto_precision(self) -> str:
        return self.default() if callable(self.default) else self.default

    def describe_default(self) -> str:
        return self.default_note or (self.default if isinstance(self.default, str) else "machine-dependent")


# -- probes and builders (lazy imports) ----------------------------------------------------------


def _probe_tensorrt():
    from semtile.engines.tensorrt import tensorrt_available

    return tensorrt_available()


def _probe_torch_cuda():
    from semtile.engines.torch_cuda import torch_cuda_available

    return torch_cuda_available()


def _probe_openvino():
    from semtile.engines.openvino import openvino_available

    return openvino_available()


def _probe_onnxruntime():
    from semtile.engines.onnxruntime import onnxruntime_available

    return onnxruntime_available()


def _probe_torch_cpu():
    import torch

    return True, f"torch {torch.__version__}"


def _openvino_default() -> str:
    from semtile.engines.openvino import openvino_default_precision

    return openvino_default_precision()


def _exported(bundle: "ModelBundle", s: EngineSettings):
    from semtile.models.export import exported_bundle

    return exported_bundle(bundle, tile=s.tile, halo=s.halo)


def _build_tensorrt(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.tensorrt import TensorRTEngine

    # The optimisation profile must admit the batch size asked for (chunks are opt_batch tiles).
    return TensorRTEngine(_exported(bundle, s), precision=s.precision, opt_batch=s.batch_size,
                          max_batch=max(32, s.batch_size), tile=s.tile, device=s.device)


def _build_torch_cuda(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.torch_cuda import TorchCUDAEngine

    return TorchCUDAEngine(bundle, precision=s.precision, batch_size=s.batch_size, tile=s.tile, compile=s.compile,
                           device=s.device)


def _build_openvino(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.openvino import OpenVINOEngine

    return OpenVINOEngine(_exported(bundle, s), precision=s.precision, threads=s.threads,
                          calibration_tiles=calibration_tiles)


def _build_onnxruntime(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(_exported(bundle, s), threads=s.threads)


def _build_torch_cpu(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.torch_cpu import TorchCPUEngine

    return TorchCPUEngine(bundle, threads=s.threads, precision=s.precision, compile=s.compile)


# -- the table -----------------------------------------------------------------------------------

REGISTRY: tuple[EngineEntry, ...] = (
    EngineEntry("tensorrt", ("f32", "fp16", "int8"), "fp16", _probe_tensorrt, _build_tensorrt),
    EngineEntry("torch-cuda", ("f32", "bf16", "fp16"), "fp16", _probe_torch_cuda, _build_torch_cuda),
    EngineEntry("openvino", ("f32", "bf16", "int8"), _openvino_default, _probe_openvino, _build_openvino,
                default_note="bf16 where the CPU has native bf16, else f32"),
    EngineEntry("onnxruntime", ("f32",), "f32", _probe_onnxruntime, _build_onnxruntime),
    EngineEntry("torch-cpu", ("f32", "bf16"), "f32", _probe_torch_cpu, _build_torch_cpu),
)
ENGINES = {entry.name: entry for entry in REGISTRY}
AUTO_ORDER = tuple(entry.name for entry in REGISTRY)
ENGINE_NAMES = ("auto", *AUTO_ORDER)


# -- checks --------------------------------------------------------------------------------------


#: Engines that run on a GPU: their Dask tasks need the ``GPU`` resource.
GPU_ENGINES = frozenset({"tensorrt", "torch-cuda"})


def is_gpu_engine(name: str) -> bool:
    """Whether engine ``name`` runs on a GPU."""
    return name in GPU_ENGINES


def canonical_precision(precision: str) -> str:
    """``auto`` or one of :data:`PRECISIONS` (``fp32``, ``half``... accepted as aliases)."""
    value = str(precision).strip().lower()
    value = _ALIASES.get(value, value)
    if value != "auto" and value not in PRECISIONS:
        raise SemtileError(f"unknown precision {precision!r}: choose one of auto, {', '.join(PRECISIONS)}")
    return value


def _runs(precision: str) -> str:
    return ", ".join(e.name for e in REGISTRY if precision in e.precisions)


def check_options(name: str, precision: str = "auto") -> str:
    """Check an engine/precision pair against the table alone (no probing); return the canonical precision."""
    if name not in ENGINE_NAMES:
        raise SemtileError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    value = canonical_precision(precision)
    if name != "auto" and value != "auto" and value not in ENGINES[name].precisions:
        entry = ENGINES[name]
        raise SemtileError(f"engine {name} does not run precision {value}: it runs {', '.join(entry.precisions)} "
                           f"(auto: {entry.describe_default()}); {value} runs on {_runs(value)}")
    return value


def _check_settings(s: EngineSettings, multiple: int) -> None:
    if int(s.batch_size) < 1:
        raise SemtileError(f"batch size must be at least 1, got {s.batch_size}")
    if int(s.tile) < 1 or int(s.tile) % multiple:
        raise SemtileError(f"tile {s.tile} must be a positive multiple of {multiple} (2**d of the model)")
    if s.halo is not None and int(s.halo) < 0:
        raise SemtileError(f"halo must not be negative, got {s.halo}")
    if s.threads is not None and int(s.threads) < 1:
        raise SemtileError(f"threads must be at least 1, got {s.threads}")


# -- probing and building ------------------------------------------------------------------------


def _probe(entry: EngineEntry) -> tuple[bool, str]:
    try:
        ok, why = entry.probe()
    except Exception as exc:  # noqa: BLE001 - a broken optional install is "not available"
        ok, why = False, f"{type(exc).__name__}: {exc}"
    return bool(ok), " ".join(str(why).split())  # one line, whatever the library said


def available_engines() -> dict[str, tuple[bool, str]]:
    """Every backend with whether it can run here and a short reason or version."""
    return {entry.name: _probe(entry) for entry in REGISTRY}


def _pick_auto(precision: str) -> tuple[EngineEntry, str]:
    """The first available engine in auto order that runs ``precision``, and why."""
    found = available_engines()
    candidates = [e for e in REGISTRY if precision == "auto" or precision in e.precisions]
    chosen = next((e for e in candidates if found[e.name][0]), None)
    if chosen is None:
        why = "; ".join(f"{e.name}: {found[e.name][1]}" for e in candidates)
        if precision == "auto":
            raise SemtileError(f"engine auto: no engine is available here ({why})")
        raise SemtileError(f"engine auto: no engine available here runs precision {precision} "
                           f"(it runs on {_runs(precision)}; not available: {why})")
    what = "fastest available" if precision == "auto" else f"fastest available that runs {precision}"
    reason = f"auto: {chosen.name} is the {what} ({found[chosen.name][1]})"
    before = AUTO_ORDER[: AUTO_ORDER.index(chosen.name)]
    skipped = [f"{n}: {found[n][1]}" for n in before if not found[n][0]]
    if skipped:
        reason += "; not available: " + "; ".join(skipped)
    other = [n for n in before if found[n][0] and precision not in ENGINES[n].precisions]
    if other:
        reason += f"; available but not running {precision}: " + ", ".join(other)
    return chosen, reason


def create_engine(
    name: str,
    bundle: "ModelBundle",
    settings: EngineSettings = EngineSettings(),
    *,
    calibration_tiles: np.ndarray | None = None,
) -> tuple[Engine, str]:
    """Build the engine called ``name`` (or the best available for ``auto``); return it and why.

    The combination is checked against the table first, then the settings
    against the model, and only then is the machine probed.
    """
    check_options(name, settings.precision)
    _check_settings(settings, max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple))
    entry, resolved, reason = _resolve(name, settings.precision)
    if settings.compile is not None and entry.name not in ("torch-cuda", "torch-cpu"):
        raise SemtileError(f"torch.compile applies to the torch-cuda and torch-cpu engines, not {entry.name} "
                           f"({reason}); pass --engine torch-cuda or torch-cpu")
    return entry.build(bundle, replace(settings, precision=resolved), calibration_tiles), reason


def _resolve(name: str, precision: str) -> tuple[EngineEntry, str, str]:
    precision = check_options(name, precision)
    if name == "auto":
        entry, reason = _pick_auto(precision)
    else:
        entry = ENGINES[name]
        ok, why = _probe(entry)
        if not ok:
            raise SemtileError(f"engine {name} is not available here: {why}")
        reason = f"asked for ({why})"
    return entry, (entry.auto_precision() if precision == "auto" else precision), reason


def resolve_engine(name: str, precision: str = "auto") -> tuple[str, str, str]:
    """The engine and precision :func:`create_engine` would build here, and why, without building it."""
    entry, resolved, reason = _resolve(name, precision)
    return entry.name, resolved, reason
