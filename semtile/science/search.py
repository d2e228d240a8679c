"""``semtile search``: a grid search over the classifier's (c, d, n, N), as in the paper.

Every architecture is trained with the same seed, split and budget, then
scored on the validation images the way ``semtile process`` labels a scan:
tiles over the whole image, their class probabilities combined, the label
decided by the same rule. The leaderboard gives top-1 and ±1 accuracy (labels
are ordered), mean absolute error in t, the parameter count and the
classifier's CPU throughput in tiles per second.
"""

from __future__ import annotations

import csv
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from semtile.errors import SemtileError
from semtile.inference.labels import class_probs, core_weights, decide_label
from semtile.inference.one_image import run_array
from semtile.inference.split import GridRule
from semtile.logs import get_logger
from semtile.models.io import load_model
from semtile.models.networks import Architecture, build_model
from semtile.science.evaluate import label_scores
from semtile.science.training import TrainConfig, TrainingData, load_training_data, train_classifier

__all__ = ["search_classifiers", "classify_images", "parameter_count"]

log = get_logger("semtile.science.search")


def parameter_count(arch: Architecture) -> int:
    return sum(p.numel() for p in build_model(arch).parameters())


def classify_images(network: torch.nn.Module, images: list[np.ndarray], labels: list, tile: int,
                    batch_size: int = 8) -> list:
    """Label whole images from tiles, exactly as the pipeline does (same tiles, halo and rule)."""

    def logits(tiles: np.ndarray) -> dict:
        return {"logits": network(torch.from_numpy(tiles)[:, None]).numpy()}

    predictions = []
    network.eval()
    with torch.inference_mode():
        for image in images:
            grid = GridRule.derive(tile).grid(image.shape)
            tile_logits = run_array(image, grid, logits, batch_size=batch_size, collect=("logits",))["logits"]
            predictions.append(decide_label(class_probs(tile_logits, core_weights(grid)), labels)[0])
    return predictions


def _tiles_per_second(network: torch.nn.Module, tile: int, batch: int = 8, repeats: int = 3) -> float:
    x = torch.rand(batch, 1, tile, tile)
    with torch.inference_mode():
        network(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            network(x)
    return batch * repeats / (time.perf_counter() - t0)


def search_classifiers(
    data: str | Path,
    out: str | Path,
    *,
    grid: dict[str, list[int]],
    config: TrainConfig,
    max_params: int | None = None,
) -> list[dict]:
    """Train each architecture of ``grid`` (keys c, d, n, N); write leaderboard.csv and .md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    td: TrainingData = load_training_data(data, config)
    archs = [Architecture("classifier", c, d, n, N, n_labels=len(td.labels)) for c, d, n, N in
             itertools.product(grid["c"], grid["d"], grid["n"], grid["N"])]
    archs = [a for a in archs if config.crop % a.multiple == 0]
    if max_params is not None:
        archs = [a for a in archs if parameter_count(a) <= max_params]
    if not archs:
        raise SemtileError("no architecture of the grid fits --max-params and the crop size")
    if not td.split["val"]:
        raise SemtileError("the split leaves no validation images to score on")
    val_images = [td.images[i] for i in td.split["val"]]
    val_true = [td.samples[i].label for i in td.split["val"]]
    rows = []
    for arch in archs:
        name = f"c{arch.c}-d{arch.d}-n{arch.n}-N{arch.N}"
        weights = out / f"classifier-{name}.pt"
        t0 = time.perf_counter()
        train_classifier(td, weights, arch=arch, config=config)
        model = load_model(weights, "classifier")
        scores = label_scores(val_true, classify_images(model.network, val_images, td.labels, config.crop), td.labels)
        row = {"architecture": name, "c": arch.c, "d": arch.d, "n": arch.n, "N": arch.N,
               "params": parameter_count(arch), "val_top1": scores.top1, "val_within1": scores.within1,
               "val_mae_t": scores.mae_t, "tiles_per_s": _tiles_per_second(model.network, config.crop),
               "train_seconds": time.perf_counter() - t0}
        rows.append(row)
        log.info("architecture", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    ordered = all(r["val_within1"] is not None for r in rows)
    rows.sort(key=lambda r: ((-r["val_within1"], r["val_mae_t"]) if ordered else (0, 0)) + (-r["val_top1"], r["params"]))
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    fields = ["rank", "architecture", "c", "d", "n", "N", "params", "val_top1", "val_within1", "val_mae_t",
              "tiles_per_s", "train_seconds"]
    with (out / "leaderboard.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)

    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["# Classifier search", "", f"Validation: {len(val_images)} images; crop {config.crop}; "
             f"{config.epochs} epochs x {config.steps_per_epoch} steps.", "",
             "| rank | c | d | n | N | params | top-1 | ±1 | MAE t | tiles/s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rank']} | {r['c']} | {r['d']} | {r['n']} | {r['N']} | {r['params']} | {fmt(r['val_top1'])} | "
              f"{fmt(r['val_within1'])} | {fmt(r['val_mae_t'])} | {r['tiles_per_s']:.1f} |" for r in rows]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    return rows
