"""Tests for semtile.io.discover: finding scans and hashing files."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from semtile.errors import SemtileError, UnreadableImageError
from semtile.io.discover import TIFF_SUFFIXES, Discovery, discover_scans, find_scans, image_sha256, sha256_file


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
    assert {p.name for p in found} == {"one.tif", "two.TIFF", "img.png", "explicit.dat"}  # PNG/JPEG too
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


# --------------------------------------------------------------------------
# discover_scans: every bad path is a problem entry, never an exception


def _tree(tmp_path):
    """scans/{a.tif, sub/b.tif, sub/deep/c.tiff} plus links of every kind."""
    top = tmp_path / "scans"
    (top / "sub" / "deep").mkdir(parents=True)
    for rel in ("a.tif", "sub/b.tif", "sub/deep/c.tiff"):
        (top / rel).write_bytes(b"II*\x00")
    return top


def test_discover_follows_good_links_once(tmp_path):
    top = _tree(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.tif").write_bytes(b"x")
    (top / "to_outside").symlink_to(outside)  # a folder link: followed
    (top / "again").symlink_to(top / "sub")  # the same folder twice: searched once
    (top / "alias.tif").symlink_to(top / "a.tif")  # a file link to a listed scan: no duplicate
    (top / "far.tif").symlink_to(outside / "o.tif")
    found = discover_scans([top, top / "sub", outside / "o.tif"])
    assert found.problems == []
    assert [p.relative_to(tmp_path).as_posix() for p in found.scans] == [
        "outside/o.tif", "scans/a.tif", "scans/sub/b.tif", "scans/sub/deep/c.tiff"]
    assert find_scans(top) == found.scans


def test_discover_reports_loops_and_broken_links_and_goes_on(tmp_path):
    top = _tree(tmp_path)
    (top / "sub" / "deep" / "up").symlink_to(top)  # a folder link to an ancestor
    (top / "sub" / "here").symlink_to(".")  # a folder link to its own folder
    (top / "self.tif").symlink_to(top / "self.tif")  # a file link to itself
    (top / "ping.tif").symlink_to(top / "pong.tif")  # two links pointing at each other
    (top / "pong.tif").symlink_to(top / "ping.tif")
    (top / "gone.tif").symlink_to(tmp_path / "nowhere.tif")  # a broken link
    found = discover_scans([top, tmp_path / "missing", top / "self.tif"])
    names = {p.name for p in found.scans}
    assert names == {"a.tif", "b.tif", "c.tiff"}
    problems = {p.relative_to(tmp_path).as_posix(): reason for p, reason in found.problems}
    assert problems == {
        "scans/gone.tif": "broken symlink: target not found",
        "scans/ping.tif": "symlink loop",
        "scans/pong.tif": "symlink loop",
        "scans/self.tif": "symlink loop",
        "scans/sub/here": f"symlink loop: links to {top / 'sub'}, a folder that contains it",
        "scans/sub/deep/up": f"symlink loop: links to {top}, a folder that contains it",
        "missing": "not found",
    }
    # the top-level self link is reported once more, as an input of its own
    assert [p for p, _ in found.problems].count(top / "self.tif") == 2
    # the strict form still raises for a bad input, and skips the bad entries inside folders
    with pytest.raises(SemtileError, match="symlink loop"):
        find_scans([top / "self.tif"])
    assert {p.name for p in find_scans(top)} == names


def test_discover_reports_an_unreadable_folder(tmp_path):
    top = _tree(tmp_path)
    locked = top / "sub"
    locked.chmod(0)
    try:
        try:
            os.listdir(locked)
        except PermissionError:
            pass
        else:
            pytest.skip("this user reads folders whatever their mode (root); see the simulated variant below")
        found = discover_scans(top)
    finally:
        locked.chmod(0o755)
    assert [p.name for p in found.scans] == ["a.tif"]
    assert found.problems == [(locked, "permission denied: cannot list folder")]


def test_discover_reports_an_unreadable_folder_simulated(tmp_path, monkeypatch):
    """The same as root: scandir refuses one folder as the kernel would for another user."""
    top = _tree(tmp_path)
    locked = top / "sub"
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover_scans([top, tmp_path / "scans" / "a.tif"])
    assert [p.name for p in found.scans] == ["a.tif"]
    assert found.problems == [(locked, "permission denied: cannot list folder")]
    monkeypatch.setattr(os, "scandir", real_scandir)


def test_discover_never_raises_on_odd_inputs(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "pipe.tif").symlink_to(fifo)  # a fifo would block its reader
    os.mkfifo(tmp_path / "deep" / "fifo.tif")
    (tmp_path / "deep" / "pipe.txt").symlink_to(fifo)  # not a scan's name: ignored like any other file
    found = discover_scans([fifo, tmp_path / "deep", str(tmp_path / "nope")])
    assert found.scans == []
    assert found.problems == [
        (fifo, "neither a file nor a folder"),
        (tmp_path / "deep" / "fifo.tif", "not a regular file"),
        (tmp_path / "deep" / "pipe.tif", "not a regular file"),
        (tmp_path / "nope", "not found"),
    ]
    assert discover_scans([]) == Discovery(scans=[], problems=[])
