"""Whole-scan anomaly maps through the tiled path, anomaly fractions, thresholds, whole-scan patch classification."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.defects.anomaly import anomaly_map, calibrate_threshold, patch_maps, pool_maps
from semtile.defects.classify import classify_scan
from semtile.defects.data import load_defect_data
from semtile.defects.scores import map_scores
from semtile.errors import SemtileError
from semtile.models.io import load_model
from semtile.models.kinds import DEFECT_KINDS
from semtile.synth.lattice import synth_lattice


def test_calibrated_threshold_keeps_the_false_positive_rate():
    rng = np.random.default_rng(0)
    normal = [rng.gamma(2.0, size=(100, 120)) for _ in range(5)]
    t = calibrate_threshold(normal, 0.01)
    share = np.mean(np.concatenate([m.ravel() for m in normal]) > t)
    assert 0.009 <= share <= 0.01
    assert calibrate_threshold(np.arange(1000.0), 0.1) == 900.0  # scores work the same
    for bad, message in ((1.0, "false-positive rate"), (0.0, "false-positive rate")):
        with pytest.raises(SemtileError, match=message):
            calibrate_threshold(normal, bad)
    with pytest.raises(SemtileError, match="no normal values"):
        calibrate_threshold([], 0.01)
    with pytest.raises(SemtileError, match="finite"):
        calibrate_threshold(np.array([1.0, np.nan]), 0.01)


def test_copper_anomaly_map_finds_defects_a_normal_model_never_saw(copper_autoencoder, copper_defects, copper_normal):
    model = load_model(copper_autoencoder, expect=DEFECT_KINDS)
    assert model.arch.normalise == "fixed" and model.tile == 128
    defects = load_defect_data(copper_defects)
    maps, fractions = zip(*(anomaly_map(image, model) for image in defects.images))
    assert all(m.shape == image.shape and m.dtype == np.float32 for m, image in zip(maps, defects.images))
    scores = map_scores(list(maps), defects.masks)
    assert scores["pixel_auroc"] > 0.8, scores
    # The anomaly fraction uses the card's threshold, calibrated on normal scans at FPR 0.001.
    normal = load_defect_data(copper_normal)
    normal_fractions = [anomaly_map(image, model)[1] for image in normal.images[:2]]
    assert np.mean(fractions) > 2 * np.mean(normal_fractions)
    assert anomaly_map(defects.images[0], model, threshold=np.inf)[1] == 0.0


def test_patch_maps_pool_and_refuse_the_wrong_model(lattice_autoencoder, patch_classifier):
    model = load_model(lattice_autoencoder, expect=DEFECT_KINDS)
    patches = np.random.default_rng(0).random((3, 48, 48)).astype(np.float32)
    maps = patch_maps(patches, model)
    assert maps.shape == (3, 48, 48)
    assert np.allclose(pool_maps(maps, "max"), maps.max(axis=(1, 2)))
    with pytest.raises(SemtileError, match="no anomaly map"):
        anomaly_map(patches[0], load_model(patch_classifier, expect=DEFECT_KINDS))
    with pytest.raises(SemtileError, match="2-D"):
        anomaly_map(patches, model)
    with pytest.raises(SemtileError, match="multiple of 8"):
        anomaly_map(patches[0], model, tile=60)


def test_whole_lattice_scan_is_classified_patch_by_patch(patch_classifier):
    model = load_model(patch_classifier, expect=DEFECT_KINDS)
    rng = np.random.default_rng(11)
    # one defect in the middle of patch (1, 2) of a 3 x 4 grid of 48-pixel patches
    image, mask, _ = synth_lattice(rng, (144, 192), [("adatom", (72.0, 120.0))])
    result = classify_scan(image.astype(np.float32) / 255.0, model)
    assert result["probability"].shape == (3, 4) and result["boxes"].shape == (12, 4)
    probability = result["probability"]
    assert np.unravel_index(np.argmax(probability), probability.shape) == (1, 2), probability


def test_threshold_calibrated_on_your_own_normal_scans_goes_into_the_card(copper_autoencoder, copper_normal,
                                                                          tmp_path):
    import shutil

    from semtile.defects.anomaly import calibrate_model

    path = tmp_path / "cu.pt"
    shutil.copyfile(copper_autoencoder, path)
    shutil.copyfile(copper_autoencoder.with_suffix(".json"), path.with_suffix(".json"))
    images = load_defect_data(copper_normal).images[:2]
    threshold = calibrate_model(path, images, 0.01, note="two scans")
    model = load_model(path, expect=DEFECT_KINDS)  # the sha256 of the weights still holds
    assert model.threshold == threshold["value"] and model.card["threshold"]["note"] == "two scans"
    share = np.mean(np.concatenate([anomaly_map(image, model)[0].ravel() for image in images]) > model.threshold)
    assert 0.005 <= share <= 0.01
