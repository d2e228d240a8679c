"""A package's weights on semtile's engines: OpenVINO, ONNX Runtime or PyTorch on the CPU; PyTorch CUDA or
TensorRT on a GPU.

:func:`build_graph` compiles one weights entry for tiles of one side and
returns a :class:`Graph`: preprocessed tiles ``(n, T, T)`` in, the package's
outputs (in its axis order) out. Tiles are laid out in the input's own axis
order (``bcyx``, ``byxc``, size-1 axes beside; a gray tile repeated over the
channels of a model trained on several). ONNX weights run on OpenVINO (its
compiled blob cached under ``$SEMTILE_CACHE/bioimageio/compiled/SHA256``) or
ONNX Runtime on the CPU, or TensorRT on a GPU (its serialised engine cached
beside, keyed by the ONNX sha256, TensorRT version, GPU and shape profile); a
state dict (its architecture imported from the package's library or file) or
TorchScript on PyTorch. ``auto`` picks torch-cuda where a GPU is present and
the package has torch weights, TensorRT for ONNX-only packages on a GPU, else
OpenVINO, ONNX Runtime, then torch-cpu, and says why.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError

__all__ = ["GRAPH_ENGINES", "Graph", "pick_graph_engine", "build_graph", "to_input", "from_output"]

GRAPH_ENGINES = ("torch-cuda", "tensorrt", "openvino", "onnxruntime", "torch-cpu")
_FORMATS = {"openvino": ("onnx",), "onnxruntime": ("onnx",), "tensorrt": ("onnx",),
            "torch-cpu": ("pytorch_state_dict", "torchscript"), "torch-cuda": ("pytorch_state_dict", "torchscript")}


def _available(name: str) -> tuple[bool, str]:
    from semtile.engines.registry import available_engines

    return available_engines().get(name, (False, "unknown engine"))


def pick_graph_engine(engine: str, weights: dict) -> tuple[str, str]:
    """The engine to run a package's ``weights`` on (``auto``: the fastest that runs one of them here), and why."""
    if engine != "auto":
        if engine not in _FORMATS:
            raise SemtileError(f"--engine {engine}: bioimage.io packages run on {', '.join(GRAPH_ENGINES)} (or auto)")
        if not set(_FORMATS[engine]) & set(weights):
            raise SemtileError(f"--engine {engine} runs {' or '.join(_FORMATS[engine])} weights; the package has "
                               f"{', '.join(weights)}")
        ok, why = _available(engine)
        if not ok:
            raise SemtileError(f"--engine {engine}: {why}")
        return engine, "given"
    tried = []
    for name in GRAPH_ENGINES:
        if not set(_FORMATS[name]) & set(weights):
            tried.append(f"{name}: no {' or '.join(_FORMATS[name])} weights")
            continue
        ok, why = _available(name)
        if ok:
            return name, f"fastest available for the package's {', '.join(weights)} weights"
        tried.append(f"{name}: {why}")
    raise SemtileError("no engine here runs this package's weights (" + "; ".join(tried) + ")")


def to_input(tiles: np.ndarray, axes) -> np.ndarray:
    """Tiles ``(n, T, T)`` laid out along the input's axes (batch, channel repeated, y, x, size-1 axes)."""
    x = tiles  # dims: batch, y, x
    shape, source = [], []
    for a in axes:
        if a.type == "batch":
            shape.append(len(tiles))
            source.append("batch")
        elif a.id in ("y", "x"):
            shape.append(tiles.shape[1 if a.id == "y" else 2])
            source.append(a.id)
        else:
            shape.append(int(a.size) if a.type == "channel" else 1)
            source.append(None)
    order = [s for s in source if s is not None]
    if "batch" not in order:
        if len(tiles) != 1:
            raise ValueError("a model without a batch axis takes one tile at a time")
        x = x[0]
        dims = ["y", "x"]
    else:
        dims = ["batch", "y", "x"]
    x = np.transpose(x, [dims.index(s) for s in order])
    for i, s in enumerate(source):
        if s is None:
            x = np.expand_dims(x, i)
    return np.ascontiguousarray(np.broadcast_to(x, shape), dtype=np.float32)


def from_output(value: np.ndarray, axes, n: int) -> np.ndarray:
    """An output in its axis order -> ``(n, T, T)``, ``(n, C, T, T)`` (spatial, C > 1) or ``(n, K)`` (per tile)."""
    value = np.asarray(value, dtype=np.float32)
    ids = [a.id if a.type in ("batch", "channel") or a.id in ("y", "x") else None for a in axes]
    kinds = [a.type if a.type in ("batch", "channel") else a.id for a in axes]
    if "batch" not in kinds:
        value, kinds, ids = value[None], ["batch", *kinds], ["batch", *ids]
    keep = [i for i, k in enumerate(ids) if k is not None]
    for i in reversed([i for i, k in enumerate(ids) if k is None]):
        value = value.squeeze(axis=i)
    kinds = [kinds[i] for i in keep]
    want = [k for k in ("batch", "channel", "y", "x") if k in kinds]
    value = np.transpose(value, [kinds.index(k) for k in want])
    if "y" in want:
        if "channel" in want and value.shape[1] == 1:
            value = value[:, 0]
        elif "channel" not in want:
            pass
        return np.ascontiguousarray(value)
    return np.ascontiguousarray(value.reshape(n, -1))


class Graph:
    """One compiled weights entry: :meth:`run` takes the input laid out in its axes, returns every output."""

    name = "graph"

    def __init__(self, run, facts: dict):
        self._run = run
        self.facts = facts

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(v) for v in self._run(x)]


def _compiled_cache(sha: str) -> Path:
    root = Path(os.environ.get("SEMTILE_CACHE", Path.home() / ".cache" / "semtile"))
    folder = root / "bioimageio" / "compiled" / sha[:32]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _onnx(engine: str, entry: dict, shape: tuple, threads: int | None) -> Graph:
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(entry["path"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return Graph(lambda x: session.run(None, {name: x}),
                     {"name": "onnxruntime", "precision": "f32", "device": "cpu", "onnxruntime": ort.__version__,
                      "weights": "onnx"})
    import openvino as ov

    from semtile.engines.openvino import openvino_cpu_config

    core = ov.Core()
    network = core.read_model(entry["path"])
    network.reshape({network.inputs[0].get_any_name(): ov.PartialShape(list(shape))})  # -1: the batch
    config = {**openvino_cpu_config("f32", threads), "CACHE_DIR": str(_compiled_cache(entry["sha256"]))}
    request = core.compile_model(network, "CPU", config).create_infer_request()

    def run(x):
        result = request.infer({0: x})
        return [np.array(result[out]) for out in request.model_outputs]

    return Graph(run, {"name": "openvino", "precision": "f32", "device": "cpu", "openvino": ov.__version__,
                       "weights": "onnx"})


def _tensorrt(entry: dict, shape: tuple, max_batch: int, device_index: int) -> Graph:
    """The ONNX weights as a TensorRT engine (float32, TF32 off: it must agree with the CPU engines), built
    for ``shape`` with its batch axis (-1) from 1 to ``max_batch``; the serialised engine is cached."""
    import hashlib
    import json

    import torch

    from semtile.engines.tensorrt import import_tensorrt
    from semtile.engines.tensorrt_build import atomic_write, trt_logger

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise SemtileError("the tensorrt engine needs a CUDA GPU: "
                           + ("this PyTorch was built without CUDA" if torch.version.cuda is None
                              else "no CUDA device is visible"))
    device = torch.device("cuda", device_index)
    props = torch.cuda.get_device_properties(device)
    batch_axis = list(shape).index(-1) if -1 in shape else None
    size = lambda n: tuple(n if d == -1 else int(d) for d in shape)  # noqa: E731 - the shape at batch n
    profile = {"min": size(1), "opt": size(max_batch), "max": size(max_batch)}
    key = hashlib.sha256(json.dumps({"onnx_sha256": entry["sha256"], "tensorrt": trt.__version__, "gpu": props.name,
                                     "compute_capability": f"{props.major}.{props.minor}", "profile": profile,
                                     "precision": "f32"}, sort_keys=True).encode()).hexdigest()
    path = _compiled_cache(entry["sha256"]) / f"tensorrt-{key[:32]}.engine"
    logger = trt_logger(trt)
    with torch.cuda.device(device):
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes()) if path.is_file() else None
        cached = engine is not None
        if engine is None:
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(entry["path"])):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise SemtileError(f"{entry['path']}: TensorRT cannot parse it: {errors}")
            config = builder.create_builder_config()
            if hasattr(trt.BuilderFlag, "TF32"):
                config.clear_flag(trt.BuilderFlag.TF32)
            optimisation = builder.create_optimization_profile()
            optimisation.set_shape(network.get_input(0).name, profile["min"], profile["opt"], profile["max"])
            config.add_optimization_profile(optimisation)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise SemtileError(f"TensorRT failed to build an engine from {entry['path']} (see its log above)")
            plan = bytes(memoryview(plan))
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise SemtileError(f"TensorRT built an engine from {entry['path']} but cannot deserialise it")
            atomic_write(path, plan)
        context = engine.create_execution_context()
        if context is None:
            raise SemtileError("TensorRT could not create an execution context for the package's engine")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1:
        raise SemtileError(f"{entry['path']}: semtile runs models of one input; this one has {inputs}")
    for name in names:
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise SemtileError(f"{entry['path']}: tensor {name!r} is {engine.get_tensor_dtype(name)}; semtile runs "
                               "float32 inputs and outputs")

    def run_once(x: np.ndarray) -> list[np.ndarray]:
        with torch.cuda.device(device):
            stream = torch.cuda.current_stream(device)
            given = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device, non_blocking=True)
            if not context.set_input_shape(inputs[0], tuple(x.shape)):
                raise SemtileError(f"TensorRT rejected the input shape {tuple(x.shape)} (built for {profile})")
            context.set_tensor_address(inputs[0], given.data_ptr())
            results = []
            for name in outputs:
                result = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device=device)
                context.set_tensor_address(name, result.data_ptr())
                results.append(result)
            if not context.execute_async_v3(stream.cuda_stream):
                raise SemtileError("TensorRT failed to run the package's engine")
            return [r.cpu().numpy() for r in results]  # .cpu() waits for the stream

    def run(x: np.ndarray) -> list[np.ndarray]:
        if batch_axis is None or x.shape[batch_axis] <= max_batch:
            return run_once(x)
        parts = [run_once(np.take(x, range(i, min(i + max_batch, x.shape[batch_axis])), axis=batch_axis))
                 for i in range(0, x.shape[batch_axis], max_batch)]
        return [np.concatenate(p, axis=batch_axis) for p in zip(*parts)]

    return Graph(run, {"name": "tensorrt", "precision": "f32", "device": str(device), "device_name": props.name,
                       "tensorrt": trt.__version__, "weights": "onnx",
                       "engine_cache": {"path": str(path), "loaded_from_cache": cached}})


def _architecture(entry: dict):
    if "import_from" in entry:
        module = importlib.import_module(entry["import_from"])
    else:
        spec = importlib.util.spec_from_file_location(f"bioimageio_arch_{entry['sha256'][:12]}", entry["file"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return getattr(module, entry["callable"])(**entry.get("kwargs", {}))


def _torch(engine: str, weights: dict, threads: int | None, device_index: int) -> Graph:
    import torch

    device = torch.device(f"cuda:{device_index}" if engine == "torch-cuda" else "cpu")
    if threads and engine == "torch-cpu":
        torch.set_num_threads(threads)
    if "pytorch_state_dict" in weights:
        entry, fmt = weights["pytorch_state_dict"], "pytorch_state_dict"
        network = _architecture(entry)
        network.load_state_dict(torch.load(entry["path"], map_location="cpu", weights_only=True), strict=True)
    else:
        entry, fmt = weights["torchscript"], "torchscript"
        network = torch.jit.load(entry["path"], map_location="cpu")
    network = network.eval().to(device)

    def run(x):
        with torch.inference_mode():
            out = network(torch.from_numpy(x).to(device))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float().cpu().numpy() for o in out]

    return Graph(run, {"name": engine, "precision": "f32", "device": str(device), "torch": torch.__version__,
                       "weights": fmt})


def build_graph(engine: str, weights: dict, input_shape: tuple, threads: int | None = None,
                device: int = 0, max_batch: int = 32) -> Graph:
    """Compile the package's weights on ``engine`` for inputs of ``input_shape`` (-1 on its batch axis where it
    has one; TensorRT builds for batches of 1 to ``max_batch``)."""
    try:
        if engine == "tensorrt":
            graph = _tensorrt(weights["onnx"], input_shape, max(1, int(max_batch)), device)
        elif engine in ("openvino", "onnxruntime"):
            graph = _onnx(engine, weights["onnx"], input_shape, threads)
        else:
            graph = _torch(engine, weights, threads, device)
    except SemtileError:
        raise
    except Exception as exc:
        raise SemtileError(f"cannot build {engine} for the package's weights ({type(exc).__name__}: {exc})") from exc
    fmt = graph.facts["weights"]
    graph.facts["weights_sha256"] = weights[fmt]["sha256"]
    return graph
