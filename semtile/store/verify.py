"""Whether a stored result is whole: a manifest of its files written at commit, and its arrays decoded.

**The manifest.** Just before a directory store publishes a result (``write``,
``commit``, ``add_maps``), :func:`seal` lists every file of the staged result
folder in ``<name>/.manifest.json``: its size, modification time (ns) and
CRC-32C (CRC-32 in manifests of earlier versions, which say so). The name starts with a dot, so no map can take it and Zarr never
lists it. It is renamed into place with the result, like ``provenance.json``.

**Two checks** read it (:func:`check_result`):

* *quick* (what a rerun does before it skips a result, and what
  :func:`semtile.results.open_results` does when a result's first array is
  opened): every listed file is stat-ed. One missing, of another size, or an
  unlisted file in one of the result's arrays (a chunk that was all fill value
  at commit has no file; one appearing later changes the data) is damage
  (arrays and maps added beside since, by hand or by another tool, are not); a file
  whose modification time changed (copied without keeping times, touched) is
  read and its CRC decides. A few stat calls per file, no data read.
* *full* (``semtile verify``): every listed file is read and its CRC
  compared; then every chunk of every array is decoded through Zarr (an array
  with a ``crc32c`` codec checks each chunk itself), and the result's record,
  provenance and adhesive ratio are checked against each other.

**What is detected.** With a manifest: any changed byte of any file of the
result (full), a missing, truncated or extra file (quick and full). Without
one (results written before manifests): chunks that no longer decode (a
truncated or damaged compressed chunk usually fails), unreadable metadata
and an inconsistent record; a flipped byte in a chunk that still decodes
(Zstandard frames carry no checksum, and float data barely compresses) goes
unseen unless the array has a ``crc32c`` codec, and a deleted chunk file
reads as the fill value.

**Repair** (:func:`set_aside`): a damaged result folder is renamed to
``.semtile/damaged/<name>~<UTC time>~<token>`` with a ``.json`` beside it giving
the reasons. Its claim stays, so the next run finds no result for that input,
redoes it under the same name, and the evidence is kept.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import google_crc32c
import numpy as np

from semtile.errors import DamagedResultError

# A result's manifest and provenance.json are files Zarr does not know: listing a result's members warns about
# each. The filter is set once, for these two names only (catch_warnings is not thread-safe, and results are
# verified on a pool).
warnings.filterwarnings("ignore", message=r"Object at (.*/)?(\.manifest\.json|provenance\.json) is not recognized",
                        category=UserWarning)
__all__ = ["MANIFEST", "MANIFEST_FORMAT", "MANIFEST_CHECKSUM", "CHECKSUMS", "Damage", "StoreVerdict", "seal",
           "read_manifest", "check_files", "checksum_kind", "bytes_checksum", "decode_arrays", "check_record", "check_result", "verify_store", "set_aside", "DAMAGED", "locate_chunk", "UnreadableManifest"]

MANIFEST = ".manifest.json"
MANIFEST_FORMAT = "semtile-manifest/1"
DAMAGED = "damaged"  # under the store's .semtile: results set aside by ``semtile verify --repair``
_BLOCK = 1 << 22  # bytes read at a time for a CRC


@dataclass(frozen=True)
class Damage:
    """One thing wrong with a result: where (``array``, ``chunk``: the file's path in the result) and why."""

    reason: str
    array: str | None = None
    chunk: str | None = None

    def __str__(self) -> str:
        where = f"array {self.array!r}" if self.array else ""
        if self.chunk:
            where = f"{where} chunk {self.chunk}" if where else f"file {self.chunk}"
        return f"{where}: {self.reason}" if where else self.reason

    def error(self, store: Path, name: str) -> DamagedResultError:
        return DamagedResultError(store, name, self.reason, array=self.array, chunk=self.chunk)


#: The manifest's file checksums by name: ``crc32c`` (hardware-fast) for manifests written now; ``crc32`` (zlib)
#: for those of earlier versions, which stay readable.
CHECKSUMS: dict[str, Callable[[bytes, int], int]] = {"crc32": zlib.crc32,
                                                     "crc32c": lambda data, crc: google_crc32c.extend(crc, data)}
MANIFEST_CHECKSUM = "crc32c"


def checksum_kind(manifest: dict) -> str:
    """The checksum a manifest's entries were taken with (``crc32`` for manifests that do not say)."""
    kind = manifest.get("checksum", "crc32")
    if kind not in CHECKSUMS:
        raise UnreadableManifest(Damage(f"manifest checksum {kind!r} is not one of {sorted(CHECKSUMS)}",
                                        chunk=MANIFEST))
    return kind


def bytes_checksum(data: bytes, kind: str = MANIFEST_CHECKSUM) -> int:
    return CHECKSUMS[kind](data, 0)


def _crc(path: Path, kind: str = MANIFEST_CHECKSUM) -> int:
    update = CHECKSUMS[kind]
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            crc = update(block, crc)
    return crc


def _files(folder: Path) -> Iterable[str]:
    """Every regular file under ``folder`` (links not followed), as posix paths relative to it, the manifest left out."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        rel = Path(root).relative_to(folder)
        for name in files:
            path = (rel / name).as_posix()
            if path != MANIFEST:
                yield path
        dirs.sort()


def seal(folder: str | Path, known: dict | None = None) -> dict:
    """Write the manifest of the result folder ``folder`` (every file: size, mtime_ns, crc32c); return it.

    ``known``: ``{posix path: (size, crc32c)}`` of files just written (:func:`semtile.store.written.recorded`);
    one still of that size takes that checksum, of the bytes handed to the system, and is not read back. A
    folder that has a manifest (a committed result copied by ``add_maps``) keeps its checksum and the entries
    of the files whose size and time are unchanged: damage they took before the copy stays visible.
    """
    folder = Path(folder)
    try:
        previous = read_manifest(folder) or {}
        kind = checksum_kind(previous) if previous else MANIFEST_CHECKSUM
    except UnreadableManifest:
        previous, kind = {}, MANIFEST_CHECKSUM
    old = previous.get("files", {})
    known = known if kind == "crc32c" else None  # the writer's checksums are crc32c
    files = {}
    for rel in sorted(_files(folder)):
        path = folder / rel
        st = os.lstat(path)
        kept = old.get(rel)
        noted = known.get(rel) if known else None
        if kept is not None and kept[0] == st.st_size and kept[1] == st.st_mtime_ns:
            files[rel] = list(kept)
        elif noted is not None and noted[0] == st.st_size:
            files[rel] = [st.st_size, st.st_mtime_ns, noted[1]]
        else:
            files[rel] = [st.st_size, st.st_mtime_ns, _crc(path, kind)]
    manifest = {"format": MANIFEST_FORMAT, "checksum": kind, "files": files}
    # A new file renamed over the old: a copy made by hard links (add_maps) never writes the original's manifest.
    temp = folder / f"{MANIFEST}.{uuid.uuid4().hex[:8]}"
    temp.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
    os.replace(temp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a result folder: None when it has none (written before manifests); Damage if unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UnreadableManifest(Damage(f"manifest unreadable ({type(exc).__name__})", chunk=MANIFEST)) from None
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) for x in v) for v in files.values()):
        raise UnreadableManifest(Damage("manifest damaged (not a semtile manifest)", chunk=MANIFEST))
    checksum_kind(data)
    return data


class UnreadableManifest(Exception):
    """A manifest that is there but cannot be read: the damage it stands for is ``damage``."""

    def __init__(self, damage: Damage):
        self.damage = damage


def _array_of(rel: str, arrays: Iterable[str]) -> str | None:
    """The array a file belongs to (its longest path prefix among ``arrays``)."""
    best = None
    for array in arrays:
        if rel.startswith(array + "/") and (best is None or len(array) > len(best)):
            best = array
    return best


def _array_paths(files: Iterable[str]) -> list[str]:
    """Paths of the arrays among a result's files: folders holding ``zarr.json`` and chunks under ``c/``."""
    folders = {rel.rsplit("/", 1)[0] for rel in files if rel.endswith("/zarr.json")}
    return sorted(f for f in folders if any(r.startswith(f + "/c/") or r == f + "/c" for r in files))


def check_files(folder: str | Path, *, full: bool, under: str | None = None) -> list[Damage] | None:
    """The result folder's files against its manifest; None when it has no manifest (nothing to compare).

    ``full``: every file read and its CRC compared; otherwise sizes only, and the
    CRC of files whose modification time changed. ``under``: only the files
    below that path (one array).
    """
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
        kind = checksum_kind(manifest) if manifest is not None else None
    except UnreadableManifest as exc:
        return [exc.damage]
    if manifest is None:
        return None
    listed: dict = manifest["files"]
    if under is not None:
        listed = {k: v for k, v in listed.items() if k.startswith(under.rstrip("/") + "/")}
    arrays = _array_paths(manifest["files"])
    found: list[Damage] = []
    for rel, (size, mtime_ns, crc) in listed.items():
        array = _array_of(rel, arrays)
        chunk = rel[len(array) + 1:] if array else rel
        try:
            st = os.lstat(folder / rel)
        except FileNotFoundError:
            found.append(Damage("missing", array, chunk))
            continue
        except OSError as exc:
            found.append(Damage(f"cannot be read ({exc.strerror})", array, chunk))
            continue
        if st.st_size != size:
            found.append(Damage(f"{st.st_size} bytes, {size} when written (truncated or replaced)", array, chunk))
        elif full or st.st_mtime_ns != mtime_ns:
            try:
                now = _crc(folder / rel, kind)
            except OSError as exc:
                found.append(Damage(f"cannot be read ({exc.strerror})", array, chunk))
                continue
            if now != crc:
                found.append(Damage(f"checksum {now:08x}, {crc:08x} when written (bytes changed)", array, chunk))
    base = folder / under if under else folder
    if base.is_dir():
        prefix = f"{under.rstrip('/')}/" if under else ""
        for rel in _files(base):
            rel = prefix + rel
            array = _array_of(rel, arrays)
            # A file added to an array written with the result changes its data (a chunk that was all fill
            # value has no file); new arrays or maps added beside, by hand or by another tool, are not damage.
            if rel not in listed and array is not None:
                found.append(Damage("not written with the result (a file added since)", array, rel[len(array) + 1:]))
    return found


def _chunk_grid(array) -> tuple[int, ...]:
    """The shape of one stored file of ``array``: its shard where sharded, else its chunk."""
    shards = getattr(array, "shards", None)
    return tuple(int(s) for s in (shards or array.chunks))


def _chunk_key(array, coords: tuple[int, ...]) -> str:
    try:
        return array.metadata.encode_chunk_key(coords)
    except Exception:  # noqa: BLE001 - a metadata without key encoding (Zarr v2): name it by coordinates
        return ".".join(str(c) for c in coords)


def locate_chunk(array, key=None) -> tuple[str, str] | None:
    """The first chunk file of ``array`` (within the region ``key``, default all) that fails to read: (key, why)."""
    grid = _chunk_grid(array)
    shape = tuple(int(s) for s in array.shape)
    if key is None or not isinstance(key, tuple):
        key = (slice(None),) * len(shape)
    ranges = []
    for k, (size, step) in enumerate(zip(shape, grid, strict=True)):
        part = key[k] if k < len(key) else slice(None)
        if isinstance(part, slice):
            start, stop, _ = part.indices(size)
        elif isinstance(part, (int, np.integer)):
            start, stop = int(part) % size if size else 0, int(part) % size + 1 if size else 0
        else:
            start, stop = 0, size
        ranges.append(range(start // step, max(start // step, math.ceil(stop / step))))
    for coords in np.ndindex(*(len(r) for r in ranges)):
        c = tuple(r[i] for r, i in zip(ranges, coords, strict=True))
        region = tuple(slice(ci * s, min((ci + 1) * s, n)) for ci, s, n in zip(c, grid, shape, strict=True))
        try:
            array[region]
        except Exception as exc:  # noqa: BLE001 - whatever a codec raises for bad bytes
            return _chunk_key(array, c), _why(exc)
    return None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"does not decode ({type(exc).__name__}{': ' + text[:160] if text else ''})"


def _arrays(folder: Path) -> list[tuple[str, object]]:
    import zarr

    group = zarr.open_group(str(folder), mode="r", zarr_format=3)
    members = list(group.members(max_depth=None))
    return sorted(((path, node) for path, node in members if isinstance(node, zarr.Array)),
                  key=lambda item: item[0])


def decode_arrays(folder: str | Path) -> tuple[list[Damage], dict]:
    """Every chunk of every array of the result folder decoded; the damage found and the level-0 label count.

    Read a band of chunk rows at a time (bounded memory); a band that fails is
    read chunk by chunk to name the chunk. Returns ``(damage, facts)`` with
    ``facts["adhesive"]`` / ``facts["pixels"]`` counted on the full-resolution
    label image where there is one.
    """
    folder = Path(folder)
    found: list[Damage] = []
    facts: dict = {}
    try:
        arrays = _arrays(folder)
    except Exception as exc:  # noqa: BLE001 - a group whose metadata zarr cannot read
        return [Damage(f"the group's metadata does not open ({type(exc).__name__}: {str(exc)[:160]})")], facts
    for path, array in arrays:
        grid = _chunk_grid(array)
        shape = tuple(int(s) for s in array.shape)
        count = 0
        band = grid[0] if shape else 1
        rows = shape[0] if shape else 1
        for r in range(0, max(rows, 1), max(band, 1)):
            region = (slice(r, r + band),) if shape else ()
            try:
                block = np.asarray(array[region] if shape else array[...])
            except Exception:  # noqa: BLE001 - find the chunk
                where = locate_chunk(array, region if shape else None)
                key, why = where if where else ("?", "does not decode")
                found.append(Damage(why, path, key))
                count = None
                continue
            if count is not None and path in ("labels/adhesive/0", "binary_mask"):
                count += int(np.count_nonzero(block))
        if path in ("labels/adhesive/0", "binary_mask") and count is not None:
            facts["adhesive"], facts["pixels"] = count, int(np.prod(shape))
    return found, facts


def check_record(folder: Path, attrs: dict | None, facts: dict | None = None) -> list[Damage]:
    """The result's metadata, record and provenance, consistent with each other and with its label count."""
    if attrs is None:
        return [Damage("metadata (zarr.json) unreadable or not a result group", chunk="zarr.json")]
    semtile = attrs.get("semtile") if isinstance(attrs.get("semtile"), dict) else attrs
    found = []
    source = semtile.get("source_path")
    labels, label, ratio = semtile.get("labels"), semtile.get("label"), semtile.get("adhesive_ratio")
    if not isinstance(source, str):
        found.append(Damage("no source path in its metadata", chunk="zarr.json"))
    if not isinstance(labels, list) or label not in labels:
        found.append(Damage(f"label {label!r} is not one of its labels", chunk="zarr.json"))
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= float(ratio) <= 1.0:
        found.append(Damage(f"adhesive ratio {ratio!r} is not a share in [0, 1]", chunk="zarr.json"))
    elif facts and facts.get("pixels"):
        counted = facts["adhesive"] / facts["pixels"]
        if abs(counted - float(ratio)) > 1e-6:
            found.append(Damage(f"adhesive ratio {float(ratio):.6f} recorded, the stored mask has {counted:.6f}",
                                chunk="zarr.json"))
    record = semtile.get("record")
    if record is not None and not isinstance(record, dict):
        found.append(Damage("completion record damaged (not a record)", chunk="zarr.json"))
    inner = semtile.get("attrs") if isinstance(semtile.get("attrs"), dict) else {}
    stub = inner.get("provenance")
    if isinstance(stub, dict) and isinstance(stub.get("document"), str) and "/" not in stub["document"]:
        import hashlib

        try:
            data = (folder / stub["document"]).read_bytes()
        except OSError:
            found.append(Damage("provenance document missing", chunk=stub["document"]))
        else:
            if isinstance(stub.get("sha256"), str) and hashlib.sha256(data).hexdigest() != stub["sha256"]:
                found.append(Damage("provenance document does not match its sha256", chunk=stub["document"]))
    return found


def _group_attrs(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or not isinstance(meta.get("attributes"), dict):
        return None
    return meta["attributes"]


def check_result(folder: str | Path, *, full: bool = True) -> list[Damage]:
    """Everything wrong with the result folder ``folder`` (empty: whole). See the module docstring."""
    folder = Path(folder)
    files = check_files(folder, full=full)
    found = list(files or [])
    if not full:
        return found
    decoded, facts = decode_arrays(folder)
    seen = {(d.array, d.chunk) for d in found}
    found += [d for d in decoded if (d.array, d.chunk) not in seen]
    found += check_record(folder, _group_attrs(folder), facts if not decoded else None)
    return found


@dataclass
class StoreVerdict:
    """What ``semtile verify`` found: results checked, the damaged ones with their damage, how long it took."""

    store: Path
    checked: int = 0
    damaged: dict[str, list[Damage]] = field(default_factory=dict)
    manifests: int = 0  # results with a manifest (the others: decode and record checks only)
    seconds: float = 0.0
    set_aside: dict[str, Path] = field(default_factory=dict)
    bytes_read: int = 0


def _candidates(store: Path, names: Iterable[str]) -> list[str]:
    """The store's results, and folders its claims name that are no readable result (damaged metadata)."""
    out = set(names)
    claims = store / ".semtile" / "claims"
    if claims.is_dir():
        for entry in os.scandir(claims):
            try:
                data = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            name = data.get("name") if isinstance(data, dict) else None
            if isinstance(name, str) and name and not name.startswith(".") and "/" not in name \
                    and (store / name).is_dir() and not (store / name).is_symlink():
                out.add(name)
    return sorted(out)


def verify_store(store, *, full: bool = True, workers: int | None = None, names: Iterable[str] | None = None,
                 progress: Callable[[str, list[Damage]], None] | None = None) -> StoreVerdict:
    """Check every result of ``store`` (a :class:`~semtile.store.base.ResultStore`), ``workers`` threads at once."""
    t0 = time.perf_counter()
    path = Path(store.path)
    todo = _candidates(path, store.names() if names is None else names)
    verdict = StoreVerdict(store=path)

    def one(name: str) -> tuple[str, list[Damage], bool, int]:
        folder = path / name
        manifest = (folder / MANIFEST).is_file()
        size = _size(folder) if full else 0
        return name, check_result(folder, full=full), manifest, size

    workers = max(1, workers or min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, damage, manifest, size in pool.map(one, todo):
            verdict.checked += 1
            verdict.manifests += manifest
            verdict.bytes_read += size
            if damage:
                verdict.damaged[name] = damage
            if progress:
                progress(name, damage)
    verdict.seconds = time.perf_counter() - t0
    return verdict


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def set_aside(store: Path, name: str, damage: list[Damage]) -> Path:
    """Move the damaged result ``name`` out of the store's results into ``.semtile/damaged/``, its reasons beside it.

    The input's claim stays: the next run finds no result, redoes the input and stores it under the same name.
    """
    store = Path(store)
    folder = store / ".semtile" / DAMAGED
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{name}~{stamp}~{uuid.uuid4().hex[:8]}"
    source = store / name
    if source.is_symlink() or not source.is_dir():
        raise DamagedResultError(store, name, "not a result folder; left alone")
    if not check_result(source, full=True):  # written again since it was checked (a rerun): whole now
        raise DamagedResultError(store, name, "whole now (written again since it was checked); left alone")
    os.replace(source, target)
    note = {"name": name, "set_aside": stamp, "damage": [{"array": d.array, "chunk": d.chunk, "reason": d.reason}
                                                           for d in damage]}
    (target.parent / f"{target.name}.json").write_text(json.dumps(note, indent=1) + "\n", encoding="utf-8")
    return target
