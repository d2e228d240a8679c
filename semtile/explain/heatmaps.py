"""Grad-CAM and CAM of the classifier, per tile, blended into whole-image maps like the mask.

For a batch of tiles and one class ``k`` (the image's predicted label, or a
chosen one: one class for every tile of an image, so the maps of neighbouring
tiles agree), :class:`TileExplainer` returns per-tile maps the size of the
tile. :class:`HeatMapPass` makes them a pass (:mod:`semtile.inference.passes`):
:func:`semtile.inference.one_image.run_pass` blends them with the same raised-cosine
window as the mask, in memory or out of core. Values are raw, never normalised per tile:
a tile-wise normalisation would give each tile its own scale and make seams.
Normalisation by the maximum belongs to the whole map, when it becomes a mask
(:func:`semtile.explain.masks.heat_to_mask`).

* **Grad-CAM** (Selvaraju et al. 2017): ``A`` = the output of the classifier's
  last stage (before its max-pool; ``T / 2**(d-1)`` pixels a side), ``alpha_c``
  = the spatial mean of ``d logit_k / d A_c`` (a backward pass), map =
  ``ReLU(sum_c alpha_c A_c)``.
* **CAM** (Zhou et al. 2016): ``F`` = the features the global average pool
  reads (the last stage's output after its max-pool, ``T / 2**d`` a side), map
  = ``sum_c w_kc F_c`` with ``w`` the linear head's weights (no bias, no ReLU:
  the map's mean plus the bias is the tile's logit ``k``; it may be negative).

Both are upsampled to the tile bilinearly. For this architecture (a global
average pool then one linear layer) the Grad-CAM weights are ``w_kc`` divided
by the number of positions, so the two maps differ by the layer they read
(Grad-CAM's is twice as fine) and the ReLU.

Gradients need PyTorch: heat maps always run on a torch network, on the CPU
or a CUDA device, whatever engine produced the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from semtile.errors import SemtileError
from semtile.inference.passes import Pass, PassRunner, TileOutputs, register_pass
from semtile.inference.split import GridRule, TileGrid
from semtile.models.networks import INPUT_MEAN, INPUT_STD, Classifier

__all__ = ["KINDS", "TileExplainer", "HeatMapPass", "parse_kinds",
           "border_jumps"]

#: The heat maps semtile computes.
KINDS = ("gradcam", "cam")


def parse_kinds(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"gradcam,cam"`` -> ("gradcam", "cam"); SemtileError naming an unknown kind."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [v for v in items if v not in KINDS]
    if unknown or not items:
        raise SemtileError(f"heat map kinds {unknown or value!r}: choose from {', '.join(KINDS)}")
    return tuple(dict.fromkeys(items))


class TileExplainer:
    """A batch of tiles ``(n, T, T)`` in [0, 1] -> ``{kind: (n, T, T) float32}`` for one class index.

    ``network`` is a :class:`~semtile.models.networks.Classifier` (put in eval
    mode here: BatchNorm uses its running statistics, as in inference).
    """

    def __init__(self, network: Classifier, class_index: int, kinds: Sequence[str] = KINDS,
                 device: str | torch.device = "cpu"):
        if not isinstance(network, Classifier):
            raise SemtileError(f"heat maps explain a classifier, not a {type(network).__name__}")
        n_labels = network.head.out_features
        if not 0 <= int(class_index) < n_labels:
            raise SemtileError(f"class index {class_index} is outside the classifier's {n_labels} labels")
        self.network = network.to(device).eval()
        self.class_index = int(class_index)
        self.kinds = parse_kinds(kinds)
        self.device = torch.device(device)

    def last_stage(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output A (before its max-pool) for a batch ``(n, 1, T, T)``: the classifier's own layers."""
        net = self.network
        x = net.stem((x - INPUT_MEAN) / INPUT_STD)
        for stage in net.stages[:-1]:
            x = F.max_pool2d(stage(x), 2)
        return net.stages[-1](x)

    def __call__(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        tiles = np.asarray(tiles, dtype=np.float32)
        if tiles.ndim != 3 or tiles.shape[1] != tiles.shape[2]:
            raise SemtileError(f"tiles must be (n, T, T), got {tiles.shape}")
        size = tiles.shape[1:]
        x = torch.from_numpy(np.ascontiguousarray(tiles))[:, None].to(self.device)
        k, w = self.class_index, self.network.head.weight
        out: dict[str, torch.Tensor] = {}
        want_grad = "gradcam" in self.kinds
        with torch.no_grad():
            a = self.last_stage(x)
        # The weights need no gradient: the backward pass runs only from the logit back to A.
        with torch.set_grad_enabled(want_grad):
            a.requires_grad_(want_grad)
            pooled = F.max_pool2d(a, 2)  # what the global average pool reads
            if want_grad:
                logits = self.network.head(pooled.mean(dim=(2, 3)))
                (grads,) = torch.autograd.grad(logits[:, k].sum(), a)
                alpha = grads.mean(dim=(2, 3), keepdim=True)
                out["gradcam"] = F.relu((alpha * a).sum(dim=1, keepdim=True)).detach()
            if "cam" in self.kinds:
                out["cam"] = torch.einsum("c,nchw->nhw", w[k].detach(), pooled.detach())[:, None]
        return {kind: F.interpolate(out[kind], size=size, mode="bilinear", align_corners=False)[:, 0]
                .cpu().numpy().astype(np.float32, copy=False) for kind in self.kinds}


class _ExplainerRunner(PassRunner):
    def __init__(self, explainer: TileExplainer):
        self.explainer = explainer

    def run(self, tiles: np.ndarray) -> TileOutputs:
        return TileOutputs(maps=self.explainer(tiles))

    def describe(self) -> dict:
        return {"name": f"torch-{self.explainer.device.type}", "precision": "f32"}


@register_pass
@dataclass(frozen=True)
class HeatMapPass(Pass):
    """Grad-CAM / CAM of one class over every tile of a stored result's grid (its classifier, on torch)."""

    kind = "heatmaps"

    rule: GridRule
    class_index: int
    kinds: tuple[str, ...] = KINDS
    classifier_sha256: str = ""
    device: str = "cpu"
    batch_size: int = 8
    network: Any = field(default=None, repr=False, compare=False)  # the loaded classifier (this process)

    def token(self):
        return (self.classifier_sha256, self.class_index, self.kinds, self.device, id(self.network))

    def build_runner(self) -> PassRunner:
        return _ExplainerRunner(TileExplainer(self.network, self.class_index, self.kinds, device=self.device))

    def map_names(self) -> tuple[str, ...]:
        return self.kinds


def border_jumps(heat: np.ndarray, grid: TileGrid, origin: tuple[int, int] = (0, 0)) -> dict[str, float]:
    """Seams, measured: the largest (and mean) absolute step between neighbouring pixels across tile-core
    borders, and the same inside cores (steps between two pixels of one core), over rows and columns.

    ``heat`` is the whole map, or a window of it whose top-left pixel is ``origin`` (to measure a large
    map band by band). A map without seams has ``border_max <= inside_max`` and ``border_mean`` close to
    ``inside_mean``.
    """
    heat = np.asarray(heat, dtype=np.float64)
    y0, x0 = origin
    if heat.ndim != 2 or y0 < 0 or x0 < 0 or y0 + heat.shape[0] > grid.shape[0] or x0 + heat.shape[1] > grid.shape[1]:
        raise ValueError(f"heat map {heat.shape} at {origin} does not lie in the grid's image {grid.shape}")
    border, inside = [], []
    for axis, offset in ((0, y0), (1, x0)):
        steps = np.abs(np.diff(heat, axis=axis))  # step k lies between pixels k and k + 1
        crosses = ((np.arange(1, heat.shape[axis]) + offset) % grid.core) == 0
        take = (lambda m, s=steps: s[m]) if axis == 0 else (lambda m, s=steps: s[:, m])
        border.append(take(crosses).ravel())
        inside.append(take(~crosses).ravel())
    b, i = np.concatenate(border), np.concatenate(inside)
    return {"border_max": float(b.max()) if b.size else 0.0, "inside_max": float(i.max()) if i.size else 0.0,
            "border_mean": float(b.mean()) if b.size else 0.0, "inside_mean": float(i.mean()) if i.size else 0.0,
            "border_steps": int(b.size), "inside_steps": int(i.size)}
