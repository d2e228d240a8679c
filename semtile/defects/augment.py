"""Augmentation of defect patches: flips, 90-degree turns and intensity jitter.

A defect is a defect in any orientation and at any brightness, so each
training patch is turned by a random multiple of 90 degrees, flipped at
random, and its contrast and brightness jittered (gain about its mean, then
an offset), clipped back to [0, 1]. Masks (where given) get the same turns
and flips. :class:`AugmentedBatches` is the sampler of the training loop
(:func:`semtile.models.training.fit`) for the defect models.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["augment", "AugmentedBatches", "crop_sampler"]


def augment(rng: np.random.Generator, patches: np.ndarray, masks: np.ndarray | None = None, *,
            jitter: float = 0.15) -> tuple[np.ndarray, np.ndarray | None]:
    """Augmented copies of ``patches`` (n, T, T) in [0, 1] (and of ``masks``, geometry only).

    ``jitter``: the gain is drawn from [1 - jitter, 1 + jitter] and the offset
    from [-jitter / 3, jitter / 3]; 0 turns intensity jitter off.
    """
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise ValueError(f"augment: patches must be (n, T, T), got {patches.shape}")
    if masks is not None and masks.shape != patches.shape:
        raise ValueError(f"augment: masks {masks.shape} do not match the patches {patches.shape}")
    if not 0 <= jitter < 1:
        raise ValueError(f"augment: jitter must lie in [0, 1), got {jitter}")
    n = len(patches)
    turns = rng.integers(0, 4, size=n)
    flips = rng.integers(0, 2, size=n).astype(bool)
    out = np.empty_like(patches)
    mout = None if masks is None else np.empty_like(masks)
    for i in range(n):
        views = [patches[i]] + ([] if masks is None else [masks[i]])
        views = [np.rot90(v, int(turns[i])) for v in views]
        if flips[i]:
            views = [v[:, ::-1] for v in views]
        out[i] = views[0]
        if mout is not None:
            mout[i] = views[1]
    if jitter:
        gain = rng.uniform(1 - jitter, 1 + jitter, size=(n, 1, 1)).astype(np.float32)
        offset = rng.uniform(-jitter / 3, jitter / 3, size=(n, 1, 1)).astype(np.float32)
        mean = out.mean(axis=(1, 2), keepdims=True)
        out = np.clip((out - mean) * gain + mean + offset, 0.0, 1.0)
    return out, mout


class AugmentedBatches:
    """Training batches of a defect model: ``draw(n)`` -> raw patches (n, T, T) and their targets (or None),
    augmented (:func:`augment`) and returned as tensors ``(x (n, 1, T, T), targets)``; both from ``rng``."""

    def __init__(self, rng: np.random.Generator, draw: Callable[[int], tuple[np.ndarray, np.ndarray | None]],
                 jitter: float = 0.15):
        self.rng, self.draw, self.jitter = rng, draw, jitter

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        patches, targets = self.draw(size)
        x, _ = augment(self.rng, patches, jitter=self.jitter)
        return torch.from_numpy(x)[:, None], None if targets is None else torch.from_numpy(targets)


def crop_sampler(images: list[np.ndarray], crop: int, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """``n`` -> n random ``crop`` x ``crop`` crops (n, crop, crop), each from an image drawn at random."""
    def sample(n: int) -> np.ndarray:
        out = np.empty((n, crop, crop), dtype=np.float32)
        for k in range(n):
            img = images[int(rng.integers(len(images)))]
            y0 = int(rng.integers(img.shape[0] - crop + 1))
            x0 = int(rng.integers(img.shape[1] - crop + 1))
            out[k] = img[y0: y0 + crop, x0: x0 + crop]
        return out
    return sample
