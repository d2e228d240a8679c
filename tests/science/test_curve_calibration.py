"""Calibrating a learned curve's decision threshold on its pinned ends, and reading g out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semtile.science.curve_calibration import LOGIT_EDGES, logit_counts, pinned_threshold, read_out_curve


def _counts(logits: np.ndarray) -> np.ndarray:
    """Histogram of one set of logits, laid out as :func:`logit_counts` lays it out."""
    return np.bincount(np.searchsorted(LOGIT_EDGES, logits, side="right"), minlength=len(LOGIT_EDGES) + 1)


def _uniform(lo: float, hi: float, n: int = 20000) -> np.ndarray:
    return np.linspace(lo, hi, n, endpoint=False)


def test_interior_ends_fix_the_threshold():
    # Label 0: logits uniform on [-1, 19], 0.9 above 1. Last label: uniform on [-14, 6], 0.2 above 2.
    pooled = np.stack([_counts(_uniform(-1, 19)), _counts(_uniform(-5, 5)), _counts(_uniform(-14, 6))])
    threshold, used = pinned_threshold(pooled, (0.9, 0.2))
    # The two ends' errors cancel: (19 - x)/20 - 0.9 + (6 - x)/20 - 0.2 = 0 at x = 1.5.
    assert threshold == pytest.approx(1.5, abs=0.03) and used == (0, 2)
    # One interior end alone fixes it exactly.
    assert pinned_threshold(pooled, (1.0, 0.2)) == (pytest.approx(2.0, abs=0.03), (2,))
    assert pinned_threshold(pooled, (0.9, 0.0)) == (pytest.approx(1.0, abs=0.03), (0,))


def test_pure_ends_leave_the_trained_boundary():
    pooled = np.stack([_counts(_uniform(-3, 30)), _counts(_uniform(-30, 3))])
    assert pinned_threshold(pooled, (1.0, 0.0)) == (0.0, ())


def test_readout_is_calibrated_monotone_and_pinned():
    # Four labels, two images each except label 2, which has none.
    images = [_uniform(-1, 19), _uniform(-1, 19),  # label 0: 0.9 above 1
              _uniform(-5, 5), _uniform(-7, 3),  # label 1: 0.4 and 0.2 above 1
              _uniform(-14, 6), _uniform(-14, 6)]  # label 3: 0.25 above 1
    counts = np.stack([_counts(v) for v in images])
    labels = np.array([0, 0, 1, 1, 3, 3])
    readout = read_out_curve(counts, labels, 4, (0.9, 0.25), fallback=np.array([0.9, 0.7, 0.5, 0.25]))
    assert readout.threshold == pytest.approx(1.0, abs=0.03)
    assert readout.raw[1] == pytest.approx(0.3, abs=0.01) and np.isnan(readout.raw[2])
    g = readout.g
    assert g[0] == 0.9 and g[-1] == 0.25 and (np.diff(g) <= 0).all()
    # Label 2 had no images: the fitted curve's 0.5 stands in, without weight, so the
    # isotonic fit pools it down to label 1's measured 0.3.
    assert g[1] == pytest.approx(0.3, abs=0.01) and g[2] == pytest.approx(g[1])


def test_logit_counts_histograms_every_pixel():
    class Ramp(torch.nn.Module):
        def forward(self, x):
            return x * 20 - 10  # logits from -10 to 10

    image = np.tile(np.linspace(0, 1, 64, endpoint=False, dtype=np.float32), (30, 1))
    counts = logit_counts(Ramp(), [image], multiple=4)
    assert counts.shape == (1, len(LOGIT_EDGES) + 1) and counts.sum() == 28 * 64  # rows cropped to a multiple of 4
    above_zero = counts[0, np.searchsorted(LOGIT_EDGES, 0.0, side="right"):].sum()
    assert above_zero == 28 * 32


def test_learned_segmenter_is_calibrated_on_interior_ends(tiny_dataset, tmp_path):
    from semtile.models.io import load_model
    from semtile.models.networks import Architecture
    from semtile.science.training import TrainConfig, load_training_data, train_segmenter

    config = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=2, crop=32, seed=5)
    data = load_training_data(tiny_dataset, config)
    path = train_segmenter(data, tmp_path / "l.pt", hypothesis="learned", g_range=(0.9, 0.2),
                           arch=Architecture("segmenter", c=4, d=2, n=1, N=1), config=config)
    training = json.loads(path.with_suffix(".json").read_text())["training"]
    calibration = training["calibration"]
    assert calibration["ends_used"] == [0, 3] and len(calibration["g_fitted"]) == 4
    assert training["g"][0] == pytest.approx(0.9) and training["g"][-1] == pytest.approx(0.2)
    # The threshold is folded into the saved network: calibrating it again finds nothing to move.
    model = load_model(path, "segmenter")
    labels = np.array(data.label_index())[data.split["train"]]
    counts = logit_counts(model.network, [data.images[i] for i in data.split["train"]], model.arch.multiple)
    pooled = np.stack([counts[labels == k].sum(axis=0) for k in range(4)])
    assert calibration["threshold_logit"] != pytest.approx(0.0, abs=0.1)
    assert pinned_threshold(pooled, (0.9, 0.2))[0] == pytest.approx(0.0, abs=0.05)
