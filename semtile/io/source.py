"""What an input file was when it was read: its bytes, their sha256, and the file's identity.

A result's provenance must name the bytes the result was made from. A small
scan is therefore read once into memory (:func:`read_source`): the sha256 is
of exactly those bytes, and the pixels are decoded from them, so a file
replaced while it is processed cannot lend its new hash to a result made from
its old content. A large scan is hashed before its pixels are read
(:func:`hash_source`) and checked again before its result is committed.

Either way :func:`check_unchanged` compares the file on disk with its
identity at reading time (size, modification time, inode and device, and for
large scans the hash) just before the commit: a file that changed mid-run
gets no result, the change is that image's error, and the next run does it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from semtile.errors import ImageError, UnreadableImageError

__all__ = ["InputChangedError", "SourceIdentity", "SourceBytes", "read_source", "hash_source", "check_unchanged"]

_BLOCK = 1 << 20


class InputChangedError(ImageError):
    """The input file changed (replaced, rewritten) between reading it and committing its result."""


@dataclass(frozen=True)
class SourceIdentity:
    """The file as it was read: what :func:`check_unchanged` compares and the completion record keeps."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    sha256: str

    @classmethod
    def of_stat(cls, st: os.stat_result, sha256: str) -> SourceIdentity:
        return cls(int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_dev), sha256)

    def record(self) -> dict:
        """The input part of a completion record (what a rerun compares)."""
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SourceBytes:
    """A whole input file read into memory, with its identity (hash of these bytes)."""

    data: bytes
    identity: SourceIdentity


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_dev) == (b.st_size, b.st_mtime_ns, b.st_ino, b.st_dev)


def _unreadable(path: Path, exc: OSError) -> UnreadableImageError:
    if isinstance(exc, FileNotFoundError):
        return UnreadableImageError(path, "file not found")
    if isinstance(exc, IsADirectoryError):
        return UnreadableImageError(path, "is a folder, not a file")
    return UnreadableImageError(path, f"cannot read file: {exc.strerror or exc}")


def read_source(path: str | Path) -> SourceBytes:
    """Read the whole file once; its sha256 is of these bytes. ImageError when it cannot be read, or when it was
    rewritten in place while it was read (its stat changed between opening and the end of the read)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            data = handle.read()
            after = os.fstat(handle.fileno())
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if not _same_file(before, after) or len(data) != after.st_size:
        raise InputChangedError(path, "the file changed while it was read; run again once it is complete")
    return SourceBytes(data, SourceIdentity.of_stat(after, hashlib.sha256(data).hexdigest()))


def hash_source(path: str | Path) -> SourceIdentity:
    """The identity of a file too large to hold: streamed through sha256 in 1 MiB blocks, from one open handle."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            while block := handle.read(_BLOCK):
                digest.update(block)
            after = os.fstat(handle.fileno())
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if not _same_file(before, after):
        raise InputChangedError(path, "the file changed while it was read; run again once it is complete")
    return SourceIdentity.of_stat(after, digest.hexdigest())


def check_unchanged(path: str | Path, identity: SourceIdentity, *, rehash: bool = False) -> None:
    """Raise :class:`InputChangedError` when the file at ``path`` is not the one read (another size, modification
    time, inode or device; with ``rehash`` also another sha256): its result must not be committed."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputChangedError(path, f"the file is gone since it was read ({exc.strerror or exc}); "
                                      "no result was stored") from exc
    now = SourceIdentity.of_stat(st, identity.sha256)
    if now != identity:
        changed = [f for f in ("size", "mtime_ns", "inode", "device") if getattr(now, f) != getattr(identity, f)]
        raise InputChangedError(path, f"the file changed while it was processed ({', '.join(changed)} differ); "
                                      "no result was stored, run again to process the new file")
    if rehash:
        again = hash_source(path)
        if again.sha256 != identity.sha256:
            raise InputChangedError(path, "the file's content changed while it was processed (sha256 differs); "
                                          "no result was stored, run again to process the new file")
