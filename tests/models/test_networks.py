"""The paper's networks and their files; one loader and one build_model for every kind."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from semtile.errors import ModelError
from semtile.models.io import CARD_FORMAT, builtin_bundle_dir, load_model, save_model
from semtile.models.kinds import BUNDLE_KINDS, MODEL_KINDS
from semtile.models.networks import (
    Architecture,
    DefectArchitecture,
    SegmenterProbabilities,
    architecture,
    build_model,
    inference_module,
)


@pytest.mark.parametrize("c,d,n,N", [(8, 2, 1, 1), (4, 3, 2, 2)])
def test_classifier_depth_and_output(c, d, n, N):
    arch = Architecture("classifier", c, d, n, N, n_labels=7)
    net = build_model(arch)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == d * n * N + 1  # the paper's D
    assert all(m.out_channels == c for m in convs)  # constant width
    assert net(torch.rand(3, 1, 32, 48)).shape == (3, 7)


@pytest.mark.parametrize("c,d,n,N", [(8, 2, 1, 1), (4, 3, 2, 1)])
def test_segmenter_is_symmetric_and_keeps_the_tile_size(c, d, n, N):
    net = build_model(Architecture("segmenter", c, d, n, N))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 2 * d * n * N + 1
    x = torch.rand(2, 1, 64, 40)
    probs = net.probabilities(x)
    assert probs.shape == x.shape and 0 <= probs.min() and probs.max() <= 1


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    arch = Architecture("segmenter", 4, 2, 1, 1, n_labels=3)
    net = build_model(arch).eval()
    path = save_model(net, arch, [0, 1, 2], tmp_path / "seg.pt", training={"mode": "weak"})
    state = torch.load(path, weights_only=True)  # a plain state dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = load_model(path, "segmenter")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), net(x))
    assert loaded.sha256 == json.loads((tmp_path / "seg.json").read_text())["sha256"]
    with pytest.raises(ModelError, match="expected a classifier"):
        load_model(path, "classifier")


def test_tampered_or_missing_files_are_refused(tmp_path):
    arch = Architecture("classifier", 4, 2, 1, 1, n_labels=2)
    path = save_model(build_model(arch), arch, ["a", "b"], tmp_path / "clf.pt")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(path)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "none.pt")


def test_the_builtin_cards_of_the_first_format_load_with_their_sha256():
    folder = builtin_bundle_dir()
    for kind in BUNDLE_KINDS:
        card = json.loads((folder / f"{kind}.json").read_text())
        assert card["format"] == "semtile-model/1"  # shipped before the one card format: loads unchanged
        model = load_model(folder / f"{kind}.pt", expect=kind)
        assert model.sha256 == card["sha256"] and model.kind == kind and model.labels == list(range(16))
        assert (model.tile, model.halo, model.threshold) == (256, None, None)  # not in these cards
    with pytest.raises(ModelError, match="expected a autoencoder or vae, the card says classifier"):
        load_model(folder / "classifier.pt", expect=("autoencoder", "vae"))


def test_one_build_model_and_inference_graph_for_every_kind(tmp_path):
    x = torch.rand(2, 1, 32, 32)
    for kind in MODEL_KINDS:
        fields = {"kind": kind, "c": 4}
        fields.update({"d": 2, "n": 1, "n_labels": 3} if kind in BUNDLE_KINDS else {"normalise": "tile"})
        arch = architecture(fields)
        assert isinstance(arch, Architecture if kind in BUNDLE_KINDS else DefectArchitecture)
        assert not arch.is_anomaly or kind in ("autoencoder", "vae")
        net = build_model(arch)
        path = save_model(net, arch, [0, 1, 2] if kind in BUNDLE_KINDS else (), tmp_path / f"{kind}.pt")
        assert json.loads(path.with_suffix(".json").read_text())["format"] == CARD_FORMAT
        loaded = load_model(path, expect=kind)
        with torch.inference_mode():
            out = inference_module(loaded.network)(x)
            torch.testing.assert_close(out, inference_module(net.eval())(x))
        assert out.shape == {"classifier": (2, 3), "patch-classifier": (2,)}.get(kind, (2, 1, 32, 32))
    segmenter = build_model(Architecture("segmenter", 4, 2, 1, 1))
    assert isinstance(inference_module(segmenter), SegmenterProbabilities)
    with pytest.raises(ValueError, match="unknown model kind"):
        architecture({"kind": "detector"})
    with pytest.raises(ModelError, match="not a semtile network"):
        inference_module(nn.Conv2d(1, 1, 3))
