"""``semtile evaluate DATA --defect-model MODEL``: a defect model scored on a dataset with known defects.

* Patches with labels 0/1 (``semtile synth lattice``): one score per patch
  (a classifier's probability; an autoencoder's map pooled by max and by mean,
  and a VAE's other variants), AUC-ROC and average precision, the ROC curves
  (``roc.png``) and ``per_patch.csv``; for an autoencoder with defect masks,
  pixel AUROC and PRO of its patch maps as well.
* Whole scans (``semtile synth --defects``, masks in ``defect_masks/``): an
  autoencoder's whole-scan anomaly maps through the tiled path, each image's
  anomaly fraction (with the card's calibrated threshold) in
  ``per_image.csv``, and pixel AUROC and PRO against the masks.

``semtile evaluate RESULTS.zarr --defect-masks DIR`` (:func:`evaluate_stored_maps`)
scores the anomaly maps that ``semtile process --anomaly`` stored, read through
:func:`semtile.open_results`, against the defect masks in ``DIR`` (or its
``defect_masks/``), matched by the input's file name.

When DATA is the dataset the model was trained on, only the ``part`` of its
recorded split is scored (the held-out test split by default); any other
dataset is scored whole. ``metrics.json`` and ``summary.md`` sum it up.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from semtile.defects.anomaly import anomaly_map, as_engine, patch_maps
from semtile.defects.data import DefectData, load_defect_data
from semtile.defects.scores import map_scores, patch_scores, roc_figure
from semtile.engines import EngineSettings, create_engine
from semtile.errors import DamagedResultError, DatasetError, SemtileError
from semtile.logs import get_logger
from semtile.models.io import load_model
from semtile.models.kinds import DEFECT_KINDS

__all__ = ["evaluate_defect_model", "evaluate_stored_maps"]

log = get_logger("semtile.defects")


def _chosen(data: DefectData, card: dict, part: str) -> tuple[list[int], str]:
    training = card.get("training") or {}
    trained_on = training.get("data")
    same = trained_on is not None and Path(trained_on).resolve() == Path(data.source).resolve()
    if same and part in (training.get("split") or {}):
        names = set(training["split"][part])
        chosen = [i for i, s in enumerate(data.samples) if s.path.name in names]
        if not chosen:
            raise DatasetError(f"{data.source}: no image of the model's {part} split")
        return chosen, f"the {part} split of the model's training data"
    return list(range(len(data.samples))), "every image (not the model's training data)"


def evaluate_defect_model(data: str | Path, model_path: str | Path, out: str | Path, *, part: str = "test",
                          engine: str = "torch-cpu", threshold: float | None = None) -> dict:
    """Score a defect model on ``data``; write ``metrics.json``, ``summary.md`` and tables into ``out``."""
    model = load_model(model_path, expect=DEFECT_KINDS)
    out = Path(out)
    defect_data = load_defect_data(data)
    chosen, scope = _chosen(defect_data, model.card, part)
    runner, _ = create_engine(engine, model, EngineSettings(
        tile=defect_data.images[0].shape[0] if defect_data.patches else None))
    report: dict = {"model": str(model_path), "kind": model.arch.kind, "model_sha256": model.sha256,
                    "data": str(data), "scope": scope, "images": len(chosen), "engine": runner.describe()}
    out.mkdir(parents=True, exist_ok=True)
    if defect_data.patches:
        report.update(_patches(defect_data, chosen, model, runner, out))
    else:
        if not model.arch.is_anomaly:
            raise SemtileError(f"{model_path}: a patch classifier is scored on patch datasets; {data} holds whole scans")
        report.update(_scans(defect_data, chosen, runner, out, threshold))
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(_summary(report))
    return report


def _patches(data: DefectData, chosen: list[int], model, runner, out: Path) -> dict:
    labels = [str(data.labels[i]) for i in chosen]
    if not set(labels) <= {"0", "1"}:
        raise DatasetError(f"{data.source}: patch labels must be 0 (normal) or 1 (defect), found {sorted(set(labels))}")
    y = np.array([int(v) for v in labels])
    patches = data.stack(chosen)
    if model.arch.is_anomaly:
        maps = patch_maps(patches, runner)
        variants = {"max": maps.max(axis=(1, 2)).astype(np.float64), "mean": maps.mean(axis=(1, 2)).astype(np.float64)}
        if model.arch.kind == "vae" and runner.name == "torch-cpu":
            from semtile.defects.variants import score_variants

            variants.update({k: v for k, v in score_variants(model, patches).items() if k not in variants})
    else:
        maps = None
        variants = {"probability": np.concatenate([runner.run(patches[i: i + 1024])
                                                   for i in range(0, len(patches), 1024)]).astype(np.float64)}
    result: dict = {"positives": int(y.sum())}
    if y.min() != y.max():
        result["patch"] = {name: patch_scores(y, s, f"patch scores, {name}") for name, s in variants.items()}
        roc_figure({name: (y, s) for name, s in variants.items()}, out / "roc.png",
                   f"{model.arch.kind} on {len(y)} patches ({int(y.sum())} defects)")
    with (out / "per_patch.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *variants])
        for k, i in enumerate(chosen):
            writer.writerow([data.samples[i].path.name, int(y[k]), *(f"{v[k]:.6g}" for v in variants.values())])
    masks = [data.masks[i] for i in chosen]
    if maps is not None and any(m is not None and m.any() for m in masks):
        result["pixels"] = map_scores(list(maps), [m if m is not None else np.zeros(maps.shape[1:], bool) for m in masks])
    return result


def _scans(data: DefectData, chosen: list[int], runner, out: Path, threshold: float | None) -> dict:
    engine = as_engine(runner)
    maps, masks, rows = [], [], []
    for i in chosen:
        image_map, fraction = anomaly_map(data.images[i], engine, threshold=threshold)
        mask = data.masks[i]
        rows.append({"path": data.samples[i].path.name, "anomaly_fraction": fraction,
                     "defect_fraction": None if mask is None else float(mask.mean())})
        if mask is not None:
            maps.append(image_map)
            masks.append(mask)
    with (out / "per_image.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result: dict = {"threshold": threshold if threshold is not None else engine.model.threshold,
                    "mean_anomaly_fraction": (float(np.mean([r["anomaly_fraction"] for r in rows]))
                                              if rows[0]["anomaly_fraction"] is not None else None)}
    if masks and any(m.any() for m in masks):
        result["pixels"] = map_scores(maps, masks)
    else:
        log.info("no_defect_masks", data=data.source, note="no defect_masks/ with defects: pixel scores skipped")
    return result


def _masks_folder(masks: Path) -> Path:
    masks = Path(masks)
    if (masks / "defect_masks").is_dir():
        return masks / "defect_masks"
    if not masks.is_dir():
        raise SemtileError(f"{masks}: defect mask folder not found")
    return masks


def evaluate_stored_maps(results: str | Path, masks: str | Path, out: str | Path, *, map_name: str = "anomaly",
                         max_fpr: float = 0.3) -> dict:
    """Score the anomaly maps stored in the result store ``results`` against the defect masks in ``masks``.

    Each result with the map ``map_name`` is matched to ``masks/<input file name>``
    (a dataset folder's ``defect_masks/`` is used when there is one; the
    masks are cropped to the valid area like the scans). Pixel AUROC and PRO
    are pooled over every matched image; ``per_image.csv`` holds each image's
    stored anomaly fraction, its defect share and its own pixel AUROC where it
    has defects. Writes ``metrics.json`` and ``summary.md`` into ``out``.
    """
    from semtile.defects.data import read_mask
    from semtile.defects.scores import pixel_auroc
    from semtile.results import open_results

    opened = open_results(results)
    folder = _masks_folder(Path(masks))
    maps, truths, rows, missing, without, damaged = [], [], [], [], [], {}
    for name in opened.names:
        image = opened[name]
        if map_name not in image.maps:
            without.append(name)
            continue
        mask_file = folder / image.source.name
        if not mask_file.is_file():
            missing.append(image.source.name)
            continue
        try:
            values = np.asarray(image.map(map_name).compute(), dtype=np.float32)
        except DamagedResultError as exc:  # that result's error: left out, named in metrics.json
            damaged[name] = str(exc)
            continue
        if values.ndim != 2:
            raise SemtileError(f"{results}/{name}: map {map_name!r} has shape {values.shape}; expected one 2-D map")
        truth = read_mask(mask_file, values.shape)
        fraction = image.attrs.get("anomaly_fraction")
        row = {"name": name, "path": image.source.name, "anomaly_fraction": fraction,
               "defect_fraction": float(truth.mean()), "pixel_auroc": None}
        if truth.any() and not truth.all():
            row["pixel_auroc"] = pixel_auroc([values], [truth])
        rows.append(row)
        maps.append(values)
        truths.append(truth)
    if not maps:
        raise SemtileError(f"{results}: no stored {map_name!r} map matches a mask in {folder} "
                           f"({len(without)} results without the map, {len(missing)} without a mask)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "per_image.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fractions = [r["anomaly_fraction"] for r in rows if isinstance(r["anomaly_fraction"], (int, float))]
    first = opened[rows[0]["name"]].attrs.get("anomaly") or {}
    report: dict = {"results": str(results), "masks": str(folder), "map": map_name, "images": len(rows),
                    "scope": f"stored {map_name!r} maps of {results}",
                    "results_without_map": without, "results_without_mask": missing, "damaged": damaged,
                    "threshold": first.get("threshold"), "model_sha256": (first.get("model") or {}).get("sha256"),
                    "engine": first.get("engine"),
                    "mean_anomaly_fraction": float(np.mean(fractions)) if fractions else None,
                    "kind": f"stored {map_name} maps"}
    if any(t.any() for t in truths):
        report["pixels"] = map_scores(maps, truths, max_fpr=max_fpr)
    else:
        log.info("no_defects_in_masks", masks=str(folder), note="pixel scores need defect pixels")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(_summary(report))
    return report


def _summary(report: dict) -> str:
    lines = [f"# Defect model {report['kind']} ({report['images']} images: {report['scope']})", ""]
    if "patch" in report:
        lines += ["| patch score | AUC-ROC | AP | patches | defects |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {s['auroc']:.4f} | {s['ap']:.4f} | {s['n']} | {s['positives']} |"
                  for name, s in report["patch"].items()]
        lines.append("")
    if "pixels" in report:
        p = report["pixels"]
        lines += [f"Pixel AUROC {p['pixel_auroc']:.4f}, PRO (FPR up to {p['pro_max_fpr']}) {p['pro']:.4f} "
                  f"over {p['images']} images ({p['defect_share']:.4%} defect pixels).", ""]
    if report.get("mean_anomaly_fraction") is not None:
        lines += [f"Mean anomaly fraction {report['mean_anomaly_fraction']:.4%} at threshold {report['threshold']:.4g}.", ""]
    return "\n".join(lines)
