"""Augmentation of defect patches: flips, 90-degree turns and intensity jitter.

A defect is a defect in any orientation and at any brightness, so each
training patch is turned by a random multiple of 90 degrees, flipped at
random, and its contrast and brightness jittered (gain about its mean, then
an offset), clipped back to [0, 1]. Masks (where given) get the same turns
and flips.
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment"]


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
