"""TensorRT engine built from an exported bundle's ONNX files (TensorRT 10 and 11).

Networks are always *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
required for reduced precision on TensorRT 11, which removed the FP16/INT8
builder flags, and accepted on 10.x), so the precision lives in the ONNX graph:

* ``f32`` (alias ``fp32``): the exported ONNX as is (TF32 is switched off, so f32 means f32).
* ``fp16``: the ONNX converted by :func:`semtile.models.fp16.convert_onnx_to_fp16`:
  float32 weights and constants become float16, Cast nodes at the graph input
  and outputs keep the engine's I/O float32.
* ``int8``: ONNX files with explicit Q/DQ nodes, ``classifier.int8.onnx`` and
  ``segmenter.int8.onnx`` next to the exported ones (produced by a quantiser;
  see the error raised when they are missing).

Each network becomes one engine with one optimisation profile over the batch
axis ``(1, opt_batch, max_batch)`` for a fixed ``(1, tile, tile)`` tile.
Serialised engines are cached in ``cache_dir`` (default
``$SEMTILE_CACHE/tensorrt``, ``~/.cache/semtile/tensorrt`` without it) under a key that hashes the ONNX sha256, the
TensorRT version, the GPU name and compute capability, the precision and the
profile; a cached engine that fails to deserialise is rebuilt. Builds share a
timing cache file in the same folder, loaded before and saved after a build
(:mod:`semtile.engines.tensorrt_build` holds that half).

Inference is asynchronous (``submit`` / ``collect``, see :mod:`semtile.engines.base`):
``in_flight`` slots, each with its own CUDA stream, execution contexts,
pinned host buffers and PyTorch device buffers. A submitted batch of at most
``opt_batch`` tiles queues its host-to-device copy, both networks and the
copy back on its slot's stream and returns; events keep the compute of
successive batches in order, so the copies of one batch overlap the compute
of the others. ``run`` chunks a larger batch over the slots.
``tensorrt`` is imported lazily: this module imports without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from semtile.engines.base import Engine, EngineOutput, Submitted
from semtile.engines.tensorrt_build import NETWORKS, TensorRTBuilds, trt_logger
from semtile.errors import ModelError, SemtileError

__all__ = ["TensorRTEngine", "tensorrt_available", "import_tensorrt", "PRECISIONS", "default_cache_dir"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "f32", "int8")
_ALIASES = {"fp32": "f32", "float32": "f32", "float16": "fp16", "half": "fp16"}
_NOT_INSTALLED = ("TensorRT is not installed: `pip install tensorrt` (needs an NVIDIA GPU with a recent driver); "
                  "use the torch-cuda engine meanwhile")


def default_cache_dir() -> Path:
    """``$SEMTILE_CACHE/tensorrt`` (``~/.cache/semtile/tensorrt`` when unset)."""
    from semtile.models.export import cache_root

    return cache_root() / "tensorrt"


def import_tensorrt():
    """The ``tensorrt`` module, or a :class:`SemtileError` saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:  # also covers a wheel whose native libraries are missing
        raise SemtileError(f"{_NOT_INSTALLED} ({exc})") from exc
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """Whether TensorRT can run here (installed and a CUDA device visible), and why (not)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, f"TensorRT is not installed ({exc})"
    except Exception as exc:  # noqa: BLE001 - a broken install is "not available"
        return False, f"TensorRT failed to import: {type(exc).__name__}: {exc}"
    try:
        import torch

        if not torch.cuda.is_available():
            why = "was built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
            return False, f"TensorRT {trt.__version__} is installed but PyTorch {torch.__version__} {why}"
        name = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install raises anything: "not available"
        return False, f"TensorRT {trt.__version__} is installed but CUDA is unusable: {exc}"
    return True, f"TensorRT {trt.__version__} on {name}"


# -- the engine -----------------------------------------------------------------------------


class _Slot:
    """One batch in flight: its stream, pinned host and device buffers, one context per network, events."""

    def __init__(self, torch, device, engines, chunk, tile, n_labels, input_name, output_names):
        self.stream = torch.cuda.Stream(device)
        self.computed = torch.cuda.Event()
        self.done = torch.cuda.Event()  # the slot's last copy back: its buffers may be reused after it
        self.used = False
        self.host_in = torch.empty((chunk, tile, tile), dtype=torch.float32, pin_memory=True)
        self.host_logits = torch.empty((chunk, n_labels), dtype=torch.float32, pin_memory=True)
        self.host_probs = torch.empty((chunk, tile, tile), dtype=torch.float32, pin_memory=True)
        self.d_in = torch.empty((chunk, 1, tile, tile), dtype=torch.float32, device=device)
        self.d_logits = torch.empty((chunk, n_labels), dtype=torch.float32, device=device)
        self.d_probs = torch.empty((chunk, 1, tile, tile), dtype=torch.float32, device=device)
        self.contexts = []
        for name, engine in engines.items():
            context = engine.create_execution_context()
            if context is None:
                raise SemtileError(f"TensorRT could not create an execution context for the {name}")
            out = self.d_logits if name == "classifier" else self.d_probs
            context.set_tensor_address(input_name[name], self.d_in.data_ptr())
            context.set_tensor_address(output_names[name], out.data_ptr())
            self.contexts.append((name, context))
        self.rows = -1  # batch size the contexts' input shape is set to


class TensorRTEngine(TensorRTBuilds, Engine):
    """Both networks as TensorRT engines built (or loaded from the cache) from an exported bundle."""

    name = "tensorrt"

    def __init__(self, bundle_dir: Path, *, precision: str = "fp16", max_batch: int = 32, opt_batch: int = 8,
                 tile: int | None = None, cache_dir: Path | None = None, device: int = 0, in_flight: int = 3):
        if int(in_flight) < 1:
            raise SemtileError(f"the tensorrt engine needs at least 1 batch in flight, got {in_flight}")
        self.in_flight = int(in_flight)
        precision = _ALIASES.get(str(precision).lower(), str(precision).lower())
        if precision not in PRECISIONS:
            raise SemtileError(f"the tensorrt engine runs {', '.join(PRECISIONS)}, not {precision!r}")
        if not 1 <= int(opt_batch) <= int(max_batch):
            raise SemtileError(f"the tensorrt engine needs 1 <= batch size <= max_batch, got batch size {opt_batch}, "
                               f"max_batch {max_batch}")
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            why = "this PyTorch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise SemtileError(f"the tensorrt engine needs a CUDA GPU: {why}")
        if not 0 <= int(device) < torch.cuda.device_count():
            raise SemtileError(f"CUDA device {device} does not exist ({torch.cuda.device_count()} visible)")

        from semtile.models.export import read_export_manifest

        self.bundle_dir = Path(bundle_dir)
        manifest = read_export_manifest(self.bundle_dir, kind="bundle")
        self.tile = int(tile) if tile is not None else int(manifest["tile"])
        arch = manifest["architecture"]
        self.multiple = max(2 ** int(arch["classifier"]["d"]), 2 ** int(arch["segmenter"]["d"]))
        if self.tile < 1 or self.tile % self.multiple:
            raise SemtileError(f"tile {self.tile} must be a positive multiple of {self.multiple}")
        self.n_labels = int(arch["classifier"]["n_labels"])
        self.precision = precision
        self.max_batch, self.opt_batch = int(max_batch), int(opt_batch)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.device = torch.device("cuda", int(device))
        self._trt, self._torch = trt, torch

        props = torch.cuda.get_device_properties(self.device)
        self.gpu_name = props.name
        self.compute_capability = f"{props.major}.{props.minor}"
        self.profile = {"min": [1, 1, self.tile, self.tile], "opt": [self.opt_batch, 1, self.tile, self.tile],
                        "max": [self.max_batch, 1, self.tile, self.tile]}
        self.timing_cache_path = self.cache_dir / f"timing-trt{trt.__version__}-sm{props.major}{props.minor}.cache"

        sources = self._onnx_sources(manifest)
        self.cache_keys: dict[str, str] = {}
        self.engine_paths: dict[str, Path] = {}
        self.loaded_from_cache: dict[str, bool] = {}
        self.build_seconds: dict[str, float] = {}
        engines = {}
        with torch.cuda.device(self.device):
            torch.cuda.init()
            runtime = trt.Runtime(trt_logger(trt))
            self._runtime = runtime
            builder_state: dict = {}
            for net in NETWORKS:
                path, sha = sources[net]
                key = self._cache_key(sha)
                self.cache_keys[net] = key
                self.engine_paths[net] = self.cache_dir / f"{net}-{precision}-{key}.engine"
                engines[net] = self._load_or_build(net, path, builder_state)
            if builder_state.get("cache") is not None:
                self._save_timing_cache(builder_state["cache"])
            self.timing_cache_loaded = builder_state.get("timing_cache_loaded")  # None: nothing was built
            self._engines = engines  # kept alive as long as the execution contexts built from them

            self._input_name, self._output_name = {}, {}
            for net, engine in engines.items():
                inputs, outputs = [], []
                for i in range(engine.num_io_tensors):
                    tname = engine.get_tensor_name(i)
                    (inputs if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT else outputs).append(tname)
                    if engine.get_tensor_dtype(tname) != trt.DataType.FLOAT:
                        raise ModelError(f"{net} engine tensor {tname!r} is {engine.get_tensor_dtype(tname)}, "
                                         "expected float32 I/O")
                if len(inputs) != 1 or len(outputs) != 1:
                    raise ModelError(f"{net} engine must have one input and one output, has {inputs} and {outputs}")
                if net == "classifier" and int(engine.get_tensor_shape(outputs[0])[-1]) != self.n_labels:
                    raise ModelError(f"classifier engine returns {engine.get_tensor_shape(outputs[0])} logits, "
                                     f"bundle.json says {self.n_labels} labels")
                self._input_name[net], self._output_name[net] = inputs[0], outputs[0]

            self.chunk = self.opt_batch
            self._slots = [_Slot(torch, self.device, engines, self.chunk, self.tile, self.n_labels,
                                 self._input_name, self._output_name) for _ in range(self.in_flight)]
            self._next_slot = 0
            self._previous = None  # the last submitted batch's compute event: batches compute in order
            torch.cuda.synchronize(self.device)

    # -- inference: asynchronous ------------------------------------------------------------------

    def submit(self, tiles: np.ndarray) -> Submitted:
        """Queue one batch of at most ``opt_batch`` tiles on the next slot's stream; returns at once."""
        tiles = self.check_tiles(tiles, self.multiple)
        n = tiles.shape[0]
        if tiles.shape[1] != self.tile:
            raise ValueError(f"the tensorrt engine was built for {self.tile}x{self.tile} tiles, got "
                             f"{tiles.shape[1]}x{tiles.shape[2]}")
        if n == 0:
            return Submitted(0, EngineOutput(class_logits=np.zeros((0, self.n_labels), np.float32),
                                             mask_probs=np.zeros((0, self.tile, self.tile), np.float32)))
        if n > self.chunk:
            return Submitted(n, self.run(tiles))  # more than a slot holds: the synchronous path chunks it
        torch = self._torch
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        if slot.used:
            slot.done.synchronize()  # its previous batch is finished with the buffers
        slot.used = True
        slot.host_in.numpy()[:n] = tiles  # the CPU's copy: overlaps the GPU's work on the other slots
        with torch.cuda.device(self.device), torch.cuda.stream(slot.stream):
            slot.d_in[:n, 0].copy_(slot.host_in[:n], non_blocking=True)
            if self._previous is not None:  # compute in submission order; the copy above overlaps it
                slot.stream.wait_event(self._previous)
            for net, context in slot.contexts:
                if slot.rows != n and not context.set_input_shape(self._input_name[net], (n, 1, self.tile, self.tile)):
                    raise SemtileError(f"TensorRT rejected input shape ({n}, 1, {self.tile}, {self.tile}) "
                                       f"for the {net} engine")
                if not context.execute_async_v3(slot.stream.cuda_stream):
                    raise SemtileError(f"TensorRT failed to run the {net} engine")
            slot.rows = n
            slot.computed.record(slot.stream)
            self._previous = slot.computed
            slot.host_logits[:n].copy_(slot.d_logits[:n], non_blocking=True)
            slot.host_probs[:n].copy_(slot.d_probs[:n, 0], non_blocking=True)
            slot.done.record(slot.stream)
        return Submitted(n, slot)

    def collect(self, handle: Submitted) -> EngineOutput:
        if isinstance(handle.state, EngineOutput):
            return handle.state
        slot, n = handle.state, handle.count
        slot.done.synchronize()
        # Pinned buffers are reused by the slot's next batch: copy out.
        return EngineOutput(class_logits=slot.host_logits[:n].numpy().copy(),
                            mask_probs=slot.host_probs[:n].numpy().copy())

    # -- inference: synchronous -------------------------------------------------------------------

    def run(self, tiles: np.ndarray) -> EngineOutput:
        """Chunks of ``opt_batch`` tiles, up to ``in_flight`` of them queued at once."""
        tiles = self.check_tiles(tiles, self.multiple)
        if tiles.shape[0] <= self.chunk:
            return self.collect(self.submit(tiles))
        pending, outputs = [], []
        for start in range(0, tiles.shape[0], self.chunk):
            if len(pending) >= self.in_flight:
                outputs.append(self.collect(pending.pop(0)))
            pending.append(self.submit(tiles[start: start + self.chunk]))
        outputs += [self.collect(handle) for handle in pending]
        return EngineOutput(class_logits=np.concatenate([o.class_logits for o in outputs]),
                            mask_probs=np.concatenate([o.mask_probs for o in outputs]))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "precision": self.precision,
            "tensorrt": self._trt.__version__,
            "device": f"cuda:{self.device.index}",
            "device_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "tile": self.tile,
            "profile": self.profile,
            "chunk": self.chunk,
            "streams": len(self._slots),
            "engine_cache": {net: {"key": self.cache_keys[net], "path": str(self.engine_paths[net]),
                                   "loaded_from_cache": self.loaded_from_cache[net]} for net in NETWORKS},
            "timing_cache": {"path": str(self.timing_cache_path), "loaded": self.timing_cache_loaded},
            "bundle": str(self.bundle_dir),
        }
