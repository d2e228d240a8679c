"""PyTorch engines on the CPU: the f32 reference every other engine is checked against.

:class:`TorchCPUEngine` runs a bundle; ``precision="bf16"`` converts copies of
the networks to bfloat16 (rather than autocast, which re-casts weights on
every call); both run channels_last. :class:`TorchDefectEngine` runs one
defect model at f32, at any tile that is a multiple of its ``2**stages``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from semtile.engines.base import DefectEngine, Engine, EngineOutput
from semtile.errors import SemtileError
from semtile.models.fold import fold_batchnorm
from semtile.models.io import LoadedModel, ModelBundle
from semtile.models.networks import inference_module

__all__ = ["TorchCPUEngine", "TorchDefectEngine"]

_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


class TorchCPUEngine(Engine):
    name = "torch-cpu"

    def __init__(self, bundle: ModelBundle, threads: int | None = None, precision: str = "f32",
                 compile: str | None = None):
        if compile is not None and compile not in ("default", "max-autotune-no-cudagraphs"):
            raise SemtileError(f"torch.compile mode must be 'default' or 'max-autotune-no-cudagraphs', not {compile!r}")
        if precision not in _DTYPES:
            raise SemtileError(f"the torch-cpu engine runs f32 or bf16, not {precision!r}")
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.dtype = _DTYPES[precision]

        def prepare(network: torch.nn.Module) -> torch.nn.Module:
            if precision == "f32":  # the reference: the network exactly as trained
                return network.eval().to(memory_format=torch.channels_last)
            # BatchNorm folded into its convolution first: one bf16 rounding instead of two.
            network = copy.deepcopy(network).eval()
            fold_batchnorm(network)
            return network.to(dtype=self.dtype, memory_format=torch.channels_last)

        self.classifier = prepare(bundle.classifier.network)
        self.segmenter = prepare(bundle.segmenter.network)
        self.compile_mode = compile
        if compile is not None:  # Inductor: C++/OpenMP kernels on the CPU (needs a C++ compiler)
            self.classifier = torch.compile(self.classifier, mode=compile, dynamic=False)
            self.segmenter = torch.compile(self.segmenter, mode=compile, dynamic=False)
        self.multiple = max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple)

    def run(self, tiles: np.ndarray) -> EngineOutput:
        x = torch.from_numpy(self.check_tiles(tiles, self.multiple))[:, None]
        x = x.to(dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits = self.classifier(x).float()
            probs = torch.sigmoid(self.segmenter(x).float())[:, 0]
        return EngineOutput(class_logits=logits.numpy(), mask_probs=np.ascontiguousarray(probs.numpy()))

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": "cpu",
                "threads": torch.get_num_threads(), "compile": self.compile_mode, "torch": torch.__version__}


class TorchDefectEngine(DefectEngine):
    """A defect model's inference graph on PyTorch, f32: the reference of the defect engines."""

    name = "torch-cpu"

    def __init__(self, model: LoadedModel, threads: int | None = None):
        super().__init__(model, None)
        if threads:
            torch.set_num_threads(threads)
        self._module = inference_module(model.network)

    def run(self, tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.check(tiles))[:, None]
        with torch.inference_mode():
            return self._shape(self._module(x).numpy())
