"""Finding scans on disk, and telling files apart by their SHA-256.

:func:`discover_scans` searches files and folders and reports every path it
could not search (missing, unreadable, a symbolic-link loop) without ever
stopping; :func:`find_scans` is its strict form for callers that want an
exception on a bad input.

:func:`sha256_file` is the one implementation of plain file hashing in
semtile (model files, bundles and scans all use it); :func:`image_sha256` is
its variant for input scans, whose failures are image errors naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semtile.errors import SemtileError, UnreadableImageError

__all__ = ["TIFF_SUFFIXES", "SCAN_SUFFIXES", "Discovery", "discover_scans", "find_scans", "sha256_file", "image_sha256"]

TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
#: What a folder is searched for: TIFFs, and PNG/JPEG (read by :mod:`semtile.io.png`).
SCAN_SUFFIXES: tuple[str, ...] = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg")


@dataclass
class Discovery:
    """What :func:`discover_scans` found.

    Attributes
    ----------
    scans
        Resolved paths of the scans, sorted, each listed once.
    problems
        ``(path, reason)`` for every input or entry that could not be
        searched: ``"not found"``, ``"symlink loop"``, ``"permission denied:
        cannot list folder"``, ... in the order they were met.
    """

    scans: list[Path] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def discover_scans(inputs: Sequence[str | Path] | str | Path) -> Discovery:
    """Find the scans (TIFF, PNG, JPEG) named by files and folders; never raises for a bad path.

    Parameters
    ----------
    inputs
        Files and folders. A file is taken as it is, whatever its suffix.
        A folder is searched recursively for files ending in ``.tif``,
        ``.tiff``, ``.png``, ``.jpg`` or ``.jpeg`` (any case); hidden files and folders (names starting with
        ``.``, e.g. macOS ``._x.tif`` resource forks) are skipped. Symbolic
        links to files and folders are followed; a folder reached twice (by a
        link, or another input) is searched once. A single path may be given
        instead of a sequence.

    Returns
    -------
    Discovery
        The scans, and a problem for each path that could not be searched: a
        missing input, a broken link, a symbolic-link loop (a link to itself,
        or to a folder that contains the link), a folder that cannot be
        listed. The search goes on past every one of them.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: set[Path] = set()
    problems: list[tuple[Path, str]] = []
    searched: set[tuple[int, int]] = set()  # (device, inode) of every folder searched
    for item in inputs:
        path = Path(item)
        try:
            st = path.stat()
        except OSError as exc:
            problems.append((path, _reason(path, exc)))
            continue
        if stat.S_ISREG(st.st_mode):
            _add(path, found, problems)
        elif stat.S_ISDIR(st.st_mode):
            _search(path, st, found, problems, searched)
        else:
            problems.append((path, "neither a file nor a folder"))  # a fifo, a socket, a device
    return Discovery(scans=sorted(found), problems=problems)


def find_scans(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """The scans of :func:`discover_scans`; raises for a bad input, skips bad entries inside folders.

    Raises
    ------
    SemtileError
        If an input does not exist or is neither a file nor a folder.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    tops = {Path(item) for item in inputs}
    discovery = discover_scans(inputs)
    for path, reason in discovery.problems:
        if path in tops:
            raise SemtileError(
                f"input path does not exist: {path}" if reason == "not found" else f"input path {path}: {reason}"
            )
    return discovery.scans


def _search(top: Path, top_stat: os.stat_result, found: set[Path], problems: list, searched: set) -> None:
    """Search one folder tree, depth first, without recursion (trees may be deep)."""
    stack: list[tuple[Path, os.stat_result]] = [(top, top_stat)]
    while stack:
        folder, st = stack.pop()
        if (st.st_dev, st.st_ino) in searched:
            continue  # reached before, through a link or another input
        searched.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append((folder, _reason(folder, exc, "cannot list folder")))
            continue
        below = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            tiff_name = os.path.splitext(entry.name)[1].lower() in SCAN_SUFFIXES
            try:
                if not entry.is_symlink():
                    if entry.is_dir(follow_symlinks=False):
                        below.append((path, entry.stat(follow_symlinks=False)))
                    elif tiff_name and entry.is_file(follow_symlinks=False):
                        _add(path, found, problems)
                    elif tiff_name:
                        problems.append((path, "not a regular file"))  # a fifo would block its reader
                    continue
                target = os.stat(path)  # through the link
            except OSError as exc:
                problems.append((path, _reason(path, exc)))
                continue
            if stat.S_ISDIR(target.st_mode):
                real, here = os.path.realpath(path), os.path.realpath(folder)
                if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                    problems.append((path, f"symlink loop: links to {real}, a folder that contains it"))
                else:
                    below.append((path, target))
            elif tiff_name and stat.S_ISREG(target.st_mode):
                _add(path, found, problems)
            elif tiff_name:
                problems.append((path, "not a regular file"))
        stack.extend(reversed(below))


def _add(path: Path, found: set[Path], problems: list) -> None:
    try:
        found.add(path.resolve(strict=True))
    except RuntimeError:  # a loop, on Python < 3.13
        problems.append((path, "symlink loop"))
    except OSError as exc:
        problems.append((path, _reason(path, exc)))


def _reason(path: Path, exc: OSError, action: str = "cannot access") -> str:
    """Why ``path`` could not be used, from the error of stat or scandir."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "broken symlink: target not found" if path.is_symlink() else "not found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {action}"
    return f"{exc.strerror or exc}: {action}"


def sha256_file(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks (raises OSError)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def image_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a scan file, read in 1 MiB blocks.

    The same digest as :func:`sha256_file`, for input images: a file that
    cannot be read is reported like any other bad image.

    Raises
    ------
    UnreadableImageError
        If the file cannot be read.
    """
    try:
        return sha256_file(path)
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot read file: {exc.strerror or exc}") from exc
