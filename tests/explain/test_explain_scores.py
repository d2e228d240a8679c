"""Scores of masks against true masks, by hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semtile.explain.scores import Summary, binary_scores, choose_tau, counts, format_table, summarise, validation_split


def test_scores_match_a_hand_computed_case():
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 0]])
    c = counts(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 4)
    s = binary_scores(pred, truth)
    assert s["accuracy"] == 6 / 8
    assert s["precision"] == 2 / 3
    assert s["recall"] == 2 / 3
    assert s["dice"] == 4 / 6  # 2 tp / (2 tp + fp + fn)
    assert s["iou"] == 2 / 4  # tp / (tp + fp + fn)


def test_undefined_scores_are_nan_and_skipped_by_the_summary():
    empty = np.zeros((2, 2), bool)
    some = np.array([[1, 0], [0, 0]], bool)
    s = binary_scores(some, empty)  # empty truth: recall, Dice, IoU undefined
    assert s["accuracy"] == 0.75 and s["precision"] == 0.0
    assert all(math.isnan(s[k]) for k in ("recall", "dice", "iou"))
    assert math.isnan(binary_scores(empty, some)["precision"])  # nothing predicted
    summary = summarise([0.5, float("nan"), 1.0])
    assert summary == Summary(0.75, 0.25, 2)
    assert str(summary) == "0.750 ± 0.250"
    assert str(summarise([float("nan")])) == "-"


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_validation_split_is_deterministic_disjoint_and_stable():
    names = [f"img{i:03d}" for i in range(40)]
    val, test = validation_split(names, 0.25, seed=3)
    assert sorted(val + test) == names and not set(val) & set(test)
    assert (val, test) == validation_split(list(reversed(names)), 0.25, seed=3)
    sub_val, _ = validation_split(names[:20], 0.25, seed=3)  # a name's side does not depend on the others
    assert set(sub_val) == set(val) & set(names[:20])
    assert validation_split(names, 0.25, seed=4)[0] != val
    assert 4 <= len(val) <= 16
    v, t = validation_split(["a", "b"], 0.01)
    assert len(v) == 1 and len(t) == 1


def test_choose_tau_takes_the_best_mean_and_the_smaller_tau_on_ties():
    table = {0.1: [0.2, 0.4], 0.2: [0.6, float("nan")], 0.3: [0.5, 0.7], 0.4: [0.6, 0.6]}
    assert choose_tau(lambda t: table[t], (0.1, 0.2, 0.3, 0.4)) == (0.2, 0.6)
    with pytest.raises(ValueError, match="no threshold"):
        choose_tau(lambda t: [float("nan")], (0.5,))


def test_table_has_the_form_of_003():
    row = {"method": "Grad-CAM", "accuracy": Summary(0.907, 0.075, 3), "precision": Summary(0.164, 0.138, 3),
           "recall": Summary(0.851, 0.295, 3), "dice": Summary(0.254, 0.154, 3), "iou": Summary(0.156, 0.118, 3),
           "tau": 0.5}
    lines = format_table([row]).splitlines()
    assert lines[0] == "| Method | Accuracy | Precision | Recall | Dice | IoU | τ |"
    assert lines[2] == "| Grad-CAM | 0.907 ± 0.075 | 0.164 ± 0.138 | 0.851 ± 0.295 | 0.254 ± 0.154 | 0.156 ± 0.118 | 0.50 |"
