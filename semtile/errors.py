"""Errors a user can cause, gathered in one place.

Every error that concerns one input file carries that file's path, so the
pipeline can report it per image and go on with the rest of the batch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "SemtileError",
    "ImageError",
    "UnreadableImageError",
    "UnsupportedImageError",
    "ImageTooSmallError",
    "ModelError",
    "DatasetError",
]


class SemtileError(Exception):
    """Base class of every error semtile raises on purpose."""


class ImageError(SemtileError):
    """A problem with one input image; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableImageError(ImageError):
    """The file is not a readable TIFF (empty, truncated, not a TIFF at all)."""


class UnsupportedImageError(ImageError):
    """The file is a valid TIFF whose layout semtile cannot process."""


class ImageTooSmallError(ImageError):
    """The valid image area is too small to analyse."""


class ModelError(SemtileError):
    """A model file or bundle is missing, corrupt or inconsistent."""


class DatasetError(SemtileError):
    """A dataset folder or its labels.csv is malformed."""
