"""The result-store interface every backend implements, and the naming rule they share.

A result store holds one result per input image under a *name*. Its contract:

* ``claim(source)`` reserves a safe name for an input file, atomically across
  processes and runs: the same file always gets back its own name; another
  file with the same stem gets a numbered suffix, even when two processes
  claim at the same moment. ``name_for`` is an alias of ``claim``.
* ``write(name, result)`` is atomic: a reader sees the complete new result, the
  complete previous one, or (at worst, briefly, while a name is replaced) none,
  never a partial one. It replaces that name only. A failed write raises and
  leaves the store as it was. Two writers of one name end with one complete
  result; writers of different names never disturb each other.
* ``names()`` lists completed results only, never temporary or partial ones.
* ``read(name)`` returns what was written; the arrays are read lazily, from the
  result's place: arrays read after the name was replaced (a rerun writing it
  again) are the new result's.
* ``find(source)`` is the name of the completed result of an input file (or
  None); ``record(name)`` the completion record written with it
  (``ImageResult.record``, or None).
* ``clean_stale()`` removes the temporaries of writers that died and returns
  how many; those of live writers stay.
* **Extra maps** (anomaly maps, explanation heat maps...): ``ImageResult.maps``
  (name -> float array of the mask's shape, ``(rows, cols)`` or ``(C, rows, cols)``)
  are written with the result, atomically, at the top of its group (an image
  pyramid ``NAME/0, 1, ...`` in OME-Zarr, a plain array ``NAME`` in the plain
  store); ``ImageResult.map_attrs`` (name -> JSON-able dict) is their
  provenance. ``add_maps(name, maps, attrs)`` adds maps to a committed
  result without ever exposing a half-written one: the result is copied
  beside (hard links), the maps written into the copy, and the copy renamed
  into place; a crash leaves the old result, a map of the same name is
  replaced. ``StoredResult.maps`` is name -> attrs (with ``dtype``,
  ``shape``); ``StoredResult.map(name, level)`` opens one lazily.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semtile.errors import SemtileError

__all__ = ["ImageResult", "StoredResult", "ResultStore", "RESULT_KEYS", "ARRAYS", "RESERVED_NAMES", "check_result",
           "jsonable", "pick_name", "safe_stem", "source_key", "valid_name", "check_maps", "check_map_name",
           "MAP_RESERVED", "map_dtype"]

# Attributes the store itself records for every result; ``ImageResult.attrs`` may not use them.
RESULT_KEYS = ("source_path", "labels", "label", "adhesive_ratio")
# The arrays of every result.
ARRAYS = ("mask", "binary_mask", "class_probs")
# Names no result may take on any file system (Windows device names; compared case-insensitively).
_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                           *(f"lpt{i}" for i in range(1, 10))})
# Names of Zarr and OME-NGFF metadata and structure that no result may take (compared case-insensitively).
RESERVED_NAMES = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata", "labels", "ome"})
MAX_NAME = 240  # a stem is cut to this many characters; suffixes stay under 255
# Names no extra map may take: the result group's own entries (compared case-insensitively).
MAP_RESERVED = frozenset({*ARRAYS, "image", "labels", "zarr.json", "ome", "semtile"})


@dataclass
class ImageResult:
    """Everything semtile writes about one image."""

    source: Path
    mask: np.ndarray  # (rows, cols) adhesive probability over the valid area: float, or uint8 round(p * 255)
    binary_mask: np.ndarray  # (rows, cols) bool
    class_probs: np.ndarray  # (n_labels,) float32
    labels: list
    label: object
    adhesive_ratio: float
    attrs: dict = field(default_factory=dict)
    # The normalised image the mask was computed on: 2-d float32 in [0, 1], the mask's shape, numpy or any
    # array-like (a zarr array is read once). Stores that keep the image (OME-Zarr) refuse a result without it.
    image: Any = None
    # The completion record (JSON-able), written atomically with the result; ``ResultStore.record`` returns it.
    record: dict | None = None
    # Extra maps, name -> float array (rows, cols) or (C, rows, cols) of the mask's shape (float16 stays float16,
    # anything else is stored as float32); numpy or any array-like with shape and slicing.
    maps: dict = field(default_factory=dict)
    # Provenance of each extra map (name -> JSON-able dict), kept with it in the result's attributes.
    map_attrs: dict = field(default_factory=dict)
    # How the mask is stored: "uint8" (round(p * 255), None: the default), "float16" or "float32".
    mask_dtype: str | None = None


@dataclass
class StoredResult:
    """One completed result read back from a store.

    ``mask``, ``binary_mask`` and ``class_probs`` are opened on first use and
    read lazily: array-likes with ``shape``, ``dtype``, ``[...]`` slicing to
    numpy and ``np.asarray``. ``mask`` is the probability in [0, 1] as float32
    whatever the stored dtype (``stored("mask")`` gives the stored values).
    ``attrs`` is ``ImageResult.attrs`` as written (JSON round trip: tuples come back as lists).
    """

    name: str
    source: Path
    labels: list
    label: Any
    adhesive_ratio: float
    attrs: dict
    open_array: Callable[[str], Any] = field(repr=False)
    record: dict | None = None
    # The extra maps: name -> their attributes (``dtype``, ``shape``, ``levels`` and the provenance given).
    maps: dict = field(default_factory=dict)
    open_map: Callable[[str, int], Any] | None = field(default=None, repr=False)

    def map(self, name: str, level: int = 0):
        """The extra map ``name`` (pyramid ``level``, where the store keeps levels) as a lazy array-like."""
        if name not in self.maps or self.open_map is None:
            raise SemtileError(f"{self.name}: no map {name!r} (it has {sorted(self.maps) or 'none'})")
        return self.open_map(name, level)

    @property
    def mask(self):
        return self.open_array("mask")

    def stored(self, key: str):
        """The array ``key`` ("mask", "image", "binary_mask", "class_probs") as stored, undecoded (uint8 mask...)."""
        return self.open_array(f"stored:{key}")

    @property
    def binary_mask(self):
        return self.open_array("binary_mask")

    @property
    def class_probs(self):
        return self.open_array("class_probs")

    @property
    def image(self):
        """The stored image as float32 in [0, 1] (SemtileError where the store keeps no image)."""
        return self.open_array("image")


class ResultStore(abc.ABC):
    """A place holding one result per input image; see the module docstring for the contract."""

    path: Path
    read_only: bool
    #: Whether results can be written region by region (``stage``, ``write_region``, ``commit``): large scans.
    supports_regions: bool = False

    @abc.abstractmethod
    def claim(self, source: str | Path) -> str:
        """Reserve a safe, unique name for input file ``source``, atomically across processes and runs.

        The same file always gets back its own name (SemtileError if read-only).
        """

    def name_for(self, source: str | Path) -> str:
        """The old name of :meth:`claim`."""
        return self.claim(source)

    @abc.abstractmethod
    def find(self, source: str | Path) -> str | None:
        """The name of the completed result of input file ``source``, or None."""

    @abc.abstractmethod
    def record(self, name: str) -> dict | None:
        """The completion record written with the result ``name``; None when it has none or there is no such result."""

    @abc.abstractmethod
    def clean_stale(self) -> int:
        """Remove the temporaries of writers that died; return how many. A live writer's stay."""

    @abc.abstractmethod
    def write(self, name: str, result: ImageResult, timings: dict | None = None) -> None:
        """Store ``result`` under ``name`` atomically, replacing only that name (SemtileError if read-only).

        ``timings`` (a dict): seconds are added under "encode", "pyramid" and "write" where the store has them.
        """

    @abc.abstractmethod
    def add_maps(self, name: str, maps: Mapping[str, Any], attrs: dict | None = None,
                 timings: dict | None = None) -> None:
        """Add the extra ``maps`` (name -> array of the result's mask shape) to the committed result ``name``.

        Atomic: readers see the result without the new maps or with all of
        them, never a half-written one; a crash leaves the old result intact;
        a map of the same name is replaced. ``attrs`` (JSON-able) is recorded
        as each new map's provenance in the result's attributes
        (``StoredResult.maps``). SemtileError naming the store and result when
        there is no such result, a map is of the wrong shape or name, or the
        store is read-only.
        """

    # -- results written region by region (large scans, maybe from many processes) --------------------
    # Stores with ``supports_regions`` implement these; the others refuse.

    def stage(self, shape: tuple[int, int], pixel_size_m: Any = None, maps: Any = (), *,
              mask_dtype: str | None = None, input_dtype: Any = None, photometric: Any = None) -> Path:
        """A new temporary result of ``shape`` with empty arrays (and the extra ``maps``), for region writes."""
        raise SemtileError(f"{self.path}: this store cannot write results region by region")

    def region_levels(self, shape: tuple[int, int], side: int) -> int:
        """Pyramid levels ``0..k`` a region of ``side`` pixels writes itself (the coarser ones are built at commit)."""
        raise SemtileError(f"{self.path}: this store cannot write results region by region")

    def write_region(self, staged: str | Path, y0: int, x0: int, *, image: Any, binary_mask: Any, mask: Any,
                     levels: int, maps: Mapping[str, Any] | None = None, timings: dict | None = None) -> None:
        """Write one region of a staged result at ``(y0, x0)``; regions must be aligned so no chunk has two writers."""
        raise SemtileError(f"{self.path}: this store cannot write results region by region")

    def staged_arrays(self, staged: str | Path) -> dict[str, Any]:
        """The staged result's ``image``, ``mask`` and ``binary_mask`` arrays (to build its ImageResult)."""
        raise SemtileError(f"{self.path}: this store cannot write results region by region")

    def commit(self, name: str, staged: str | Path, result: ImageResult, *, built_levels: int,
               timings: dict | None = None) -> None:
        """Finish a staged result whose regions are all written and publish it under ``name``, atomically."""
        raise SemtileError(f"{self.path}: this store cannot write results region by region")

    # -- fencing (a run's lease; directory stores check it before every commit) --------------------------

    current_fence = None

    def fence(self, fence) -> None:
        """Commit only while ``fence`` (a :class:`~semtile.store.lease.Fence`) is held; None: no run's lease."""
        self.current_fence = fence

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The names of the completed results, sorted; never temporary or partial ones."""

    @abc.abstractmethod
    def read(self, name: str) -> StoredResult:
        """The result stored under ``name``; SemtileError naming it when there is none."""

    def verify(self, name: str, full: bool = False) -> list[str]:
        """What is wrong with the stored result ``name`` (empty: nothing found); see :mod:`semtile.store.verify`.

        Quick (``full=False``): its files against the manifest written at commit,
        by size (and CRC where a modification time changed). Full: every file's
        CRC, every chunk decoded, the record checked.
        """
        from semtile.store.verify import check_result as _check_stored

        folder = Path(self.path) / name
        if not valid_name(name) or folder.is_symlink() or not folder.is_dir():
            return []
        return [str(d) for d in _check_stored(folder, full=full)]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __repr__(self) -> str:
        mode = "r" if self.read_only else "a"
        return f"{type(self).__name__}({str(self.path)!r}, mode={mode!r})"


def source_key(source: str | Path) -> str:
    """How a store identifies an input file: its absolute, resolved path."""
    return str(Path(source).resolve())


def safe_stem(source: str | Path) -> str:
    """The file's stem in ``[A-Za-z0-9._-]``, not starting or ending in ``._-``; "image" if nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem).strip("._-")
    name = name[:MAX_NAME].rstrip("._-")
    return name or "image"


def pick_name(source: str | Path, owners: Mapping[str, str], occupied: Iterable[str] = ()) -> str:
    """The name for ``source`` given ``owners`` (result name -> source key) and other ``occupied`` names.

    A name the file already owns is kept (the first in suffix order); otherwise
    the stem, then ``stem-2``, ``stem-3``... up to the first name that is free
    case-insensitively (macOS and Windows folders ignore case), is no device
    or metadata name (``RESERVED_NAMES``) and is not ``occupied`` (the store's own metadata, stray entries).
    """
    key, base = source_key(source), safe_stem(source)
    mine = [name for name, owner in owners.items() if owner == key and name.casefold() not in RESERVED_NAMES]
    if mine:
        return min(mine, key=lambda name: (_suffix(name, base), name))
    taken = {name.casefold() for name in (*owners, *occupied)} | _DEVICE_NAMES | RESERVED_NAMES
    candidate, k = base, 1
    while candidate.casefold() in taken:
        k += 1
        candidate = f"{base}-{k}"
    return candidate


def _suffix(name: str, base: str) -> float:
    if name == base:
        return 1
    match = re.fullmatch(re.escape(base) + r"-(\d+)", name)
    return int(match.group(1)) if match else float("inf")


def valid_name(name: object) -> bool:
    """Whether ``name`` can be a result name: what ``safe_stem`` and ``pick_name`` produce."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)
            is not None and name.casefold() not in _DEVICE_NAMES)


def check_result(name: str, result: ImageResult) -> None:
    """SemtileError unless ``name`` is a valid name and ``result`` is writable as it stands."""
    if not valid_name(name):
        raise SemtileError(f"{name!r}: not a valid result name (use claim)")
    if name.casefold() in RESERVED_NAMES:
        raise SemtileError(f"{name!r}: the name of Zarr or OME-NGFF metadata, not a valid result name")
    shape = np.shape(result.mask)
    if len(shape) != 2 or np.shape(result.binary_mask) != shape:
        raise SemtileError(f"{result.source}: mask {shape} and binary mask {np.shape(result.binary_mask)} "
                           "must be the same 2-d shape")
    clash = sorted(set(result.attrs) & set(RESULT_KEYS))
    if clash:
        raise SemtileError(f"{result.source}: attrs {clash} would shadow the result's own fields")
    check_maps(result.source, shape, result.maps, result.map_attrs)
    if result.record is not None and not isinstance(result.record, dict):
        raise SemtileError(f"{result.source}: record must be a dict, not {type(result.record).__name__}")
    for what, value in (("attrs", result.attrs), ("record", result.record), ("label", result.label),
                        ("labels", list(result.labels))):
        try:
            json.dumps(jsonable(value), allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise SemtileError(f"{result.source}: {what} is not JSON-able ({exc})") from None


def check_map_name(where: object, name: object) -> str:
    """``name`` if it can name an extra map (like a result name, not one of the group's own entries or a digit)."""
    if not valid_name(name) or name.isdigit() or name.casefold() in MAP_RESERVED or name.startswith("semtile_"):
        raise SemtileError(f"{where}: {name!r} cannot name a map (letters, digits, '._-'; not a level number "
                           f"or one of {sorted(MAP_RESERVED)})")
    return name


def check_maps(where: object, shape: tuple, maps: Mapping[str, Any], map_attrs: Mapping[str, Any] | None = None) -> None:
    """SemtileError unless every map is a float (or bool/int, stored as float32) array of the mask's ``shape``."""
    if not isinstance(maps, Mapping):
        raise SemtileError(f"{where}: maps must be a dict of name -> array, not {type(maps).__name__}")
    for name, array in maps.items():
        check_map_name(where, name)
        got = tuple(np.shape(array))
        if got[-2:] != tuple(shape) or len(got) not in (2, 3):
            raise SemtileError(f"{where}: map {name!r} of shape {got} must be {tuple(shape)} or (C, *{tuple(shape)}), "
                               "the mask's shape")
        dtype = np.dtype(array.dtype if hasattr(array, "dtype") else np.asarray(array).dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
            raise SemtileError(f"{where}: map {name!r} must hold real numbers, not {dtype}")
    for name, value in (map_attrs or {}).items():
        if not isinstance(value, Mapping):
            raise SemtileError(f"{where}: map_attrs[{name!r}] must be a dict")
        try:
            json.dumps(jsonable(value), allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise SemtileError(f"{where}: map_attrs[{name!r}] is not JSON-able ({exc})") from None


def map_dtype(array: Any) -> np.dtype:
    """How a map is stored: float16 stays float16, anything else becomes float32."""
    dtype = np.dtype(getattr(array, "dtype", np.float32))
    return np.dtype(np.float16) if dtype == np.float16 else np.dtype(np.float32)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists, tuples into lists.

    What stores write into Zarr attributes, which take JSON types only.
    """
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value
