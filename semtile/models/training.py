"""The training loop every model semtile trains goes through: the paper's classifier and segmenters, the defect models.

A run is a network (with, optionally, extra parameters trained jointly at
their own learning rate), a **sampler** that gives the batch of each step, a
**loss** that scores a batch, and a **validation** hook scored after every
epoch. The loop owns what all runs share: the device, the seed, Adam with a
one-cycle learning-rate schedule, the epoch and step loop with its progress
callback, the history, the weights of the best epoch (restored at the end),
early stopping, and the checkpoint after every epoch from which an
interrupted run resumes exactly.

* sampler: ``sampler.batch(size)`` -> a tuple of tensors (or None), the
  input first (``(x, y)``, ``(x, masks, labels)``, ``(x, None)``), drawn from
  ``sampler.rng`` (a NumPy generator, saved in the checkpoint);
* loss: ``loss(network, batch)`` -> a scalar tensor, or ``(scalar, metrics)``
  with a dict of floats averaged over the epoch into the history;
* validation: :class:`Validation`, ``score(network, device)`` -> a float,
  called in eval mode under ``torch.inference_mode`` (and, optionally,
  ``metrics(network, device)`` -> more validation figures, such as
  ``val_accuracy``, for the history and the log).

Every epoch is logged (``epoch``: its losses and validation figures) and the
end of the run once (``best_epoch``: the epoch whose weights are kept, with
its figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from semtile.errors import SemtileError
from semtile.logs import get_logger

__all__ = ["Batch", "Sampler", "Loss", "LoopConfig", "Validation", "FitResult", "start", "pick_device",
           "to_device", "loss_on", "fit"]

_log = get_logger("semtile.train")

#: A batch: tensors (or None where a run has no such target), the input first.
Batch = tuple


class Sampler(Protocol):
    """Training batches, drawn from ``rng``."""

    rng: np.random.Generator

    def batch(self, size: int) -> Batch: ...


#: (network, batch on the device) -> scalar loss, or (scalar loss, {metric: float}).
Loss = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, dict]"]


@dataclass(frozen=True)
class LoopConfig:
    """The budget and the optimiser of a run."""

    epochs: int
    steps_per_epoch: int
    batch_size: int
    lr: float
    pct_start: float = 0.1  # share of the steps over which the one-cycle schedule rises
    device: str = "auto"
    patience: int = 0  # epochs without a better score before stopping; 0 = never

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise SemtileError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Validation:
    """How an epoch is scored: ``score(network, device)``, recorded in the history as ``key``.

    ``on_cpu``: the network is moved to the CPU for it (and back). A score
    that is not finite (no validation data) ranks the epoch by its training
    loss (``undefined="train_loss"``) or leaves it out of the ranking
    (``"skip"``; with every epoch left out the last weights are kept).
    """

    score: Callable[[nn.Module, torch.device], float]
    key: str = "val_loss"
    higher_is_better: bool = False
    on_cpu: bool = False
    undefined: str = "train_loss"
    #: More figures of the epoch (e.g. ``{"val_accuracy": 0.75}``), recorded but not ranked on.
    metrics: Callable[[nn.Module, torch.device], dict] | None = None

    def __post_init__(self) -> None:
        if self.undefined not in ("train_loss", "skip"):
            raise SemtileError(f"undefined validation: 'train_loss' or 'skip', got {self.undefined!r}")


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0: no epoch ranked, the last weights kept


def start(seed: int, threads: int | None = None) -> np.random.Generator:
    """Seed torch (the network's initial weights, dropout, a VAE's samples) and return the NumPy generator of
    the run's sampling; ``threads`` sets torch's CPU threads."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when present, the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(None if t is None else t.to(device) for t in batch)


def _value(result) -> tuple[torch.Tensor, dict]:
    return result if isinstance(result, tuple) else (result, {})


def loss_on(batch: Batch | None, loss: Loss) -> Callable[[nn.Module, torch.device], float]:
    """A validation score: the training loss on one fixed batch (NaN without one)."""
    def score(network: nn.Module, device: torch.device) -> float:
        if batch is None:
            return float("nan")
        return float(_value(loss(network, to_device(batch, device)))[0])
    return score


def _copy(module: nn.Module | None) -> dict | None:
    return None if module is None else {k: t.detach().cpu().clone() for k, t in module.state_dict().items()}


def fit(network: nn.Module, sampler: Sampler, loss: Loss, config: LoopConfig, *,
        validation: Validation | None = None, extra: nn.Module | None = None, extra_lr_factor: float = 1.0,
        checkpoint: Path | None = None, resume: bool = False, progress: Callable[[int], None] | None = None,
        describe: Callable[[], dict] | None = None, name: str = "model", log=None) -> FitResult:
    """Train ``network`` (and ``extra``, at ``extra_lr_factor`` times the learning rate) in place.

    Adam with a one-cycle schedule over ``epochs * steps_per_epoch`` steps.
    After each epoch: the validation score, ``describe()`` (more fields of the
    history record, under ``torch.no_grad``), the best weights kept and,
    with ``checkpoint``, everything needed to resume written there
    (``resume=True`` continues from it). At the end the best epoch's weights
    are loaded and the network is left on the CPU in eval mode.
    """
    log = log or _log
    device = pick_device(config.device)
    network.to(device)
    groups = [{"params": list(network.parameters()), "lr": config.lr}]
    if extra is not None:
        extra.to(device)
        groups.append({"params": list(extra.parameters()), "lr": config.lr * extra_lr_factor})
    optimiser = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups],
                                                   total_steps=config.epochs * config.steps_per_epoch,
                                                   pct_start=config.pct_start)
    higher = validation is not None and validation.higher_is_better
    undefined = validation.undefined if validation is not None else "train_loss"
    first, since_best, history = 0, 0, []
    best = {"score": -float("inf") if higher else float("inf"), "epoch": 0, "state": None, "extra": None}
    if resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        network.load_state_dict(state["network"])
        if extra is not None:
            extra.load_state_dict(state["extra"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        sampler.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        first, best, since_best, history = state["epoch"], state["best"], state["since_best"], state["history"]
        log.info("resumed", model=name, epoch=first, checkpoint=str(checkpoint))
    elif resume:
        log.info("resume_without_checkpoint", model=name, checkpoint=str(checkpoint))

    for epoch in range(first, config.epochs):
        network.train()
        t0, losses, metrics = time.perf_counter(), [], {}
        for _ in range(config.steps_per_epoch):
            batch = to_device(sampler.batch(config.batch_size), device)
            optimiser.zero_grad(set_to_none=True)
            value, step_metrics = _value(loss(network, batch))
            value.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(value.detach()))
            for key, v in step_metrics.items():
                metrics.setdefault(key, []).append(float(v))
            if progress:
                progress(1)
        network.eval()
        v, val_metrics = _validate(network, validation, device)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  **{f"train_{k}": float(np.mean(vs)) for k, vs in metrics.items()},
                  (validation.key if validation is not None else "val_loss"): v, **val_metrics,
                  "seconds": round(time.perf_counter() - t0, 2)}
        if describe is not None:
            with torch.no_grad():
                record.update(describe())
        history.append(record)
        log.info("epoch", model=name, **record)
        score = record["train_loss"] if not np.isfinite(v) and undefined == "train_loss" else v
        if np.isfinite(score) and (score >= best["score"] if higher else score <= best["score"]):
            best = {"score": score, "epoch": epoch + 1, "state": _copy(network), "extra": _copy(extra)}
            since_best = 0
        else:
            since_best += 1
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"network": network.state_dict(), "extra": None if extra is None else extra.state_dict(),
                        "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                        "rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "epoch": epoch + 1, "best": best, "since_best": since_best, "history": history},
                       checkpoint)
        if config.patience and since_best >= config.patience:
            log.info("early_stop", model=name, epoch=epoch + 1, best_epoch=best["epoch"])
            break
    if best["state"] is not None:
        network.load_state_dict(best["state"])
        if extra is not None and best["extra"] is not None:
            extra.load_state_dict(best["extra"])
    network.cpu().eval()
    if extra is not None:
        extra.cpu()
    kept = next((r for r in history if r["epoch"] == best["epoch"]), None)
    log.info("best_epoch", model=name, epoch=best["epoch"], epochs=len(history),
             **({k: v for k, v in kept.items() if k.startswith("val_")} if kept else {}),
             note="weights of this epoch kept" if kept else "no epoch ranked: the last weights kept")
    return FitResult(history, best["epoch"])


def _validate(network: nn.Module, validation: Validation | None, device: torch.device) -> tuple[float, dict]:
    if validation is None:
        return float("nan"), {}
    where = torch.device("cpu") if validation.on_cpu else device
    network.to(where)
    try:
        with torch.inference_mode():
            score = float(validation.score(network, where))
            extra = validation.metrics(network, where) if validation.metrics is not None else {}
            return score, {k: float(v) for k, v in (extra or {}).items()}
    finally:
        network.to(device)
