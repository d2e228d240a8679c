"""Training, minimal form: weak-label or supervised segmenter, tile classifier.

Images are read through the same reader as ``semtile process`` (data bar
excluded, intensities in [0, 1]) and sampled as random square crops with
isotropic augmentation (flips and 90-degree turns). A seeded tenth of each
label is held out to report a validation loss every epoch; the weights of the
best epoch are kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from semtile.dataset import Sample, label_order, read_labels
from semtile.errors import DatasetError, SemtileError
from semtile.hypotheses import hypothesis_values
from semtile.logs import get_logger
from semtile.modelio import save_model
from semtile.models import Architecture, build_model
from semtile.reader import open_scan

__all__ = ["TrainConfig", "train_segmenter", "train_classifier"]

log = get_logger("semtile.train")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1
    threads: int | None = None


def _load(path: Path) -> np.ndarray:
    with open_scan(path) as scan:
        return np.ascontiguousarray(scan.valid().compute(), dtype=np.float32)


def _split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-label hold-out (at least one image per label when a label has two or more)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_label: dict = {}
    for i, s in enumerate(samples):
        by_label.setdefault(s.label, []).append(i)
    for label in label_order(by_label):
        idx = rng.permutation(by_label[label]).tolist()
        n_val = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        n_val = max(n_val, 1) if fraction > 0 and len(idx) > 1 else n_val
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


class _CropSampler:
    """Random crops (with the matching mask crops) and isotropic augmentation."""

    def __init__(self, images, targets, crop: int, rng: np.random.Generator, masks=None):
        for img in images:
            if min(img.shape) < crop:
                raise DatasetError(f"an image of {img.shape[0]}x{img.shape[1]} is smaller than the crop {crop}")
        self.images, self.targets, self.masks = images, targets, masks
        self.crop, self.rng = crop, rng

    def batch(self, size: int):
        xs, ms, ts = [], [], []
        for _ in range(size):
            i = int(self.rng.integers(len(self.images)))
            img = self.images[i]
            y = int(self.rng.integers(img.shape[0] - self.crop + 1))
            x = int(self.rng.integers(img.shape[1] - self.crop + 1))
            k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            views = [img] + ([self.masks[i]] if self.masks is not None else [])
            views = [np.rot90(v[y:y + self.crop, x:x + self.crop], k) for v in views]
            if flip:
                views = [v[:, ::-1] for v in views]
            xs.append(views[0])
            if self.masks is not None:
                ms.append(views[1])
            ts.append(self.targets[i])
        x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None], dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(np.stack(ms)[:, None], dtype=np.float32)) if ms else None
        return x, m, ts


def _centre_crops(images, crop: int) -> torch.Tensor:
    out = []
    for img in images:
        y, x = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
        out.append(img[y:y + crop, x:x + crop])
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)[:, None], dtype=np.float32))


def _prepare(data: str | Path, config: TrainConfig, arch_crop_multiple: int):
    if config.crop % arch_crop_multiple:
        raise SemtileError(f"--crop {config.crop} must be a multiple of {arch_crop_multiple} (2**d)")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    samples = read_labels(data)
    labels = label_order([s.label for s in samples])
    if len(labels) < 2:
        raise DatasetError(f"{data}: need at least two labels, found {labels}")
    train_idx, val_idx = _split(samples, config.val_fraction, config.seed)
    t0 = time.perf_counter()
    images = [_load(s.path) for s in samples]
    log.info("dataset_loaded", data=str(data), images=len(images), labels=len(labels),
             train=len(train_idx), val=len(val_idx), seconds=round(time.perf_counter() - t0, 2))
    return samples, labels, images, train_idx, val_idx


def _fit(network, step_loss, val_loss, config: TrainConfig, name: str):
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    total = config.epochs * config.steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total, pct_start=0.1)
    best = (float("inf"), None, -1)
    history = []
    for epoch in range(config.epochs):
        network.train()
        t0, losses = time.perf_counter(), []
        for _ in range(config.steps_per_epoch):
            optimiser.zero_grad(set_to_none=True)
            loss = step_loss()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        network.eval()
        with torch.inference_mode():
            v = float(val_loss()) if val_loss else float("nan")
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": v,
                  "seconds": round(time.perf_counter() - t0, 2)}
        history.append(record)
        log.info("epoch", model=name, **record)
        score = v if np.isfinite(v) else record["train_loss"]
        if score <= best[0]:
            best = (score, {k: t.detach().clone() for k, t in network.state_dict().items()}, epoch + 1)
    network.load_state_dict(best[1])
    network.eval()
    return history, best[2]


def train_segmenter(
    data: str | Path,
    out: str | Path,
    *,
    hypothesis: str | None = "sqrt",
    masks: str | Path | None = None,
    arch: Architecture | None = None,
    config: TrainConfig = TrainConfig(),
) -> Path:
    """Train a segmenter.

    Weak labels (``hypothesis``): the mean of the sigmoid mask of each crop is
    regressed onto g(t) (the paper's eq. 4). Supervised (``masks``): per-pixel
    binary cross-entropy against the mask file of the same name in ``masks``.
    """
    arch = arch or Architecture("segmenter")
    samples, labels, images, train_idx, val_idx = _prepare(data, config, arch.multiple)
    arch = Architecture("segmenter", arch.c, arch.d, arch.n, arch.N, n_labels=len(labels))
    mask_arrays = None
    if masks is not None:
        mask_dir = Path(masks)
        mask_arrays = []
        for s, img in zip(samples, images):
            mpath = mask_dir / s.path.name
            if not mpath.is_file():
                raise DatasetError(f"{mpath}: no mask for {s.path.name}")
            with open_scan(mpath, databar_rows=0) as scan:
                m = scan.gray().compute()
            mask_arrays.append((m[: img.shape[0]] > 0).astype(np.float32))
        mode = "supervised"
        targets = [0.0] * len(samples)
    else:
        g = hypothesis_values(hypothesis, len(labels))
        index = {label: i for i, label in enumerate(labels)}
        targets = [float(g[index[s.label]]) for s in samples]
        mode = "weak"
    rng = np.random.default_rng(config.seed)
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    sampler = _CropSampler(pick(images, train_idx), pick(targets, train_idx), config.crop, rng,
                           pick(mask_arrays, train_idx) if mask_arrays else None)
    network = build_model(arch)

    def loss_of(logits, target_means, target_masks):
        if target_masks is not None:
            return F.binary_cross_entropy_with_logits(logits, target_masks)
        means = torch.sigmoid(logits).mean(dim=(1, 2, 3))
        return F.mse_loss(means, torch.tensor(target_means, dtype=torch.float32))

    def step_loss():
        x, m, t = sampler.batch(config.batch_size)
        return loss_of(network(x), t, m)

    val_loss = None
    if val_idx:
        vx = _centre_crops(pick(images, val_idx), config.crop)
        vm = _centre_crops(pick(mask_arrays, val_idx), config.crop) if mask_arrays else None
        vt = pick(targets, val_idx)
        val_loss = lambda: loss_of(network(vx), vt, vm)  # noqa: E731
    history, best_epoch = _fit(network, step_loss, val_loss, config, "segmenter")
    return save_model(
        network, arch, labels, out,
        training={"mode": mode, "hypothesis": hypothesis if mode == "weak" else None,
                  "data": str(data), "masks": str(masks) if masks else None,
                  "config": asdict(config), "best_epoch": best_epoch, "history": history,
                  "split": {"train": [str(samples[i].path.name) for i in train_idx],
                            "val": [str(samples[i].path.name) for i in val_idx]}},
    )


def train_classifier(
    data: str | Path,
    out: str | Path,
    *,
    arch: Architecture | None = None,
    config: TrainConfig = TrainConfig(),
) -> Path:
    """Train the baseline classifier on random crops labelled with their image's label."""
    arch = arch or Architecture("classifier")
    samples, labels, images, train_idx, val_idx = _prepare(data, config, arch.multiple)
    arch = Architecture("classifier", arch.c, arch.d, arch.n, arch.N, n_labels=len(labels))
    index = {label: i for i, label in enumerate(labels)}
    targets = [index[s.label] for s in samples]
    rng = np.random.default_rng(config.seed)
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    sampler = _CropSampler(pick(images, train_idx), pick(targets, train_idx), config.crop, rng)
    network = build_model(arch)

    def step_loss():
        x, _, t = sampler.batch(config.batch_size)
        return F.cross_entropy(network(x), torch.tensor(t))

    val_loss = None
    if val_idx:
        vx = _centre_crops(pick(images, val_idx), config.crop)
        vt = torch.tensor(pick(targets, val_idx))
        val_loss = lambda: F.cross_entropy(network(vx), vt)  # noqa: E731
    history, best_epoch = _fit(network, step_loss, val_loss, config, "classifier")
    return save_model(
        network, arch, labels, out,
        training={"mode": "classification", "data": str(data), "config": asdict(config),
                  "best_epoch": best_epoch, "history": history,
                  "split": {"train": [str(samples[i].path.name) for i in train_idx],
                            "val": [str(samples[i].path.name) for i in val_idx]}},
    )
