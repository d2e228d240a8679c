"""From tile class logits to an image's label: the rules ``process``, ``search`` and scoring share."""

from __future__ import annotations

import numpy as np

from semtile.inference.split import TileGrid

__all__ = ["class_probs", "core_weights", "decide_label"]


def core_weights(grid: TileGrid) -> np.ndarray:
    """Share of each tile's core that lies inside the image (1 for full tiles), float64 ``(n,)``."""
    rows, cols = grid.shape
    y0 = np.clip(grid.origins[:, 0] + grid.halo, 0, rows)
    x0 = np.clip(grid.origins[:, 1] + grid.halo, 0, cols)
    y1 = np.clip(grid.origins[:, 0] + grid.halo + grid.core, 0, rows)
    x1 = np.clip(grid.origins[:, 1] + grid.halo + grid.core, 0, cols)
    return ((y1 - y0) * (x1 - x0) / float(grid.core**2)).astype(np.float64)


def class_probs(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Image class probabilities: weighted mean of tile log-probabilities, renormalised.

    Tiles are independent pieces of evidence about one label; averaging their
    log-probabilities (a product of experts) sharpens agreement, and weighting
    by the share of real pixels in each tile core keeps padded edge tiles from
    counting as much as full ones.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    mean = (logp * weights[:, None]).sum(axis=0) / weights.sum()
    p = np.exp(mean - mean.max())
    return (p / p.sum()).astype(np.float32)


def decide_label(probs: np.ndarray, labels: list) -> tuple[object, str]:
    """The predicted label and the rule used.

    Integer labels are ordered (the etching conditions t): the median of the
    image's class distribution minimises the expected error |t_pred - t| and
    is the prediction. Unordered (text) labels take the most probable class.
    """
    if all(isinstance(label, int) for label in labels):
        return labels[int(np.searchsorted(np.cumsum(probs), 0.5))], "median"
    return labels[int(np.argmax(probs))], "argmax"
