"""The defect networks: shapes at any tile, the anomaly map, cards and sha256 (and the cards written before the
one card format), architecture checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semtile.errors import ModelError
from semtile.models.io import CARD_FORMAT, LoadedModel, load_model, save_model
from semtile.models.kinds import DEFECT_KINDS
from semtile.models.networks import AnomalyMap, DefectArchitecture, build_model, inference_module


@pytest.mark.parametrize("kind", ["patch-classifier", "autoencoder", "vae"])
@pytest.mark.parametrize("side", [48, 64])
def test_fully_convolutional_at_any_multiple_of_the_stride(kind, side):
    torch.manual_seed(0)
    arch = DefectArchitecture(kind, c=4, normalise="tile")
    net = build_model(arch).eval()
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
    ae = build_model(DefectArchitecture("autoencoder", c=4, smooth=0.0, normalise="fixed")).eval()
    with torch.inference_mode():
        parts = ae.parts(x)
        assert torch.allclose(AnomalyMap(ae)(x), (parts["reconstruction"] - parts["input"]) ** 2)
    vae = build_model(DefectArchitecture("vae", c=4, smooth=0.0, beta=0.5, normalise="fixed")).eval()
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
    net = build_model(arch)
    path = save_model(net, arch, path=tmp_path / "m.pt", tile=64, threshold={"value": 1.5, "fpr": 0.01})
    model = load_model(path)
    assert isinstance(model, LoadedModel) and model.kind == "vae" and model.labels == []
    assert model.arch == arch and model.tile == 64 and model.threshold == 1.5 and model.halo is None
    assert json.loads(path.with_suffix(".json").read_text())["format"] == CARD_FORMAT
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == model.sha256
    for key, value in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value)
    with pytest.raises(ModelError, match="expected a patch-classifier"):
        load_model(path, expect=("patch-classifier",))
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ModelError, match="sha256"):
        load_model(path)


def _legacy_card(path, arch, **fields):
    """The card today's defect models were written with before the one card format (``semtile-defect-model/1``)."""
    from semtile.io.discover import sha256_file

    card = {"format": "semtile-defect-model/1", "architecture": arch.to_dict(), "weights": path.name,
            "sha256": sha256_file(path), **fields}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def test_defect_model_cards_of_the_first_format_load_unchanged(tmp_path):
    arch = DefectArchitecture("autoencoder", c=4, normalise="fixed")
    net = build_model(arch).eval()
    path = tmp_path / "old.pt"
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    _legacy_card(path, arch, tile=128, halo=16, threshold={"value": 0.25})
    model = load_model(path, expect=DEFECT_KINDS)
    assert (model.kind, model.tile, model.halo, model.threshold, model.labels) == ("autoencoder", 128, 16, 0.25, [])
    x = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(inference_module(model.network)(x), inference_module(net)(x))
    with pytest.raises(ModelError, match="expected a classifier or segmenter, the card says autoencoder"):
        load_model(path, expect=("classifier", "segmenter"))
    path.write_bytes(path.read_bytes() + b"x")  # the same sha256 check
    with pytest.raises(ModelError, match="sha256"):
        load_model(path)
    card = json.loads(path.with_suffix(".json").read_text())
    card["architecture"] = {"kind": "segmenter", "c": 4, "d": 2, "n": 1, "N": 1, "n_labels": 2}
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="cannot hold a segmenter"):
        load_model(path)
    path.with_suffix(".json").write_text(json.dumps(dict(card, format="semtile-other/9")))
    with pytest.raises(ModelError, match="not a semtile model card"):
        load_model(path)


def test_architecture_is_checked():
    with pytest.raises(ModelError, match="kind"):
        DefectArchitecture("segmenter")
    with pytest.raises(ModelError, match="pool"):
        DefectArchitecture("autoencoder", pool="median")
    with pytest.raises(ModelError, match="resolved"):
        build_model(DefectArchitecture("autoencoder"))  # "auto" is resolved by training
    assert DefectArchitecture("vae", stages=4).multiple == 16
    assert np.isclose(DefectArchitecture("autoencoder").to_dict()["smooth"], 2.0)
