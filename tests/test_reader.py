"""Tests for semtile.io.tiff: lazy TIFF opening, gray conversion, metadata, data bars."""

from __future__ import annotations

import csv
import hashlib
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
from semtile.io.tiff import (
    TIFF_SUFFIXES,
    Scan,
    ScanInfo,
    detect_databar,
    find_scans,
    open_scan,
    sha256_file,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LUNG = DATA / "lungcells-fei-sem"
VENDOR = DATA / "vendor-tiff-samples"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def _texture(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A noisy, textured uint8 image (smooth blobs plus noise), like SEM content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    smooth = 0.5 + 0.25 * np.sin(x / 7.0 + rng.uniform(0, 6)) * np.cos(y / 11.0 + rng.uniform(0, 6))
    img = smooth + rng.normal(0, 0.08, (rows, cols))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _synthetic_frame(rows: int = 200, cols: int = 300, bar: int = 30, seed: int = 0) -> np.ndarray:
    """Textured image with a data bar like semtile's generator writes."""
    frame = _texture(rows, cols, seed)
    top = rows - bar
    frame[top] = 255  # uniform bright line
    frame[top + 1 :] = 20  # dark bar body
    rng = np.random.default_rng(seed + 1)
    for _ in range(8):  # bright text-like blocks
        r = int(rng.integers(top + 4, rows - 8))
        c = int(rng.integers(0, cols - 20))
        frame[r : r + 6, c : c + int(rng.integers(4, 20))] = 230
    return frame


def _gray(path: Path, **kwargs) -> np.ndarray:
    with open_scan(path, **kwargs) as scan:
        return scan.gray().compute()


# --------------------------------------------------------------------------
# real files


def test_lungcells_fei_files():
    labels = _need(LUNG / "labels.csv")
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


def test_lungcells_bar_is_also_detected_in_pixels():
    labels = _need(LUNG / "labels.csv")
    with open(labels, newline="") as fh:
        first = next(csv.DictReader(fh))
    with open_scan(LUNG / first["file"]) as scan:
        band = scan.gray()[-276:].compute()
    assert detect_databar(band) == 79


def test_zeiss_1k_palette_detected_bar():
    with open_scan(_need(VENDOR / "test_tiff_Zeiss_SEM_1k.tif")) as scan:
        info = scan.info
        assert info.vendor == "Zeiss"
        assert info.photometric == "PALETTE"
        assert info.frame_shape == (768, 1024)
        assert info.databar_rows == 77 and info.databar_source == "detected"
        assert info.pixel_size_m == pytest.approx(2.615e-6, rel=1e-6)
        assert info.pixel_size_source == "zeiss"
        g = scan.gray()
        assert float(g.min().compute()) >= 0.0 and float(g.max().compute()) <= 1.0


def test_zeiss_multipage():
    path = _need(VENDOR / "ZEISS_SEM_multipage.tif")
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


def test_fei_helios():
    path = _need(VENDOR / "FEI-Helios-Ebeam-8bits.tif")
    with open_scan(path) as scan:
        assert scan.info.vendor == "FEI"
        assert scan.info.databar_rows == 29 and scan.info.databar_source == "fei"
        assert scan.info.pixel_size_m == pytest.approx(3.3724e-6, rel=1e-6)
        # the pixels agree with the metadata (the image above the bar is all black)
        assert detect_databar(scan.gray()[-118:].compute()) == 29


# --------------------------------------------------------------------------
# synthetic formats


def test_uint8(tmp_path):
    img = _texture(50, 60)
    tifffile.imwrite(tmp_path / "a.tif", img)
    np.testing.assert_allclose(_gray(tmp_path / "a.tif", databar_rows=0), img / 255.0, atol=1e-6)


def test_uint16_and_int16(tmp_path):
    img = (_texture(50, 60).astype(np.uint16) * 257) ^ 0x5A
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
    img = _texture(130, 150)
    tifffile.imwrite(tmp_path / "big.tif", img, bigtiff=True)
    tifffile.imwrite(tmp_path / "tiled.tif", img, tile=(64, 64), compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", img, rowsperstrip=1)
    for name in ("big.tif", "tiled.tif", "strips.tif"):
        with open_scan(tmp_path / name, databar_rows=0) as scan:
            g = scan.gray()
            assert g.chunks[0][0] > 1  # bands of many rows even with 1-row strips
            np.testing.assert_allclose(g.compute(), img / 255.0, atol=1e-6)


def test_multipage(tmp_path):
    pages = np.stack([_texture(30, 40, seed=s) for s in range(3)])
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
    img = _texture(20, 30)
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
    tifffile.imwrite(path, _texture(100, 120))
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
# data bar and metadata


def test_detect_synthetic_bar():
    frame = _synthetic_frame(bar=30)
    band = frame[-50:]
    assert detect_databar(band) == 30
    assert detect_databar(band.astype(np.float32) / 255) == 30
    assert detect_databar(band.astype(np.uint16) * 257) == 30


def test_detect_no_false_positives():
    img = _texture(200, 300, seed=7)
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


def test_open_synthetic_scan(tmp_path):
    frame = _synthetic_frame(rows=200, cols=300, bar=30)
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


def test_plain_file_has_no_metadata(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", _texture(64, 64))
    with open_scan(tmp_path / "plain.tif") as scan:
        assert scan.info.pixel_size_m is None and scan.info.pixel_size_source is None
        assert scan.info.databar_rows == 0


# --------------------------------------------------------------------------
# laziness, files, hashing


def test_gray_is_lazy(tmp_path):
    img = _texture(300, 200)
    tifffile.imwrite(tmp_path / "l.tif", img, rowsperstrip=16)
    scan = open_scan(tmp_path / "l.tif", databar_rows=0)
    assert isinstance(scan, Scan)
    with scan:
        g = scan.gray()
        assert isinstance(g, da.Array)
        assert g.shape == (300, 200) and g.dtype == np.float32
        np.testing.assert_allclose(g[100:104, 10:20].compute(), img[100:104, 10:20] / 255.0, atol=1e-6)


def test_find_scans(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.tif").write_bytes(b"x")
    (tmp_path / "a" / "b" / "two.TIFF").write_bytes(b"x")
    (tmp_path / "a" / "b" / "notes.txt").write_text("x")
    (tmp_path / "a" / "b" / "img.png").write_bytes(b"x")
    (tmp_path / "a" / "._one.tif").write_bytes(b"x")  # macOS resource fork
    odd = tmp_path / "explicit.dat"
    odd.write_bytes(b"x")
    found = find_scans([tmp_path / "a", tmp_path / "a" / "one.tif", str(odd)])
    assert {p.name for p in found} == {"one.tif", "two.TIFF", "explicit.dat"}
    assert found == sorted(found) and all(p.is_absolute() for p in found)
    assert ".tif" in TIFF_SUFFIXES
    with pytest.raises(SemtileError, match="missing"):
        find_scans([tmp_path / "missing"])


def test_sha256_file(tmp_path):
    data = np.random.default_rng(8).bytes(3 * 2**20 + 17)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
