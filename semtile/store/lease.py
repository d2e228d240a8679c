"""Run leases: who may still commit into a store, judged by time on the shared file system, never by pid.

A run (or a process writing through the library) holds a lease: the file
``.semtile/leases/<token>.json`` (``{"token", "run_id", "host", "pid",
"seconds"}``) whose modification time a heartbeat thread renews every
``seconds / 6``. The lease is *held* while that time is less than ``seconds``
old, as the file system's own clock tells it (the time stamp of a file made
now, so that hosts whose clocks differ agree); *expired* after that; and
*released* once the file is gone (the run ended, or a clean-up removed an
expired one). A heartbeat that finds its lease expired (the host slept, the
file system hung) gives it up for good: what a clean-up may have removed
meanwhile is never trusted again.

Everything semtile names for a run carries its token: the store's
temporaries (``.semtile/tmp/<kind>~<token>~<random>``) and the run's scratch
folder (``semtile-run~<token>~<random>`` under the scratch root, with a
``lease.json`` naming the lease file). A clean-up removes such a thing only
when its lease has expired or was released; a commit (:class:`Fence`) is
refused unless its lease is held. Nothing depends on hard links, on process
ids or on host names, so the rules hold for hosts and containers sharing one
file system.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import socket
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from semtile.errors import LeaseLost, SemtileError

__all__ = ["DEFAULT_SECONDS", "LEASES", "Fence", "RunLease", "fs_now", "lease_seconds", "lease_state",
           "process_lease", "real_folder", "TOKEN"]

LEASES = "leases"
#: How long a lease outlives its last heartbeat; ``SEMTILE_LEASE_SECONDS`` overrides it (at least 1).
DEFAULT_SECONDS = 120.0
TOKEN = re.compile(r"[0-9a-f]{32}")


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("SEMTILE_LEASE_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def real_folder(path: Path, create: bool = True) -> Path:
    """``path`` as a real folder (made when absent and ``create``); SemtileError for a link or a file there."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise SemtileError(f"{path}: missing") from None
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise SemtileError(f"{path}: a symbolic link where semtile keeps its own folder; refusing to use it "
                           "(remove the link)")
    if not stat.S_ISDIR(st.st_mode):
        raise SemtileError(f"{path}: not a folder; semtile keeps its own folder here")
    return path


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def fs_now(folder: Path) -> float:
    """The file system's clock: the modification time of a file made now in ``folder``."""
    probe = Path(folder) / f".now~{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(probe)


def _read_lease(path: Path) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read(65536))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lease_state(folder: Path, token: str, now: float | None = None) -> str:
    """``held``, ``expired``, ``released`` (no lease file) or ``unknown`` (no lease folder there to ask)."""
    folder = Path(folder)
    if not TOKEN.fullmatch(str(token)) or not _is_real_folder(folder):
        return "unknown"
    path = folder / f"{token}.json"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "released"
    except OSError:
        return "unknown"
    if not stat.S_ISREG(st.st_mode):
        return "released"  # not a lease semtile wrote
    data = _read_lease(path) or {}
    try:
        seconds = float(data.get("seconds", DEFAULT_SECONDS))
    except (TypeError, ValueError):
        seconds = DEFAULT_SECONDS
    if now is None:
        try:
            now = fs_now(folder)
        except OSError:  # no room for the probe (a full disk): this host's clock, then
            now = time.time()
    return "held" if now - st.st_mtime <= seconds else "expired"


@dataclass(frozen=True)
class Fence:
    """A run's right to commit, as workers carry it (small, picklable): its lease folder and token."""

    folder: str
    token: str

    def check(self, what: str = "") -> None:
        """LeaseLost unless the lease is held now."""
        state = lease_state(Path(self.folder), self.token)
        if state != "held":
            raise LeaseLost(f"the run's lease {self.token[:12]} in {self.folder} is {state} (its driver has "
                            f"ended or lost contact); {what or 'nothing'} is not committed, a rerun redoes it")


class RunLease:
    """A held lease with its heartbeat thread; :meth:`release` (or the context manager) ends it."""

    def __init__(self, hidden: Path, run_id: str = "", seconds: float | None = None):
        self.folder = real_folder(real_folder(Path(hidden)) / LEASES)
        self.token = uuid.uuid4().hex
        self.seconds = float(seconds or lease_seconds())
        self.path = self.folder / f"{self.token}.json"
        self.lost = False
        content = {"token": self.token, "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                   "seconds": self.seconds}
        staged = self.folder / f".{self.token}.new"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(content).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staged, self.path)
        except BaseException:
            try:
                os.unlink(staged)
            except OSError:
                pass
            raise
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="semtile-lease", daemon=True)
        self._beat.start()

    @property
    def fence(self) -> Fence:
        return Fence(str(self.folder), self.token)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 6):
            try:
                if lease_state(self.folder, self.token) != "held":
                    self.lost = True  # expired or removed: what a clean-up did meanwhile cannot be undone
                    return
                os.utime(self.path)  # None: the file system's time now
            except OSError:
                continue  # a hiccup; the lease expires by itself if it lasts

    def release(self) -> None:
        """End the lease: nothing of this run commits after this returns."""
        self._stop.set()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._beat is not threading.current_thread():
            self._beat.join(timeout=5)

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_PROCESS: dict[tuple[int, str], RunLease] = {}
_LOCK = threading.Lock()


def process_lease(hidden: Path) -> RunLease:
    """This process's own lease in a store, for writes made outside a run (released at exit)."""
    key = (os.getpid(), str(Path(hidden).absolute()))
    with _LOCK:
        lease = _PROCESS.get(key)
        if lease is None or lease.lost or not lease.path.exists():
            lease = _PROCESS[key] = RunLease(hidden, run_id=f"process-{os.getpid()}")
            atexit.register(lease.release)
        return lease
