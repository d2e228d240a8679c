"""The label rules shared by process and search, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.inference.labels import class_probs, core_weights, decide_label
from semtile.inference.split import TileGrid


def test_class_probs_is_the_weighted_product_of_experts():
    # Two tiles: one sure of label 0, one spread over 2..3; the combination is a distribution.
    p1, p2 = np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.4, 0.4])
    logits = np.log(np.stack([p1, p2])) + np.array([[3.0], [-1.0]])  # any shift per tile: same probabilities
    probs = class_probs(logits, np.array([1.0, 3.0]))
    expected = np.exp((np.log(p1) + 3 * np.log(p2)) / 4)
    np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-6)
    assert probs.dtype == np.float32 and probs.sum() == pytest.approx(1.0)


def test_decide_label_median_for_ordered_argmax_for_text():
    ordered = np.array([0.3, 0.15, 0.15, 0.4], dtype=np.float32)
    assert decide_label(ordered, [0, 1, 2, 3]) == (2, "median")  # cumulative 0.3, 0.45, 0.6, 1.0
    assert decide_label(ordered, ["a", "b", "c", "d"]) == ("d", "argmax")


def test_core_weights_count_the_real_pixels_of_each_core():
    grid = TileGrid((100, 70), 64, 8)  # core 48: cores of 48 and 52/22 rows, 48 and 22 columns
    weights = core_weights(grid).reshape(grid.n_rows, grid.n_cols)
    rows = np.diff(np.minimum(np.arange(grid.n_rows + 1) * 48, 100))
    cols = np.diff(np.minimum(np.arange(grid.n_cols + 1) * 48, 70))
    np.testing.assert_allclose(weights, np.outer(rows, cols) / 48**2)
