"""A package's weights on semtile's engines: OpenVINO, ONNX Runtime or PyTorch on the CPU, PyTorch CUDA on a GPU.

:func:`build_graph` compiles one weights entry for tiles of one side and
returns a :class:`Graph`: preprocessed tiles ``(n, T, T)`` in, the package's
outputs (in its axis order) out. Tiles are laid out in the input's own axis
order (``bcyx``, ``byxc``, size-1 axes beside; a gray tile repeated over the
channels of a model trained on several). ONNX weights run on OpenVINO (its
compiled blob cached under ``$SEMTILE_CACHE/bioimageio/compiled/SHA256``) or
ONNX Runtime; a state dict (its architecture imported from the package's
library or file) or TorchScript on PyTorch. ``auto`` picks torch-cuda where a
GPU is present and the package has torch weights, else OpenVINO, ONNX
Runtime, then torch-cpu, and says why.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError

__all__ = ["GRAPH_ENGINES", "Graph", "pick_graph_engine", "build_graph", "to_input", "from_output"]

GRAPH_ENGINES = ("torch-cuda", "openvino", "onnxruntime", "torch-cpu")
_FORMATS = {"openvino": ("onnx",), "onnxruntime": ("onnx",), "torch-cpu": ("pytorch_state_dict", "torchscript"),
            "torch-cuda": ("pytorch_state_dict", "torchscript")}


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
                device: int = 0) -> Graph:
    """Compile the package's weights on ``engine`` for inputs of ``input_shape`` (batch first where it has one)."""
    try:
        if engine in ("openvino", "onnxruntime"):
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
