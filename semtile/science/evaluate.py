"""``semtile evaluate``: a result store against the labels (and masks) it should have found.

Reads the result store ``semtile process`` writes through the results API
(:func:`semtile.results.open_results`, read-only: the one reader that
``semtile report`` shares) and the formats datasets use (``labels.csv``;
``masks/`` beside the images, as ``semtile synth`` writes them; ``truth.csv``
with true adhesive ratios). Labels are ordered where they are integers, so
besides top-1 accuracy it reports the share within one label (±1) and the
mean absolute error in t. Given an expert's answers (``path,label``) it
reports the same figures for the human beside the model (the paper's
Figures 7 and 8).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from semtile.io.dataset import read_labels
from semtile.errors import DatasetError, SemtileError
from semtile.results import LabelScores, label_scores, open_results, read_answers

__all__ = ["LabelScores", "evaluate_store", "evaluate_explanations", "label_scores", "mask_scores", "split_names"]


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
                   part: str = "test") -> dict:
    """Score a result store against a dataset; write CSV, PNG, JSON and markdown into ``out``.

    With ``split_from`` (a trained model's weights or card) only the images of
    its ``part`` split are scored: the held-out test set of that training run.
    """
    store, out = Path(store), Path(out)
    results = open_results(store)  # SemtileError naming the path unless it is a result store
    samples = read_labels(labels_csv)
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
    rows, labels = [], None
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

            predicted = stored.binary_mask.compute()
            truth = tifffile.imread(mask_path)[: predicted.shape[0], : predicted.shape[1]] > 0
            row.update(mask_scores(predicted, truth))
        rows.append(row)
    if not rows:
        raise DatasetError(f"no image of {labels_csv} has a result in {store}")
    out.mkdir(parents=True, exist_ok=True)
    model = label_scores([r["true_label"] for r in rows], [r["predicted_label"] for r in rows], labels)
    report = {"images": len(rows), "missing": len(samples) - len(rows), "model": model.to_dict(),
              "split": {"from": str(split_from), "part": part} if split_from is not None else None}
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


def _summary(report: dict) -> str:
    scope = f", {report['split']['part']} split of {report['split']['from']}" if report.get("split") else ""
    lines = [f"# Evaluation ({report['images']} images{scope}, {report['missing']} without a result)", "",
             "| who | top-1 | ±1 | MAE in t |", "|---|---:|---:|---:|"]
    for who in ("model", "expert", "model_on_expert_images"):
        if who in report:
            s = report[who]
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {who} | {fmt(s['top1'])} | {fmt(s['within1'])} | {fmt(s['mae_t'])} |")
    if "adhesive_ratio_mae" in report:
        lines += ["", f"Adhesive ratio, mean absolute error against truth.csv: {report['adhesive_ratio_mae']:.4f}"]
    if "masks" in report:
        fmt4 = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines += ["", "| mask metric | mean over images | std | images |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {fmt4(v['mean'])} | {fmt4(v['std'])} | {v['images']} |" for k, v in report["masks"].items()]
        pooled = report["masks_pooled"]
        lines += ["", f"Pooled over all pixels: Dice {fmt4(pooled['dice'])}, IoU {fmt4(pooled['iou'])}. "
                  f"IoU and Dice skip images whose true mask is empty ({pooled['empty_truth_images']}; "
                  f"{pooled['empty_truth_false_positive_pixels']} pixels marked adhesive on them)."]
    return "\n".join(lines) + "\n"


# -- explanations against true masks (issue 12): `semtile evaluate RESULTS --masks DIR` ------------------------

#: Explanation kinds scored, in table order: the segmenter's mask, then the heat maps `semtile explain` writes.
EXPLANATION_KINDS = ("segmenter", "gradcam", "cam")
_KIND_TITLES = {"segmenter": "Segmenter mask", "gradcam": "Grad-CAM", "cam": "CAM"}


def _explanation_masks(kind: str, heat: np.ndarray, rule: str, tau: float | None, stored_binary=None) -> np.ndarray:
    """The binary mask of one explanation by one rule: ``fixed``/``val`` (tau) or ``otsu``.

    Heat maps follow 003's Algorithm 2 (normalised by the whole map's maximum,
    then ``> tau``). The segmenter's output is already a probability: it is
    thresholded as it stands (``> tau``; at the fixed tau its stored binary
    mask, ``p >= --threshold`` of the run), and Otsu's threshold is taken on it.
    """
    from semtile.explain.masks import heat_to_mask, otsu_mask

    if kind == "segmenter":
        if rule == "fixed" and stored_binary is not None:
            return stored_binary
        if rule == "otsu":
            from skimage.filters import threshold_otsu

            return heat > threshold_otsu(heat) if float(heat.min()) < float(heat.max()) else np.zeros(heat.shape, bool)
        return heat > tau
    return otsu_mask(heat) if rule == "otsu" else heat_to_mask(heat, tau)


def evaluate_explanations(store: str | Path, masks: str | Path, out: str | Path, *, tau: float = 0.5,
                          val_fraction: float = 0.25, seed: int = 0, taus: tuple[float, ...] | None = None,
                          figure_images: int = 4) -> dict:
    """Score every explanation a store holds (segmenter mask, Grad-CAM, CAM) against the true masks in ``masks``.

    The results with a mask (same file name, or stem with a mask suffix) are
    split by a hash of their names (:func:`semtile.explain.scores.validation_split`,
    ``val_fraction``, ``seed``) into validation and test images. On the
    validation images the tau of best mean Dice is chosen per kind; on the
    test images each kind is scored at the fixed ``tau``, at its validation
    tau and at Otsu's threshold: accuracy, precision, recall, Dice and IoU
    as mean ± sd over images. Writes ``explanations.md`` (003's table),
    ``explanations.csv`` (per image, kind and rule), ``explanations.json`` and
    ``explanations.png`` (overlays of a few test images) into ``out``.
    """
    from semtile.explain.propose import find_truth_mask, read_truth_mask
    from semtile.explain.scores import METRICS, TAUS, binary_scores, choose_tau, format_table, summarise, \
        validation_split

    taus = tuple(taus or TAUS)
    store, masks, out = Path(store), Path(masks), Path(out)
    if not masks.is_dir():
        raise DatasetError(f"{masks}: masks folder not found")
    if not 0.0 <= tau <= 1.0:
        raise SemtileError(f"--tau {tau}: must lie in [0, 1]")
    results = open_results(store)
    paired = {}
    for name in results.names:
        path = find_truth_mask(masks, results[name].source)
        if path is not None:
            paired[name] = path
    if len(paired) < 2:
        raise DatasetError(f"{masks}: {len(paired)} of the {len(results.names)} results of {store} have a true mask "
                           "(same file name); scoring needs at least 2 (validation and test)")
    val, test = validation_split(list(paired), val_fraction, seed)

    def load(name: str):
        result = results[name]
        prob = np.asarray(result.mask.compute(), dtype=np.float32)
        truth = read_truth_mask(paired[name], prob.shape)
        heats = {"segmenter": prob}
        for kind in EXPLANATION_KINDS[1:]:
            if kind in result.maps:
                heat = np.asarray(result.map(kind).compute(), dtype=np.float32)
                if heat.shape != prob.shape:
                    raise DatasetError(f"{result.group_path}: map {kind!r} of shape {heat.shape}, mask {prob.shape}")
                heats[kind] = heat
        return result, truth, heats

    # Validation: per kind, per tau, the Dice of each image.
    val_dice: dict[str, dict[float, list[float]]] = {}
    for name in val:
        result, truth, heats = load(name)
        for kind, heat in heats.items():
            per_tau = val_dice.setdefault(kind, {t: [] for t in taus})
            for t in taus:
                per_tau[t].append(binary_scores(_explanation_masks(kind, heat, "val", t), truth)["dice"])
    chosen = {}
    for kind, per_tau in val_dice.items():
        try:
            chosen[kind] = choose_tau(lambda t, per_tau=per_tau: per_tau[t], taus)
        except ValueError:
            pass  # every validation truth empty: no validation tau for this kind
    # Test: fixed tau, validation tau, Otsu.
    rows: list = []
    per_rule: dict = {}
    picture = []
    ordered = sorted(test)
    shown = {ordered[int(round(i))] for i in np.linspace(0, len(ordered) - 1, min(figure_images, len(ordered)))}
    for name in ordered:
        result, truth, heats = load(name)
        binary = None
        for kind, heat in heats.items():
            rules = [("fixed", tau)] + ([("val", chosen[kind][0])] if kind in chosen else []) + [("otsu", None)]
            for rule, t in rules:
                if kind == "segmenter" and rule == "fixed":
                    binary = np.asarray(result.binary_mask.compute(), dtype=bool)
                    m = binary
                    t = float((result.provenance.get("parameters") or {}).get("threshold", 0.5))
                else:
                    m = _explanation_masks(kind, heat, rule, t)
                s = binary_scores(m, truth)
                rows.append({"name": name, "kind": kind, "rule": rule, "tau": t, **s})
                per_rule.setdefault((kind, rule), []).append(s)
        if name in shown:  # spread over the test images (sorted names: over the labels, for synthetic sets)
            step = max(1, max(truth.shape) // 400)
            image = np.asarray(result.image[::step, ::step].compute(), dtype=np.float32) if result.ome else None
            picture.append((name, image, truth[::step, ::step],
                            {k: h[::step, ::step] for k, h in heats.items()},
                            {k: (chosen[k][0] if k in chosen else tau) for k in heats}))
    table_rows = []
    for kind in EXPLANATION_KINDS:
        for rule, label in (("fixed", "fixed τ"), ("val", "τ from validation"), ("otsu", "Otsu")):
            scores = per_rule.get((kind, rule))
            if not scores:
                continue
            t = ([r["tau"] for r in rows if r["kind"] == kind and r["rule"] == rule] or [None])[0]
            row = {"method": f"{_KIND_TITLES[kind]}, {label}", "images": len(scores)}
            if t is not None:
                row["tau"] = float(t)
            row.update({m: summarise(s[m] for s in scores) for m in METRICS})
            table_rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "explanations.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "kind", "rule", "tau", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    report = {"store": str(store), "masks": str(masks), "images_with_masks": len(paired),
              "results": len(results.names), "validation": sorted(val), "test": sorted(test),
              "split": {"fraction": val_fraction, "seed": seed, "rule": "sha256(seed:name)"},
              "fixed_tau": tau, "taus_tried": list(taus),
              "validation_tau": {k: {"tau": v[0], "mean_dice": v[1]} for k, v in chosen.items()},
              "kinds": sorted(val_dice, key=EXPLANATION_KINDS.index),
              "table": [{k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in r.items()} for r in table_rows]}
    (out / "explanations.json").write_text(json.dumps(report, indent=2) + "\n")
    missing = [k for k in EXPLANATION_KINDS[1:] if k not in report["kinds"]]
    text = [f"# Explanations against true masks ({len(test)} test images; τ chosen on {len(val)} validation images)",
            "", format_table(table_rows).rstrip("\n"), "",
            "Mean ± sd over the test images (population sd); precision is undefined where nothing is predicted, "
            "recall, Dice and IoU where the true mask is empty, and such images are left out of that figure. "
            "Heat maps become masks by 003's Algorithm 2 (the whole map normalised by its maximum, then > τ); "
            "the segmenter's probability is thresholded as it stands (its fixed-τ row is the stored mask). "
            "Validation τ: the best mean Dice over τ = "
            f"{taus[0]:g}, {taus[1]:g}, ..., {taus[-1]:g}. Hasic & Kofler (003) report Grad-CAM Dice 0.254 ± 0.154, "
            "IoU 0.156 ± 0.118 on their SEM defect images."]
    if missing:
        text += ["", f"No {', '.join(missing)} maps in the store: run `semtile explain {store}` to add them."]
    (out / "explanations.md").write_text("\n".join(text) + "\n")
    if picture:
        _plot_explanations(picture, out / "explanations.png")
    return report


def _plot_explanations(picture: list, path: Path) -> None:
    """One row per image: the scan, the true mask, then each explanation as a heat map with its mask's outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semtile.explain.masks import normalise_by_max

    kinds = [k for k in EXPLANATION_KINDS if any(k in p[3] for p in picture)]
    cols = 2 + len(kinds)
    fig, axes = plt.subplots(len(picture), cols, figsize=(2.6 * cols, 2.2 * len(picture)), dpi=100, squeeze=False)
    for i, (name, image, truth, heats, taus) in enumerate(picture):
        ax = axes[i]
        ax[0].imshow(image if image is not None else truth, cmap="gray")
        ax[0].set_ylabel(name, fontsize=7)
        ax[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
        for j, kind in enumerate(kinds):
            a = ax[2 + j]
            if kind not in heats:
                a.axis("off")
                continue
            heat = heats[kind] if kind == "segmenter" else normalise_by_max(heats[kind])
            if image is not None:
                a.imshow(image, cmap="gray")
            a.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            a.contour(heat > taus[kind], levels=[0.5], colors="cyan", linewidths=0.6)
            a.contour(truth, levels=[0.5], colors="lime", linewidths=0.6, linestyles="dashed")
            if i == 0:
                a.set_title(f"{_KIND_TITLES[kind]} (τ {taus[kind]:.2f})", fontsize=8)
        if i == 0:
            ax[0].set_title("scan", fontsize=8)
            ax[1].set_title("true mask", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle("heat (inferno), mask at validation τ (cyan), true mask (green, dashed)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
