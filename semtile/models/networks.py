"""The paper's networks, both fully defined by (c, d, n, N).

* :class:`Classifier` -- initial 3x3 conv; ``d`` stages of ``N`` residual
  blocks (each ``n`` x [3x3 conv, BatchNorm, ReLU] plus a skip), a max-pool
  after every stage; constant width ``c``; global average pool; linear layer
  over the labels.  Depth D = d * n * N + 1.
* :class:`Segmenter` -- the same descending path, a mirrored ascending path
  with bilinear upsampling, skips merged by summation, a 1x1 head and a
  sigmoid: an adhesive probability per pixel, the size of the input tile.

The defect networks (:mod:`semtile.models.defect_networks`) are built by the
same :func:`build_model`, from their own :class:`DefectArchitecture`;
:func:`architecture` reads either from a card, :func:`inference_module` gives
the graph every engine and export runs for any kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from semtile.errors import ModelError
from semtile.models.defect_networks import (
    AnomalyMap,
    AutoEncoder,
    ClassifierProbability,
    DefectArchitecture,
    PatchClassifier,
    VariationalAutoEncoder,
)
from semtile.models.kinds import BUNDLE_KINDS, DEFECT_KINDS

__all__ = ["Architecture", "DefectArchitecture", "Classifier", "Segmenter", "SegmenterProbabilities", "architecture",
           "build_model", "inference_module"]

# Inputs are intensities in [0, 1]; this fixed affine map (part of the network,
# so every engine and export sees it) centres them.
INPUT_MEAN = 0.5
INPUT_STD = 0.25


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of the paper's networks."""

    kind: str  # "classifier" or "segmenter"
    c: int = 32
    d: int = 4
    n: int = 2
    N: int = 1
    n_labels: int = 16

    def __post_init__(self) -> None:
        if self.kind not in ("classifier", "segmenter"):
            raise ValueError(f"kind must be 'classifier' or 'segmenter', got {self.kind!r}")
        for name in ("c", "d", "n", "N", "n_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def multiple(self) -> int:
        """Tile sides must be a multiple of this (one halving per stage)."""
        return 2**self.d

    @property
    def is_anomaly(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """``n`` x [3x3 conv, BatchNorm, ReLU] followed by a residual skip."""

    def __init__(self, width: int, n: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(width: int, n: int, N: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(width, n) for _ in range(N)])


class Classifier(nn.Module):
    """Baseline classifier; input (B, 1, H, W), output logits (B, n_labels)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.stem = nn.Conv2d(1, arch.c, 3, padding=1)
        self.stages = nn.ModuleList(_stage(arch.c, arch.n, arch.N) for _ in range(arch.d))
        self.head = nn.Linear(arch.c, arch.n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem((x - INPUT_MEAN) / INPUT_STD)
        for stage in self.stages:
            x = F.max_pool2d(stage(x), 2)
        return self.head(x.mean(dim=(2, 3)))


class Segmenter(nn.Module):
    """UNet-like weak-label segmenter; input (B, 1, H, W), output logits (B, 1, H, W).

    ``forward`` returns logits (numerically safer to train on); apply a sigmoid
    for the adhesive probability (:meth:`probabilities`).
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.stem = nn.Conv2d(1, arch.c, 3, padding=1)
        self.down = nn.ModuleList(_stage(arch.c, arch.n, arch.N) for _ in range(arch.d))
        self.up = nn.ModuleList(_stage(arch.c, arch.n, arch.N) for _ in range(arch.d))
        self.head = nn.Conv2d(arch.c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem((x - INPUT_MEAN) / INPUT_STD)
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        for stage, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(x + skip)
        return self.head(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


class SegmenterProbabilities(nn.Module):
    """The segmenter with its sigmoid, so every engine returns probabilities."""

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.segmenter(x))


def architecture(fields: dict) -> Architecture | DefectArchitecture:
    """The architecture a card's ``architecture`` entry describes (its ``kind`` says which family).

    Raises KeyError, TypeError or ValueError (ModelError for the defect family) when the entry is not valid.
    """
    kind = fields["kind"]
    if kind in BUNDLE_KINDS:
        return Architecture(**fields)
    if kind in DEFECT_KINDS:
        return DefectArchitecture(**fields)
    raise ValueError(f"unknown model kind {kind!r}: one of {', '.join((*BUNDLE_KINDS, *DEFECT_KINDS))}")


def build_model(arch: Architecture | DefectArchitecture) -> nn.Module:
    """Instantiate the network an architecture describes, of any kind."""
    if isinstance(arch, DefectArchitecture):
        if arch.kind == "patch-classifier":
            return PatchClassifier(arch)
        return VariationalAutoEncoder(arch) if arch.kind == "vae" else AutoEncoder(arch)
    return Classifier(arch) if arch.kind == "classifier" else Segmenter(arch)


def inference_module(network: nn.Module) -> nn.Module:
    """What engines and exports run, in eval mode: a classifier's logits (B, n_labels), a segmenter's
    probabilities (B, 1, T, T), a patch classifier's defect probability (B,), an autoencoder's anomaly map
    (B, 1, T, T)."""
    if isinstance(network, Classifier):
        return network.eval()
    if isinstance(network, Segmenter):
        return SegmenterProbabilities(network).eval()
    if isinstance(network, AutoEncoder):
        return AnomalyMap(network).eval()
    if isinstance(network, PatchClassifier):
        return ClassifierProbability(network).eval()
    raise ModelError(f"not a semtile network: {type(network).__name__}")
