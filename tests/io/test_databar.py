"""Tests for semtile.io.databar: finding the data bar in the pixels alone."""

from __future__ import annotations

import csv

import numpy as np

from scan_samples import LUNG, need, synthetic_frame, texture
from semtile.io.databar import detect_databar
from semtile.io.tiff import open_scan


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
