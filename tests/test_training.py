"""Training, minimal form: weak labels, supervised masks, classifier; seeded and recorded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from semtile.errors import DatasetError, SemtileError
from semtile.models import Architecture
from semtile.training import TrainConfig, train_classifier, train_segmenter

TINY = Architecture("segmenter", c=4, d=2, n=1, N=1)
CONFIG = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, crop=32, seed=5)


def test_weak_training_is_seeded_and_recorded(tiny_dataset, tmp_path):
    a = train_segmenter(tiny_dataset, tmp_path / "a.pt", hypothesis="sqrt", arch=TINY, config=CONFIG)
    b = train_segmenter(tiny_dataset, tmp_path / "b.pt", hypothesis="sqrt", arch=TINY, config=CONFIG)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["training"]["mode"] == "weak" and card["training"]["hypothesis"] == "sqrt"
    assert len(card["training"]["history"]) == 2
    split = card["training"]["split"]
    assert set(split["train"]).isdisjoint(split["val"]) and len(split["train"]) + len(split["val"]) == 8
    assert card["labels"] == [0, 1, 2, 3]


def test_supervised_training_reads_masks(tiny_dataset, tmp_path):
    path = train_segmenter(tiny_dataset, tmp_path / "s.pt", masks=tiny_dataset / "masks", arch=TINY, config=CONFIG)
    assert json.loads(path.with_suffix(".json").read_text())["training"]["mode"] == "supervised"
    partial = tmp_path / "masks"
    partial.mkdir()
    shutil.copy(next((tiny_dataset / "masks").glob("*.tif")), partial)
    with pytest.raises(DatasetError, match="no mask for"):
        train_segmenter(tiny_dataset, tmp_path / "x.pt", masks=partial, arch=TINY, config=CONFIG)


def test_classifier_and_bad_settings(tiny_dataset, tmp_path):
    path = train_classifier(tiny_dataset, tmp_path / "c.pt", arch=Architecture("classifier", 4, 2, 1, 1), config=CONFIG)
    assert json.loads(path.with_suffix(".json").read_text())["architecture"]["n_labels"] == 4
    with pytest.raises(SemtileError, match="multiple of 4"):
        train_classifier(tiny_dataset, tmp_path / "c.pt", arch=Architecture("classifier", 4, 2, 1, 1),
                         config=TrainConfig(crop=30))
    with pytest.raises(DatasetError, match="labels.csv not found"):
        train_classifier(tmp_path, tmp_path / "c.pt", config=CONFIG)
