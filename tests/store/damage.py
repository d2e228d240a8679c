"""Damage done to real files on disk, as disks and people do it: a bit flipped in place, a file cut short."""

from __future__ import annotations

import os
from pathlib import Path


def flip(path: Path, offset: int | None = None, keep_mtime: bool = True) -> None:
    """Flip one bit of the file ``path`` in place (at ``offset``, default its middle).

    ``keep_mtime``: put the modification time back, as bit rot leaves it.
    """
    st = os.stat(path)
    offset = st.st_size // 2 if offset is None else offset
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x08]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def truncate(path: Path) -> None:
    """Cut the file ``path`` to a third of its length."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
