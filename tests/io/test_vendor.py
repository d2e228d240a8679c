"""Tests for semtile.io.vendor: vendor, pixel size and data-bar height from FEI, Zeiss and semtile metadata."""

from __future__ import annotations

import csv

import dask.array as da
import numpy as np
import pytest
import tifffile

from semtile.io.databar import detect_databar
from semtile.io.tiff import open_scan
from semtile.io.vendor import fei_databar

from scan_samples import LUNG, VENDOR, need, texture


def test_lungcells_fei_files():
    labels = need(LUNG / "labels.csv")
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    checked_pixels: set[str] = set()
    for row in rows:
        with open_scan(LUNG / row["file"]) as scan:
            info = scan.info
            assert info.vendor == "FEI"
            assert info.dtype == row["dtype"]
            assert info.frame_shape == (1103, 1536)
            assert info.databar_rows == 79 and info.databar_source == "fei"
            assert info.valid_shape == (1024, 1536)
            assert info.pixel_size_source == "fei"
            assert info.pixel_size_m == pytest.approx(float(row["pixel_size_m"]), rel=1e-4)
            g = scan.gray()
            assert g.dtype == np.float32 and g.shape == (1103, 1536)
            assert scan.valid().shape == (1024, 1536)
            if info.dtype not in checked_pixels:  # decode one file per bit depth (keeps the test fast)
                checked_pixels.add(info.dtype)
                lo, hi = da.compute(g.min(), g.max())
                assert 0.0 <= lo < hi <= 1.0


def test_zeiss_1k_palette_detected_bar():
    with open_scan(need(VENDOR / "test_tiff_Zeiss_SEM_1k.tif")) as scan:
        info = scan.info
        assert info.vendor == "Zeiss"
        assert info.photometric == "PALETTE"
        assert info.frame_shape == (768, 1024)
        assert info.databar_rows == 77 and info.databar_source == "detected"
        assert info.pixel_size_m == pytest.approx(2.615e-6, rel=1e-6)
        assert info.pixel_size_source == "zeiss"
        g = scan.gray()
        assert float(g.min().compute()) >= 0.0 and float(g.max().compute()) <= 1.0


def test_fei_helios():
    path = need(VENDOR / "FEI-Helios-Ebeam-8bits.tif")
    with open_scan(path) as scan:
        assert scan.info.vendor == "FEI"
        assert scan.info.databar_rows == 29 and scan.info.databar_source == "fei"
        assert scan.info.pixel_size_m == pytest.approx(3.3724e-6, rel=1e-6)
        # the pixels agree with the metadata (the image above the bar is all black)
        assert detect_databar(scan.gray()[-118:].compute()) == 29


def test_plain_file_has_no_metadata(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", texture(64, 64))
    with open_scan(tmp_path / "plain.tif") as scan:
        assert scan.info.pixel_size_m is None and scan.info.pixel_size_source is None
        assert scan.info.databar_rows == 0


def test_fei_databar_from_metadata():
    assert fei_databar({"PrivateFei": {"DatabarHeight": 79}}, 1103) == 79
    # no usable DatabarHeight: the rows below Image.ResolutionY
    assert fei_databar({"PrivateFei": {"DatabarHeight": "x"}, "Image": {"ResolutionY": 1024}}, 1103) == 79
    assert fei_databar({"Image": {"ResolutionY": "1024"}}, 1103) == 79
    # nothing sensible said: None, so the caller falls back to detection
    assert fei_databar({}, 1103) is None
    assert fei_databar({"PrivateFei": {"DatabarHeight": 1103}}, 1103) is None
    assert fei_databar({"Image": {"ResolutionY": 1103}}, 1103) is None
    assert fei_databar({"Image": "garbled"}, 1103) is None
