"""``semtile hypotheses``: which curve g(t) do the surfaces follow?

One segmenter is trained per candidate hypothesis with the same seed, split
and budget. The held-out error of a segmenter trained on g -- the mean over
images of (mean of its mask over the whole image - g(t))^2 -- is the paper's
proxy for how right g is; candidates are ranked by their validation error.
A ``learned`` candidate fits g jointly with the segmenter and is saved as a
table of g(t).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import torch

from semtile.inference.whole_image import image_logits
from semtile.logs import get_logger
from semtile.models.io import load_model
from semtile.models.networks import Architecture
from semtile.science.hypotheses import is_learned, parse_hypothesis
from semtile.science.training import TrainConfig, TrainingData, load_training_data, train_segmenter

__all__ = ["rank_hypotheses", "image_mean_masks"]

log = get_logger("semtile.science.hypotheses")


def image_mean_masks(network: torch.nn.Module, images: list[np.ndarray], multiple: int) -> np.ndarray:
    """Mean adhesive probability of each whole image (cropped to a multiple of 2**d)."""
    return np.array([float(torch.sigmoid(torch.from_numpy(image_logits(network, image, multiple))).mean())
                     for image in images])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def rank_hypotheses(
    data: str | Path,
    candidates: list[str],
    out: str | Path,
    *,
    arch: Architecture,
    config: TrainConfig,
    g_range: tuple[float, float] = (1.0, 0.0),
    binary_weight: float | None = None,
) -> list[dict]:
    """Train one segmenter per candidate; write ranking.csv, learned_g.csv, a figure and a summary."""
    for c in candidates:
        parse_hypothesis(c)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    td: TrainingData = load_training_data(data, config)
    t_index = np.array(td.label_index())
    n_labels = len(td.labels)
    rows, curves = [], {}
    for candidate in candidates:
        weights = out / f"segmenter-{_safe(candidate)}.pt"
        # The penalty on undecided pixels applies to the learned curve only: fixed
        # candidates are scored the paper's way, by the plain weak-label fit.
        train_segmenter(td, weights, hypothesis=candidate, g_range=g_range, arch=arch, config=config,
                        binary_weight=binary_weight if is_learned(candidate) else 0.0)
        model = load_model(weights, "segmenter")
        g = np.array(model.card["training"]["g"])
        means = image_mean_masks(model.network, td.images, model.arch.multiple)
        errors = {part: float(np.mean((means[idx] - g[t_index[idx]]) ** 2)) if idx else float("nan")
                  for part, idx in td.split.items()}
        per_label = {part: [float(np.mean(means[[i for i in idx if t_index[i] == k]]))
                            if any(t_index[i] == k for i in idx) else None for k in range(n_labels)]
                     for part, idx in td.split.items()}
        curves[candidate] = {"g": g.tolist(), "per_label": per_label,
                             "calibration": model.card["training"].get("calibration")}
        rows.append({"hypothesis": candidate, "train_error": errors["train"], "val_error": errors["val"],
                     "test_error": errors["test"], "weights": weights.name})
        log.info("hypothesis", hypothesis=candidate, **{k: round(v, 6) for k, v in errors.items()})
    order = sorted(range(len(rows)), key=lambda i: (np.isnan(rows[i]["val_error"]), rows[i]["val_error"]))
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank
    rows.sort(key=lambda r: r["rank"])
    with (out / "ranking.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["hypothesis", "train_error", "val_error", "test_error", "rank"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in writer.fieldnames})
    learned = [c for c in candidates if is_learned(c)]
    if learned:
        with (out / "learned_g.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t", "g"])
            writer.writerows([label, f"{v:.6f}"] for label, v in zip(td.labels, curves[learned[0]]["g"]))
    (out / "curves.json").write_text(json.dumps({"labels": td.labels, "curves": curves,
                                                 "split": {p: td.names(p) for p in td.split},
                                                 "config": {**config.__dict__, "split": list(config.split)},
                                                 "architecture": arch.to_dict(), "g_range": list(g_range)},
                                                indent=2) + "\n")
    _plot(td.labels, curves, out / "mean_ratio_per_label.png")
    _summary(rows, curves, td, out / "summary.md")
    return rows


def _plot(labels: list, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), dpi=110, squeeze=False)
    t = np.arange(len(labels))
    for ax, (name, curve) in zip(axes[0], curves.items()):
        ax.plot(t, curve["g"], "k-", label=f"g ({name})")
        for part, marker in (("train", "o"), ("val", "s"), ("test", "^")):
            values = np.array([np.nan if v is None else v for v in curve["per_label"][part]])
            ax.plot(t, values, marker, ms=4, alpha=0.8, label=part)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("label t")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("mean predicted adhesive ratio")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _summary(rows: list[dict], curves: dict, td: TrainingData, path: Path) -> None:
    lines = ["# Hypothesis ranking", "",
             f"{len(td.samples)} images, {len(td.labels)} labels; split train/val/test = "
             f"{len(td.split['train'])}/{len(td.split['val'])}/{len(td.split['test'])}.",
             "Error: mean over images of (mean of the mask over the image - g(t))^2; ranked by validation error.", "",
             "| rank | hypothesis | train | val | test |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['rank']} | {r['hypothesis']} | {r['train_error']:.5f} | {r['val_error']:.5f} | {r['test_error']:.5f} |"
              for r in rows]
    learned = [name for name in curves if is_learned(name)]
    if learned:
        g = curves[learned[0]]["g"]
        lines += ["", "Learned g(t): " + ", ".join(f"{v:.3f}" for v in g)]
        calibration = curves[learned[0]].get("calibration")
        if calibration:
            ends = calibration["ends_used"]
            lines += ["", f"Read out at a decision threshold of logit {calibration['threshold_logit']:.2f}"
                      + (f", set by the pinned ends at labels {', '.join(str(td.labels[k]) for k in ends)}."
                         if ends else " (both ends pure: the trained boundary).")]
    lines += ["", "![mean predicted ratio per label](mean_ratio_per_label.png)"]
    path.write_text("\n".join(lines) + "\n")


