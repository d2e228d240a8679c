"""Patch AUC-ROC and AP, pixel AUROC, PRO (MVTec AD) and the ROC figure."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from semtile.defects.scores import map_scores, patch_scores, pixel_auroc, pro_score, roc_figure
from semtile.errors import SemtileError


def test_patch_scores_are_sklearns_and_ap_of_chance_is_the_prevalence():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.02).astype(int)
    s = rng.random(2000) + y * rng.random(2000)
    got = patch_scores(y, s)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s)) and got["ap"] == pytest.approx(average_precision_score(y, s))
    assert got["positives"] == y.sum() and got["prevalence"] == pytest.approx(y.mean())
    assert patch_scores(y, y * 1.0)["auroc"] == 1.0 and patch_scores(y, -y * 1.0)["auroc"] == 0.0
    constant = patch_scores(y, np.zeros(2000))
    assert constant["auroc"] == 0.5 and constant["ap"] == pytest.approx(y.mean())


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "both normal"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "0 \\(normal\\) or 1"),
    ([0, 1], [0.1, np.nan], "finite"),
    ([0, 1], [0.1], "1 scores for 2 labels"),
])
def test_patch_scores_refuse_bad_input_with_a_reason(labels, scores, message):
    with pytest.raises(SemtileError, match=message):
        patch_scores(labels, scores)


def _two_regions():
    mask = np.zeros((64, 64), bool)
    mask[5:25, 5:25] = True  # a large region (400 pixels)
    mask[50:52, 50:52] = True  # a small one (4 pixels)
    return mask


def test_pro_weighs_regions_equally_where_pixel_auroc_weighs_pixels():
    mask = _two_regions()
    perfect = mask.astype(float)
    assert pixel_auroc([perfect], [mask]) == 1.0 and pro_score([perfect], [mask]) == pytest.approx(1.0, abs=1e-3)
    big_only = np.random.default_rng(0).uniform(0.1, 0.5, size=(64, 64))
    big_only[5:25, 5:25] = 1.0  # finds the large region...
    big_only[50:52, 50:52] = 0.0  # ...and misses the small one
    assert pixel_auroc([big_only], [mask]) > 0.98
    assert pro_score([big_only], [mask]) == pytest.approx(0.5, abs=0.02)


def test_pro_of_a_random_map_is_half_the_fpr_limit():
    rng = np.random.default_rng(1)
    masks = [rng.random((128, 128)) < 0.05 for _ in range(3)]
    maps = [rng.random((128, 128)) for _ in range(3)]
    assert pro_score(maps, masks, max_fpr=0.3) == pytest.approx(0.15, abs=0.02)
    assert pixel_auroc(maps, masks) == pytest.approx(0.5, abs=0.03)
    summary = map_scores(maps, masks)
    assert summary["images"] == 3 and 0.04 < summary["defect_share"] < 0.06


def test_map_scores_refuse_mismatched_or_empty_input():
    with pytest.raises(SemtileError, match="same 2-D shape"):
        pixel_auroc([np.zeros((4, 4))], [np.zeros((4, 5), bool)])
    with pytest.raises(SemtileError, match="no defect region"):
        pro_score([np.zeros((4, 4))], [np.zeros((4, 4), bool)])
    with pytest.raises(SemtileError, match="max_fpr"):
        pro_score([np.zeros((4, 4))], [np.ones((4, 4), bool)], max_fpr=0)


def test_roc_figure_is_a_png(tmp_path):
    y = np.array([0, 0, 1, 1, 0, 1])
    path = roc_figure({"a": (y, np.arange(6.0)), "b": (y, y * 1.0)}, tmp_path / "roc.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
