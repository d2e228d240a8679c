"""Blended tiles against a single whole-image pass: the seams are where a bad blend would show."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semtile.inference.one_image import run_array
from semtile.inference.split import TileGrid, default_halo
from semtile.models.io import load_bundle
from semtile.synth import synth_surface

#: Pixels at the image border left out: one pass zero-pads there, tiles reflect.
MARGIN = 32


@pytest.fixture(scope="module")
def segmenter():
    return load_bundle().segmenter.network.eval()


def _probabilities(segmenter):
    def infer(tiles: np.ndarray) -> dict:
        with torch.inference_mode():
            return {"mask": torch.sigmoid(segmenter(torch.from_numpy(tiles)[:, None]))[:, 0].numpy()}
    return infer


@pytest.mark.parametrize("seed", [0, 1])
def test_tiled_mask_matches_one_pass_at_every_pixel(segmenter, seed):
    image, _, _ = synth_surface(np.random.default_rng(seed), (480, 640), 0.5)
    image = image.astype(np.float32) / 255.0
    with torch.inference_mode():
        one_pass = torch.sigmoid(segmenter(torch.from_numpy(image)[None, None]))[0, 0].numpy()
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))

    def difference(halo: int) -> tuple[float, float]:
        tiled = run_array(image, TileGrid(image.shape, 256, halo), _probabilities(segmenter))["mask"]
        return (float(np.abs(tiled - one_pass)[inner].max()),
                float(np.mean((tiled >= 0.5)[inner] != (one_pass >= 0.5)[inner])))

    # Measured on an AMD EPYC (Zen 3) with the built-in model: max 0.031-0.042, binary 3e-4.
    worst, binary = difference(default_halo(256))
    assert worst <= 0.06, f"blended tiles differ from one pass by {worst:.3f} somewhere (seam?)"
    assert binary <= 1e-3, f"{binary:.5f} of binary pixels differ from one pass"
    # The bound bites: without a halo the seams miss by most of the probability range.
    assert difference(0)[0] > 0.5
