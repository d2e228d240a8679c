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
    "LeaseLost",
    "DiskFull",
    "SchedulerLost",
    "DamagedResultError",
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


class LeaseLost(SemtileError):
    """The run's lease expired or was released: a worker of a driver that has gone must not commit."""


class DiskFull(SemtileError):
    """No space left on the device a result (or the store) is written to; the run starts no new work."""


class SchedulerLost(SemtileError):
    """The Dask scheduler went away mid-run: one error for the run, not one per pending input."""


class DamagedResultError(SemtileError):
    """A stored result whose bytes are not what was written: a chunk that fails its checksum or to decode,
    a truncated, missing or added file, a record at odds with its arrays. Names the store, the result and,
    where known, the array and its chunk file; the other results are unaffected."""

    def __init__(self, store: str | Path, name: str, reason: str, *, array: str | None = None,
                 chunk: str | None = None):
        self.store, self.name, self.reason, self.array, self.chunk = str(store), name, reason, array, chunk
        where = f"array {array!r}" if array else ""
        if chunk:
            where = f"{where} chunk {chunk}" if where else f"file {chunk}"
        super().__init__(f"{self.store}/{name}: damaged result: {where + ': ' if where else ''}{reason} "
                         "(`semtile verify --repair` sets it aside for the next run to redo)")
