"""Grad-CAM and CAM per tile, blended like the mask: exactness, class choice, no seams, out of core = in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semtile.errors import SemtileError
from semtile.explain.heatmaps import HeatMapPass, TileExplainer, border_jumps, parse_kinds
from semtile.explain.propose import read_gray
from semtile.inference.one_image import run_pass
from semtile.inference.split import GridRule, TileGrid
from semtile.models.io import load_model
from semtile.models.networks import Architecture, Classifier


def _classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    net = Classifier(Architecture("classifier", c=4, d=2, n=1, N=1, n_labels=3)).eval()
    return net


def _tiles(n=3, size=32, seed=1):
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def test_cam_averages_to_the_logit_and_gradcam_is_relu_of_weighted_activations():
    net, tiles, k = _classifier(), _tiles(), 2
    explainer = TileExplainer(net, k)
    x = torch.from_numpy(tiles)[:, None]
    with torch.no_grad():
        logits = net(x)
        a = explainer.last_stage(x)
        pooled = torch.nn.functional.max_pool2d(a, 2)
    cam = torch.einsum("c,nchw->nhw", net.head.weight[k], pooled)
    torch.testing.assert_close(cam.mean(dim=(1, 2)) + net.head.bias[k], logits[:, k], rtol=1e-5, atol=1e-5)
    # For a global average pool and a linear head, d logit_k / d A_c averages to w_kc / (number of positions of A).
    want = torch.relu(torch.einsum("c,nchw->nhw", net.head.weight[k], a) / a[0, 0].numel())
    up = torch.nn.functional.interpolate(want[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    maps = explainer(tiles)
    assert set(maps) == {"gradcam", "cam"} and maps["gradcam"].shape == (3, 32, 32)
    np.testing.assert_allclose(maps["gradcam"], up.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert (maps["gradcam"] >= 0).all()


def test_the_class_is_chosen_and_checked():
    net, tiles = _classifier(), _tiles()
    a, b = TileExplainer(net, 0, ["cam"])(tiles)["cam"], TileExplainer(net, 1, ["cam"])(tiles)["cam"]
    assert not np.allclose(a, b)
    with pytest.raises(SemtileError, match="outside"):
        TileExplainer(net, 3)
    with pytest.raises(SemtileError, match="choose from"):
        parse_kinds("gradcam,lime")
    assert parse_kinds("cam, gradcam,cam") == ("cam", "gradcam")


def test_whole_scan_maps_have_no_seams_and_out_of_core_equals_in_memory(tiny_dataset, tiny_bundle, tmp_path):
    """Out of core forced (blocks of 2 x 2 tiles) on a real synthetic scan, through the runner explain uses."""
    path = sorted((tiny_dataset / "images").glob("*.tif"))[3]
    image, _ = read_gray(path)
    loaded = load_model(tiny_bundle / "classifier.pt", "classifier")
    grid = TileGrid(image.shape, 64, 8)  # the halo rule tile // 8; core 48: 3 x 4 tiles
    heat = HeatMapPass(GridRule(64, 8), 1, ("gradcam", "cam"), batch_size=4, network=loaded.network)
    memory, _ = run_pass(image, heat)
    out_of_core, _ = run_pass(image, heat, region_pixels=0, block_pixels=2 * grid.core, scratch=tmp_path)
    regions = {k: np.asarray(v[...]) for k, v in out_of_core.items()}
    for kind in ("gradcam", "cam"):
        np.testing.assert_allclose(regions[kind], memory[kind], atol=1e-5 * max(1.0, np.abs(memory[kind]).max()))
        jumps = border_jumps(regions[kind], grid)
        assert jumps["border_steps"] > 0 and jumps["inside_max"] > 0
        assert jumps["border_max"] <= jumps["inside_max"], (kind, jumps)


def test_border_jumps_by_hand():
    grid = TileGrid((4, 4), 4, 1)  # core 2: borders between pixels 1|2 in each direction
    heat = np.array([[0, 1, 5, 5], [0, 1, 5, 5], [0, 1, 5, 5], [0, 1, 5, 5]], dtype=float)
    j = border_jumps(heat, grid)
    assert j["border_max"] == 4.0 and j["inside_max"] == 1.0
    assert j["border_steps"] == 8 and j["inside_steps"] == 16
