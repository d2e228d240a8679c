"""A segmenter's logits over a whole image, in bounded memory.

Ranking hypotheses and reading out a learned curve score whole images. One
forward pass over a 4-megapixel image already peaks near 4 GB for the
paper's segmenter, so larger images go through overlapping tiles, blended
by the same kernel as ``semtile process``.
"""

from __future__ import annotations

import numpy as np
import torch

from semtile.kernels.stitch import accumulate_tiles, normalise_canvas
from semtile.kernels.window import blend_window
from semtile.inference.split import TileGrid, read_windows

__all__ = ["ONE_PASS_PIXELS", "image_logits"]

#: Images up to this many pixels go through the network in one pass.
ONE_PASS_PIXELS = 2**22
#: Tiles for larger images: the halo covers most of the receptive field of a d=4 segmenter.
TILE, HALO = 1024, 128


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
        grid = TileGrid((rows, cols), TILE, HALO)
        window = blend_window(TILE, HALO)
        canvas = np.zeros((rows, cols), dtype=np.float32)
        weights = np.zeros((rows, cols), dtype=np.float32)
        for origin in grid.origins:
            tile = read_windows(image, origin[None], TILE)
            logits = network(torch.from_numpy(tile)[:, None])[:, 0].numpy()
            accumulate_tiles(canvas, weights, logits, origin[None], window)
        return normalise_canvas(canvas, weights, out=canvas)
