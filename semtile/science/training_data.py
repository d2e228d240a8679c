"""Training data: a dataset read into memory, its split, and the crops training samples from it.

A dataset is a folder with labels.csv or, for a supervised segmenter, a
folder of images with a folder of masks named like them (no labels needed).
Images are read through the same reader as ``semtile process`` (TIFF, PNG,
JPEG; data bar excluded, intensities in [0, 1]) and sampled as random square crops with
isotropic augmentation (flips and 90-degree turns); validation uses the same
fixed crops every epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semtile.errors import DatasetError
from semtile.io.dataset import Sample, label_order, read_labels, split_samples
from semtile.io.tiff import open_scan
from semtile.logs import get_logger

__all__ = ["TrainConfig", "TrainingData", "MASK_LABEL", "MASK_SUFFIXES", "find_mask", "masked_samples",
           "load_training_data", "CropSampler", "fixed_crops"]

#: File types a mask may have, in the order they are looked for.
MASK_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

log = get_logger("semtile.train")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    patience: int = 0  # epochs without validation improvement before stopping; 0 = never
    val_crops: int = 4  # fixed crops per validation image
    threads: int | None = None
    device: str = "auto"
    resume: bool = False
    path_column: str | None = None  # labels.csv column of the image paths (default: path or file)
    label_column: str | None = None  # labels.csv column of the labels (default: label)


@dataclass
class TrainingData:
    """A dataset in memory: images (valid areas), labels, split."""

    samples: list[Sample]
    labels: list
    images: list[np.ndarray]
    split: dict[str, list[int]]
    masks: list[np.ndarray] | None = None
    source: str = ""  # the dataset as the user named it

    def label_index(self) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[s.label] for s in self.samples]

    def names(self, part: str) -> list[str]:
        return [self.samples[i].path.name for i in self.split[part]]


def _load(path: Path) -> np.ndarray:
    with open_scan(path) as scan:
        return np.ascontiguousarray(scan.valid().compute(scheduler="threads"), dtype=np.float32)


#: The one label of a dataset read from its masks alone (no labels.csv): a supervised segmenter needs no classes.
MASK_LABEL = "mask"


def _has_labels(data: str | Path) -> bool:
    data = Path(data)
    return (data / "labels.csv").is_file() if data.is_dir() else data.is_file()


def find_mask(folder: Path, image: Path) -> Path | None:
    """The mask of ``image`` in ``folder``: the same file name, else the same stem with an image suffix.

    The rule ``semtile evaluate --masks`` pairs results with true masks by.
    """
    same = folder / image.name
    if same.is_file():
        return same
    for suffix in MASK_SUFFIXES:
        for candidate in (folder / f"{image.stem}{suffix}", folder / f"{image.stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def masked_samples(data: str | Path, masks: str | Path) -> list[Sample]:
    """The images of the folder ``data`` that have a mask in ``masks``, without labels (no labels.csv needed).

    ``data`` is searched like ``semtile process`` inputs (TIFF, PNG, JPEG;
    recursively), leaving out the ``masks`` folder when it lies inside it.
    Images without a mask are left out (logged with their count); none at
    all is a DatasetError naming both folders.
    """
    from semtile.io.discover import discover_scans

    data, masks = Path(data), Path(masks)
    if not masks.is_dir():
        raise DatasetError(f"{masks}: masks folder not found")
    mask_root = masks.resolve()
    found = discover_scans(data)
    images = [p for p in found.scans if mask_root not in p.parents]
    samples, unmatched = [], []
    for image in images:
        mask = find_mask(masks, image)
        if mask is None:
            unmatched.append(image.name)
        else:
            samples.append(Sample(path=image, label=MASK_LABEL))
    if not samples:
        raise DatasetError(f"{data}: none of its {len(images)} images has a mask of the same name (or stem) in {masks}")
    if unmatched:
        log.info("images_without_mask", data=str(data), masks=str(masks), left_out=len(unmatched),
                 examples=unmatched[:5])
    return samples


def load_training_data(data: str | Path, config: TrainConfig, masks: str | Path | None = None) -> TrainingData:
    """Read a dataset: labels.csv (``path,label[,split]``; the columns as in :func:`read_labels`), or, with ``masks`` and no labels.csv, the images
    that have masks (:func:`masked_samples`: one label, split at random by the seed)."""
    if masks is not None and not _has_labels(data):
        samples = masked_samples(data, masks)
        labels = [MASK_LABEL]
    else:
        samples = read_labels(data, config.path_column, config.label_column)
        labels = label_order([s.label for s in samples])
        if masks is None and len(labels) < 2:
            raise DatasetError(f"{data}: need at least two labels, found {labels}")
    split = split_samples(samples, config.split, config.seed)
    if not split["train"]:
        raise DatasetError(f"{data}: the split leaves no training images")
    t0 = time.perf_counter()
    images = [_load(s.path) for s in samples]
    for s, img in zip(samples, images):
        if min(img.shape) < config.crop:
            raise DatasetError(f"{s.path}: valid area {img.shape[0]}x{img.shape[1]} is smaller than the crop {config.crop}")
    mask_arrays = None
    if masks is not None:
        mask_arrays = []
        for s, img in zip(samples, images):
            mpath = find_mask(Path(masks), s.path)
            if mpath is None:
                raise DatasetError(f"{Path(masks) / s.path.name}: no mask for {s.path.name}")
            with open_scan(mpath, databar_rows=0) as scan:
                m = scan.gray().compute(scheduler="threads")
            if m.shape[0] < img.shape[0] or m.shape[1] != img.shape[1]:
                raise DatasetError(f"{mpath}: mask {m.shape} does not cover the image {img.shape}")
            mask_arrays.append((m[: img.shape[0]] > 0).astype(np.float32))
    log.info("dataset_loaded", data=str(data), images=len(images), labels=len(labels),
             **{part: len(idx) for part, idx in split.items()}, seconds=round(time.perf_counter() - t0, 2))
    return TrainingData(samples, labels, images, split, mask_arrays, source=str(data))


class CropSampler:
    """Random crops (with the matching mask crops) and isotropic augmentation."""

    def __init__(self, data: TrainingData, indices: list[int], crop: int, rng: np.random.Generator):
        self.data, self.indices, self.crop, self.rng = data, indices, crop, rng
        self.targets = data.label_index()

    def batch(self, size: int):
        xs, ms, ts = [], [], []
        for _ in range(size):
            i = self.indices[int(self.rng.integers(len(self.indices)))]
            img = self.data.images[i]
            y = int(self.rng.integers(img.shape[0] - self.crop + 1))
            x = int(self.rng.integers(img.shape[1] - self.crop + 1))
            k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            views = [img] + ([self.data.masks[i]] if self.data.masks is not None else [])
            views = [np.rot90(v[y:y + self.crop, x:x + self.crop], k) for v in views]
            if flip:
                views = [v[:, ::-1] for v in views]
            xs.append(views[0])
            if self.data.masks is not None:
                ms.append(views[1])
            ts.append(self.targets[i])
        x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None], dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(np.stack(ms)[:, None], dtype=np.float32)) if ms else None
        return x, m, torch.tensor(ts)


def fixed_crops(data: TrainingData, indices: list[int], crop: int, per_image: int, seed: int):
    """The same validation crops every epoch (and for every hypothesis with the same seed)."""
    rng = np.random.default_rng(seed + 7919)
    targets = data.label_index()
    xs, ms, ts = [], [], []
    for i in indices:
        img = data.images[i]
        for _ in range(per_image):
            y = int(rng.integers(img.shape[0] - crop + 1))
            x = int(rng.integers(img.shape[1] - crop + 1))
            xs.append(img[y:y + crop, x:x + crop])
            if data.masks is not None:
                ms.append(data.masks[i][y:y + crop, x:x + crop])
            ts.append(targets[i])
    if not xs:
        return None
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
    m = torch.from_numpy(np.ascontiguousarray(np.stack(ms)[:, None])) if ms else None
    return x, m, torch.tensor(ts)
