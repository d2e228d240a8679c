"""Training of defect models: the supervised patch classifier and the autoencoder / VAE on normal data.

Both read a dataset folder (:mod:`semtile.defects.data`), split it by label
(stratified, seeded; saved in the card) and train in the loop of
:mod:`semtile.models.training` (Adam and a one-cycle schedule) on augmented
batches (:class:`semtile.defects.augment.AugmentedBatches`: flips, 90-degree
turns, intensity jitter), keeping the weights of the best validation epoch.

* **Patch classifier** (labels 0 = normal, 1 = defect). Defects are rare
  (2% in the lattice data): with ``balance="sampling"`` (the default) every
  batch holds ``positive_share`` defect patches drawn with replacement;
  ``"weights"`` samples uniformly and weights the defect class by
  normal/defect in the loss. The best epoch has the best validation average
  precision. The held-out test split is scored by AUC-ROC and AP, with the
  ROC curve as a figure (``OUT.roc.png``) and the test scores (``OUT.test.csv``).
* **Autoencoder** (``kind="autoencoder"``) or **VAE** (``kind="vae"``) on
  normal data only: every image, or those labelled ``normal_label``. Patches
  are taken whole; scans are sampled as random crops. Loss: mean squared
  error of the normalised input (a VAE adds ``beta`` times its KL divergence
  per pixel; it trains as a plain autoencoder over the first ``warmup`` of
  the steps, then its KL weight rises from 0 to ``beta``). Afterwards an anomaly threshold is calibrated on the normal
  validation images at ``fpr`` (pixels, and for patches the pooled score too),
  and where the test split has defect labels or masks it is scored.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from semtile.defects.augment import AugmentedBatches, crop_sampler
from semtile.defects.data import DefectData, load_defect_data
from semtile.defects.scores import patch_scores, roc_figure
from semtile.errors import DatasetError, SemtileError
from semtile.logs import get_logger
from semtile.models.io import LoadedModel, load_model, save_model, update_card
from semtile.models.networks import DefectArchitecture, build_model
from semtile.models.training import LoopConfig, Validation, fit, start

__all__ = ["DefectTrainConfig", "train_patch_classifier", "train_autoencoder", "classifier_scores"]

log = get_logger("semtile.defects")

BALANCES = ("sampling", "weights", "none")


@dataclass(frozen=True)
class DefectTrainConfig:
    epochs: int = 12
    steps_per_epoch: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    balance: str = "sampling"  # patch classifier: "sampling", "weights" or "none"
    positive_share: float = 0.5  # balanced sampling: share of defect patches per batch
    jitter: float = 0.15  # intensity jitter (gain 1 +- jitter, offset +- jitter / 3)
    crop: int = 64  # autoencoder on scans: side of the training crops
    tile: int = 256  # autoencoder on scans: the tile recorded for whole-scan maps (halo tile // 8)
    warmup: float = 0.25  # VAE: share of the steps trained as a plain autoencoder (then as long a KL ramp)
    fpr: float = 0.001  # false-positive rate the anomaly threshold is calibrated for
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "crop", "tile"):
            if int(getattr(self, name)) < 1:
                raise SemtileError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.balance not in BALANCES:
            raise SemtileError(f"balance must be one of {', '.join(BALANCES)}, got {self.balance!r}")
        if not 0 < self.positive_share < 1:
            raise SemtileError(f"positive share must lie in (0, 1), got {self.positive_share}")
        if not 0 < self.fpr < 1:
            raise SemtileError(f"fpr must lie in (0, 1), got {self.fpr}")
        if not 0 <= self.warmup <= 0.5:
            raise SemtileError(f"warmup must lie in [0, 0.5], got {self.warmup}")
        if not 0 <= self.jitter < 1:
            raise SemtileError(f"jitter must lie in [0, 1), got {self.jitter}")
        if not self.lr > 0:
            raise SemtileError(f"learning rate must be positive, got {self.lr}")


def _start(config: DefectTrainConfig, out: Path) -> np.random.Generator:
    if out.suffix != ".pt":
        raise SemtileError(f"{out}: model files end in .pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    return start(config.seed, config.threads)


def _load(data, config: DefectTrainConfig) -> DefectData:
    return data if isinstance(data, DefectData) else load_defect_data(data, split=config.split, seed=config.seed)


def _split_record(data: DefectData, config: DefectTrainConfig) -> dict:
    return {"fractions": list(config.split), "seed": config.seed,
            **{part: data.names(part) for part in ("train", "val", "test")}}


def _normalisation(arch: DefectArchitecture, pixels: np.ndarray, patches: bool) -> DefectArchitecture:
    """``auto`` resolved (per tile for patches, fixed for scans); fixed statistics from a sample of training pixels."""
    mode = arch.normalise if arch.normalise != "auto" else ("tile" if patches else "fixed")
    mean, std = float(np.mean(pixels)), float(np.std(pixels))
    return arch.with_(normalise=mode, mean=round(mean, 6), std=round(max(std, 1e-3), 6))


def _sample_pixels(images: list[np.ndarray], rng: np.random.Generator, n: int = 200_000) -> np.ndarray:
    per = max(1, n // max(1, len(images)))
    return np.concatenate([img.ravel()[rng.integers(0, img.size, size=min(per, img.size))] for img in images])


def _optimise(network: torch.nn.Module, sampler: AugmentedBatches, loss_fn: Callable, validate: Callable[[], float],
              config: DefectTrainConfig, name: str, progress: Callable[[int], None] | None,
              higher_is_better: bool) -> tuple[list, int]:
    """Adam + one-cycle over ``epochs * steps_per_epoch`` batches; keeps the best validation epoch (validated on
    the CPU; an epoch without a validation score is not ranked)."""
    result = fit(network, sampler, loss_fn,
                 LoopConfig(config.epochs, config.steps_per_epoch, config.batch_size, config.lr, pct_start=0.15,
                            device=config.device),
                 validation=Validation(lambda net, device: validate(), key="val", higher_is_better=higher_is_better,
                                       on_cpu=True, undefined="skip"),
                 progress=progress, name=name, log=log)
    return result.history, result.best_epoch


def _write_scores_csv(path: Path, names: list[str], labels: np.ndarray, columns: dict[str, np.ndarray]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *columns])
        for i, name in enumerate(names):
            writer.writerow([name, int(labels[i]), *(f"{float(v[i]):.6g}" for v in columns.values())])
    return path


def classifier_scores(model: LoadedModel | torch.nn.Module, patches: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Defect probability of each patch (n, T, T) by a patch classifier, run by PyTorch."""
    network = model.network if isinstance(model, LoadedModel) else model
    network.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(patches), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(patches[i: i + batch_size], dtype=np.float32))[:, None]
            out.append(torch.sigmoid(network(x)).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def train_patch_classifier(data: str | Path | DefectData, out: str | Path, *, arch: DefectArchitecture | None = None,
                           config: DefectTrainConfig = DefectTrainConfig(),
                           progress: Callable[[int], None] | None = None) -> Path:
    """Train the supervised patch classifier; write ``out`` (.pt), its card, ``OUT.roc.png`` and ``OUT.test.csv``."""
    out = Path(out)
    rng = _start(config, out)
    data = _load(data, config)
    if not data.patches:
        raise DatasetError(f"{data.source}: the patch classifier trains on patches (at most 128 pixels a side); "
                           "this dataset holds whole scans")
    y = data.binary_labels()
    train, val, test = (np.array(data.split[p], dtype=np.int64) for p in ("train", "val", "test"))
    pos, neg = train[y[train] == 1], train[y[train] == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise DatasetError(f"{data.source}: the training split needs defect (1) and normal (0) patches, "
                           f"has {len(pos)} and {len(neg)}")
    arch = arch or DefectArchitecture("patch-classifier")
    if arch.kind != "patch-classifier":
        raise SemtileError(f"train_patch_classifier trains a patch-classifier, not a {arch.kind}")
    side = data.images[0].shape[0]
    if side % arch.multiple:
        raise DatasetError(f"{data.source}: patches of {side} pixels are not a multiple of {arch.multiple} (2**d)")
    patches = data.stack(list(range(len(data.images))))
    arch = _normalisation(arch, _sample_pixels([patches[i] for i in train[:5000]], rng), True)
    network = build_model(arch)
    n_pos = int(round(config.batch_size * config.positive_share)) if config.balance == "sampling" else 0
    pos_weight = torch.tensor(len(neg) / len(pos)) if config.balance == "weights" else None

    def draw(n: int):
        if config.balance == "sampling":
            idx = np.concatenate([rng.choice(pos, size=n_pos), rng.choice(neg, size=n - n_pos)])
        else:
            idx = rng.choice(train, size=n)
        return patches[idx], y[idx].astype(np.float32)

    def loss_fn(net, batch):
        x, t = batch
        weight = None if pos_weight is None else pos_weight.to(x.device)
        return F.binary_cross_entropy_with_logits(net(x), t, pos_weight=weight)

    def validate() -> float:
        if len(val) == 0 or y[val].min() == y[val].max():
            return float("nan")
        return patch_scores(y[val], classifier_scores(network, patches[val]), "validation")["ap"]

    history, best_epoch = _optimise(network, AugmentedBatches(rng, draw, config.jitter), loss_fn, validate, config,
                                    "patch-classifier", progress, higher_is_better=True)
    scores: dict = {}
    figure = table = None
    for part, idx in (("val", val), ("test", test)):
        if len(idx) and y[idx].min() != y[idx].max():
            probability = classifier_scores(network, patches[idx])
            scores[part] = {"probability": patch_scores(y[idx], probability, f"{part} split")}
            if part == "test":
                table = _write_scores_csv(out.with_suffix(".test.csv"), data.names("test"), y[idx],
                                          {"probability": probability})
                figure = roc_figure({"patch classifier": (y[idx], probability)}, out.with_suffix(".roc.png"),
                                    f"defect patches, held-out test split ({len(idx)}, {int(y[idx].sum())} defects)")
    if "test" in scores:
        log.info("patch_classifier_test", **scores["test"]["probability"])
    return save_model(
        network, arch, path=out, tile=side, halo=0,
        scores=scores, figures={"roc": figure.name if figure else None, "test_scores": table.name if table else None},
        training={"data": data.source, "config": asdict(config), "best_epoch": best_epoch, "history": history,
                  "split": _split_record(data, config), "train_defects": int(len(pos)),
                  "train_normal": int(len(neg))})


def _normal_indices(data: DefectData, part: str, normal_label) -> np.ndarray:
    idx = np.array(data.split[part], dtype=np.int64)
    if normal_label is None:
        return idx
    return idx[[str(data.labels[i]) == str(normal_label) for i in idx]] if len(idx) else idx


def _autoencoder_loss(arch: DefectArchitecture, warmup_steps: int):
    """Mean squared error of the normalised input; a VAE adds beta * KL per pixel.

    A VAE first trains as a plain autoencoder (posterior means, no KL) for
    ``warmup_steps``, then samples its posterior with the KL weight rising from
    0 to beta over as many steps again. With the KL and the sampling noise from
    the start, the decoder can settle on the average patch, the posterior
    collapses onto the prior and the VAE never leaves that state (seen on the
    lattice patches: the loss stayed at 1.0 for 500 steps).
    """
    seen = {"steps": 0}

    def loss_fn(net, batch):
        x = batch[0]
        if arch.kind == "vae":
            weight, sample = arch.beta, True
            if net.training:
                seen["steps"] += 1
                ramp = (seen["steps"] - warmup_steps) / max(1, warmup_steps)
                weight, sample = arch.beta * min(1.0, max(0.0, ramp)), ramp > 0
            parts = net.parts(x, sample=sample)
            pixels = x.shape[-1] * x.shape[-2]
            kl = parts["kl"].sum(dim=(1, 2, 3)).mean() / pixels
            return F.mse_loss(parts["reconstruction"], parts["input"]) + weight * kl
        parts = net.parts(x)
        return F.mse_loss(parts["reconstruction"], parts["input"])
    return loss_fn


def train_autoencoder(data: str | Path | DefectData, out: str | Path, *, arch: DefectArchitecture | None = None,
                      config: DefectTrainConfig = DefectTrainConfig(), normal_label=None,
                      progress: Callable[[int], None] | None = None) -> Path:
    """Train an autoencoder or VAE on normal data; calibrate its threshold; score it where labels allow.

    ``normal_label``: train on images with this label only (``0`` for
    ``semtile synth lattice`` data); None takes every image as normal.
    """
    from semtile.defects.anomaly import anomaly_map, calibrate_threshold, patch_maps, pool_maps

    out = Path(out)
    rng = _start(config, out)
    data = _load(data, config)
    arch = arch or DefectArchitecture("autoencoder")
    if not arch.is_anomaly:
        raise SemtileError(f"train_autoencoder trains an autoencoder or vae, not a {arch.kind}")
    train, val = _normal_indices(data, "train", normal_label), _normal_indices(data, "val", normal_label)
    if len(train) == 0:
        found = sorted({str(v) for v in data.labels.tolist()})
        raise DatasetError(f"{data.source}: no normal training image (normal label {normal_label!r}; labels {found})")
    images = [data.images[i] for i in train]
    if data.patches:
        side = images[0].shape[0]
        tile, crop = side, side
        if side % arch.multiple:
            raise DatasetError(f"{data.source}: patches of {side} pixels are not a multiple of {arch.multiple}")
        pool = np.stack(images)
        sample = lambda n: (pool[rng.integers(0, len(pool), size=n)], None)  # noqa: E731
        val_tiles = np.stack([data.images[i] for i in val[:1024]]) if len(val) else None
    else:
        tile, crop = config.tile, config.crop
        for name, value in (("crop", crop), ("tile", tile)):
            if value % arch.multiple:
                raise SemtileError(f"--{name} {value} must be a multiple of {arch.multiple} (2**d)")
        small = [data.samples[i].path for i, img in zip(train, images) if min(img.shape) < crop]
        if small:
            raise DatasetError(f"{small[0]}: smaller than the crop {crop}")
        crops = crop_sampler(images, crop, rng)
        sample = lambda n: (crops(n), None)  # noqa: E731
        val_rng = np.random.default_rng(config.seed + 7919)
        val_tiles = (np.concatenate([crop_sampler([data.images[i]], crop, val_rng)(4) for i in val])
                     if len(val) else None)
    arch = _normalisation(arch, _sample_pixels(images, rng), data.patches)
    network = build_model(arch)
    loss_fn = _autoencoder_loss(arch, int(config.warmup * config.epochs * config.steps_per_epoch))

    def validate() -> float:
        if val_tiles is None:
            return float("nan")
        state = torch.get_rng_state()
        torch.manual_seed(config.seed)  # the same posterior samples every epoch...
        try:
            with torch.inference_mode():
                return float(np.mean([float(loss_fn(network, (torch.from_numpy(val_tiles[i: i + 256])[:, None], None)))
                                      for i in range(0, len(val_tiles), 256)]))
        finally:
            torch.set_rng_state(state)  # ...and training's own stream untouched

    history, best_epoch = _optimise(network, AugmentedBatches(rng, sample, config.jitter), loss_fn, validate, config,
                                    arch.kind, progress, higher_is_better=False)
    path = save_model(network, arch, path=out, tile=tile, halo=None,
                             normal_label=normal_label,
                             training={"data": data.source, "config": asdict(config), "best_epoch": best_epoch,
                                       "history": history, "split": _split_record(data, config),
                                       "normal_train_images": int(len(train)), "patches": data.patches})
    model = load_model(path)
    # Threshold: normal validation data (training data when there is none), at the chosen FPR.
    calibration_idx = val if len(val) else train
    fields: dict = {}
    if data.patches:
        normal = np.stack([data.images[i] for i in calibration_idx[:4096]])
        maps = patch_maps(normal, model)
        fields["threshold"] = {"value": calibrate_threshold(maps, config.fpr), "fpr": config.fpr, "on": "pixels",
                               "images": int(len(normal)), "split": "val" if len(val) else "train"}
        fields["patch_threshold"] = {"value": calibrate_threshold(pool_maps(maps, arch.pool), config.fpr),
                                     "fpr": config.fpr, "pool": arch.pool}
    else:
        maps = [anomaly_map(data.images[i], model)[0] for i in calibration_idx[:16]]
        fields["threshold"] = {"value": calibrate_threshold(maps, config.fpr), "fpr": config.fpr, "on": "pixels",
                               "images": len(maps), "split": "val" if len(val) else "train"}
    model.card.update(fields)
    fields["scores"] = _score_autoencoder(model, data, out)
    update_card(path, **fields)
    return path


def _score_autoencoder(model: LoadedModel, data: DefectData, out: Path) -> dict:
    """Held-out scores where the test split allows: patch AUC-ROC/AP per variant, pixel AUROC and PRO."""
    from semtile.defects.anomaly import anomaly_map, patch_maps
    from semtile.defects.scores import map_scores
    from semtile.defects.variants import score_variants

    test = np.array(data.split["test"], dtype=np.int64)
    scores: dict = {}
    if not len(test):
        return scores
    labels = {str(v) for v in data.labels[test].tolist()}
    if data.patches and labels == {"0", "1"}:
        y = np.array([int(v) for v in data.labels[test].tolist()])
        patches = data.stack(list(test))
        variants = score_variants(model, patches)
        scores["test"] = {name: patch_scores(y, s, f"test split, {name}") for name, s in variants.items()}
        scores["test"]["pool"] = model.arch.pool
        _write_scores_csv(out.with_suffix(".test.csv"), data.names("test"), y, variants)
        roc_figure({f"{model.arch.kind} {name}": (y, s) for name, s in variants.items()}, out.with_suffix(".roc.png"),
                   f"{model.arch.kind}, held-out test split ({len(y)}, {int(y.sum())} defects)")
        with_masks = [i for i in test if data.masks[i] is not None and data.masks[i].any()]
        if with_masks:
            maps = patch_maps(data.stack([int(i) for i in test]), model)
            scores["test_pixels"] = map_scores(list(maps), [data.masks[i] if data.masks[i] is not None
                                                            else np.zeros(maps.shape[1:], bool) for i in test])
    elif not data.patches:
        with_masks = [i for i in test if data.masks[i] is not None]
        if with_masks and any(data.masks[i].any() for i in with_masks):
            maps = [anomaly_map(data.images[i], model)[0] for i in with_masks]
            scores["test_pixels"] = map_scores(maps, [data.masks[i] for i in with_masks])
    return scores
