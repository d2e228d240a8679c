"""OpenVINO engines on the CPU: a bundle's export at f32, bf16 (AMX / AVX512-BF16) or int8 (NNCF post-training
quantisation), :class:`OpenVINOEngine`; a defect model's at f32 or bf16, :class:`OpenVINODefectEngine`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semtile.engines.base import DefectEngine, Engine, EngineOutput
from semtile.errors import SemtileError

__all__ = ["OpenVINOEngine", "OpenVINODefectEngine", "openvino_available", "openvino_default_precision",
           "openvino_cpu_config"]

PRECISIONS = ("auto", "f32", "bf16", "int8")


def openvino_available() -> tuple[bool, str]:
    try:
        import openvino
    except ImportError:
        return False, "openvino is not installed (pip install openvino)"
    return True, f"openvino {openvino.__version__}"


def openvino_default_precision() -> str:
    """bf16 where the CPU computes it natively (AMX or AVX512-BF16), f32 elsewhere."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "f32"


class OpenVINOEngine(Engine):
    name = "openvino"
    background, in_flight = True, 2  # the next batch is queued while the runner merges the last

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        precision: str = "auto",
        threads: int | None = None,
        calibration_tiles: np.ndarray | None = None,
    ):
        ok, why = openvino_available()
        if not ok:
            raise SemtileError(why)
        if precision not in PRECISIONS:
            raise SemtileError(f"unknown OpenVINO precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        import openvino as ov

        from semtile.models.export import read_export_manifest  # torch: only to build

        folder = Path(bundle_dir)
        manifest = read_export_manifest(folder, kind="bundle")
        self.tile = int(manifest["tile"])
        self.multiple = 2 ** max(manifest["architecture"]["classifier"]["d"], manifest["architecture"]["segmenter"]["d"])
        self.precision = openvino_default_precision() if precision == "auto" else precision
        core = ov.Core()
        # Float layers run bf16 where the CPU has it natively (also around int8 layers).
        native = openvino_default_precision()
        float_precision = {"f32": "f32", "bf16": "bf16", "int8": native}[self.precision]
        config = openvino_cpu_config(float_precision, threads)
        models = {}
        for name in ("classifier", "segmenter"):
            model = core.read_model(str(folder / f"{name}.onnx"))
            model.reshape({"tiles": ov.PartialShape([-1, 1, self.tile, self.tile])})
            # Only the segmenter (nearly all of the work) is quantised: int8 logits of the
            # small classifier moved its labels (max logit error 5 on the built-in model).
            if self.precision == "int8" and name == "segmenter":
                model = _quantise(model, calibration_tiles, self.tile)
            models[name] = core.compile_model(model, "CPU", config)
        # One request each: batches run one after the other (on the engine's thread, or the caller's).
        self._classifier = models["classifier"].create_infer_request()
        self._segmenter = models["segmenter"].create_infer_request()
        self._version = ov.__version__

    def run(self, tiles: np.ndarray) -> EngineOutput:
        x = self.check_tiles(tiles, self.multiple)[:, None]
        if x.shape[-1] != self.tile:
            raise ValueError(f"this engine was compiled for {self.tile}-pixel tiles, got {x.shape[-1]}")
        logits = self._classifier.infer({0: x})[0]
        probs = self._segmenter.infer({0: x})[0][:, 0]
        return EngineOutput(class_logits=np.array(logits, np.float32), mask_probs=np.array(probs, np.float32))

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": "cpu", "openvino": self._version}


class OpenVINODefectEngine(DefectEngine):
    """A defect model's cached ONNX export on OpenVINO, f32 or bf16 (``auto``: bf16 where the CPU has it natively)."""

    name = "openvino"

    def __init__(self, model, tile: int | None = None, precision: str = "auto", threads: int | None = None):
        ok, why = openvino_available()
        if not ok:
            raise SemtileError(why)
        if precision not in ("auto", "f32", "bf16"):
            raise SemtileError(f"the openvino defect engine runs f32 or bf16 (or auto), not {precision!r}")
        import openvino as ov

        from semtile.models.export import ONNX_NAME, export_model

        super().__init__(model, int(tile or model.tile))
        self.precision = openvino_default_precision() if precision == "auto" else precision
        folder = export_model(model, tile=self.tile)
        core = ov.Core()
        network = core.read_model(str(folder / ONNX_NAME))
        network.reshape({"tiles": ov.PartialShape([-1, 1, self.tile, self.tile])})
        self._request = core.compile_model(network, "CPU", openvino_cpu_config(self.precision, threads)
                                           ).create_infer_request()

    def run(self, tiles: np.ndarray) -> np.ndarray:
        return self._shape(np.array(self._request.infer({0: self.check(tiles)[:, None]})[0]))


def openvino_cpu_config(precision: str, threads: int | None) -> dict:
    """The CPU plugin's settings for one engine: latency first, at ``precision``, on ``threads`` threads."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
        # A thread count is given when the engine shares the host (Dask workers, --threads). OpenVINO pins its
        # threads from core 0 in every process, so two 1-thread workers both ran on core 0 (measured: two at once
        # took 1.95x the time of one; unpinned 1.03x). Leave placement to the OS.
        config["ENABLE_CPU_PINNING"] = False
    return config


def _quantise(model, calibration_tiles: np.ndarray | None, tile: int):
    """NNCF post-training int8 quantisation on calibration tiles from the user's own scans."""
    if calibration_tiles is None or len(calibration_tiles) == 0:
        raise SemtileError("int8 needs calibration tiles from your scans (the pipeline takes them from the inputs)")
    import nncf

    tiles = np.ascontiguousarray(calibration_tiles, dtype=np.float32)
    if tiles.ndim != 3 or tiles.shape[1:] != (tile, tile):
        raise SemtileError(f"calibration tiles must be (n, {tile}, {tile}), got {tiles.shape}")
    dataset = nncf.Dataset([tiles[i: i + 1, None] for i in range(len(tiles))])
    return nncf.quantize(model, dataset, subset_size=len(tiles), preset=nncf.QuantizationPreset.MIXED)
