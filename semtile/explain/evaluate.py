"""``semtile evaluate RESULTS --masks DIR``: every explanation a result store holds against true masks.

The segmenter's mask and the heat maps ``semtile explain`` writes (Grad-CAM,
CAM) are read through the results API (:func:`semtile.results.open_results`),
turned into masks (:mod:`semtile.explain.masks`) and scored
(:mod:`semtile.explain.scores`) on a validation/test split of the images.
The label side of ``semtile evaluate`` is :mod:`semtile.science.evaluate`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from semtile.errors import DamagedResultError, DatasetError, SemtileError
from semtile.results import open_results

__all__ = ["EXPLANATION_KINDS", "evaluate_explanations"]

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
    from semtile.explain.scores import (
        METRICS,
        TAUS,
        binary_scores,
        choose_tau,
        summarise,
        validation_split,
    )

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
    damaged: dict[str, str] = {}  # a damaged result is that result's error: left out, named in the outputs

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
        try:
            result, truth, heats = load(name)
        except DamagedResultError as exc:
            damaged[name] = str(exc)
            continue
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
        try:
            result, truth, heats = load(name)
            binary = np.asarray(result.binary_mask.compute(), dtype=bool)
            image = None
            if name in shown and result.ome:
                step = max(1, max(truth.shape) // 400)
                image = np.asarray(result.image[::step, ::step].compute(), dtype=np.float32)
        except DamagedResultError as exc:
            damaged[name] = str(exc)
            continue
        for kind, heat in heats.items():
            rules = [("fixed", tau)] + ([("val", chosen[kind][0])] if kind in chosen else []) + [("otsu", None)]
            for rule, t in rules:
                if kind == "segmenter" and rule == "fixed":
                    m = binary
                    t = float((result.provenance.get("parameters") or {}).get("threshold", 0.5))
                else:
                    m = _explanation_masks(kind, heat, rule, t)
                s = binary_scores(m, truth)
                rows.append({"name": name, "kind": kind, "rule": rule, "tau": t, **s})
                per_rule.setdefault((kind, rule), []).append(s)
        if name in shown:  # spread over the test images (sorted names: over the labels, for synthetic sets)
            step = max(1, max(truth.shape) // 400)
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
    # Written whole beside ``out`` and moved in at the end: a failure leaves ``out`` as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    final, out = out, out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True)
    try:
        report = _write_outputs(out, store, masks, results, paired, val, test, tau, taus, val_fraction, seed,
                                chosen, val_dice, rows, table_rows, picture, damaged)
        _move_into(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return report


def _move_into(staged: Path, out: Path) -> None:
    """The files of ``staged`` into ``out``: the folder renamed when ``out`` is new, else file by file (atomic each)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, out)
            return
        except OSError:
            out.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(staged):
        os.replace(entry.path, out / entry.name)


def _write_outputs(out, store, masks, results, paired, val, test, tau, taus, val_fraction, seed, chosen, val_dice,
                   rows, table_rows, picture, damaged) -> dict:
    from semtile.explain.scores import METRICS, format_table

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
              "table": [{k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in r.items()} for r in table_rows],
              "damaged": damaged}
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
    if damaged:
        text += ["", f"{len(damaged)} damaged result{'s' if len(damaged) != 1 else ''} left out (`semtile verify` "
                 "lists them; `--repair` sets them aside for a rerun):"]
        text += [f"- {message}" for message in damaged.values()]
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
