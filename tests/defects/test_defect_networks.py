"""The defect networks: shapes at any tile, the anomaly map, cards and sha256, architecture checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semtile.defects.modelio import load_defect_model, save_defect_model
from semtile.defects.networks import AnomalyMap, DefectArchitecture, build_defect_model, inference_module
from semtile.errors import ModelError


@pytest.mark.parametrize("kind", ["patch-classifier", "autoencoder", "vae"])
@pytest.mark.parametrize("side", [48, 64])
def test_fully_convolutional_at_any_multiple_of_the_stride(kind, side):
    torch.manual_seed(0)
    arch = DefectArchitecture(kind, c=4, normalise="tile")
    net = build_defect_model(arch).eval()
    x = torch.rand(3, 1, side, side)
    with torch.inference_mode():
        out = inference_module(net)(x)
    assert out.shape == ((3,) if kind == "patch-classifier" else (3, 1, side, side))
    assert torch.isfinite(out).all()
    if kind == "patch-classifier":
        assert ((out >= 0) & (out <= 1)).all()
    else:
        assert (out >= 0).all()  # squared errors (and a KL divergence)


def test_anomaly_map_is_the_squared_error_and_a_vae_adds_its_latent_term():
    torch.manual_seed(1)
    x = torch.rand(2, 1, 32, 32)
    ae = build_defect_model(DefectArchitecture("autoencoder", c=4, smooth=0.0, normalise="fixed")).eval()
    with torch.inference_mode():
        parts = ae.parts(x)
        assert torch.allclose(AnomalyMap(ae)(x), (parts["reconstruction"] - parts["input"]) ** 2)
    vae = build_defect_model(DefectArchitecture("vae", c=4, smooth=0.0, beta=0.5, normalise="fixed")).eval()
    with torch.inference_mode():
        terms = AnomalyMap(vae).terms(x)
        kl = terms["kl"].sum(dim=(1, 2, 3)) / (32 * 32)
        # the map's mean is the training loss: squared error + beta * KL per pixel
        assert torch.allclose(AnomalyMap(vae)(x).mean(dim=(1, 2, 3)),
                              terms["error"].mean(dim=(1, 2, 3)) + 0.5 * kl, rtol=1e-4)
        assert (terms["kl"] >= 0).all()
        assert torch.equal(vae(x), vae(x))  # inference decodes the posterior mean: deterministic


def test_saved_model_round_trips_and_a_changed_file_is_refused(tmp_path):
    arch = DefectArchitecture("vae", c=4, normalise="fixed", mean=0.4, std=0.2)
    net = build_defect_model(arch)
    path = save_defect_model(net, arch, tmp_path / "m.pt", tile=64, threshold={"value": 1.5, "fpr": 0.01})
    model = load_defect_model(path)
    assert model.arch == arch and model.tile == 64 and model.threshold == 1.5
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == model.sha256
    for key, value in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value)
    with pytest.raises(ModelError, match="expected a patch-classifier"):
        load_defect_model(path, expect=("patch-classifier",))
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ModelError, match="sha256"):
        load_defect_model(path)


def test_architecture_is_checked():
    with pytest.raises(ModelError, match="kind"):
        DefectArchitecture("segmenter")
    with pytest.raises(ModelError, match="pool"):
        DefectArchitecture("autoencoder", pool="median")
    with pytest.raises(ModelError, match="resolved"):
        build_defect_model(DefectArchitecture("autoencoder"))  # "auto" is resolved by training
    assert DefectArchitecture("vae", stages=4).multiple == 16
    assert np.isclose(DefectArchitecture("autoencoder").to_dict()["smooth"], 2.0)
