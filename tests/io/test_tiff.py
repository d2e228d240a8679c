"""Tests for semtile.io.tiff: lazy TIFF opening, gray conversion, pages, broken files."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from semtile.errors import (
    ImageTooSmallError,
    SemtileError,
    UnreadableImageError,
    UnsupportedImageError,
)
from semtile.io.tiff import Scan, ScanInfo, open_scan

from scan_samples import VENDOR, need, synthetic_frame, texture


def _gray(path: Path, **kwargs) -> np.ndarray:
    with open_scan(path, **kwargs) as scan:
        return scan.gray().compute()


# --------------------------------------------------------------------------
# real files


def test_zeiss_multipage():
    path = need(VENDOR / "ZEISS_SEM_multipage.tif")
    with open_scan(path) as scan:
        assert scan.info.n_pages == 2
        assert scan.info.databar_rows == 0
        assert scan.info.pixel_size_m == pytest.approx(12.33e-9, rel=1e-6)
    with open_scan(path, page=1) as scan:
        assert scan.info.page == 1
        assert scan.info.frame_shape == (1536, 2048)
        assert scan.info.databar_rows == 0
        assert scan.gray()[:4, :4].compute().shape == (4, 4)
    with pytest.raises(UnsupportedImageError, match="2 page"):
        open_scan(path, page=2)


# --------------------------------------------------------------------------
# synthetic formats


def test_uint8(tmp_path):
    img = texture(50, 60)
    tifffile.imwrite(tmp_path / "a.tif", img)
    np.testing.assert_allclose(_gray(tmp_path / "a.tif", databar_rows=0), img / 255.0, atol=1e-6)


def test_uint16_and_int16(tmp_path):
    img = (texture(50, 60).astype(np.uint16) * 257) ^ 0x5A
    tifffile.imwrite(tmp_path / "a.tif", img)
    np.testing.assert_allclose(_gray(tmp_path / "a.tif", databar_rows=0), img / 65535.0, atol=1e-6)
    signed = np.array([[-5, 0, 100, 32767]] * 4, dtype=np.int16)
    tifffile.imwrite(tmp_path / "s.tif", signed)
    np.testing.assert_allclose(
        _gray(tmp_path / "s.tif", databar_rows=0), np.clip(signed, 0, None) / 32767.0, atol=1e-6
    )


def test_palette(tmp_path):
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    cmap = rng.integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap)
    lut = (0.299 * cmap[0] + 0.587 * cmap[1] + 0.114 * cmap[2]) / 65535.0
    with open_scan(tmp_path / "p.tif", databar_rows=0) as scan:
        assert scan.info.photometric == "PALETTE"
        np.testing.assert_allclose(scan.gray().compute(), lut[idx], atol=1e-6)


@pytest.mark.parametrize("layout", ["contig", "separate", "rgba"])
def test_rgb(tmp_path, layout):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    path = tmp_path / "c.tif"
    if layout == "contig":
        tifffile.imwrite(path, rgb, photometric="rgb")
    elif layout == "separate":
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        alpha = rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)
        tifffile.imwrite(path, np.concatenate([rgb, alpha], -1), photometric="rgb", extrasamples=["unassalpha"])
    with open_scan(path, databar_rows=0) as scan:
        assert scan.info.photometric == "RGB"
        assert scan.info.frame_shape == (40, 50)
        g = scan.gray()
        assert g.shape == (40, 50)
        np.testing.assert_allclose(g.compute(), expected, atol=1e-5)


def test_bigtiff_tiled_and_rowsperstrip_1(tmp_path):
    img = texture(130, 150)
    tifffile.imwrite(tmp_path / "big.tif", img, bigtiff=True)
    tifffile.imwrite(tmp_path / "tiled.tif", img, tile=(64, 64), compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", img, rowsperstrip=1)
    for name in ("big.tif", "tiled.tif", "strips.tif"):
        with open_scan(tmp_path / name, databar_rows=0) as scan:
            g = scan.gray()
            assert g.chunks[0][0] > 1  # bands of many rows even with 1-row strips
            np.testing.assert_allclose(g.compute(), img / 255.0, atol=1e-6)


def test_multipage(tmp_path):
    pages = np.stack([texture(30, 40, seed=s) for s in range(3)])
    tifffile.imwrite(tmp_path / "m.tif", pages, photometric="minisblack")
    with open_scan(tmp_path / "m.tif", page=2, databar_rows=0) as scan:
        assert scan.info.n_pages == 3 and scan.info.page == 2
        np.testing.assert_allclose(scan.gray().compute(), pages[2] / 255.0, atol=1e-6)
    with pytest.raises(UnsupportedImageError, match="m.tif"):
        open_scan(tmp_path / "m.tif", page=3)


def test_float32(tmp_path):
    img = np.random.default_rng(5).random((30, 40), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", img)
    np.testing.assert_allclose(_gray(tmp_path / "f.tif", databar_rows=0), img, atol=1e-6)
    wide = img * 1000.0 - 200.0  # outside [0, 1]: scaled by its own min/max
    tifffile.imwrite(tmp_path / "w.tif", wide)
    expected = (wide - wide.min()) / (wide.max() - wide.min())
    np.testing.assert_allclose(_gray(tmp_path / "w.tif", databar_rows=0), expected, atol=1e-5)


def test_miniswhite(tmp_path):
    img = texture(20, 30)
    tifffile.imwrite(tmp_path / "w.tif", img, photometric="miniswhite")
    np.testing.assert_allclose(_gray(tmp_path / "w.tif", databar_rows=0), 1.0 - img / 255.0, atol=1e-6)


def test_unsupported_layouts(tmp_path):
    rng = np.random.default_rng(6)
    vol = rng.integers(0, 256, (16, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack", volumetric=True, tile=(16, 16, 16))
    with pytest.raises(UnsupportedImageError, match=r"vol\.tif.*\(16, 64, 64\)"):
        open_scan(tmp_path / "vol.tif")
    two = rng.integers(0, 256, (20, 30, 2), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="minisblack", planarconfig="contig")
    with pytest.raises(UnsupportedImageError, match=r"two\.tif.*\(20, 30, 2\)"):
        open_scan(tmp_path / "two.tif")


# --------------------------------------------------------------------------
# broken files


def test_empty_file(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=r"empty\.tif.*empty file \(0 bytes\)"):
        open_scan(tmp_path / "empty.tif")


def test_text_file(tmp_path):
    (tmp_path / "notes.tif").write_text("this is not an image\n")
    with pytest.raises(UnreadableImageError, match=r"notes\.tif.*not a TIFF file"):
        open_scan(tmp_path / "notes.tif")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, texture(100, 120))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=r"cut\.tif.*truncated"):
        open_scan(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "stub.tif"
    path.write_bytes(b"II*\x00\x08\x00\x00\x00\x05")
    with pytest.raises(UnreadableImageError, match=r"stub\.tif"):
        open_scan(path)


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableImageError, match=r"nope\.tif.*not found"):
        open_scan(tmp_path / "nope.tif")


# --------------------------------------------------------------------------
# data bar option, laziness


def test_open_synthetic_scan(tmp_path):
    frame = synthetic_frame(rows=200, cols=300, bar=30)
    path = tmp_path / "syn.tif"
    tifffile.imwrite(path, frame, metadata={"pixel_size_m": 1e-07})
    with open_scan(path) as scan:
        info = scan.info
        assert isinstance(info, ScanInfo)
        assert info.databar_rows == 30 and info.databar_source == "detected"
        assert info.pixel_size_m == pytest.approx(1e-7) and info.pixel_size_source == "semtile"
        assert info.vendor is None
        assert info.valid_shape == (170, 300)
        np.testing.assert_allclose(scan.valid().compute(), frame[:170] / 255.0, atol=1e-6)
    with open_scan(path, databar_rows=10) as scan:
        assert scan.info.databar_rows == 10 and scan.info.databar_source == "option"
    with pytest.raises(ImageTooSmallError, match="syn.tif"):
        open_scan(path, databar_rows=200)
    with pytest.raises(SemtileError):
        open_scan(path, databar_rows=-1)


def test_gray_is_lazy(tmp_path):
    img = texture(300, 200)
    tifffile.imwrite(tmp_path / "l.tif", img, rowsperstrip=16)
    scan = open_scan(tmp_path / "l.tif", databar_rows=0)
    assert isinstance(scan, Scan)
    with scan:
        g = scan.gray()
        assert isinstance(g, da.Array)
        assert g.shape == (300, 200) and g.dtype == np.float32
        np.testing.assert_allclose(g[100:104, 10:20].compute(), img[100:104, 10:20] / 255.0, atol=1e-6)
