"""``semtile evaluate``: scores computed from a real result store."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.errors import SemtileError
from semtile.models.networks import Architecture
from semtile.science.evaluate import evaluate_store, label_scores, mask_scores
from semtile.science.training import TrainConfig, train_classifier
from semtile.store import ImageResult, open_store


def test_label_scores_on_a_known_case():
    s = label_scores([0, 1, 2, 3], [0, 2, 2, 1], [0, 1, 2, 3])
    assert s.top1 == 0.5 and s.within1 == 0.75 and s.mae_t == pytest.approx(0.75)
    assert s.confusion[1, 2] == 1 and s.confusion[3, 1] == 1 and s.confusion.sum() == 4
    assert s.per_label_accuracy == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}
    text = label_scores(["a", "b"], ["a", "a"], ["a", "b"])
    assert text.within1 is None and text.top1 == 0.5


def test_mask_scores():
    p = np.array([[1, 1, 0, 0]], bool)
    t = np.array([[1, 0, 0, 0]], bool)
    assert mask_scores(p, t) == {"pixel_accuracy": 0.75, "iou": 0.5, "dice": pytest.approx(2 / 3),
                                 "intersection": 1, "predicted": 2, "true": 1}
    blank = mask_scores(p, np.zeros_like(t))  # undefined where the truth is empty, whatever is predicted
    assert np.isnan(blank["dice"]) and np.isnan(blank["iou"]) and blank["pixel_accuracy"] == 0.5


@pytest.mark.slow
def test_evaluate_a_processed_dataset_with_an_expert(tiny_dataset, tiny_bundle, tmp_path):
    out = tmp_path / "r.zarr"
    run = CliRunner().invoke(main, ["process", str(tiny_dataset / "images"), "--out", str(out), "--model", str(tiny_bundle),
                                    "--tile", "64", "--halo", "8", "--engine", "torch-cpu"])
    assert run.exit_code == 0
    expert = tmp_path / "expert.csv"
    with expert.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for row in csv.DictReader((tiny_dataset / "labels.csv").open()):
            writer.writerow([str(tiny_dataset / row["path"]), row["label"]])  # a perfect expert
    result = CliRunner().invoke(main, ["evaluate", str(out), "--labels", str(tiny_dataset / "labels.csv"),
                                       "--expert", str(expert), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["images"] == 8 and report["expert"]["top1"] == 1.0
    assert 0.0 <= report["model"]["top1"] <= 1.0 and report["model"]["within1"] is not None
    assert {"pixel_accuracy", "iou", "dice"} <= set(report["masks"])
    pooled = report["masks_pooled"]
    assert pooled["empty_truth_images"] + report["masks"]["dice"]["images"] == 8
    assert "adhesive_ratio_mae" in report
    for name in ("confusion.csv", "confusion.png", "confusion_expert.png", "per_image.csv", "summary.md"):
        assert (tmp_path / "ev" / name).stat().st_size > 0
    rows = list(csv.reader((tmp_path / "ev" / "confusion.csv").open()))
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == 8


def test_evaluate_scores_only_the_test_split_of_a_model(tiny_dataset, tiny_bundle, tmp_path):
    out = tmp_path / "r.zarr"
    run = CliRunner().invoke(main, ["process", str(tiny_dataset / "images"), "--out", str(out), "--model", str(tiny_bundle),
                                    "--tile", "64", "--halo", "8", "--engine", "torch-cpu"])
    assert run.exit_code == 0
    # A model trained on half of each label, the other half held out as its test split.
    held_out = train_classifier(tiny_dataset, tmp_path / "half.pt", arch=Architecture("classifier", c=4, d=2, n=1, N=1),
                                config=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, crop=32, split=(0.5, 0, 0.5)))
    test_names = set(json.loads(held_out.with_suffix(".json").read_text())["training"]["split"]["test"])
    assert len(test_names) == 4
    result = CliRunner().invoke(main, ["evaluate", str(out), "--labels", str(tiny_dataset / "labels.csv"),
                                       "--split-from", str(held_out), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["images"] == len(test_names) and report["split"]["part"] == "test"
    scored = {row["path"].rsplit("/", 1)[-1] for row in csv.DictReader((tmp_path / "ev" / "per_image.csv").open())}
    assert scored == test_names
    bad = CliRunner().invoke(main, ["evaluate", str(out), "--labels", str(tiny_dataset / "labels.csv"),
                                    "--split-from", str(tiny_dataset / "labels.csv"), "--out", str(tmp_path / "ev2")])
    assert bad.exit_code == 2 and "no model card" in bad.output


def _small_dataset(tmp_path, n=4):
    """n blank 8x8 scans labelled 0/1, each with a result in a store that predicts its label."""
    images = tmp_path / "ds" / "images"
    images.mkdir(parents=True)
    store = open_store(tmp_path / "r.zarr")
    with (tmp_path / "ds" / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for i in range(n):
            path = images / f"s{i}.tif"
            tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
            writer.writerow([f"images/{path.name}", i % 2])
            mask = np.full((8, 8), 0.75 if i % 2 else 0.25, np.float32)
            store.write(store.name_for(path), ImageResult(
                source=path, mask=mask, binary_mask=mask >= 0.5, class_probs=np.array([0.5, 0.5], np.float32),
                labels=[0, 1], label=i % 2, adhesive_ratio=float((mask >= 0.5).mean()),
                image=np.zeros((8, 8), np.float32)))
    return tmp_path / "r.zarr", tmp_path / "ds" / "labels.csv"


def test_evaluate_reads_only_the_complete_results_of_a_store(tmp_path):
    store, labels = _small_dataset(tmp_path)
    # A crashed writer's leftover: a whole group under a temporary name, with a wrong label.
    shutil.copytree(store / "s0", store / ".partial-s0-0123abcd")
    zarr.open_group(str(store / ".partial-s0-0123abcd"), mode="a").attrs["label"] = 1
    report = evaluate_store(store, labels, tmp_path / "ev")
    assert report["images"] == 4 and report["missing"] == 0 and report["model"]["top1"] == 1.0
    rows = list(csv.DictReader((tmp_path / "ev" / "per_image.csv").open()))
    assert [r["group"] for r in rows] == ["s0", "s1", "s2", "s3"]
    assert [float(r["adhesive_ratio"]) for r in rows] == [0.0, 1.0, 0.0, 1.0]


def test_evaluate_needs_a_result_store_and_creates_none(tmp_path):
    _, labels = _small_dataset(tmp_path, n=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.zarr").write_text("x")
    for target in (tmp_path / "absent.zarr", tmp_path / "empty", tmp_path / "file.zarr"):
        with pytest.raises(SemtileError, match=re.escape(str(target))):
            evaluate_store(target, labels, tmp_path / "ev")
    assert not (tmp_path / "absent.zarr").exists() and not any((tmp_path / "empty").iterdir())
    assert not (tmp_path / "ev").exists()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "absent.zarr"), "--labels", str(labels),
                                       "--out", str(tmp_path / "ev")])
    assert result.exit_code == 2 and "absent.zarr" in result.output
