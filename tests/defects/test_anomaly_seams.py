"""The anomaly map's seams: blended tiles against a single whole-image pass (as tests/inference/test_seams.py
does for the mask).

A whole-image pass of the fully convolutional autoencoder is the map without
tiles; where blending were wrong, the difference would show along the tile
borders. Like the mask's test this runs on 480x640 frames (an 8192x8192 scan
is the same grid, only longer: benchmarks/defects.py checks one) with the
tiles of ``semtile process``, 256 pixels with the halo rule tile // 8 = 32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semtile.defects.anomaly import anomaly_map
from semtile.models.io import load_model
from semtile.models.networks import inference_module
from semtile.synth.defects import defect_overlay
from semtile.synth.surfaces import synth_surface_with

#: Pixels at the image border left out: one pass zero-pads there, tiles reflect.
MARGIN = 32


@pytest.mark.parametrize("seed", [0, 1])
def test_tiled_anomaly_map_matches_one_pass(copper_autoencoder, seed):
    model = load_model(copper_autoencoder, expect="autoencoder")
    frame, _, bar, _ = synth_surface_with(np.random.default_rng(seed), (480 + 30, 640), 0.5,
                                          defect_overlay(np.random.default_rng(seed + 100)))
    image = frame[: 480].astype(np.float32) / 255.0
    with torch.inference_mode():
        one_pass = inference_module(model.network)(torch.from_numpy(image)[None, None])[0, 0].numpy()
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    scale = float(np.quantile(one_pass[inner], 0.999))
    threshold = model.threshold

    def difference(halo: int) -> tuple[float, float]:
        tiled, _ = anomaly_map(image, model, tile=256, halo=halo)
        return (float(np.abs(tiled - one_pass)[inner].max()) / scale,
                float(np.mean((tiled > threshold)[inner] != (one_pass > threshold)[inner])))

    worst, binary = difference(32)
    assert worst <= 0.1, f"blended tiles differ from one pass by {worst:.3f} of the map's top values (seam?)"
    assert binary <= 1e-3, f"{binary:.5f} of thresholded pixels differ from one pass"
    # The bound bites: without a halo the tile borders stand out.
    no_halo = difference(0)[0]
    print(f"max difference {worst:.4f} of the top values (halo 0: {no_halo:.4f}), thresholded {binary:.2e}")
    assert no_halo > 3 * worst


def test_a_halo_off_the_networks_grid_is_refused(copper_autoencoder):
    from semtile.errors import SemtileError

    model = load_model(copper_autoencoder, expect="autoencoder")
    image = np.zeros((200, 200), np.float32)
    with pytest.raises(SemtileError, match="multiple of 4"):
        anomaly_map(image, model, tile=128, halo=6)  # tiles would start off the stride-8 grid
    assert anomaly_map(image, model, tile=128, halo=12)[0].shape == (200, 200)
