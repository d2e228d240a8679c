"""Tests for semtile.io.discover: finding scans and hashing files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from semtile.errors import SemtileError, UnreadableImageError
from semtile.io.discover import TIFF_SUFFIXES, find_scans, image_sha256, sha256_file


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


def test_sha256_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "gone.bin")


def test_image_sha256(tmp_path):
    data = b"II*\x00" + bytes(range(256)) * 9
    (tmp_path / "scan.tif").write_bytes(data)
    assert image_sha256(tmp_path / "scan.tif") == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / "scan.tif")
    # the image error names the file and says why, like every other bad input
    with pytest.raises(UnreadableImageError, match=r"gone\.tif: cannot read file: No such file") as caught:
        image_sha256(tmp_path / "gone.tif")
    assert caught.value.path == str(tmp_path / "gone.tif")
    assert isinstance(caught.value.__cause__, OSError)
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(UnreadableImageError, match=r"folder\.tif: cannot read file"):
        image_sha256(tmp_path / "folder.tif")
