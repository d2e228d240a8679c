"""Files written in one context, with their size and CRC-32C, so that sealing a result need not read them back.

:func:`write_file` writes a file from parts (one ``writev`` where the
platform has it) and, inside :func:`recording`, notes its size and the
CRC-32C of exactly the bytes handed to the system. :func:`semtile.store.verify.seal`
takes those as the manifest's entries for files still of that size; the
files it was not told of (written by zarr-python, or by hand) it reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import google_crc32c

__all__ = ["recording", "recorded", "write_file", "crc32c_of"]

_RECORD: contextvars.ContextVar[dict | None] = contextvars.ContextVar("semtile_written", default=None)


def _key(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


@contextlib.contextmanager
def recording() -> Iterator[dict]:
    """Note every :func:`write_file` in this context (this thread): yields ``{absolute path: (size, crc32c)}``."""
    written: dict = {}
    token = _RECORD.set(written)
    try:
        yield written
    finally:
        _RECORD.reset(token)


def crc32c_of(parts: Sequence[bytes]) -> int:
    crc = 0
    for part in parts:  # google_crc32c takes bytes, not other buffers
        crc = google_crc32c.extend(crc, part if isinstance(part, bytes) else bytes(part))
    return crc


def recorded(written: dict, folder: str | os.PathLike) -> dict:
    """The entries of ``written`` under ``folder``, by posix path relative to it."""
    base = _key(folder)
    out = {}
    for path, entry in written.items():
        if path.startswith(base + os.sep):
            out[Path(os.path.relpath(path, base)).as_posix()] = entry
    return out


def write_file(path: str | os.PathLike, parts: Sequence[bytes]) -> None:
    """``parts`` written in order as the file ``path`` (created or truncated), noted when recording."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    written = _RECORD.get()
    if written is not None:
        written[_key(path)] = (sum(len(v) for v in views), crc32c_of(parts))
    if not hasattr(os, "writev"):
        Path(path).write_bytes(b"".join(views))
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while views:
            # At most IOV_MAX parts a call; a short write goes on from where it stopped.
            done = os.writev(fd, views[:1024])
            while views and done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            if done:
                views[0] = views[0][done:]
    finally:
        os.close(fd)
