"""Defect datasets in memory: patches or whole scans, their labels, defect masks and a stratified split.

A dataset is the usual folder with ``labels.csv`` (``path,label``). Two shapes:

* **patches** (``semtile synth lattice``): every image at most
  :data:`PATCH_MAX_SIDE` pixels a side, read whole (no data bar); label 1 =
  defect, 0 = perfect; defect masks in ``masks/`` beside ``images/``.
* **scans** (``semtile synth --defects``, or your own): read through the same
  reader as ``semtile process`` (data bar excluded, gray in [0, 1]); defect
  masks, where there are any, in ``defect_masks/`` beside ``images/``.

The split is stratified by label and seeded (:func:`semtile.io.dataset.split_samples`),
or taken from a ``split`` column of labels.csv.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from semtile.errors import DatasetError
from semtile.io.dataset import Sample, read_labels, split_samples
from semtile.logs import get_logger

__all__ = ["PATCH_MAX_SIDE", "DefectData", "load_defect_data", "read_patch", "read_mask", "mask_path"]

log = get_logger("semtile.defects")

#: Images no larger than this on both sides are patches, read whole.
PATCH_MAX_SIDE = 128


@dataclass
class DefectData:
    """A dataset in memory. ``images`` are float32 in [0, 1]; ``masks`` bool, None where a file has none."""

    samples: list[Sample]
    images: list[np.ndarray]
    labels: np.ndarray  # the labels.csv labels, in sample order
    masks: list[np.ndarray | None]
    split: dict[str, list[int]]
    patches: bool
    source: str = ""
    info: dict = field(default_factory=dict)

    def names(self, part: str) -> list[str]:
        return [self.samples[i].path.name for i in self.split[part]]

    def binary_labels(self) -> np.ndarray:
        """Labels as 0/1 (1 = defect); the dataset must use exactly those labels."""
        found = sorted({str(v) for v in self.labels.tolist()})
        if not set(found) <= {"0", "1"} or len(found) < 2:
            raise DatasetError(f"{self.source}: a defect classifier needs labels 0 (normal) and 1 (defect) "
                               f"in labels.csv, found {found}")
        return np.array([int(v) for v in self.labels.tolist()], dtype=np.int64)

    def stack(self, indices: list[int]) -> np.ndarray:
        """Patches ``indices`` as one (n, T, T) float32 array (patch datasets only)."""
        if not self.patches:
            raise DatasetError(f"{self.source}: holds whole scans, not patches")
        return np.stack([self.images[i] for i in indices]) if indices else np.zeros((0, 0, 0), np.float32)


def _to_unit(path: Path, raw: np.ndarray) -> np.ndarray:
    if raw.ndim != 2:
        raise DatasetError(f"{path}: a patch must be a 2-D gray image, got shape {raw.shape}")
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or raw.min() < 0 or raw.max() > 1:
            raise DatasetError(f"{path}: float patches must hold finite values in [0, 1]")
        return raw.astype(np.float32)
    raise DatasetError(f"{path}: patches must be 8- or 16-bit gray or float in [0, 1], got {raw.dtype}")


def read_patch(path: str | Path) -> np.ndarray:
    """A small image read whole, as float32 gray in [0, 1]."""
    path = Path(path)
    try:
        raw = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many kinds
        raise DatasetError(f"{path}: cannot read the patch ({type(exc).__name__}: {exc})") from exc
    return _to_unit(path, np.asarray(raw))


def _read_scan(path: Path) -> np.ndarray:
    from semtile.io.tiff import open_scan

    with open_scan(path) as scan:
        return np.ascontiguousarray(scan.valid().compute(), dtype=np.float32)


def mask_path(sample_path: Path, patches: bool) -> Path:
    """Where a sample's defect mask lives: ``masks/`` (patches) or ``defect_masks/`` (scans) beside ``images/``."""
    return sample_path.parent.parent / ("masks" if patches else "defect_masks") / sample_path.name


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A defect mask (any non-zero value is a defect) cropped to the image's valid ``shape``."""
    path = Path(path)
    try:
        m = np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read the defect mask ({type(exc).__name__}: {exc})") from exc
    if m.ndim != 2 or m.shape[0] < shape[0] or m.shape[1] != shape[1]:
        raise DatasetError(f"{path}: defect mask of shape {m.shape} does not cover the image's {shape}")
    return m[: shape[0]] > 0


def load_defect_data(data: str | Path, *, split: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                     masks: bool = True) -> DefectData:
    """Read a dataset folder (or its labels.csv) into memory.

    The first image decides the shape: no side above :data:`PATCH_MAX_SIDE`
    means a patch dataset (every image must then be a patch of the same
    size), otherwise scans.
    """
    t0 = time.perf_counter()
    samples = read_labels(data)
    first = read_patch_shape(samples[0].path)
    patches = max(first) <= PATCH_MAX_SIDE
    images = []
    for s in samples:
        image = read_patch(s.path) if patches else _read_scan(s.path)
        if patches and image.shape != first:
            raise DatasetError(f"{s.path}: patch of shape {image.shape}, the dataset's patches are {first}")
        images.append(image)
    mask_list: list[np.ndarray | None] = []
    for s, image in zip(samples, images):
        mp = mask_path(s.path, patches)
        mask_list.append(read_mask(mp, image.shape) if masks and mp.is_file() else None)
    parts = split_samples(samples, split, seed)
    if not parts["train"]:
        raise DatasetError(f"{data}: the split leaves no training images")
    labels = np.array([s.label for s in samples], dtype=object)
    log.info("defect_data_loaded", data=str(data), images=len(images), patches=patches,
             masks=sum(m is not None for m in mask_list), **{p: len(v) for p, v in parts.items()},
             seconds=round(time.perf_counter() - t0, 2))
    return DefectData(samples, images, labels, mask_list, parts, patches, source=str(data))


def read_patch_shape(path: Path) -> tuple[int, int]:
    """The (rows, cols) of a TIFF's first page, from its header."""
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read the TIFF header ({type(exc).__name__}: {exc})") from exc
    return int(shape[0]), int(shape[1])
