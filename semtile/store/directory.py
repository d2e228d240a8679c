"""What the directory stores share: claims, temporaries, publishing and clean-up.

A store is a folder holding the root group's ``zarr.json``, one child group per
result and the hidden folder ``.semtile``, which has no Zarr metadata: Zarr
never lists anything inside it (``zarr.open_group(store).members()`` passes it
over with a ``ZarrUserWarning``), and the store lists its results itself.

``.semtile/claims/<name in lower case>``
    ``{"name", "source"}``: the name is taken, by that input file. Named in lower
    case, so two names that differ in case only can never both be claimed.
``.semtile/sources/<sha256 of the source key>``
    ``{"name", "source"}``: the name of that input file.
``.semtile/leases/<token>.json``
    The leases of the runs (and processes) writing now (:mod:`semtile.store.lease`).
``.semtile/tmp/<kind>~<token>~<random>``
    A writer's temporaries: ``partial`` (a result being written), ``retired``
    (a result being replaced), ``claim`` (a claim file being written), ``dead``
    (being deleted by ``clean_stale``), named by the writer's lease token and
    removed only once that lease is gone (:mod:`semtile.store.cleanup`). Every
    publish checks the lease (:meth:`DirectoryStore.fence`); ENOSPC is DiskFull.

A claim or source file is written beside and hard-linked into place; the link
fails when the name exists (atomic on local disks and on NFS; where a file
system refuses hard links, ``O_EXCL`` creation does the same). Whoever created
the file owns the name. A result is written whole as a Zarr group under
``.semtile/tmp`` and renamed to ``<name>``; an existing ``<name>`` is first
renamed aside (``retired``) and deleted once the new one is in. Renames are
atomic, so a reader sees a complete result or none.

A new store is built beside its path (``.<name>.new~<pid>~<token>``, holding
only the marked root) and renamed into place, so nobody ever sees a store
half-created; of two runs creating one store at once, the first rename wins.

``add_maps`` copies a committed result beside it under ``.semtile/tmp`` (hard links, so no bytes are copied
and the old result's files are never written: Zarr writes every file anew and renames it into place), writes
the new maps and the group's metadata into the copy and publishes the copy like a result. Concurrent
``add_maps`` calls on one result take turns (``.semtile/locks/<name>``, an advisory lock); a ``write`` of the
same name racing an ``add_maps`` may be undone by it (the last rename wins).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import zarr

from semtile.errors import DiskFull, SemtileError
from semtile.store.base import (
    RESERVED_NAMES,
    ImageResult,
    ResultStore,
    StoredResult,
    check_maps,
    check_result,
    safe_stem,
    source_key,
    valid_name,
)
from semtile.store.cleanup import STALE_AFTER_S, clean_temporaries, discard, zarr_without_hard_links
from semtile.store.lease import Fence, RunLease, process_lease, real_folder
from semtile.store.ownership import host_name, process_alive, process_start, temporary_name
from semtile.store.verify import seal
from semtile.store.written import recorded, recording

__all__ = ["DirectoryStore", "HIDDEN", "STALE_AFTER_S", "temporary_name", "process_start", "host_name",
           "process_alive"]

HIDDEN = ".semtile"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


zarr_without_hard_links()


def _read_claim(path: Path) -> dict | None:
    """A claim or source file's ``{"name", "source"}``; None when absent or unreadable."""
    for attempt in range(3):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # written by O_EXCL and not yet complete, or damaged
            time.sleep(0.01 * (attempt + 1))
            continue
        if isinstance(data, dict) and valid_name(data.get("name")) and isinstance(data.get("source"), str):
            return data
        return None
    return None


class DirectoryStore(ResultStore):
    """A store in a local folder; subclasses give the format of the root and of each result group.

    ``mode="a"`` opens or creates the store (refusing a file, or a non-empty
    folder that is no Zarr store); ``mode="r"`` opens an existing store
    read-only and creates nothing. Either raises SemtileError naming the path.
    """

    def __init__(self, path: str | Path, mode: str = "a"):
        if mode not in ("r", "a"):
            raise SemtileError(f"store mode {mode!r}: expected 'r' or 'a'")
        self.path, self.read_only = Path(path), mode == "r"
        if self.path.exists() and not self.path.is_dir():
            raise SemtileError(f"{self.path}: exists and is not a result store (a Zarr directory)")
        if self.read_only and not self.path.is_dir():
            raise SemtileError(f"{self.path}: result store not found")
        if not self.read_only and self.path.is_dir() and not (self.path / "zarr.json").is_file() \
                and any(self.path.iterdir()):
            raise SemtileError(f"{self.path}: a folder that is not a Zarr store; refusing to write results into it")
        self._fence: Fence | None = None  # the run's lease; without one, this process's own (process_lease)
        if not self.read_only and not (self.path / "zarr.json").is_file():
            try:
                self._create_root()
            except OSError as exc:  # a full disk, a read-only file system, no permission: a setup error
                raise SemtileError(f"{self.path}: cannot create the result store "
                                   f"({exc.strerror or exc})") from None
        try:
            self.root = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
        except Exception as exc:  # noqa: BLE001 - whatever zarr says, this is no store of ours
            raise SemtileError(f"{self.path}: not a semtile result store ({type(exc).__name__}: {exc})") from None
        self._adopt_root(dict(self.root.attrs))
        self._hidden = self.path / HIDDEN
        self._owners: dict[str, str] | None = None  # results when first needed (and this object's writes)
        self._occupied: set[str] = set()  # the root's entries then, case-folded

    def _create_root(self) -> None:
        """Create the store's folder whole: its marked root is written beside it and renamed into place.

        A reader or a second writer therefore finds no folder, or a folder whose zarr.json carries the
        store's mark; never a folder being filled (which a second run would refuse as "not a Zarr store")
        nor an unmarked root. When two runs create one store at once, the first rename wins and the
        other run opens the winner's store.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.parent / f".{self.path.name}.new~{os.getpid()}~{uuid.uuid4().hex[:12]}"
        try:
            zarr.open_group(str(staged), mode="w-", zarr_format=3, attributes=self._new_root_attrs())
            try:
                os.rename(staged, self.path)  # replaces an empty folder; fails on a non-empty one
            except OSError:
                if not (self.path / "zarr.json").is_file():
                    raise SemtileError(f"{self.path}: a folder that is not a Zarr store; "
                                       "refusing to write results into it") from None
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    # -- what a format gives --------------------------------------------------------------------------

    @abc.abstractmethod
    def _new_root_attrs(self) -> dict:
        """The attributes of a new root of this format."""

    @abc.abstractmethod
    def _adopt_root(self, attrs: dict) -> None:
        """Check the root's attributes (SemtileError unless this format's or, for "a", new) and mark it."""

    @abc.abstractmethod
    def _source_of(self, attrs: dict) -> str | None:
        """The source key of a result group with these attributes; None if it is no result."""

    @abc.abstractmethod
    def _record_of(self, attrs: dict) -> dict | None:
        """The completion record in a result group's attributes."""

    @abc.abstractmethod
    def _check(self, result: ImageResult) -> None:
        """SemtileError if this format cannot store ``result``; called before anything is written."""

    @abc.abstractmethod
    def _write_group(self, staged: Path, result: ImageResult, timings: dict | None = None) -> None:
        """Write ``result`` as a complete Zarr v3 group in the new folder ``staged`` (seconds into ``timings``)."""

    @abc.abstractmethod
    def _open_result(self, name: str, attrs: dict) -> StoredResult:
        """The StoredResult of the result group ``name`` with attributes ``attrs``."""

    @abc.abstractmethod
    def _maps_of(self, attrs: dict) -> dict:
        """The extra maps recorded in a result group's attributes: name -> their attributes."""

    @abc.abstractmethod
    def _write_maps(self, staged: Path, maps: dict, map_attrs: dict, pixel_size: Any,
                    timings: dict | None = None) -> dict:
        """Write ``maps`` into the result group ``staged``; return name -> attributes to record."""

    @abc.abstractmethod
    def _set_maps(self, staged: Path, maps: dict) -> None:
        """Record ``maps`` (name -> attributes, all of them) in the attributes of the result group ``staged``."""

    @abc.abstractmethod
    def _pixel_size(self, attrs: dict) -> Any:
        """The pixel size recorded in a result group's attributes (None where unknown)."""

    # -- results --------------------------------------------------------------------------------------

    def _attrs(self, name: str) -> dict | None:
        """The attributes of the group ``path/name``, read from its ``zarr.json``; None if it is no group."""
        if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
            return None
        try:
            meta = json.loads((self.path / name / "zarr.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("node_type") != "group":
            return None
        attrs = meta.get("attributes", {})
        return attrs if isinstance(attrs, dict) else None

    def _results(self) -> Iterator[tuple[str, str]]:
        """(name, source key) of every completed result, in no order."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                attrs = self._attrs(entry.name)
                source = None if attrs is None else self._source_of(attrs)
                if source is not None:
                    yield entry.name, source

    def names(self) -> list[str]:
        return sorted(name for name, _ in self._results())

    def read(self, name: str) -> StoredResult:
        attrs = self._attrs(name)
        if attrs is None or self._source_of(attrs) is None:
            raise SemtileError(f"{self.path}: no result named {name!r}")
        return self._open_result(name, attrs)

    def record(self, name: str) -> dict | None:
        attrs = self._attrs(name)
        if attrs is None or self._source_of(attrs) is None:
            return None
        return self._record_of(attrs)

    def write(self, name: str, result: ImageResult, timings: dict | None = None) -> None:
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot write {name!r}")
        check_result(name, result)
        self._check(result)
        self._complete(self._temp("partial"), name, result,
                       lambda staged, result: self._write_group(staged, result, timings))

    def add_maps(self, name: str, maps, attrs: dict | None = None, timings: dict | None = None) -> None:
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot add maps to {name!r}")
        where = f"{self.path}/{name}"
        maps = dict(maps) if isinstance(maps, Mapping) else maps
        if not isinstance(maps, dict) or not maps:
            raise SemtileError(f"{where}: add_maps needs a non-empty dict of name -> array")
        group_attrs = self._attrs(name)
        if group_attrs is None or self._source_of(group_attrs) is None:
            raise SemtileError(f"{self.path}: no result named {name!r} to add maps to")
        try:
            mask_meta = json.loads((self.path / name / "mask" / "zarr.json").read_text(encoding="utf-8"))
            shape = tuple(int(v) for v in mask_meta["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            raise SemtileError(f"{where}: the result's mask is missing or damaged; cannot add maps") from None
        check_maps(where, shape, maps, {key: dict(attrs or {}) for key in maps})
        with self._result_lock(name):
            final = self.path / name
            staged = self._temp("partial")
            try:
                try:
                    shutil.copytree(final, staged, symlinks=True, copy_function=_link_or_copy)
                except (OSError, shutil.Error) as exc:
                    raise SemtileError(f"{where}: changed or vanished while maps were being added ({exc})") from None
                meta = staged / "zarr.json"
                data = meta.read_bytes()
                meta.unlink()  # the copy's metadata gets a file of its own before anything writes it
                meta.write_bytes(data)
                present = {entry.name.casefold(): entry.name for entry in os.scandir(staged)}
                for key in maps:  # a map of the same name (any case) is replaced
                    old = present.get(key.casefold())
                    if old is not None:
                        shutil.rmtree(staged / old) if (staged / old).is_dir() else (staged / old).unlink()
                current = json.loads(data).get("attributes") or {}
                recorded = {k: v for k, v in self._maps_of(current).items()
                            if k.casefold() not in {m.casefold() for m in maps}}
                written = self._write_maps(staged, maps, {key: dict(attrs or {}) for key in maps},
                                           self._pixel_size(current), timings)
                self._set_maps(staged, {**recorded, **written})
                seal(staged)
                self._publish(staged, final)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise

    @contextlib.contextmanager
    def _result_lock(self, name: str):
        """An advisory lock on one result's maps, across processes of this host (a no-op without fcntl)."""
        folder = self._hidden / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        with open(folder / name.lower(), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _complete(self, staged: Path, name: str, result: ImageResult, fill) -> None:
        """``fill(staged, result)``, then publish ``staged`` as ``name``; on any failure ``staged`` is removed."""
        try:
            with recording() as written:  # the files this write makes: their checksums need no read-back
                fill(staged, result)
            seal(staged, known=recorded(written, staged))  # what a rerun and `semtile verify` check it against
            self._publish(staged, self.path / name)
        except OSError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"{self.path}: no space left on the device (writing {name!r})") from None
            raise
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if self._owners is not None:
            self._owners[name] = source_key(result.source)

    # -- fencing --------------------------------------------------------------------------------------

    def fence(self, fence: Fence | None) -> None:
        """Write under ``fence`` (a run's lease): temporaries carry its token, and nothing is published once
        that lease has expired or was released (LeaseLost). None: this process's own lease."""
        self._fence = fence

    def lease(self, run_id: str) -> RunLease:
        return RunLease(self._hidden, run_id)  # held until its release()

    current_fence = property(lambda self: self._fence, doc="The lease this store writes under (None: the process's).")

    def _token(self) -> str:
        return self._fence.token if self._fence is not None else process_lease(self._hidden).token

    def check_fence(self, what: str = "") -> None:
        if self._fence is not None:  # LeaseLost unless the run's lease is held (its driver is alive)
            self._fence.check(what)

    def _temp(self, kind: str) -> Path:
        folder = real_folder(real_folder(self._hidden) / "tmp")
        return folder / f"{kind}~{self._token()}~{uuid.uuid4().hex[:12]}"

    def _publish(self, staged: Path, final: Path) -> None:
        """Rename ``staged`` to ``final``; an old ``final`` is moved aside first, and back if that fails.

        Refused (LeaseLost) when the writer's lease is gone: its run's driver ended, and what it read may be
        scratch that was removed."""
        self.check_fence(f"{final.name!r}")
        for _ in range(16):
            try:
                os.replace(staged, final)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) and not final.exists():
                    raise  # not because the name is taken: a real failure
            retired = self._temp("retired")
            try:
                os.replace(final, retired)
            except FileNotFoundError:
                continue  # another writer moved it first
            try:
                os.replace(staged, final)
            except OSError:
                if final.exists():  # another writer's result came in between: ours goes in over it
                    shutil.rmtree(retired, ignore_errors=True)
                    continue
                os.replace(retired, final)
                raise
            except BaseException:
                os.replace(retired, final)
                raise
            shutil.rmtree(retired, ignore_errors=True)
            return
        raise SemtileError(f"{final}: other writers kept replacing it; gave up")

    # -- claims ---------------------------------------------------------------------------------------

    def _known(self) -> dict[str, str]:
        """name -> source key of the results when first asked, and of this object's writes since."""
        if self._owners is None:
            self._owners = dict(self._results())
            self._occupied = {entry.casefold() for entry in os.listdir(self.path)} if self.path.is_dir() else set()
        return self._owners

    def _create(self, path: Path, content: dict) -> bool:
        """Create the file ``path`` holding ``content`` unless it exists; True if this call created it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(content).encode("utf-8")
        temp = self._temp("claim")
        temp.write_bytes(data)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        except (OSError, NotImplementedError):  # no hard links on this file system
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def _candidates(self, source: str | Path, key: str) -> Iterator[str]:
        known = self._known()
        mine = sorted((n for n, s in known.items() if s == key and n.casefold() not in RESERVED_NAMES),
                      key=lambda n: (len(n), n))
        yield from mine[:1]  # a result written before claims existed keeps its name
        base, k = safe_stem(source), 1
        while True:
            candidate = base if k == 1 else f"{base}-{k}"
            k += 1
            if not valid_name(candidate) or candidate.casefold() in RESERVED_NAMES \
                    or (candidate.casefold() in self._occupied and known.get(candidate) != key):
                continue
            yield candidate

    def claim(self, source: str | Path) -> str:
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot claim a name for {source}")
        key = source_key(source)
        entry = self._hidden / "sources" / _digest(key)
        mine = _read_claim(entry)
        if mine is not None and mine["source"] == key:
            return mine["name"]
        for candidate in self._candidates(source, key):
            final = self.path / candidate
            if (final.exists() or final.is_symlink()) and self._source_of(self._attrs(candidate) or {}) != key:
                continue  # appeared since this object looked: someone else's
            claim_file = self._hidden / "claims" / candidate.lower()
            created = self._create(claim_file, {"name": candidate, "source": key})
            if not created:
                other = _read_claim(claim_file)
                if other is None or other["source"] != key or other["name"] != candidate:
                    continue
            if self._create(entry, {"name": candidate, "source": key}):
                return candidate
            theirs = _read_claim(entry)  # another process claimed the same file at the same moment
            if theirs is None or theirs["source"] != key:
                return candidate
            if created and theirs["name"] != candidate:
                claim_file.unlink(missing_ok=True)
            return theirs["name"]
        raise AssertionError("unreachable")  # pragma: no cover

    def find(self, source: str | Path) -> str | None:
        key = source_key(source)
        mine = _read_claim(self._hidden / "sources" / _digest(key))
        if mine is not None and mine["source"] == key:
            return mine["name"] if self._source_of(self._attrs(mine["name"]) or {}) == key else None
        # Never claimed: a result written before claims existed (or under a name not claimed).
        found = sorted((n for n, s in self._known().items() if s == key), key=lambda n: (len(n), n))
        for name in found:
            if self._source_of(self._attrs(name) or {}) == key:
                return name
        return None

    # -- clean-up -------------------------------------------------------------------------------------

    def clean_stale(self) -> int:
        """Remove the temporaries whose writer's lease has expired or was released, and expired leases
        (:func:`semtile.store.cleanup.clean_temporaries`); how many temporaries went."""
        if self.read_only:
            raise SemtileError(f"{self.path}: opened read-only, cannot clean it")
        return clean_temporaries(self.path, self._hidden, self._discard)

    def _discard(self, path: Path) -> int:
        """Delete ``path`` (a child of the store's own folders): renamed first, so that two cleaners never
        both count it, then removed without following any link; 1 if this call took it."""
        return discard(path, self._temp("dead"))
