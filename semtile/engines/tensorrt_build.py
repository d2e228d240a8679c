"""Building and caching the serialised TensorRT engines of :class:`~semtile.engines.tensorrt.TensorRTEngine`.

A mixin over the engine's attributes (``bundle_dir``, ``precision``, ``tile``,
``profile``, ``cache_dir``, ``engine_paths``, ``timing_cache_path``, ``_trt``,
``_runtime``...): which ONNX files a precision builds from, the cache key,
load-or-build with a shared timing cache. ``tensorrt`` itself is passed in,
never imported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from semtile.errors import ModelError, SemtileError
from semtile.io.discover import sha256_file
from semtile.models.fp16 import FP16_CONVERTER_VERSION

__all__ = ["NETWORKS", "TensorRTBuilds", "atomic_write", "trt_logger"]

log = logging.getLogger("semtile.engines.tensorrt")

NETWORKS = ("classifier", "segmenter")
_LOGGER = None  # one trt.Logger per process, as TensorRT recommends


def trt_logger(trt):
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def atomic_write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TensorRTBuilds:
    """The build and cache half of the TensorRT engine (see the module docstring)."""

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
        return {net: (path, sha256_file(path)) for net, path in paths.items()}

    def _cache_key(self, onnx_sha: str) -> str:
        trt = self._trt
        parts = {
            "onnx_sha256": onnx_sha,
            "tensorrt": trt.__version__,
            "gpu": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "converter": FP16_CONVERTER_VERSION if self.precision == "fp16" else "",
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
        atomic_write(path, plan)
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
            builder = trt.Builder(trt_logger(trt))
            probe_config = builder.create_builder_config()
            data = b""
            if self.timing_cache_path.is_file():
                data = self.timing_cache_path.read_bytes()
            cache = None
            try:
                cache = probe_config.create_timing_cache(data)
            except Exception as exc:  # noqa: BLE001 - a damaged timing cache only costs time: start a new one
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
        parser = trt.OnnxParser(network, trt_logger(trt))
        if self.precision == "fp16":
            import onnx

            from semtile.models.fp16 import convert_onnx_to_fp16

            model = convert_onnx_to_fp16(onnx.load(str(onnx_path)))
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
        if self.precision == "f32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        self._attach_timing_cache(config, state)
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, self.profile["min"], self.profile["opt"], self.profile["max"])
        config.add_optimization_profile(profile)
        try:
            plan = builder.build_serialized_network(network, config)
        except Exception as exc:
            raise SemtileError(f"TensorRT failed to build the {net} engine from {onnx_path}: {exc}") from exc
        if plan is None:
            raise SemtileError(f"TensorRT failed to build the {net} engine from {onnx_path} (see its log above)")
        return bytes(memoryview(plan))

    def _save_timing_cache(self, cache) -> None:
        try:
            atomic_write(self.timing_cache_path, memoryview(cache.serialize()))
        except OSError as exc:
            log.warning("tensorrt: cannot save the timing cache %s: %s", self.timing_cache_path, exc)
