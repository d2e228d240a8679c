"""``semtile evaluate``: a result store against the labels (and masks) it should have found.

Reads the result store ``semtile process`` writes through the results API
(:func:`semtile.results.open_results`, read-only: the one reader that
``semtile report`` shares) and the formats datasets use (``labels.csv``;
``masks/`` beside the images, as ``semtile synth`` writes them; ``truth.csv``
with true adhesive ratios). Labels are ordered where they are integers, so
besides top-1 accuracy it reports the share within one label (±1) and the
mean absolute error in t. Given an expert's answers (``path,label``) it
reports the same figures for the human beside the model (the paper's
Figures 7 and 8). The explanations' side of ``semtile evaluate --masks``
is :mod:`semtile.explain.evaluate`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from semtile.errors import DamagedResultError, DatasetError, SemtileError
from semtile.io.dataset import read_labels
from semtile.results import LabelScores, label_scores, open_results, read_answers

__all__ = ["LabelScores", "evaluate_store", "label_scores", "mask_scores", "split_names"]


def mask_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Pixel accuracy, IoU and Dice of two binary masks of the same shape.

    IoU and Dice are NaN where the truth is empty: there they are undefined (one
    false-positive pixel would score 0, none 1), and averaging them would let a
    handful of blank images swing the mean. MONAI's ``DiceMetric`` does the same
    by default (``ignore_empty=True``). The counts behind a pooled Dice are
    returned too (``intersection``, ``predicted``, ``true``).
    """
    p, t = predicted.astype(bool), truth.astype(bool)
    inter, union = int(np.logical_and(p, t).sum()), int(np.logical_or(p, t).sum())
    n_pred, n_true = int(p.sum()), int(t.sum())
    return {"pixel_accuracy": float(np.mean(p == t)),
            "iou": float(inter / union) if n_true else float("nan"),
            "dice": float(2 * inter / (n_pred + n_true)) if n_true else float("nan"),
            "intersection": inter, "predicted": n_pred, "true": n_true}


def _plot_confusion(scores: LabelScores, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    m = scores.confusion
    image = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(scores.labels)), [str(v) for v in scores.labels], fontsize=7)
    ax.set_yticks(range(len(scores.labels)), [str(v) for v in scores.labels], fontsize=7)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    extra = f", ±1 {scores.within1:.2f}, MAE {scores.mae_t:.2f}" if scores.within1 is not None else ""
    ax.set_title(f"{title}: top-1 {scores.top1:.2f}{extra}", fontsize=9)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="w" if v < m.max() / 2 else "k")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def split_names(model: str | Path, part: str) -> set[str]:
    """File names in the ``part`` split (train, val or test) recorded in a trained model's card."""
    if part not in ("train", "val", "test"):
        raise SemtileError(f"split part {part!r}: expected train, val or test")
    from semtile.models.io import card_path  # here: modelio imports torch, which plain scoring does not need

    card = card_path(model)
    if not card.is_file():
        raise SemtileError(f"{card}: no model card (the .json written beside the weights)")
    try:
        split = json.loads(card.read_text())["training"]["split"]
    except (ValueError, KeyError, TypeError):
        raise SemtileError(f"{card}: the card records no training split") from None
    return set(split[part])


def evaluate_store(store: str | Path, labels_csv: str | Path, out: str | Path,
                   expert_csv: str | Path | None = None, split_from: str | Path | None = None,
                   part: str = "test", path_column: str | None = None, label_column: str | None = None) -> dict:
    """Score a result store against a dataset; write CSV, PNG, JSON and markdown into ``out``.

    With ``split_from`` (a trained model's weights or card) only the images of
    its ``part`` split are scored: the held-out test set of that training run.
    ``path_column`` and ``label_column`` name the columns of ``labels_csv``
    (default: ``path`` or ``file``, and ``label``).
    """
    store, out = Path(store), Path(out)
    results = open_results(store)  # SemtileError naming the path unless it is a result store
    samples = read_labels(labels_csv, path_column, label_column)
    if split_from is not None:
        names = split_names(split_from, part)
        samples = [s for s in samples if s.path.name in names]
        if not samples:
            raise DatasetError(f"{labels_csv}: no image of the {part} split of {split_from}")
    truth_by_path = {s.path: s.label for s in samples}
    base = Path(labels_csv).parent if Path(labels_csv).is_file() else Path(labels_csv)
    truth_ratio = {}
    if (base / "truth.csv").is_file():
        with (base / "truth.csv").open(newline="") as handle:
            truth_ratio = {(base / r["path"]).resolve(): float(r["adhesive_ratio"]) for r in csv.DictReader(handle)}
    rows, labels, damaged = [], None, {}
    for name in results.names:
        stored = results[name]
        source = stored.source
        if source not in truth_by_path:
            continue
        labels = labels or list(stored.labels)
        row = {"path": str(source), "group": name, "true_label": truth_by_path[source],
               "predicted_label": stored.label, "adhesive_ratio": stored.adhesive_ratio}
        if source in truth_ratio:
            row["true_adhesive_ratio"] = truth_ratio[source]
        mask_path = source.parent.parent / "masks" / source.name
        if mask_path.is_file():
            import tifffile

            try:
                predicted = stored.binary_mask.compute()
            except DamagedResultError as exc:  # that result's error: left out, named in metrics.json
                damaged[name] = str(exc)
                continue
            truth = tifffile.imread(mask_path)[: predicted.shape[0], : predicted.shape[1]] > 0
            row.update(mask_scores(predicted, truth))
        rows.append(row)
    if not rows:
        raise DatasetError(f"no image of {labels_csv} has a result in {store}")
    out.mkdir(parents=True, exist_ok=True)
    model = label_scores([r["true_label"] for r in rows], [r["predicted_label"] for r in rows], labels)
    report = {"images": len(rows), "missing": len(samples) - len(rows), "model": model.to_dict(),
              "split": {"from": str(split_from), "part": part} if split_from is not None else None,
              "damaged": damaged}
    _write_confusion(model, out / "confusion.csv")
    _plot_confusion(model, "model", out / "confusion.png")
    if any("true_adhesive_ratio" in r for r in rows):
        errors = [abs(r["adhesive_ratio"] - r["true_adhesive_ratio"]) for r in rows if "true_adhesive_ratio" in r]
        report["adhesive_ratio_mae"] = float(np.mean(errors))
    scored = [r for r in rows if "dice" in r]
    if scored:
        report["masks"] = {k: _finite_summary([r[k] for r in scored]) for k in ("pixel_accuracy", "iou", "dice")}
        inter, pred, true = (sum(r[k] for r in scored) for k in ("intersection", "predicted", "true"))
        blank = [r for r in scored if r["true"] == 0]
        report["masks_pooled"] = {"dice": 2 * inter / (pred + true) if pred + true else None,
                                  "iou": inter / (pred + true - inter) if pred + true - inter else None,
                                  "empty_truth_images": len(blank),
                                  "empty_truth_false_positive_pixels": int(sum(r["predicted"] for r in blank))}
    if expert_csv:
        expert = read_answers(expert_csv)
        judged = [r for r in rows if Path(r["path"]) in expert]
        if not judged:
            raise DatasetError(f"{expert_csv}: no answer for any evaluated image")
        human = label_scores([r["true_label"] for r in judged], [expert[Path(r["path"])] for r in judged], labels)
        same = label_scores([r["true_label"] for r in judged], [r["predicted_label"] for r in judged], labels)
        report["expert"] = human.to_dict()
        report["model_on_expert_images"] = same.to_dict()
        _write_confusion(human, out / "confusion_expert.csv")
        _plot_confusion(human, "expert", out / "confusion_expert.png")
    with (out / "per_image.csv").open("w", newline="") as handle:
        fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(_summary(report))
    return report


def _finite_summary(values: list[float]) -> dict:
    """Mean and std over the defined (non-NaN) values, and how many there were."""
    v = np.array(values, dtype=float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else None, "std": float(v.std()) if v.size else None,
            "images": int(v.size)}


def _write_confusion(scores: LabelScores, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *scores.labels])
        for label, row in zip(scores.labels, scores.confusion):
            writer.writerow([label, *row.tolist()])


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _summary(report: dict) -> str:
    scope = f", {report['split']['part']} split of {report['split']['from']}" if report.get("split") else ""
    lines = [f"# Evaluation ({report['images']} images{scope}, {report['missing']} without a result)", "",
             "| who | top-1 | ±1 | MAE in t |", "|---|---:|---:|---:|"]
    for who in ("model", "expert", "model_on_expert_images"):
        if who in report:
            s = report[who]
            lines.append(f"| {who} | {_fmt(s['top1'], 3)} | {_fmt(s['within1'], 3)} | {_fmt(s['mae_t'], 3)} |")
    if "adhesive_ratio_mae" in report:
        lines += ["", f"Adhesive ratio, mean absolute error against truth.csv: {report['adhesive_ratio_mae']:.4f}"]
    if "masks" in report:
        lines += ["", "| mask metric | mean over images | std | images |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {_fmt(v['mean'], 4)} | {_fmt(v['std'], 4)} | {v['images']} |" for k, v in report["masks"].items()]
        pooled = report["masks_pooled"]
        lines += ["", f"Pooled over all pixels: Dice {_fmt(pooled['dice'], 4)}, IoU {_fmt(pooled['iou'], 4)}. "
                  f"IoU and Dice skip images whose true mask is empty ({pooled['empty_truth_images']}; "
                  f"{pooled['empty_truth_false_positive_pixels']} pixels marked adhesive on them)."]
    if report.get("damaged"):
        lines += ["", f"{len(report['damaged'])} damaged result(s) left out (`semtile verify --repair` sets them "
                  "aside for a rerun):", *(f"- {message}" for message in report["damaged"].values())]
    return "\n".join(lines) + "\n"
