"""Training the defect models on lattice patches: they learn, are scored on held-out patches, and save like the others."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.defects.augment import augment
from semtile.defects.data import load_defect_data
from semtile.defects.training import DefectTrainConfig, train_autoencoder, train_patch_classifier
from semtile.errors import DatasetError, SemtileError
from semtile.models.io import load_model


@pytest.mark.slow
def test_patch_classifier_learns_rare_defects(patch_classifier):
    model = load_model(patch_classifier)
    card = model.card
    test = card["scores"]["test"]["probability"]
    assert test["positives"] == 16 and test["n"] == 160
    # 80 balanced batches on 10% defects; 002's unbalanced, unaugmented CNN scored 0.5.
    assert test["auroc"] > 0.85, test
    assert test["ap"] > 3 * test["prevalence"], test
    assert card["tile"] == 48 and card["halo"] == 0 and card["architecture"]["normalise"] == "tile"
    assert patch_classifier.with_suffix(".roc.png").is_file()
    lines = patch_classifier.with_suffix(".test.csv").read_text().splitlines()
    assert lines[0] == "path,label,probability" and len(lines) == 161
    split = card["training"]["split"]
    assert not set(split["test"]) & set(split["train"])


@pytest.mark.slow
def test_autoencoder_trained_on_perfect_patches_scores_defects(lattice_autoencoder, lattice_data):
    model = load_model(lattice_autoencoder)
    scores = model.card["scores"]
    assert scores["test"]["max"]["auroc"] > 0.75, scores["test"]
    assert scores["test_pixels"]["pixel_auroc"] > 0.8, scores["test_pixels"]
    # only perfect patches were seen in training
    data = load_defect_data(lattice_data, split=(0.6, 0.2, 0.2), seed=0)
    train_names = set(model.card["training"]["split"]["train"])
    defects = {s.path.name for s, label in zip(data.samples, data.labels) if str(label) == "1"}
    assert model.card["training"]["normal_train_images"] == len(train_names - defects)
    threshold = model.card["threshold"]
    assert threshold["fpr"] == 0.001 and threshold["value"] > 0 and model.card["patch_threshold"]["pool"] == "max"


def test_augmentation_turns_flips_and_jitters_masks_with_the_image():
    rng = np.random.default_rng(0)
    patches = rng.random((64, 8, 8)).astype(np.float32)
    masks = (patches > 0.9).astype(np.float32)
    out, mout = augment(rng, patches, masks, jitter=0.0)
    assert np.array_equal(out > 0.9, mout > 0)  # the same geometry for both
    assert not np.array_equal(out, patches)
    # each augmented patch is one of the 8 symmetries of its source
    for a, b in zip(out, patches):
        views = [np.rot90(b, k) for k in range(4)]
        assert any(np.array_equal(a, v) or np.array_equal(a, v[:, ::-1]) for v in views)
    jittered, _ = augment(rng, patches, jitter=0.3)
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert np.std(jittered.std(axis=(1, 2)) / patches.std(axis=(1, 2))) > 0.02


def test_training_refuses_what_it_cannot_learn_from(tmp_path, copper_normal, lattice_data):
    config = DefectTrainConfig(epochs=1, steps_per_epoch=1, batch_size=2)
    with pytest.raises(DatasetError, match="whole scans"):
        train_patch_classifier(copper_normal, tmp_path / "m.pt", config=config)
    with pytest.raises(DatasetError, match="no normal training image"):
        train_autoencoder(lattice_data, tmp_path / "m.pt", normal_label="7", config=config)
    with pytest.raises(SemtileError, match="balance"):
        DefectTrainConfig(balance="oversample")
    with pytest.raises(SemtileError, match=r"\.pt"):
        train_autoencoder(lattice_data, tmp_path / "m.onnx", config=config)
