"""Heat map -> mask (003's Algorithm 2, Otsu) and centre-biased selection (003's Algorithm 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semtile.explain.masks import (
    candidate_masks,
    centre_biased_mask,
    heat_to_mask,
    largest_component,
    normalise_by_max,
    otsu_mask,
)


def test_algorithm_2_normalises_by_the_whole_maximum_and_keeps_values_above_tau():
    heat = np.array([[0.0, 2.0], [4.0, 1.0]])
    assert normalise_by_max(heat).tolist() == [[0.0, 0.5], [1.0, 0.25]]
    assert heat_to_mask(heat, 0.5).tolist() == [[False, False], [True, False]]  # strictly above tau
    assert heat_to_mask(heat, 0.2).tolist() == [[False, True], [True, True]]
    assert not heat_to_mask(-np.ones((2, 2)), 0.0).any()  # no positive value: empty mask
    with pytest.raises(ValueError):
        heat_to_mask(heat, 1.5)


def test_otsu_separates_two_levels():
    heat = np.zeros((4, 4))
    heat[:, 2:] = 3.0
    heat[0, 0] = 0.2
    assert otsu_mask(heat).tolist() == (heat > 1.0).tolist()
    assert not otsu_mask(np.ones((3, 3))).any()


def _case():
    """5x5 candidates (centre (2, 2), diagonal sqrt(50)):

    M0 rows 0-1 x cols 0-1: A = 4, centroid (0.5, 0.5), d = 1.5 sqrt(2) / sqrt(50) = 0.3
    M1 cols 1-2, all rows:  A = 10, centroid (2, 1.5), d = 0.5 / sqrt(50)
    M2 the centre pixel:    A = 1 <= beta H W = 0.1 * 25 = 2.5: not eligible
    M3 rows 0-3 x cols 2-4: A = 12, centroid (1.5, 3), d = sqrt(1.25) / sqrt(50)
    """
    m = [np.zeros((5, 5), bool) for _ in range(4)]
    m[0][0:2, 0:2] = True
    m[1][:, 1:3] = True
    m[2][2, 2] = True
    m[3][0:4, 2:5] = True
    return m


def test_centre_biased_selection_matches_the_hand_computed_case():
    candidates = _case()
    choice = centre_biased_mask(candidates, alpha=2.0, beta=0.1)
    # S = A (1 - d)^2: M0 4 * 0.7^2 = 1.96; M1 10 (1 - 0.5/sqrt 50)^2 = 8.6358; M3 12 (1 - sqrt(1.25)/sqrt 50)^2 = 8.5053
    expected = [4 * 0.7**2, 10 * (1 - 0.5 / math.sqrt(50)) ** 2, float("nan"), 12 * (1 - math.sqrt(1.25) / math.sqrt(50)) ** 2]
    assert choice.areas.tolist() == [4, 10, 1, 12]
    np.testing.assert_allclose(choice.scores, expected, rtol=1e-12)
    assert choice.index == 1
    # 1 - M1 is column 0 (5 pixels) and columns 3-4 (10 pixels): the largest component is columns 3-4.
    want = np.zeros((5, 5), bool)
    want[:, 3:5] = True
    assert np.array_equal(choice.mask, want)


def test_without_centre_bias_the_largest_candidate_wins():
    choice = centre_biased_mask(_case(), alpha=0.0, beta=0.1)
    assert choice.index == 3
    # 1 - M3: columns 0-1 (10 pixels) joined through row 4 to columns 2-4 of row 4: one component of 13.
    assert np.array_equal(choice.mask, ~_case()[3])
    assert choice.mask.sum() == 13


def test_no_large_enough_candidate_gives_none():
    choice = centre_biased_mask(_case(), alpha=1.0, beta=0.6)
    assert choice.mask is None and choice.index is None


def test_largest_component_is_4_connected():
    m = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)  # the corner pixel touches only diagonally
    assert largest_component(m).tolist() == [[False, False, False], [False, True, True], [False, False, False]]


def test_candidates_from_thresholded_maps_and_slic(tiny_dataset):
    from semtile.explain.propose import read_gray, read_truth_mask

    path = sorted((tiny_dataset / "images").glob("*.tif"))[2]
    image, frame = read_gray(path)
    heat = read_truth_mask(tiny_dataset / "masks" / path.name, image.shape).astype(np.float32)
    candidates, origin = candidate_masks(image, [heat], taus=(0.5,), slic_segments=4)
    assert {"slic", "heat 0 > 0.5"} <= set(origin)
    assert all(c.shape == image.shape and c.any() for c in candidates)
    assert centre_biased_mask(candidates, alpha=1.0, beta=0.01).mask is not None
