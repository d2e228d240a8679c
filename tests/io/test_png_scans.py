"""PNG and JPEG inputs: the same Scan as a TIFF, clear errors naming the file, real files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from semtile.errors import UnreadableImageError, UnsupportedImageError
from semtile.io.discover import discover_scans
from semtile.io.guards import ImageTooLargeError
from semtile.io.png import read_mask, sniff_format
from semtile.io.tiff import open_scan

from shared_paths import shared_data


def _gray(path, **kw):
    with open_scan(path, databar_rows=0, **kw) as scan:
        return scan, np.asarray(scan.valid().compute())


@pytest.fixture
def pixels():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(40, 56), dtype=np.uint8)


def test_png_reads_like_the_same_tiff(tmp_path, pixels):
    Image.fromarray(pixels).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    scan, png = _gray(tmp_path / "a.png")
    _, tif = _gray(tmp_path / "a.tif")
    assert png.dtype == np.float32 and png.shape == (40, 56)
    np.testing.assert_array_equal(png, tif)
    assert scan.info.dtype == "uint8" and scan.info.pixel_size_m is None and scan.info.n_pages == 1


def test_png_16_bit_rgb_palette_and_gray_alpha(tmp_path, pixels):
    wide = (pixels.astype(np.uint16) * 257)
    Image.fromarray(wide).save(tmp_path / "w.png")  # 16-bit gray
    _, g16 = _gray(tmp_path / "w.png")
    np.testing.assert_allclose(g16, pixels / 255.0, atol=1e-6)

    rgb = np.stack([pixels, pixels, pixels], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    _, grgb = _gray(tmp_path / "c.png")
    np.testing.assert_allclose(grgb, pixels / 255.0, atol=1e-5)

    Image.fromarray(pixels).convert("LA").save(tmp_path / "la.png")  # gray + alpha, as in axondeepseg
    scan, gla = _gray(tmp_path / "la.png")
    np.testing.assert_allclose(gla, pixels / 255.0, atol=1e-6)

    pal = Image.fromarray(pixels).convert("P")
    pal.save(tmp_path / "p.png")
    scan, gp = _gray(tmp_path / "p.png")
    assert scan.info.photometric == "PALETTE"
    expected = np.asarray(pal.convert("RGB")).astype(np.float64) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(gp, expected, atol=1e-5)


def test_jpeg_by_its_bytes_whatever_its_name(tmp_path, pixels):
    Image.fromarray(pixels).save(tmp_path / "scan.jpg", quality=95)
    (tmp_path / "scan.jpg").rename(tmp_path / "scan.dat")
    assert sniff_format(tmp_path / "scan.dat") == "jpeg"
    _, g = _gray(tmp_path / "scan.dat")
    assert g.shape == pixels.shape and np.abs(g - pixels / 255.0).mean() < 0.02


def test_databar_detected_in_a_png(tmp_path):
    from scan_samples import synthetic_frame

    frame = synthetic_frame(200, 300, bar=30)
    Image.fromarray(frame).save(tmp_path / "bar.png")
    tifffile.imwrite(tmp_path / "bar.tif", frame)
    with open_scan(tmp_path / "bar.png") as png, open_scan(tmp_path / "bar.tif") as tif:
        assert png.info.databar_source == "detected" and png.info.databar_rows == tif.info.databar_rows > 0
        np.testing.assert_array_equal(png.valid().compute(), tif.valid().compute())


def test_bad_pngs_name_the_file(tmp_path, pixels):
    Image.fromarray(pixels).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="cut.png.*cannot decode"):
        _gray(tmp_path / "cut.png")
    (tmp_path / "junk.png").write_bytes(data[:8] + b"\x00" * 40)
    with pytest.raises(UnreadableImageError, match="junk.png"):
        _gray(tmp_path / "junk.png")
    with pytest.raises(UnsupportedImageError, match="ok.png.*page 1"):
        open_scan(tmp_path / "ok.png", page=1)


def test_png_header_over_the_budget_is_refused_before_decoding(tmp_path):
    # A valid IHDR claiming 100000 x 100000 pixels, with almost no data: refused from the header.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                                        + chunk(b"IEND", b""))
    with pytest.raises(ImageTooLargeError, match="bomb.png.*100000x100000"):
        open_scan(tmp_path / "bomb.png")


def test_folders_list_png_and_jpeg(tmp_path, pixels):
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.JPEG")
    tifffile.imwrite(tmp_path / "c.tif", pixels)
    (tmp_path / "d.txt").write_text("x")
    assert [p.name for p in discover_scans(tmp_path).scans] == ["a.png", "b.JPEG", "c.tif"]


def test_read_mask_gray_alpha_and_colour(tmp_path):
    m = np.zeros((8, 9), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), m)
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[1, 1, 2] = 9
    Image.fromarray(rgb).save(tmp_path / "c.png")
    got = read_mask(tmp_path / "c.png")
    assert got.shape == (8, 9) and got[1, 1] == 9 and got.sum() == 9


def test_process_a_png_folder(tmp_path, tiny_bundle):
    from semtile.cli.main import main
    from semtile.store import open_store

    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    for name in ("one", "two"):
        Image.fromarray(rng.integers(0, 256, size=(96, 120), dtype=np.uint8)).save(tmp_path / "in" / f"{name}.png")
    result = CliRunner().invoke(main, ["process", str(tmp_path / "in"), "--out", str(tmp_path / "r.zarr"),
                                       "--model", str(tiny_bundle), "--tile", "32", "--engine", "torch-cpu",
                                       "--databar-rows", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "r.zarr", mode="r")
    assert sorted(store.names()) == ["one", "two"] and store.read("one").mask.shape == (96, 120)


def test_axondeepseg_pngs_open(tmp_path):
    data = shared_data("axondeepseg-sem")
    image = sorted((data / "images").glob("*.png"))[0]
    with open_scan(image) as scan:
        assert scan.info.databar_rows == 0 and scan.valid().shape == scan.info.frame_shape
    masks = sorted((data / "masks").glob(f"{image.name[:-4]}*axon-manual.png"))
    assert masks and set(np.unique(read_mask(masks[0]))) <= {0, 255}
