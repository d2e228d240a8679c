"""TensorRT engine built from an exported bundle's ONNX files (TensorRT 10 and 11).

Networks are always *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
required for reduced precision on TensorRT 11, which removed the FP16/INT8
builder flags, and accepted on 10.x), so the precision lives in the ONNX graph:

* ``fp32``: the exported ONNX as is (TF32 is switched off, so fp32 means fp32).
* ``fp16``: the ONNX converted here (:func:`_convert_onnx_to_fp16`): float32
  weights and constants become float16, Cast nodes at the graph input and
  outputs keep the engine's I/O float32.
* ``int8``: ONNX files with explicit Q/DQ nodes, ``classifier.int8.onnx`` and
  ``segmenter.int8.onnx`` next to the exported ones (produced by a quantiser;
  see the error raised when they are missing).

Each network becomes one engine with one optimisation profile over the batch
axis ``(1, opt_batch, max_batch)`` for a fixed ``(1, tile, tile)`` tile.
Serialised engines are cached in ``cache_dir`` (default
``~/.cache/semtile/tensorrt``) under a key that hashes the ONNX sha256, the
TensorRT version, the GPU name and compute capability, the precision and the
profile; a cached engine that fails to deserialise is rebuilt. Builds share a
timing cache file in the same folder, loaded before and saved after a build.

Inference uses PyTorch CUDA tensors as device buffers and two CUDA streams: a
batch is split into chunks of ``opt_batch`` tiles that alternate between the
streams, each with its own execution contexts and device buffers, so the
host-to-device copy of one chunk overlaps the compute of the previous one;
events keep the compute of successive chunks in order. Host buffers are
pinned. ``tensorrt`` is imported lazily: this module imports without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from semtile.engines.base import Engine, EngineOutput
from semtile.errors import ModelError, SemtileError

__all__ = ["TensorRTEngine", "tensorrt_available", "PRECISIONS", "default_cache_dir"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32", "int8")
_ALIASES = {"f32": "fp32", "float32": "fp32", "float16": "fp16", "half": "fp16"}
NETWORKS = ("classifier", "segmenter")
# Bump when _convert_onnx_to_fp16 changes what it produces: it is part of the cache key.
_FP16_CONVERTER_VERSION = "semtile-fp16/1"
_FP16_MAX = 65504.0
# (op_type, input index) that ONNX types as float32 whatever the data type is.
_ALWAYS_FLOAT32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_NOT_INSTALLED = ("TensorRT is not installed: `pip install tensorrt` (needs an NVIDIA GPU with a recent driver); "
                  "use the torch-cuda engine meanwhile")

_LOGGER = None  # one trt.Logger per process, as TensorRT recommends


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "semtile" / "tensorrt"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:  # also covers a wheel whose native libraries are missing
        raise SemtileError(f"{_NOT_INSTALLED} ({exc})") from exc
    return trt


def _trt_logger(trt):
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


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
    except Exception as exc:  # noqa: BLE001
        return False, f"TensorRT {trt.__version__} is installed but CUDA is unusable: {exc}"
    return True, f"TensorRT {trt.__version__} on {name}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- ONNX fp16 conversion -------------------------------------------------------------------


def _convert_onnx_to_fp16(model):
    """A copy of ``model`` computing in float16, with float32 graph inputs and outputs.

    Float32 initializers and ``Constant``/``ConstantOfShape`` values become
    float16 (clipped to the float16 range), ``Cast(to=FLOAT)`` nodes cast to
    float16, and Cast nodes at the graph boundary keep every graph input and
    output float32. Inputs that ONNX always types float32 (``Resize`` roi and
    scales) keep float32 values. The result is checked with ``onnx.checker``
    and strict type inference.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph

    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, index))
    graph_outputs = {o.name for o in graph.output}

    def split_uses(name: str) -> tuple[list, list]:
        """(float16 uses, float32-only uses) of tensor ``name``."""
        uses = consumers.get(name, [])
        fixed = [(n, i) for n, i in uses if (n.op_type, i) in _ALWAYS_FLOAT32_INPUTS]
        return [u for u in uses if u not in fixed], fixed

    def rewire(uses: list, new_name: str, old_name: str | None = None) -> None:
        for node, index in uses:
            if old_name is None or node.input[index] == old_name:
                node.input[index] = new_name

    def to_fp16_array(array: np.ndarray) -> np.ndarray:
        return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)

    new_initializers = []
    for init in graph.initializer:
        if init.data_type != FLOAT:
            continue
        fp16_uses, fixed = split_uses(init.name)
        if not fp16_uses and init.name not in graph_outputs:
            continue
        array = numpy_helper.to_array(init)
        if fixed:  # keep a float32 copy for the inputs that must stay float32
            keep = numpy_helper.from_array(array.astype(np.float32), init.name + "__fp32")
            new_initializers.append(keep)
            rewire(fixed, keep.name)
        init.CopyFrom(numpy_helper.from_array(to_fp16_array(array), init.name))
    graph.initializer.extend(new_initializers)

    prologue, epilogue = [], []
    for node in list(graph.node):
        produced = node.output[0] if node.output else ""
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                    fp16_uses, fixed = split_uses(produced)
                    if not fp16_uses and produced not in graph_outputs:
                        break
                    array = numpy_helper.to_array(attr.t)
                    attr.t.CopyFrom(numpy_helper.from_array(to_fp16_array(array), attr.t.name))
                    if fixed:
                        back = produced + "__fp32"
                        epilogue.append(helper.make_node("Cast", [produced], [back], to=FLOAT,
                                                         name=node.name + "__to_fp32"))
                        rewire(fixed, back)
                if attr.name in ("value_float", "value_floats"):  # Constant with a float attribute: float32
                    fp16_uses, _ = split_uses(produced)
                    if fp16_uses:
                        cast = produced + "__fp16"
                        epilogue.append(helper.make_node("Cast", [produced], [cast], to=FLOAT16,
                                                         name=node.name + "__to_fp16"))
                        rewire(fp16_uses, cast)
            if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
                if split_uses(produced)[0]:  # the default value is a float32 zero
                    node.attribute.append(helper.make_attribute(
                        "value", numpy_helper.from_array(np.zeros(1, np.float16))))
        elif node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT:
                fp16_uses, fixed = split_uses(produced)
                if fp16_uses or produced in graph_outputs:
                    to.i = FLOAT16
                    if fixed:
                        back = produced + "__fp32"
                        epilogue.append(helper.make_node("Cast", [produced], [back], to=FLOAT,
                                                         name=node.name + "__to_fp32"))
                        rewire(fixed, back)

    # The graph boundary: float32 inputs cast to float16 on entry ...
    initializer_names = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        if value.name in initializer_names:  # an old-style graph listing its weights as inputs
            value.type.tensor_type.elem_type = FLOAT16
            continue
        fp16_uses, _ = split_uses(value.name)
        if fp16_uses:
            cast = value.name + "__fp16"
            prologue.append(helper.make_node("Cast", [value.name], [cast], to=FLOAT16, name=value.name + "__to_fp16"))
            rewire(fp16_uses, cast)
    # ... and float16 results cast back to float32 on exit, under the original output names.
    for value in graph.output:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inner = value.name + "__fp16"
        for node in graph.node:
            for index, name in enumerate(node.output):
                if name == value.name:
                    node.output[index] = inner
        rewire(consumers.get(value.name, []), inner, value.name)
        for init in graph.initializer:  # an output that is an initializer (degenerate but legal)
            if init.name == value.name:
                init.name = inner
        epilogue.append(helper.make_node("Cast", [inner], [value.name], to=FLOAT, name=value.name + "__to_fp32"))

    _toposort(graph, prologue + list(graph.node) + epilogue)
    del graph.value_info[:]  # stale float32 annotations; inference below recomputes them
    try:
        onnx.checker.check_model(out)
        out = onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several types
        raise ModelError(f"float16 conversion produced an invalid ONNX model: {exc}") from exc
    return out


def _toposort(graph, nodes: list) -> None:
    """Replace ``graph.node`` with ``nodes`` in topological order (added Casts must follow their inputs)."""
    import onnx

    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = []
    for node in nodes:  # detached copies: the originals may belong to graph.node, cleared below
        copy_ = onnx.NodeProto()
        copy_.CopyFrom(node)
        pending.append(copy_)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelError(f"ONNX graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


# -- the engine -----------------------------------------------------------------------------


class _Slot:
    """What one stream owns: the stream, device buffers, one context per network, an event."""

    def __init__(self, torch, device, engines, chunk, tile, n_labels, input_name, output_names):
        self.stream = torch.cuda.Stream(device)
        self.computed = torch.cuda.Event()
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


class TensorRTEngine(Engine):
    """Both networks as TensorRT engines built (or loaded from the cache) from an exported bundle."""

    name = "tensorrt"

    def __init__(self, bundle_dir: Path, *, precision: str = "fp16", max_batch: int = 32, opt_batch: int = 8,
                 tile: int | None = None, cache_dir: Path | None = None, device: int = 0):
        precision = _ALIASES.get(str(precision).lower(), str(precision).lower())
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            why = "this PyTorch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise SemtileError(f"the tensorrt engine needs a CUDA GPU: {why}")
        if not 0 <= int(device) < torch.cuda.device_count():
            raise SemtileError(f"CUDA device {device} does not exist ({torch.cuda.device_count()} visible)")
        if not 1 <= int(opt_batch) <= int(max_batch):
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")

        from semtile.models.export import read_bundle_manifest

        self.bundle_dir = Path(bundle_dir)
        manifest = read_bundle_manifest(self.bundle_dir)
        self.tile = int(tile) if tile is not None else int(manifest["tile"])
        arch = manifest["architecture"]
        self.multiple = max(2 ** int(arch["classifier"]["d"]), 2 ** int(arch["segmenter"]["d"]))
        if self.tile % self.multiple:
            raise ValueError(f"tile {self.tile} must be a multiple of {self.multiple}")
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
            runtime = trt.Runtime(_trt_logger(trt))
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
                                 self._input_name, self._output_name) for _ in range(2)]
            self._host_in = self._host_logits = self._host_probs = None
            self._reserve_host(self.max_batch)
            torch.cuda.synchronize(self.device)

    # -- sources and cache keys ----------------------------------------------------------------

    def _onnx_sources(self, manifest: dict) -> dict[str, tuple[Path, str]]:
        """{network: (ONNX path, sha256)} for this precision."""
        if self.precision != "int8":
            return {net: (self.bundle_dir / f"{net}.onnx", manifest["sha256"][f"{net}.onnx"]) for net in NETWORKS}
        paths = {net: self.bundle_dir / f"{net}.int8.onnx" for net in NETWORKS}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            raise SemtileError(
                f"precision 'int8' needs ONNX models with explicit quantisation (QuantizeLinear/DequantizeLinear "
                f"nodes) in {self.bundle_dir}; missing: {', '.join(missing)}. This engine builds int8 only from Q/DQ "
                "graphs (TensorRT 11 removed implicit int8 calibration). Quantise classifier.onnx and segmenter.onnx with representative tiles, "
                "e.g. NVIDIA ModelOpt (python -m modelopt.onnx.quantization --quantize_mode int8 ...) or "
                "onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ), keeping float32 "
                "input and output, and save them as classifier.int8.onnx and segmenter.int8.onnx there; or use "
                "precision 'fp16'.")
        import onnx

        for path in paths.values():
            ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
            if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
                raise SemtileError(f"{path}: no QuantizeLinear/DequantizeLinear nodes; an int8 model needs explicit "
                                   "Q/DQ quantisation")
        return {net: (path, _sha256_file(path)) for net, path in paths.items()}

    def _cache_key(self, onnx_sha: str) -> str:
        trt = self._trt
        parts = {
            "onnx_sha256": onnx_sha,
            "tensorrt": trt.__version__,
            "gpu": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "converter": _FP16_CONVERTER_VERSION if self.precision == "fp16" else "",
            "profile": self.profile,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    # -- building ------------------------------------------------------------------------------

    def _load_or_build(self, net: str, onnx_path: Path, builder_state: dict):
        path = self.engine_paths[net]
        if path.is_file():
            engine = self._deserialize(path.read_bytes())
            if engine is not None:
                self.loaded_from_cache[net] = True
                log.info("tensorrt: loaded the cached %s engine %s", net, path)
                return engine
            log.warning("tensorrt: cached engine %s does not deserialise (corrupt or incompatible); rebuilding", path)
        start = time.perf_counter()
        plan = self._build(net, onnx_path, builder_state)
        engine = self._deserialize(plan)
        if engine is None:
            raise SemtileError(f"TensorRT built the {net} engine but cannot deserialise it")
        _atomic_write(path, plan)
        self.build_seconds[net] = time.perf_counter() - start
        self.loaded_from_cache[net] = False
        log.info("tensorrt: built the %s engine in %.1f s, cached as %s", net, self.build_seconds[net], path)
        return engine

    def _deserialize(self, plan):
        try:
            return self._runtime.deserialize_cuda_engine(plan)  # None on failure (TensorRT logs why)
        except Exception as exc:  # noqa: BLE001 - some versions raise instead
            log.warning("tensorrt: deserialisation failed: %s", exc)
            return None

    def _builder(self, state: dict):
        """A builder and a timing cache shared by this engine's builds, created on first need."""
        trt = self._trt
        if "builder" not in state:
            builder = trt.Builder(_trt_logger(trt))
            probe_config = builder.create_builder_config()
            data = b""
            if self.timing_cache_path.is_file():
                data = self.timing_cache_path.read_bytes()
            cache = None
            try:
                cache = probe_config.create_timing_cache(data)
            except Exception as exc:  # noqa: BLE001
                log.warning("tensorrt: timing cache %s unreadable (%s); starting a new one", self.timing_cache_path, exc)
            if cache is None and data:
                data = b""
                cache = probe_config.create_timing_cache(data)
            state.update(builder=builder, probe_config=probe_config, cache=cache, timing_cache_loaded=bool(data))
        return state["builder"], state["cache"]

    def _attach_timing_cache(self, config, state: dict) -> None:
        cache = state.get("cache")
        if cache is None:
            return
        if config.set_timing_cache(cache, False) is False:  # written by another TensorRT/GPU: start afresh
            log.warning("tensorrt: timing cache %s does not match this TensorRT/GPU; starting a new one",
                        self.timing_cache_path)
            state["cache"] = config.create_timing_cache(b"")
            state["timing_cache_loaded"] = False
            config.set_timing_cache(state["cache"], False)

    def _build(self, net: str, onnx_path: Path, state: dict) -> bytes:
        trt = self._trt
        builder, _ = self._builder(state)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, _trt_logger(trt))
        if self.precision == "fp16":
            import onnx

            model = _convert_onnx_to_fp16(onnx.load(str(onnx_path)))
            ok = parser.parse(model.SerializeToString(), str(onnx_path))
        else:
            ok = parser.parse_from_file(str(onnx_path))
        if not ok:
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
        if network.num_inputs != 1:
            raise ModelError(f"{onnx_path}: expected one input, found {network.num_inputs}")
        tensor = network.get_input(0)
        dims = tuple(tensor.shape)
        if len(dims) != 4 or any(d not in (-1, want) for d, want in zip(dims[1:], (1, self.tile, self.tile))):
            raise SemtileError(f"{onnx_path}: input shape {dims} does not take ({self.tile}, {self.tile}) tiles; "
                               f"re-export the bundle with tile={self.tile}")

        config = builder.create_builder_config()
        if self.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        self._attach_timing_cache(config, state)
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, self.profile["min"], self.profile["opt"], self.profile["max"])
        config.add_optimization_profile(profile)
        try:
            plan = builder.build_serialized_network(network, config)
        except Exception as exc:  # noqa: BLE001 - TensorRT 11 may raise where 10 returns None
            raise SemtileError(f"TensorRT failed to build the {net} engine from {onnx_path}: {exc}") from exc
        if plan is None:
            raise SemtileError(f"TensorRT failed to build the {net} engine from {onnx_path} (see its log above)")
        return bytes(memoryview(plan))

    def _save_timing_cache(self, cache) -> None:
        try:
            _atomic_write(self.timing_cache_path, memoryview(cache.serialize()))
        except OSError as exc:
            log.warning("tensorrt: cannot save the timing cache %s: %s", self.timing_cache_path, exc)

    # -- inference -----------------------------------------------------------------------------

    def _reserve_host(self, rows: int) -> None:
        if self._host_in is not None and self._host_in.shape[0] >= rows:
            return
        torch, side = self._torch, self.tile
        self._host_in = torch.empty((rows, side, side), dtype=torch.float32, pin_memory=True)
        self._host_logits = torch.empty((rows, self.n_labels), dtype=torch.float32, pin_memory=True)
        self._host_probs = torch.empty((rows, side, side), dtype=torch.float32, pin_memory=True)

    def run(self, tiles: np.ndarray) -> EngineOutput:
        tiles = self.check_tiles(tiles, self.multiple)
        n = tiles.shape[0]
        if tiles.shape[1] != self.tile:
            raise ValueError(f"the tensorrt engine was built for {self.tile}x{self.tile} tiles, got "
                             f"{tiles.shape[1]}x{tiles.shape[2]}")
        if n == 0:
            return EngineOutput(class_logits=np.zeros((0, self.n_labels), np.float32),
                                mask_probs=np.zeros((0, self.tile, self.tile), np.float32))
        torch = self._torch
        self._reserve_host(n)
        host_in, host_logits, host_probs = self._host_in, self._host_logits, self._host_probs
        host_in_np = host_in.numpy()
        previous = None
        with torch.cuda.device(self.device):
            for number, start in enumerate(range(0, n, self.chunk)):
                stop = min(start + self.chunk, n)
                rows = stop - start
                slot = self._slots[number % 2]
                host_in_np[start:stop] = tiles[start:stop]  # overlaps the GPU's work on earlier chunks
                with torch.cuda.stream(slot.stream):
                    # Same-stream order makes this wait for the slot's chunk before last to be done with d_in.
                    slot.d_in[:rows, 0].copy_(host_in[start:stop], non_blocking=True)
                    if previous is not None:  # compute in chunk order; the copy above already overlaps it
                        slot.stream.wait_event(previous)
                    for net, context in slot.contexts:
                        if slot.rows != rows and not context.set_input_shape(
                                self._input_name[net], (rows, 1, self.tile, self.tile)):
                            raise SemtileError(f"TensorRT rejected input shape ({rows}, 1, {self.tile}, {self.tile}) "
                                               f"for the {net} engine")
                        if not context.execute_async_v3(slot.stream.cuda_stream):
                            raise SemtileError(f"TensorRT failed to run the {net} engine")
                    slot.rows = rows
                    slot.computed.record(slot.stream)
                    previous = slot.computed
                    host_logits[start:stop].copy_(slot.d_logits[:rows], non_blocking=True)
                    host_probs[start:stop].copy_(slot.d_probs[:rows, 0], non_blocking=True)
            for slot in self._slots:
                slot.stream.synchronize()
        return EngineOutput(class_logits=host_logits[:n].numpy().copy(), mask_probs=host_probs[:n].numpy().copy())

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
