"""Tests for semtile.io.databar: finding the data bar in the pixels alone."""

from __future__ import annotations

import csv

import numpy as np

from semtile.io.databar import detect_databar, detect_databar_blocks
from semtile.io.tiff import open_scan

from scan_samples import LUNG, need, synthetic_frame, texture


def test_detect_synthetic_bar():
    frame = synthetic_frame(bar=30)
    band = frame[-50:]
    assert detect_databar(band) == 30
    assert detect_databar(band.astype(np.float32) / 255) == 30
    assert detect_databar(band.astype(np.uint16) * 257) == 30


def test_detect_no_false_positives():
    img = texture(200, 300, seed=7)
    assert detect_databar(img[-50:]) == 0
    saturated = img.copy()
    saturated[170:] = 0  # flat black region at the bottom is not a bar
    assert detect_databar(saturated[-50:]) == 0
    saturated[170:] = 255
    assert detect_databar(saturated[-50:]) == 0
    assert detect_databar(np.zeros((50, 300), np.uint8)) == 0
    line = img.copy()
    line[185] = 255  # a lone bright line over ordinary content is not a bar
    assert detect_databar(line[-50:]) == 0


def test_lungcells_bar_is_also_detected_in_pixels():
    labels = need(LUNG / "labels.csv")
    with open(labels, newline="") as fh:
        first = next(csv.DictReader(fh))
    with open_scan(LUNG / first["file"]) as scan:
        band = scan.gray()[-276:].compute()
    assert detect_databar(band) == 79


def test_blocks_bottom_up_give_the_same_answer():
    """detect_databar_blocks (what open_scan streams through) agrees with the whole-band search."""
    import semtile.io.databar as databar

    rng = np.random.default_rng(5)
    for trial in range(300):
        rows, cols = int(rng.integers(4, 50)), int(rng.integers(1, 30))
        band = np.full((rows, cols), rng.integers(0, 256), np.uint8)
        for r in range(rows):  # uniform rows of a few levels between rows of content
            pick = rng.random()
            band[r] = rng.integers(0, 256, cols) if pick < 0.3 else (255 if pick < 0.5 else 0 if pick < 0.7 else band[r])
        whole = detect_databar(band)
        cuts = sorted({0, rows, *rng.integers(1, rows, 3).tolist()})
        blocks = [band[a:b] for a, b in zip(cuts, cuts[1:])][::-1]
        assert detect_databar_blocks(blocks, rows) == whole, trial
    frame = synthetic_frame(200, 300, bar=30)[-50:]
    old_rows = databar._PIECE_ROWS
    try:
        databar._PIECE_ROWS = 3  # pieces smaller than the bar itself
        assert detect_databar_blocks([frame[40:], frame[:40]], 50) == detect_databar(frame) == 30
    finally:
        databar._PIECE_ROWS = old_rows
    assert detect_databar_blocks(iter(()), 3) == 0  # too short for a bar: nothing is read


def test_eight_bit_bands_take_their_own_bins_and_agree_with_the_float_search():
    """8-bit samples are histogrammed as they are (no float copy); the answer is the search's on x / 255."""
    from semtile.kernels.histogram import row_histograms_u8

    rng = np.random.default_rng(11)
    band = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    oracle = np.stack([np.bincount(row, minlength=256) for row in band])
    np.testing.assert_array_equal(row_histograms_u8(band), oracle)
    assert row_histograms_u8(band[:0]).shape == (0, 256)
    for trial in range(300):
        rows, cols = int(rng.integers(4, 60)), int(rng.integers(1, 40))
        band = np.full((rows, cols), rng.integers(0, 256), np.uint8)
        for r in range(rows):
            pick = rng.random()
            band[r] = rng.integers(0, 256, cols) if pick < 0.3 else (255 if pick < 0.5 else 0 if pick < 0.7 else band[r])
        noisy = band.copy()
        noisy[rng.random(band.shape) < 0.02] = rng.integers(0, 256)  # near-uniform rows on either side of 97 %
        for b in (band, noisy):  # x / 255, and x * (1 / 255) as the scan's gray conversion computes it
            assert detect_databar(b) == detect_databar(b.astype(np.float32) / np.float32(255)), trial
            assert detect_databar(b) == detect_databar(b.astype(np.float32) * np.float32(1 / 255)), trial
    frame = synthetic_frame(bar=30)[-50:]
    assert detect_databar(frame) == detect_databar(frame.astype(np.float32) / 255) == 30


def test_suffix_sums_are_the_sums_to_the_bottom():
    from semtile.kernels.histogram import suffix_sums

    rng = np.random.default_rng(12)
    hist = rng.integers(0, 50, (23, 256)).astype(np.int64)
    below = rng.integers(0, 50, 256).astype(np.int64)
    np.testing.assert_array_equal(suffix_sums(hist, below), np.cumsum(hist[::-1], axis=0)[::-1] + below)
    assert suffix_sums(hist[:0], below).shape == (0, 256)
