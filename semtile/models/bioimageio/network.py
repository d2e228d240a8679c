"""The network a semtile bioimage.io package's ``pytorch_state_dict`` weights rebuild (its importable architecture).

``PackagedNetwork(parts={"segmenter": {...}, "classifier": {...}})`` builds
each part from its card's architecture entry and returns, for tiles
``(B, 1, T, T)`` in [0, 1], the outputs the package declares, in its order:
a bundle's mask probabilities ``(B, 1, T, T)`` and class logits
``(B, n_labels)``; a defect model's anomaly map ``(B, 1, T, T)`` or defect
probability ``(B, 1)``. The state dict's keys are each part's
state dict under its inference graph (``graphs.PART.…``), so a consumer rebuilds it with
``PackagedNetwork(**kwargs).load_state_dict(torch.load(...))``.
"""

from __future__ import annotations

import torch
from torch import nn

from semtile.models.networks import architecture, build_model, inference_module

__all__ = ["PackagedNetwork", "PART_ORDER"]

#: The parts of a package in the order of its outputs.
PART_ORDER = ("segmenter", "classifier", "autoencoder", "vae", "patch-classifier")


class PackagedNetwork(nn.Module):
    """semtile's inference graphs of the parts of one package, side by side (see the module docstring)."""

    def __init__(self, parts: dict):
        super().__init__()
        unknown = set(parts) - set(PART_ORDER)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}: one of {', '.join(PART_ORDER)}")
        self.names = [name for name in PART_ORDER if name in parts]
        self.networks = {name: build_model(architecture(dict(parts[name]))) for name in self.names}
        # Registered as the inference graphs (sigmoid, anomaly kernel...), so .to(device) moves all they hold.
        self.graphs = nn.ModuleDict({_key(name): inference_module(self.networks[name]) for name in self.names})

    def load_parts(self, states: dict) -> PackagedNetwork:
        """Load each part's own state dict (``{name: state_dict}``, strict); returns self."""
        for name in self.names:
            self.networks[name].load_state_dict(states[name], strict=True)
        return self

    def forward(self, x: torch.Tensor):
        outputs = []
        for graph in self.graphs.values():
            y = graph(x)
            outputs.append(y[:, None] if y.ndim == 1 else y)  # a patch classifier's (B,) as (B, 1)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _key(name: str) -> str:
    return name.replace("-", "_")
