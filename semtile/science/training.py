"""Training: weak-label or supervised segmenters, the baseline classifier.

Images are read and cropped by :mod:`semtile.science.training_data`; the
dataset is split into
train, validation and test (stratified and seeded, or as labels.csv says);
the split is saved with the model. The loop is :func:`semtile.models.training.fit`:
Adam with a one-cycle learning-rate schedule; a validation loss every epoch
on fixed crops; early stopping on it; the weights of the best epoch are kept.
A checkpoint is written after every epoch so that ``resume=True`` continues
an interrupted run exactly.

Weak labels (the paper's eq. 4): the mean of the sigmoid mask of each crop is
regressed onto g(t). With the ``learned`` hypothesis, g is fitted jointly: a
monotone curve made of the normalised cumulative sum of softplus increments,
its ends pinned by ``g_range``. Pinned ends rule out the collapse that free
ends allow (a constant mask with a constant g fits any data). Pinned ends are
not enough on their own: a network that sees enough context can estimate t
and paint a soft g(t) over the whole crop, which fits any monotone g. A
penalty on undecided pixels, mean(p(1 - p)) (the paper's masks are binary),
makes each pixel a decision about its local texture, and the curve follows.
After training, the decision threshold is calibrated on the pinned ends and g
is read out of the calibrated masks (:mod:`semtile.science.curve_calibration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from semtile.errors import SemtileError
from semtile.logs import get_logger
from semtile.models.io import save_model
from semtile.models.networks import Architecture, build_model
from semtile.models.training import LoopConfig, Validation, fit, loss_on, pick_device, start
from semtile.science.curve_calibration import logit_counts, read_out_curve
from semtile.science.hypotheses import hypothesis_values, is_learned, parse_hypothesis
from semtile.science.training_data import CropSampler, TrainConfig, TrainingData, fixed_crops, load_training_data

__all__ = ["TrainConfig", "LearnedCurve", "LEARNED_BINARY_WEIGHT", "TrainingData", "load_training_data",
           "train_segmenter", "train_classifier", "pick_device", "SUPERVISED_LOSSES", "supervised_loss"]

log = get_logger("semtile.train")

#: Learning-rate multiplier of the learned hypothesis curve relative to the network.
CURVE_LR_FACTOR = 50.0

#: Weight of the penalty on undecided pixels, mean(p(1 - p)), when g is learned.
#: Weak labels constrain only each crop's mean, so a network with a large
#: receptive field can estimate t from context and paint a soft g(t) anywhere,
#: with any monotone g; binary pixels must instead be decided from local texture.
LEARNED_BINARY_WEIGHT = 2.0


#: Per-pixel losses of a supervised segmenter.
SUPERVISED_LOSSES = ("bce", "dice", "bce+dice")


def supervised_loss(logits: torch.Tensor, masks: torch.Tensor, kind: str = "bce+dice") -> torch.Tensor:
    """Loss of predicted logits against binary masks: BCE, soft Dice over the whole batch (smoothed by 1, so a
    batch without foreground is defined), or their sum."""
    total = logits.new_zeros(())
    if "bce" in kind:
        total = total + F.binary_cross_entropy_with_logits(logits, masks)
    if "dice" in kind:
        p = torch.sigmoid(logits)
        total = total + 1 - (2 * (p * masks).sum() + 1) / (p.sum() + masks.sum() + 1)
    return total


class LearnedCurve(nn.Module):
    """A monotone decreasing g(t) from ``hi`` at t = 0 to ``lo`` at t = T - 1.

    g(t) = hi - (hi - lo) * cumsum(softplus(theta))[t] / sum(softplus(theta)),
    starting from equal increments (the linear curve).
    """

    def __init__(self, n_labels: int, g_range: tuple[float, float] = (1.0, 0.0)):
        super().__init__()
        if n_labels < 2:
            raise SemtileError("a learned hypothesis needs at least 2 labels")
        self.hi, self.lo = g_range
        # softplus(0.5413) = 1: equal unit increments.
        self.theta = nn.Parameter(torch.full((n_labels - 1,), 0.5413))

    def forward(self) -> torch.Tensor:
        steps = F.softplus(self.theta)
        fall = torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)]) / steps.sum()
        return self.hi - (self.hi - self.lo) * fall


def _start(arch: Architecture, config: TrainConfig) -> None:
    """Checks and settings shared by every training run."""
    if config.crop % arch.multiple:
        raise SemtileError(f"--crop {config.crop} must be a multiple of {arch.multiple} (2**d)")
    start(config.seed, config.threads)


def accuracy_on(batch) -> Callable[[nn.Module, torch.device], dict]:
    """Validation figures of a classifier: ``val_accuracy``, the share of the fixed crops ``batch``
    (``(x, masks, labels)`` or None) given their image's label (NaN without crops)."""
    def metrics(network: nn.Module, device: torch.device) -> dict:
        if batch is None:
            return {"val_accuracy": float("nan")}
        x, _, t = batch
        predicted = network(x.to(device)).argmax(dim=1).cpu()
        return {"val_accuracy": float((predicted == t).float().mean())}
    return metrics


def _fit(network: nn.Module, loss, data: TrainingData, config: TrainConfig, out: Path, name: str,
         progress: Callable[[int], None] | None, curve: nn.Module | None = None,
         classifier: bool = False) -> tuple[list, int]:
    """Random crops of the training split; validation loss on fixed crops of the validation split
    (and, for a ``classifier``, the accuracy on them)."""
    sampler = CropSampler(data, data.split["train"], config.crop, np.random.default_rng(config.seed))
    val = fixed_crops(data, data.split["val"], config.crop, config.val_crops, config.seed)
    describe = None if curve is None else (lambda: {"g": [round(float(g), 4) for g in curve()]})
    result = fit(network, sampler, loss,
                 LoopConfig(config.epochs, config.steps_per_epoch, config.batch_size, config.lr, pct_start=0.1,
                            device=config.device, patience=config.patience),
                 validation=Validation(loss_on(val, loss), metrics=accuracy_on(val) if classifier else None),
                 extra=curve, extra_lr_factor=CURVE_LR_FACTOR,
                 checkpoint=out.with_suffix(".ckpt"), resume=config.resume, progress=progress, describe=describe,
                 name=name, log=log)
    return result.history, result.best_epoch


def _split_record(data: TrainingData, config: TrainConfig) -> dict:
    return {"fractions": list(config.split), "seed": config.seed,
            **{part: data.names(part) for part in ("train", "val", "test")}}


def train_segmenter(
    data: str | Path | TrainingData,
    out: str | Path,
    *,
    hypothesis: str | None = "sqrt",
    masks: str | Path | None = None,
    g_range: tuple[float, float] = (1.0, 0.0),
    binary_weight: float | None = None,
    loss: str = "bce",
    arch: Architecture | None = None,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Train a segmenter and write ``out`` (.pt) with its card.

    Weak labels (``hypothesis``): the mean of the sigmoid mask of each crop is
    regressed onto g(t); ``learned`` fits g jointly. ``binary_weight`` adds
    a penalty mean(p(1 - p)) on undecided pixels (the paper's masks are
    binary); by default :data:`LEARNED_BINARY_WEIGHT` for a learned g and 0
    otherwise. A learned g is then read out of the segmenter with its decision
    threshold calibrated on the pinned ends
    (:func:`semtile.science.curve_calibration.read_out_curve`), the threshold folded into
    the output layer. Supervised (``masks``): per-pixel loss against the
    masks of the same names (or stems), ``loss`` = ``bce`` (binary
    cross-entropy, the default: the built-in segmenter's), ``dice`` (soft
    Dice over the batch) or ``bce+dice`` (their sum, for masks where one side
    is rare); ``data`` then needs no labels.csv (the images that have
    masks are used, split at random).
    """
    if loss not in SUPERVISED_LOSSES:
        raise SemtileError(f"--loss {loss!r}: choose from {', '.join(SUPERVISED_LOSSES)}")
    kind = loss  # the name ``loss`` is the training loss below
    arch = arch or Architecture("segmenter")
    _start(arch, config)
    if not isinstance(data, TrainingData):
        data = load_training_data(data, config, masks=masks)
    elif masks is not None and data.masks is None:
        raise SemtileError("masks given but the loaded data has none")
    arch = Architecture("segmenter", arch.c, arch.d, arch.n, arch.N, n_labels=len(data.labels))
    network = build_model(arch)
    curve = None
    if masks is not None:
        mode, g_table = "supervised", None

        def loss(net, batch):
            x, m, _ = batch
            return supervised_loss(net(x), m, kind)
    else:
        parse_hypothesis(hypothesis)
        mode = "weak"
        if binary_weight is None:
            binary_weight = LEARNED_BINARY_WEIGHT if is_learned(hypothesis) else 0.0
        if binary_weight < 0:
            raise SemtileError(f"binary weight {binary_weight} must not be negative")
        if is_learned(hypothesis):
            curve = LearnedCurve(len(data.labels), g_range)
            target = lambda t: curve()[t]  # noqa: E731
        else:
            g_fixed = torch.tensor(hypothesis_values(hypothesis, len(data.labels), g_range), dtype=torch.float32)
            target = lambda t: g_fixed.to(t.device)[t]  # noqa: E731

        def loss(net, batch):
            x, _, t = batch
            p = torch.sigmoid(net(x))
            fit = F.mse_loss(p.mean(dim=(1, 2, 3)), target(t))
            if not binary_weight:
                return fit
            # The paper's masks are binary: p(1 - p) penalises undecided pixels.
            return fit + binary_weight * (p * (1 - p)).mean()

    history, best_epoch = _fit(network, loss, data, config, Path(out), "segmenter", progress, curve)
    calibration = None
    if curve is not None:
        with torch.no_grad():
            g_fitted = [float(v) for v in curve()]
        train = data.split["train"]
        readout = read_out_curve(logit_counts(network, [data.images[i] for i in train], arch.multiple),
                                 np.array(data.label_index())[train], len(data.labels), g_range, np.array(g_fitted))
        with torch.no_grad():
            # Fold the threshold into the output layer: masks of the saved model are the calibrated ones.
            network.head.bias -= readout.threshold
        g_table = [float(v) for v in readout.g]
        calibration = {"threshold_logit": readout.threshold, "ends_used": list(readout.ends_used),
                       "g_fitted": g_fitted, "g_raw": [None if np.isnan(v) else float(v) for v in readout.raw]}
        log.info("learned_curve_calibrated", threshold_logit=round(readout.threshold, 3),
                 ends_used=list(readout.ends_used))
    elif mode == "weak":
        g_table = [float(v) for v in hypothesis_values(hypothesis, len(data.labels), g_range)]
    return save_model(
        network, arch, data.labels, out,
        training={"mode": mode, "hypothesis": hypothesis if mode == "weak" else None,
                  "g_range": list(g_range) if mode == "weak" else None, "g": g_table,
                  "binary_weight": binary_weight if mode == "weak" else None,
                  "calibration": calibration,
                  "data": data.source, "masks": str(masks) if masks else None,
                  "loss": kind if mode == "supervised" else None,
                  "config": asdict(config), "best_epoch": best_epoch, "history": history,
                  "split": _split_record(data, config)},
    )


def train_classifier(
    data: str | Path | TrainingData,
    out: str | Path,
    *,
    arch: Architecture | None = None,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Train the baseline classifier on random crops labelled with their image's label."""
    arch = arch or Architecture("classifier")
    _start(arch, config)
    if not isinstance(data, TrainingData):
        data = load_training_data(data, config)
    arch = Architecture("classifier", arch.c, arch.d, arch.n, arch.N, n_labels=len(data.labels))
    network = build_model(arch)

    def loss(net, batch):
        x, _, t = batch
        return F.cross_entropy(net(x), t)

    history, best_epoch = _fit(network, loss, data, config, Path(out), "classifier", progress,
                                 classifier=True)
    return save_model(
        network, arch, data.labels, out,
        training={"mode": "classification", "data": data.source, "config": asdict(config),
                  "best_epoch": best_epoch, "history": history, "split": _split_record(data, config)},
    )
