"""The pixel budget of open_scan, and bad headers that used to escape as other exceptions."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from semtile.errors import ImageError, SemtileError, UnreadableImageError, UnsupportedImageError
from semtile.io.tiff import DEFAULT_MAX_PIXELS, ImageTooLargeError, open_scan

from scan_samples import texture

ROOT = Path(__file__).resolve().parents[2]


def set_dims(path: Path, rows: int, cols: int) -> None:
    """Rewrite ImageLength and ImageWidth in the first IFD of a little-endian classic TIFF."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", data, entry, tag, 4, 1, cols if tag == 256 else rows)
    path.write_bytes(bytes(data))


def lying_header(path: Path) -> Path:
    """A 1 MB valid 1000x1000 scan whose header then claims 100000x100000 pixels."""
    tifffile.imwrite(path, (np.random.default_rng(0).random((1000, 1000)) * 255).astype(np.uint8))
    set_dims(path, 100_000, 100_000)
    return path


def zstd_bomb(path: Path) -> Path:
    """A consistent 100000x100000 TIFF in 336 KB: 625 zstd tiles of zeros, each 16 MiB decoded."""
    import imagecodecs

    tile = imagecodecs.zstd_encode(np.zeros((4096, 4096), np.uint8).tobytes(), level=19)
    n_tiles = (-(-100_000 // 4096)) ** 2
    tifffile.imwrite(path, data=(tile for _ in range(n_tiles)), shape=(100_000, 100_000), dtype=np.uint8,
                     tile=(4096, 4096), compression="zstd")
    return path


_MEASURE = """
import json, resource, sys, time
t0 = time.perf_counter()
from semtile.io.tiff import ImageTooLargeError, open_scan
t1 = time.perf_counter()
try:
    open_scan(sys.argv[1]).close()
    outcome = "opened"
except ImageTooLargeError as exc:
    outcome = str(exc)
t2 = time.perf_counter()
try:  # this process image's own peak: ru_maxrss keeps the forking parent's peak across exec on Linux
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "open_s": t2 - t1, "process_s": t2 - t0, "peak_rss_mb": peak_kb / 1024}))
"""


@pytest.mark.parametrize("make", [lying_header, zstd_bomb], ids=["lying-header", "zstd-bomb"])
def test_a_header_bomb_is_refused_fast_in_little_memory(tmp_path, make):
    path = make(tmp_path / "bomb.tif")
    assert path.stat().st_size < 1.1e6
    # A fresh process, so that its peak RSS is this open's alone (Python and semtile's imports included).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{make.__name__}: {path.stat().st_size} bytes, open {measured['open_s'] * 1000:.1f} ms, "
          f"process {measured['process_s']:.2f} s, peak RSS {measured['peak_rss_mb']:.0f} MB")
    assert measured["outcome"] == (
        f"{path}: header claims 100000x100000 = 10.0 gigapixels, over the budget of 4.3 gigapixels (--max-pixels)")
    assert measured["process_s"] < 5
    assert measured["peak_rss_mb"] < 500


def test_the_budget_is_checked_before_anything_is_decoded(tmp_path, monkeypatch):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, texture(96, 128))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the page was opened for decoding before the budget check")

    monkeypatch.setattr(tifffile.TiffFile, "aszarr", no_decoding)
    with pytest.raises(ImageTooLargeError, match=r"small\.tif: header claims 96x128 = 12288 pixels, over the "
                                                 r"budget of 12287 pixels \(--max-pixels\)") as caught:
        open_scan(path, max_pixels=96 * 128 - 1)
    assert isinstance(caught.value, ImageError) and caught.value.path == str(path)
    monkeypatch.undo()
    with open_scan(path, max_pixels=96 * 128) as scan:  # exactly the budget is allowed
        assert scan.valid().compute().shape == scan.info.valid_shape


def test_max_pixels_values(tmp_path):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, texture(40, 50))
    assert DEFAULT_MAX_PIXELS == 2**32
    for ok in (None, DEFAULT_MAX_PIXELS, np.int64(2000), 2**70):
        open_scan(path, max_pixels=ok).close()
    with pytest.raises(ImageTooLargeError, match="1.2 megapixels, over the budget of 1.0 megapixels"):
        set_dims(path, 1000, 1200)
        open_scan(path, max_pixels=10**6)
    for bad in (0, -1, True, 2.5, "many"):
        with pytest.raises(SemtileError, match="max_pixels must be a positive integer"):
            open_scan(path, max_pixels=bad)


def test_a_header_claiming_no_pixels_is_unreadable(tmp_path):
    path = tmp_path / "empty-header.tif"
    tifffile.imwrite(path, texture(40, 50))
    set_dims(path, 0, 50)
    with pytest.raises(UnreadableImageError, match="header claims an empty image of 0x50 pixels"):
        open_scan(path)


# --------------------------------------------------------------------------
# found by tests/io/test_fuzz_tiff.py: each escaped as another exception type


def _patch(path: Path, tag: int, *, type_: int | None = None, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == tag:
            if type_ is not None:
                struct.pack_into("<H", data, entry + 2, type_)
            if value is not None:
                struct.pack_into("<HI", data, entry + 2, 4, 1)
                struct.pack_into("<I", data, entry + 8, value)
    path.write_bytes(bytes(data))


def test_malformed_offsets_or_counts_are_unreadable(tmp_path):
    path = tmp_path / "ascii-counts.tif"
    tifffile.imwrite(path, texture(64, 64), tile=(32, 32), compression="zlib")
    _patch(path, 325, type_=2)  # TileByteCounts as ASCII text: was a TypeError
    with pytest.raises(ImageError, match=r"ascii-counts\.tif: "):
        open_scan(path)


def test_a_palette_with_wide_indices_is_unsupported(tmp_path):
    path = tmp_path / "palette32.tif"
    cmap = np.stack([np.arange(256) * 257] * 3).astype(np.uint16)
    tifffile.imwrite(path, texture(40, 50), photometric="palette", colormap=cmap)
    _patch(path, 258, value=32)  # 32-bit indices: was a 32 GiB lookup table (MemoryError)
    with pytest.raises(UnsupportedImageError, match="palette image with uint32 indices"):
        open_scan(path)


def test_a_colour_map_of_floats_still_gives_gray_in_range(tmp_path):
    path = tmp_path / "float-map.tif"
    cmap = np.stack([np.arange(256) * 257] * 3).astype(np.uint16)
    tifffile.imwrite(path, texture(40, 50), photometric="palette", colormap=cmap)
    _patch(path, 320, type_=11)  # the map read as float32: NaN used to come through
    with open_scan(path, databar_rows=0) as scan:
        gray = scan.valid().compute()
    assert np.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 1


def test_a_colour_map_of_text_is_unusable(tmp_path):
    path = tmp_path / "text-map.tif"
    cmap = np.stack([np.arange(256) * 257] * 3).astype(np.uint16)
    tifffile.imwrite(path, texture(40, 50), photometric="palette", colormap=cmap)
    _patch(path, 320, type_=2)  # the map read as ASCII: was a ValueError
    with pytest.raises(UnsupportedImageError, match="palette image without a usable colour map"):
        open_scan(path)


def test_one_bit_rgb_is_reduced_to_gray(tmp_path):
    path = tmp_path / "rgb1.tif"
    tifffile.imwrite(path, np.stack([texture(40, 50)] * 3), photometric="rgb", planarconfig="separate")
    _patch(path, 258, value=1)  # 1-bit samples: gray used to keep the samples axis, (40, 50, 3)
    with open_scan(path, databar_rows=0) as scan:
        gray = scan.valid().compute()
    assert gray.shape == (40, 50) and gray.dtype == np.float32 and gray.min() >= 0 and gray.max() <= 1


def test_zero_sized_tiles_are_unreadable(tmp_path):
    path = tmp_path / "tile0.tif"
    tifffile.imwrite(path, texture(64, 64), tile=(32, 32))
    _patch(path, 323, value=0)  # TileLength 0: was a ZeroDivisionError
    with pytest.raises(UnreadableImageError, match=r"tile0\.tif: "):
        open_scan(path)


@pytest.mark.parametrize("token", ["inf", "-inf", "1e400"])
def test_an_infinite_fei_databar_height_is_ignored(tmp_path, token):
    fei = f"[Scan]\r\nPixelWidth=1e-07\r\n[PrivateFei]\r\nDatabarHeight={token}\r\n[Image]\r\nResolutionY={token}\r\n"
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, texture(96, 128), extratags=[(34682, "s", 0, fei, True)], metadata=None)
    with open_scan(path) as scan:  # was an OverflowError
        assert scan.info.vendor == "FEI" and scan.info.databar_source == "detected"


def test_corrupt_data_past_the_checked_rows_fails_as_an_image_error_when_computed(tmp_path):
    path = tmp_path / "late.tif"
    tifffile.imwrite(path, texture(256, 64), rowsperstrip=16, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[2]  # the third strip
    data = bytearray(path.read_bytes())
    data[offset: offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with open_scan(path, databar_rows=0) as scan:  # only the last strip is decoded at open
        with pytest.raises(UnreadableImageError, match=r"late\.tif: cannot decode image data"):
            scan.valid().compute()
