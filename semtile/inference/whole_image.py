"""A segmenter's logits over a whole image, in bounded memory.

Ranking hypotheses and reading out a learned curve score whole images. One
forward pass over a 4-megapixel image already peaks near 4 GB for the
paper's segmenter, so larger images go through the tiled path of
``semtile process`` (split, run, blend) with the same halo rule.
"""

from __future__ import annotations

import numpy as np
import torch

from semtile.inference.one_image import run_array
from semtile.inference.split import GridRule

__all__ = ["ONE_PASS_PIXELS", "TILE", "image_logits"]

#: Images up to this many pixels go through the network in one pass.
ONE_PASS_PIXELS = 2**22
#: Tile side for larger images (the halo is :meth:`GridRule.derive`'s default for it).
TILE = 1024


def image_logits(network: torch.nn.Module, image: np.ndarray, multiple: int) -> np.ndarray:
    """Logits of ``network`` over ``image`` cropped to a multiple of ``multiple`` (2**d).

    Parameters
    ----------
    network : segmenter returning logits (B, 1, H, W); put in eval mode here.
    image : (rows, cols) float image in [0, 1].
    multiple : 2**d of the network.

    Returns
    -------
    float32 (rows // multiple * multiple, cols // multiple * multiple).
    """
    rows, cols = (image.shape[0] // multiple) * multiple, (image.shape[1] // multiple) * multiple
    image = np.ascontiguousarray(image[:rows, :cols], dtype=np.float32)
    network.eval()
    with torch.inference_mode():
        if rows * cols <= ONE_PASS_PIXELS:
            return network(torch.from_numpy(image)[None, None])[0, 0].numpy()

        def logits(tiles: np.ndarray) -> dict:
            return {"logits": network(torch.from_numpy(tiles)[:, None])[:, 0].numpy()}

        grid = GridRule.derive(TILE, multiple=multiple).grid((rows, cols))
        return run_array(image, grid, logits, batch_size=1)["logits"]
