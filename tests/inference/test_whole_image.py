"""Whole-image logits: one pass for ordinary images, blended tiles for large ones."""

from __future__ import annotations

import numpy as np
import torch

import semtile.inference.whole_image as whole_image
from semtile.models.networks import Architecture, build_model


def test_tiled_logits_match_one_pass(monkeypatch):
    torch.manual_seed(0)
    net = build_model(Architecture("segmenter", c=4, d=2, n=1, N=1, n_labels=4))
    rng = np.random.default_rng(1)
    image = rng.random((203, 171)).astype(np.float32)  # odd sizes: cropped to multiples of 4
    one_pass = whole_image.image_logits(net, image, 4)
    assert one_pass.shape == (200, 168)
    monkeypatch.setattr(whole_image, "ONE_PASS_PIXELS", 0)
    monkeypatch.setattr(whole_image, "TILE", 64)  # halo 8 by the one rule
    tiled = whole_image.image_logits(net, image, 4)
    assert tiled.shape == one_pass.shape
    # Cores see nearly all their context (a misplaced tile would be off by whole logits);
    # image borders are reflected here and zero-padded in one pass.
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(tiled[inner] - one_pass[inner]).max() < 1e-2 * (1 + np.abs(one_pass).max())
    assert abs(float(torch.sigmoid(torch.from_numpy(tiled)).mean() - torch.sigmoid(torch.from_numpy(one_pass)).mean())) < 5e-3
