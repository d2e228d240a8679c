"""Finding scans on disk, and telling files apart by their SHA-256.

:func:`sha256_file` is the one implementation of plain file hashing in
semtile (model files, bundles and scans all use it); :func:`image_sha256` is
its variant for input scans, whose failures are image errors naming the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from semtile.errors import SemtileError, UnreadableImageError

__all__ = ["TIFF_SUFFIXES", "find_scans", "sha256_file", "image_sha256"]

TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


def find_scans(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """List the TIFF scans named by files and folders.

    Parameters
    ----------
    inputs
        Files and folders. A file is taken as it is, whatever its suffix.
        A folder is searched recursively for files ending in ``.tif`` or
        ``.tiff`` (any case); hidden files and folders (names starting with
        ``.``, e.g. macOS ``._x.tif`` resource forks) are skipped. A single
        path may be given instead of a sequence.

    Returns
    -------
    list of Path
        Resolved paths, sorted, each listed once.

    Raises
    ------
    SemtileError
        If an input does not exist or is neither a file nor a folder.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise SemtileError(f"input path does not exist: {path}")
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() in TIFF_SUFFIXES:
                        found.add((Path(root) / name).resolve())
        else:
            raise SemtileError(f"input path is neither a file nor a folder: {path}")
    return sorted(found)


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
