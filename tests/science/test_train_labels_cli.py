"""``semtile train`` on a labels.csv as it comes: the lung-cell set's ``file,label,...``; a refusal that lists the
columns found; validation accuracy per epoch and the best epoch printed."""

from __future__ import annotations

import csv
import shutil

from click.testing import CliRunner

from semtile.cli.main import main

from shared_paths import shared_data

TINY = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "32", "--c", "4", "--d", "2",
        "--n", "1", "--threads", "1"]


def relabel(source, target, header: dict):
    """A copy of the dataset ``source`` whose labels.csv has its columns renamed by ``header``."""
    shutil.copytree(source, target)
    with (source / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (target / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([header.get(k, k) for k in rows[0]] + ["notes"])
        writer.writerows([[*r.values(), "x"] for r in rows])
    return target


def test_file_column_trains_and_prints_each_epoch_and_the_best(tiny_dataset, tmp_path):
    data = relabel(tiny_dataset, tmp_path / "data", {"path": "file"})
    result = CliRunner().invoke(main, ["--log-json", "train", "classifier", str(data), *TINY,
                                       "--out", str(tmp_path / "clf.pt")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("epoch 1: train loss ") and "val accuracy " in lines[0]
    assert lines[1].startswith("epoch 2: ") and "val accuracy " in lines[1]
    assert lines[2].startswith("best epoch ") and lines[3] == f"wrote {tmp_path / 'clf.pt'}"


def test_named_columns_and_the_refusal(tiny_dataset, tmp_path):
    data = relabel(tiny_dataset, tmp_path / "data", {"path": "image", "label": "t"})
    refused = CliRunner().invoke(main, ["train", "classifier", str(data), *TINY, "--out", str(tmp_path / "a.pt")])
    assert refused.exit_code == 2
    assert "found the columns: image, t, " in refused.output and "--path-column" in refused.output
    named = CliRunner().invoke(main, ["--log-json", "train", "segmenter", str(data), *TINY, "--path-column", "image",
                                      "--label-column", "t", "--out", str(tmp_path / "seg.pt")])
    assert named.exit_code == 0, named.output
    assert "best epoch " in named.stdout


def test_train_help_says_what_data_holds():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert "labels.csv" in result.output and "file" in result.output and "split" in result.output
    assert "--path-column" in CliRunner().invoke(main, ["train", "classifier", "--help"]).output


def test_the_lung_cell_labels_csv_is_used_as_it_is(tmp_path):
    data = shared_data("lungcells-fei-sem")
    result = CliRunner().invoke(main, ["--log-json", "train", "classifier", str(data), "--epochs", "1",
                                       "--steps-per-epoch", "2", "--crop", "64", "--batch-size", "2", "--c", "4",
                                       "--threads", "1", "--out", str(tmp_path / "clf.pt")])
    assert result.exit_code == 0, result.output
    assert "val accuracy" in result.stdout and (tmp_path / "clf.pt").is_file()
