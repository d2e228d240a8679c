"""The table of inference backends, for every model kind: what each runs, how to probe it, how to build it.

One :class:`EngineEntry` per backend, in the order ``auto`` tries them
(fastest first). Each says the model kinds it runs (a bundle: classifier and
segmenter together; a patch classifier, autoencoder or VAE: one defect
model), the precisions it runs them at, whether it needs a GPU and whether it
takes gradients (PyTorch). Probing and building import the backend module
lazily, so importing this module (and ``semtile.engines``) never imports torch.

:func:`create_engine` checks the engine/precision combination and the
settings against the table *before* probing the machine or building
anything, and raises :class:`~semtile.errors.SemtileError` with one line
naming what was asked and what would be accepted. ``auto`` picks among the
engines that run the model's kind (:func:`pick_engine`, :func:`resolve_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from semtile.engines.base import DefectEngine, Engine
from semtile.errors import SemtileError
from semtile.models.kinds import BUNDLE, DEFECT_KINDS, ENGINE_KINDS

if TYPE_CHECKING:
    from semtile.models.io import LoadedModel, ModelBundle

__all__ = ["PRECISIONS", "EngineEntry", "EngineSettings", "REGISTRY", "ENGINES", "AUTO_ORDER", "ENGINE_NAMES",
           "GRADIENT_ENGINES", "canonical_precision", "check_options", "available_engines", "create_engine",
           "resolve_engine", "pick_engine", "engines_for", "is_gpu_engine", "torch_device", "engine_kind"]

PRECISIONS = ("f32", "bf16", "fp16", "int8")  # canonical spellings
_ALIASES = {"fp32": "f32", "float32": "f32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class EngineSettings:
    """What an engine needs besides the model: the tile shape and how to run."""

    tile: int | None = 256  # None: the model's own (a defect model's card; 256 for a bundle)
    halo: int | None = None  # None: the one rule, tile // 8
    batch_size: int = 8
    precision: str = "auto"
    threads: int | None = None
    compile: str | None = None  # torch-cuda: a torch.compile mode (None: eager kernels in a CUDA graph)
    device: int = 0  # GPU engines: the CUDA device (of those CUDA_VISIBLE_DEVICES shows)


@dataclass(frozen=True)
class EngineEntry:
    """One backend: the model kinds and precisions it runs, its choice for ``auto``, a probe and a builder (both
    lazy), whether it needs a GPU and whether it takes gradients."""

    name: str
    precisions: tuple[str, ...]  # for a bundle
    default: str | Callable[[], str]  # the precision "auto" means (a callable where it depends on the machine)
    probe: Callable[[], tuple[bool, str]]  # (can run here, why / version)
    # (bundle or loaded defect model, settings with precision and tile resolved, calibration tiles) -> engine
    build: Callable[[ModelBundle | LoadedModel, EngineSettings, np.ndarray | None], Engine | DefectEngine]
    default_note: str = ""  # how a machine-dependent default is chosen, for messages
    gpu: bool = False  # needs a CUDA GPU (a Dask task of it asks for a GPU worker)
    gradients: bool = False  # a PyTorch engine: heat maps can take gradients through it
    defect_precisions: tuple[str, ...] = ()  # for one defect model; () where it runs none

    @property
    def kinds(self) -> tuple[str, ...]:
        """The model kinds it runs: ``bundle`` (classifier and segmenter) and the defect kinds it runs."""
        return (BUNDLE, *(DEFECT_KINDS if self.defect_precisions else ()))

    def precisions_for(self, kind: str = BUNDLE) -> tuple[str, ...]:
        """The precisions it runs a model of ``kind`` at (none where it does not run that kind)."""
        if kind == BUNDLE:
            return self.precisions
        return self.defect_precisions if kind in DEFECT_KINDS else ()

    def auto_precision(self) -> str:
        return self.default() if callable(self.default) else self.default

    def describe_default(self) -> str:
        return self.default_note or (self.default if isinstance(self.default, str) else "machine-dependent")


# -- probes and builders (lazy imports) ----------------------------------------------------------


def _installed(package: str) -> str | None:
    """The installed version of ``package`` from its metadata (None: not installed); nothing is imported."""
    from importlib import metadata
    from importlib.util import find_spec

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown version" if find_spec(package) is not None else None


def no_cuda_here() -> str | None:
    """Why no CUDA engine can run here, told without importing torch (None: one might, so probe it).

    A CUDA engine needs the NVIDIA driver (``/proc/driver/nvidia`` or ``libcuda``) and a torch built
    with CUDA (a ``+cpu`` wheel is not).
    """
    import ctypes.util
    import os

    torch_version = _installed("torch")
    if torch_version is None:
        return "PyTorch is not installed"
    if torch_version.endswith("+cpu"):
        return f"this PyTorch ({torch_version}) was built without CUDA support"
    if not os.path.exists("/proc/driver/nvidia") and ctypes.util.find_library("cuda") is None:
        return "no NVIDIA driver here (no /proc/driver/nvidia, no libcuda)"
    return None


def _probe_tensorrt():
    if _installed("tensorrt") is None:
        return False, "TensorRT is not installed"
    why = no_cuda_here()
    if why:
        return False, f"TensorRT is installed but {why}"
    from semtile.engines.tensorrt import tensorrt_available

    return tensorrt_available()


def _probe_torch_cuda():
    why = no_cuda_here()
    if why:
        return False, why
    from semtile.engines.torch_cuda import torch_cuda_available

    return torch_cuda_available()


def _probe_openvino():
    from semtile.engines.openvino import openvino_available

    return openvino_available()


def _probe_onnxruntime():
    from semtile.engines.onnxruntime import onnxruntime_available

    return onnxruntime_available()


def _probe_torch_cpu():
    version = _installed("torch")
    return (False, "PyTorch is not installed") if version is None else (True, f"torch {version}")


def _openvino_default() -> str:
    from semtile.engines.openvino import openvino_default_precision

    return openvino_default_precision()


def _exported(bundle: ModelBundle, s: EngineSettings):
    from semtile.models.export import export_model

    return export_model(bundle, tile=s.tile, halo=s.halo)


def _bundle(model) -> bool:
    return engine_kind(model) == BUNDLE


def _build_tensorrt(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.tensorrt import TensorRTEngine

    # The optimisation profile must admit the batch size asked for (chunks are opt_batch tiles).
    return TensorRTEngine(_exported(bundle, s), precision=s.precision, opt_batch=s.batch_size,
                          max_batch=max(32, s.batch_size), tile=s.tile, device=s.device)


def _build_torch_cuda(bundle, s: EngineSettings, calibration_tiles) -> Engine:
    from semtile.engines.torch_cuda import TorchCUDAEngine

    return TorchCUDAEngine(bundle, precision=s.precision, batch_size=s.batch_size, tile=s.tile, compile=s.compile,
                           device=s.device)


def _build_openvino(model, s: EngineSettings, calibration_tiles) -> Engine | DefectEngine:
    from semtile.engines.openvino import OpenVINODefectEngine, OpenVINOEngine

    if not _bundle(model):
        return OpenVINODefectEngine(model, tile=s.tile, precision=s.precision, threads=s.threads)
    return OpenVINOEngine(_exported(model, s), precision=s.precision, threads=s.threads,
                          calibration_tiles=calibration_tiles)


def _build_onnxruntime(model, s: EngineSettings, calibration_tiles) -> Engine | DefectEngine:
    from semtile.engines.onnxruntime import OnnxRuntimeDefectEngine, OnnxRuntimeEngine

    if not _bundle(model):
        return OnnxRuntimeDefectEngine(model, tile=s.tile, threads=s.threads)
    return OnnxRuntimeEngine(_exported(model, s), threads=s.threads)


def _build_torch_cpu(model, s: EngineSettings, calibration_tiles) -> Engine | DefectEngine:
    from semtile.engines.torch_cpu import TorchCPUEngine, TorchDefectEngine

    if not _bundle(model):  # any tile that is a multiple of the model's 2**stages
        return TorchDefectEngine(model, threads=s.threads)
    return TorchCPUEngine(model, threads=s.threads, precision=s.precision, compile=s.compile)


# -- the table -----------------------------------------------------------------------------------

REGISTRY: tuple[EngineEntry, ...] = (
    EngineEntry("tensorrt", ("f32", "fp16", "int8"), "fp16", _probe_tensorrt, _build_tensorrt, gpu=True),
    EngineEntry("torch-cuda", ("f32", "bf16", "fp16"), "fp16", _probe_torch_cuda, _build_torch_cuda, gpu=True,
                gradients=True),
    EngineEntry("openvino", ("f32", "bf16", "int8"), _openvino_default, _probe_openvino, _build_openvino,
                default_note="bf16 where the CPU has native bf16, else f32", defect_precisions=("f32", "bf16")),
    EngineEntry("onnxruntime", ("f32",), "f32", _probe_onnxruntime, _build_onnxruntime, defect_precisions=("f32",)),
    EngineEntry("torch-cpu", ("f32", "bf16"), "f32", _probe_torch_cpu, _build_torch_cpu, gradients=True,
                defect_precisions=("f32",)),
)
ENGINES = {entry.name: entry for entry in REGISTRY}
AUTO_ORDER = tuple(entry.name for entry in REGISTRY)
ENGINE_NAMES = ("auto", *AUTO_ORDER)
#: The engines that take gradients (PyTorch): what heat maps run on.
GRADIENT_ENGINES = tuple(entry.name for entry in REGISTRY if entry.gradients)


def engine_kind(model) -> str:
    """What an engine is built for: ``bundle`` for a :class:`~semtile.models.io.ModelBundle`, the kind of a loaded
    defect model (SemtileError for anything else)."""
    if hasattr(model, "classifier") and hasattr(model, "segmenter"):
        return BUNDLE
    kind = getattr(getattr(model, "arch", None), "kind", None)
    if kind in DEFECT_KINDS and hasattr(model, "network"):
        return kind
    what = f"a lone {kind}" if kind else type(model).__name__
    raise SemtileError(f"engines run a bundle (classifier and segmenter) or one loaded defect model, not {what}")


def engines_for(kind: str = BUNDLE) -> tuple[str, ...]:
    """The engines that run a model of ``kind`` (``bundle`` or a defect kind), fastest first."""
    _check_kind(kind)
    return tuple(entry.name for entry in REGISTRY if kind in entry.kinds)


def is_gpu_engine(name: str) -> bool:
    """Whether the engine ``name`` needs a GPU (False for ``auto`` and for names not in the table)."""
    entry = ENGINES.get(name)
    return bool(entry and entry.gpu)


# -- checks --------------------------------------------------------------------------------------


def canonical_precision(precision: str) -> str:
    """``auto`` or one of :data:`PRECISIONS` (``fp32``, ``half``... accepted as aliases)."""
    value = str(precision).strip().lower()
    value = _ALIASES.get(value, value)
    if value != "auto" and value not in PRECISIONS:
        raise SemtileError(f"unknown precision {precision!r}: choose one of auto, {', '.join(PRECISIONS)}")
    return value


def _check_kind(kind: str) -> None:
    if kind not in ENGINE_KINDS:
        raise SemtileError(f"unknown model kind {kind!r} for an engine: one of {', '.join(ENGINE_KINDS)}")


def _runs(precision: str, kind: str = BUNDLE) -> str:
    return ", ".join(e.name for e in REGISTRY if precision in e.precisions_for(kind))


def _for(kind: str) -> str:
    return "" if kind == BUNDLE else f" for {kind} models"


def check_options(name: str, precision: str = "auto", kind: str = BUNDLE) -> str:
    """Check an engine/precision pair for a model of ``kind`` against the table alone (no probing); return the
    canonical precision."""
    _check_kind(kind)
    if name not in ENGINE_NAMES:
        raise SemtileError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    value = canonical_precision(precision)
    if name == "auto":
        return value
    entry = ENGINES[name]
    if kind not in entry.kinds:
        raise SemtileError(f"engine {name} does not run {kind} models: choose auto or one of "
                           f"{', '.join(e.name for e in REGISTRY if kind in e.kinds)}")
    accepted = entry.precisions_for(kind)
    if value != "auto" and value not in accepted:
        raise SemtileError(f"engine {name} does not run precision {value}{_for(kind)}: it runs {', '.join(accepted)} "
                           f"(auto: {entry.describe_default()}); {value} runs on {_runs(value, kind) or 'no engine'}")
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


def _pick_auto(precision: str, kind: str = BUNDLE) -> tuple[EngineEntry, str]:
    """The first available engine in auto order that runs a ``kind`` at ``precision``, and why."""
    found = available_engines()
    runners = [e for e in REGISTRY if kind in e.kinds]
    candidates = [e for e in runners if precision == "auto" or precision in e.precisions_for(kind)]
    chosen = next((e for e in candidates if found[e.name][0]), None)
    if chosen is None:
        why = "; ".join(f"{e.name}: {found[e.name][1]}" for e in candidates)
        if precision == "auto":
            raise SemtileError(f"engine auto: no engine{_for(kind)} is available here ({why})")
        raise SemtileError(f"engine auto: no engine available here runs precision {precision}{_for(kind)} "
                           f"(it runs on {_runs(precision, kind) or 'no engine'}; not available: {why})")
    what = "fastest available" if precision == "auto" else f"fastest available that runs {precision}"
    reason = f"auto: {chosen.name} is the {what} ({found[chosen.name][1]})"
    before = [e.name for e in runners[: runners.index(chosen)]]
    skipped = [f"{n}: {found[n][1]}" for n in before if not found[n][0]]
    if skipped:
        reason += "; not available: " + "; ".join(skipped)
    other = [n for n in before if found[n][0] and precision not in ENGINES[n].precisions_for(kind)]
    if other:
        reason += f"; available but not running {precision}: " + ", ".join(other)
    return chosen, reason


def create_engine(
    name: str,
    model: ModelBundle | LoadedModel,
    settings: EngineSettings | None = None,
    *,
    calibration_tiles: np.ndarray | None = None,
) -> tuple[Engine | DefectEngine, str]:
    """Build the engine called ``name`` (or the best available for ``auto``) for ``model``; return it and why.

    ``model`` is a bundle (an :class:`~semtile.engines.base.Engine` comes
    back) or one loaded defect model (a :class:`~semtile.engines.base.DefectEngine`:
    the ONNX engines run its export at ``settings.tile``, None meaning the
    card's; PyTorch takes any tile). Without ``settings``: the defaults, at
    the model's own tile (256 for a bundle, the card's for a defect model).
    The combination is checked against the table first, then the settings
    against the model, and only then is the machine probed.
    """
    kind = engine_kind(model)
    settings = settings if settings is not None else EngineSettings(tile=None)
    precision = check_options(name, settings.precision, kind)
    settings = replace(settings, tile=int(settings.tile or (256 if kind == BUNDLE else model.tile)))
    _check_settings(settings, model.multiple if kind == BUNDLE else model.arch.multiple)
    if settings.compile is not None and kind != BUNDLE:
        raise SemtileError(f"torch.compile applies to bundles on the torch-cuda and torch-cpu engines, not to a {kind}")
    entry, resolved, reason = _probe_and_pick(name, precision, kind)
    if settings.compile is not None and entry.name not in ("torch-cuda", "torch-cpu"):
        raise SemtileError(f"torch.compile applies to the torch-cuda and torch-cpu engines, not {entry.name} "
                           f"({reason}); pass --engine torch-cuda or torch-cpu")
    return entry.build(model, replace(settings, precision=resolved), calibration_tiles), reason


def _resolve(name: str, precision: str, kind: str = BUNDLE) -> tuple[EngineEntry, str, str]:
    return _probe_and_pick(name, check_options(name, precision, kind), kind)


def _probe_and_pick(name: str, precision: str, kind: str) -> tuple[EngineEntry, str, str]:
    """The entry for an already checked ``name``/``precision`` pair: probed (auto: the first that runs here)."""
    if name == "auto":
        entry, reason = _pick_auto(precision, kind)
    else:
        entry = ENGINES[name]
        ok, why = _probe(entry)
        if not ok:
            raise SemtileError(f"engine {name} is not available here: {why}")
        reason = f"asked for ({why})"
    return entry, (entry.auto_precision() if precision == "auto" else precision), reason


def resolve_engine(name: str, precision: str = "auto", kind: str = BUNDLE) -> tuple[str, str, str]:
    """The engine and precision :func:`create_engine` would build here for a model of ``kind``, and why, without
    building it."""
    entry, resolved, reason = _resolve(name, precision, kind)
    return entry.name, resolved, reason


def pick_engine(name: str = "auto", kind: str = BUNDLE, precision: str = "auto") -> tuple[str, str]:
    """The engine to run a model of ``kind`` on (``auto``: the fastest available here that runs it) and why.

    For the defect kinds ``auto`` tries openvino, onnxruntime, torch-cpu in
    this order (the table's, restricted to the engines that run them).
    """
    entry, _, reason = _resolve(name, precision, kind)
    return entry.name, reason


def torch_device(engine: str) -> tuple[str, str]:
    """The torch device gradients (heat maps) run on for ``--engine``, and a sentence saying why.

    ``auto`` takes CUDA where there is a GPU, else the CPU; an engine that
    takes gradients is taken as asked (SemtileError for a GPU one without a
    GPU); any other engine (OpenVINO, ONNX Runtime, TensorRT) cannot: they
    run on PyTorch, and the sentence says so.
    """
    import torch

    cuda = torch.cuda.is_available()
    if engine == "auto":
        return ("cuda", "auto: torch-cuda (a GPU is present)") if cuda else \
            ("cpu", "auto: torch-cpu (heat maps need gradients, which only the PyTorch engines give)")
    entry = ENGINES.get(engine)
    if entry is not None and entry.gradients:
        if entry.gpu and not cuda:
            raise SemtileError(f"--engine {engine}: no CUDA device is available here (use torch-cpu or auto)")
        return ("cuda" if entry.gpu else "cpu"), f"{engine} as asked"
    device = "cuda" if cuda else "cpu"
    return device, (f"heat maps need gradients, which {engine} cannot give: they run on torch-{device} instead "
                    f"(the results' masks and labels are untouched)")
