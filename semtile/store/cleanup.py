"""Clean-up of a directory store's temporaries, by lease, never through a link; Zarr without hard links."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from semtile.store.lease import LEASES, TOKEN, fs_now, lease_state, real_folder

__all__ = ["STALE_AFTER_S", "clean_temporaries", "discard", "zarr_without_hard_links"]

STALE_AFTER_S = 24 * 3600  # temporaries named by older versions (host and pid) after this
_LEASED = re.compile(r"(?P<kind>[a-z]+)~(?P<token>[0-9a-f]{32})~[0-9a-f]{12}")
_TEMP = re.compile(r"(?P<kind>[a-z]+)~(?P<host>[A-Za-z0-9._-]+)~(?P<pid>\d+)~(?P<start>\d+)~[0-9a-f]+")
_LEGACY_TEMP = (".partial-", ".retired-")  # what the Zarr directory store left in the root before claims


def clean_temporaries(root: Path, hidden: Path, remove: Callable[[Path], int]) -> int:
    """``remove`` each temporary of the store ``root`` whose lease (in ``hidden/leases``) expired or was released,
    and each temporary named by an older version once a day old; then drop expired lease files.

    Only entries semtile named, of ``hidden/tmp`` (a real folder: a link there is refused) and the root's
    legacy temporaries; a link is never followed nor removed. Returns how many went."""
    removed = 0
    if not Path(root).is_dir():
        return 0
    real_folder(hidden)
    leases, folder = Path(hidden) / LEASES, Path(hidden) / "tmp"
    entries = list(os.scandir(real_folder(folder))) if os.path.lexists(folder) else []
    legacy = [e for e in os.scandir(root) if e.name.startswith(_LEGACY_TEMP)]
    try:
        now = fs_now(real_folder(leases))
    except OSError:
        return 0  # nothing can be judged without the file system's clock (e.g. the disk is full)
    for entry, in_tmp in [(e, True) for e in entries] + [(e, False) for e in legacy]:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue  # never semtile's
        match = _LEASED.fullmatch(entry.name) if in_tmp else None
        if match:
            stale = lease_state(leases, match["token"], now) in ("expired", "released")
        else:  # named by an older version (host and pid): by age only
            named = _TEMP.fullmatch(entry.name) if in_tmp else True
            stale = bool(named) and now - st.st_mtime > STALE_AFTER_S
        if stale:
            removed += remove(Path(entry.path))
    for entry in os.scandir(leases):
        token = entry.name[:-len(".json")] if entry.name.endswith(".json") else ""
        if TOKEN.fullmatch(token) and entry.is_file(follow_symlinks=False) \
                and lease_state(leases, token, now) == "expired":
            Path(entry.path).unlink(missing_ok=True)
    return removed


def discard(path: Path, doomed: Path) -> int:
    """Rename ``path`` to ``doomed`` (so two cleaners never both count it), then delete it without following
    any link; 1 if this call took it."""
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return 0
    try:
        mode = os.lstat(doomed).st_mode
    except FileNotFoundError:
        return 1
    if stat.S_ISDIR(mode):
        shutil.rmtree(doomed, ignore_errors=True)  # never follows links (shutil.rmtree.avoids_symlink_attacks)
    else:
        doomed.unlink(missing_ok=True)
    return 1


def zarr_without_hard_links() -> None:
    """Zarr writes a file "exclusively" (a new array's metadata) by hard-linking it into place, which fails on
    a file system without hard links (some network and FAT file systems). There semtile's temporaries are
    folders of its own that no one else writes, so a rename after a check does the same: the link is tried
    first, and the rename only where the file system refuses links."""
    try:
        from zarr.storage import _local
    except ImportError:  # pragma: no cover - another zarr layout: nothing to adapt
        return
    linked = getattr(_local, "_safe_move", None)
    if linked is None or getattr(linked, "semtile", False) or os.name != "posix":
        return

    def safe_move(src, dst) -> None:
        try:
            linked(src, dst)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS,
                                 errno.EXDEV):
                raise
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
            os.rename(src, dst)

    safe_move.semtile = True
    _local._safe_move = safe_move
