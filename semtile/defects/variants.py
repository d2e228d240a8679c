"""The ways an autoencoder can score a patch, side by side.

The anomaly map (:class:`~semtile.models.defect_networks.AnomalyMap`) can be
pooled over a patch by its maximum or its mean; a VAE's map has two terms,
the reconstruction error and the latent (KL) term, and each can be scored on
its own. :func:`score_variants` gives every variant for a batch of patches so
that they can be compared on the same held-out labels:

* ``max``, ``mean``: the model's map (a VAE's with its latent term: ``mean``
  is then the negative ELBO per pixel, the training loss) pooled by max or mean;
* VAE only: ``error-max``, ``error-mean`` (reconstruction error alone) and
  ``latent`` (the KL divergence of the patch's posterior from the prior,
  summed over latent cells).
"""

from __future__ import annotations

import numpy as np
import torch

from semtile.errors import SemtileError
from semtile.models.defect_networks import AnomalyMap
from semtile.models.io import LoadedModel

__all__ = ["score_variants"]


def score_variants(model: LoadedModel, patches: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every score variant of ``model`` (an autoencoder or VAE) for ``patches`` (n, T, T)."""
    if not model.arch.is_anomaly:
        raise SemtileError(f"{model.path}: score variants are for autoencoders, not a {model.arch.kind}")
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or len(patches) == 0:
        raise SemtileError(f"score variants: patches must be a non-empty (n, T, T) array, got {patches.shape}")
    head = AnomalyMap(model.network).eval()
    out: dict[str, list] = {}
    with torch.inference_mode():
        for first in range(0, len(patches), batch_size):
            terms = head.terms(torch.from_numpy(patches[first: first + batch_size])[:, None])
            error = terms["error"][:, 0]
            full = error + terms["latent"][:, 0] if "latent" in terms else error
            parts = {"max": full.amax(dim=(1, 2)), "mean": full.mean(dim=(1, 2))}
            if "latent" in terms:
                parts.update({"error-max": error.amax(dim=(1, 2)), "error-mean": error.mean(dim=(1, 2)),
                              "latent": terms["kl"].sum(dim=(1, 2, 3))})
            for name, value in parts.items():
                out.setdefault(name, []).append(value.numpy().astype(np.float64))
    return {name: np.concatenate(values) for name, values in out.items()}
