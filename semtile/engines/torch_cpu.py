"""PyTorch eager engine on the CPU: the reference every other engine is checked against."""

from __future__ import annotations

import numpy as np
import torch

from semtile.engines.base import Engine, EngineOutput
from semtile.modelio import ModelBundle

__all__ = ["TorchCPUEngine"]


class TorchCPUEngine(Engine):
    name = "torch-cpu"
    precision = "f32"

    def __init__(self, bundle: ModelBundle, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.classifier = bundle.classifier.network.eval()
        self.segmenter = bundle.segmenter.network.eval()
        self.multiple = max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple)

    def run(self, tiles: np.ndarray) -> EngineOutput:
        x = torch.from_numpy(self.check_tiles(tiles, self.multiple))[:, None]
        with torch.inference_mode():
            logits = self.classifier(x)
            probs = torch.sigmoid(self.segmenter(x))[:, 0]
        return EngineOutput(class_logits=logits.numpy().astype(np.float32, copy=False),
                            mask_probs=probs.numpy().astype(np.float32, copy=False))

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": "cpu",
                "threads": torch.get_num_threads(), "torch": torch.__version__}
